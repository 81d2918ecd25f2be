"""`vidmask teacher train|cache|list`: train the lit-effnet heads, prebuild a run's teacher cache, list teachers."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("teacher", help="train or inspect frozen teachers",
                       description="Teachers give the masked student per-token targets and attention.")
    jobs = p.add_subparsers(dest="job", metavar="JOB", required=True)
    t = jobs.add_parser(
        "train",
        help="train the lit-effnet teacher (packaged EfficientNet-Lite0 trunk + MiniLM text, both frozen)",
        description="Train the lit-effnet teacher's token projection and attention-pooling head, contrastively "
        "against the packaged all-MiniLM-L6-v2 caption embeddings, on a corpus's train.json. Pretraining loads "
        "the result with teacher.name=lit-effnet teacher.path=OUT.",
    )
    t.add_argument("--corpus", required=True, help="corpus folder with train.json")
    t.add_argument("--out", required=True, help="output .safetensors file (a .json with its settings is written beside it)")
    t.add_argument("--anno", default="train.json", help="annotation file inside the corpus")
    t.add_argument("--steps", type=int, default=300)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--frames", type=int, default=8)
    t.add_argument("--size", type=int, default=128)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--trunk-scale", type=int, default=1,
                   help="resize frames by this integer factor before the stride-32 trunk (saved with the heads): "
                   "1 = a 4x4 trunk map at 128 px, resampled to a patch-16 student's 8x8; 2 = 8x8 natively, "
                   "about 4x the trunk compute")
    t.set_defaults(func=run_train)
    c = jobs.add_parser(
        "cache",
        help="compute a pretraining config's teacher cache (the training frames, once) before training",
        description="Build the per-frame teacher features that pretraining with teacher.cache=FOLDER reads "
        "(pretraining builds them on first use too; build them here to see the cost and the projected size "
        "first). Under torchrun each rank encodes its share of the videos. Takes the same config and "
        "overrides as `vidmask pretrain`.",
    )
    c.add_argument("--config", help="YAML config (e.g. configs/recipes/umt.yaml)")
    c.add_argument("overrides", nargs="*", help="dotted overrides, e.g. teacher.cache=corpus/teacher/cache")
    c.set_defaults(func=run_cache)
    ls = jobs.add_parser("list", help="list the registered teachers")
    ls.set_defaults(func=run_list)


def run_list(args: argparse.Namespace) -> int:
    from vidmask.teachers import list_teachers

    print("\n".join(list_teachers()))
    return 0


def run_train(args: argparse.Namespace) -> int:
    import logging
    from pathlib import Path

    from vidmask.train.teacher import train_lit_teacher

    corpus = Path(args.corpus)
    if not (corpus / args.anno).is_file():
        print(f"vidmask teacher train: {corpus / args.anno} not found; make a corpus with "
              f"`vidmask corpus make --out {corpus}` or pass --corpus/--anno", file=sys.stderr)
        return 2
    if args.trunk_scale < 1:
        print(f"vidmask teacher train: --trunk-scale must be an integer >= 1, got {args.trunk_scale}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    summary = train_lit_teacher(corpus, args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                                num_frames=args.frames, size=args.size, seed=args.seed, anno=args.anno,
                                trunk_scale=args.trunk_scale, say=print)
    print(f"wrote {args.out}: " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                                              for k, v in summary.items()))
    return 0


def run_cache(args: argparse.Namespace) -> int:
    import logging
    import time

    from vidmask.commands.runconfig import config_from_args
    from vidmask.data import load_annotations
    from vidmask.train.distributed import init_distributed, teardown
    from vidmask.train.wiring import build_teacher_from, teacher_cache_for

    cfg = config_from_args(args.config, args.overrides, None)
    if not cfg.teacher.name or not cfg.teacher.cache:
        print("vidmask teacher cache: the config needs teacher.name and teacher.cache "
              f"(got teacher.name={cfg.teacher.name!r}, teacher.cache={cfg.teacher.cache!r})", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    # under torchrun every rank encodes its share of the videos (vidmask.teachers.cache)
    info = init_distributed(cfg.train.device, cfg.train.dist_timeout_min)
    items = load_annotations(cfg.data.path(cfg.data.train_anno), root=cfg.data.root())
    teacher = build_teacher_from(cfg).to(info.device)
    t0 = time.time()
    cache = teacher_cache_for(cfg, teacher, items, info.device)
    if info.main:
        print(f"teacher cache in {cache.folder}: {len(cache)} videos, {int(cache.counts.sum())} frames, "
              f"{cache.nbytes / 1e6:.0f} MB, {time.time() - t0:.1f} s, {info.world} rank(s)")
    teardown()
    return 0
