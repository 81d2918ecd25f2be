"""`vidmask eval retrieval`: evaluate a run's checkpoint."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a trained run", description="Evaluate a run's latest checkpoint.")
    tasks = p.add_subparsers(dest="task", metavar="TASK", required=True)
    r = tasks.add_parser(
        "retrieval",
        help="text-to-video and video-to-text retrieval (R@1/5/10, MdR, MnR, Rsum, twin accuracy)",
        description="Zero-shot retrieval with the run's dual encoder; every caption of a video is a query.",
    )
    r.add_argument("--run", required=True, help="run folder (or a checkpoint folder inside it)")
    r.add_argument("--anno", help="annotation file (default: the run's data.test_anno)")
    r.add_argument("--json", metavar="OUT", help="write the metrics as JSON here")
    r.add_argument("--dsl", action="store_true", help="also report dual-softmax (DSL) re-weighted scores")
    r.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    r.add_argument("--batch-size", type=int, default=32)
    r.set_defaults(func=run_retrieval)


def find_run_dir(path):
    from pathlib import Path

    p = Path(path)
    for cand in (p, p.parent, p.parent.parent):
        if (cand / "config.yaml").is_file():
            return cand
    raise FileNotFoundError(f"{path}: no config.yaml found here or above; pass a run folder made by `vidmask pretrain`")


def run_retrieval(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import torch

    from vidmask.config import load_config
    from vidmask.train import checkpoint as ckpt
    from vidmask.train.distributed import pick_device
    from vidmask.train.evaluate import evaluate_retrieval, format_table
    from vidmask.train.pretrain import build_model

    try:
        run_dir = find_run_dir(args.run)
        cfg = load_config(run_dir / "config.yaml")
        weights = ckpt.resolve_weights(args.run)
    except (FileNotFoundError, ValueError) as e:
        print(f"vidmask eval: {e}", file=sys.stderr)
        return 2
    device = pick_device(args.device, 0)
    model = build_model(cfg)
    ckpt.load_model_weights(model, weights)
    model = model.to(device)
    anno = Path(args.anno) if args.anno else cfg.data.path(cfg.data.test_anno)
    with torch.no_grad():
        res = evaluate_retrieval(model, anno, cfg.data, device, dsl=args.dsl, batch_size=args.batch_size)
    res["weights"] = str(weights)
    print(format_table(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
        print(f"wrote {args.json}")
    return 0
