"""`vidmask text cache`: prebuild a run's caption feature store (the frozen text tower's features, once)."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("text", help="the frozen text tower's caption features",
                       description="The student's text tower, frozen by default (model.text.trainable_layers=0).")
    jobs = p.add_subparsers(dest="job", metavar="JOB", required=True)
    c = jobs.add_parser(
        "cache",
        help="compute a config's caption feature store (data.train_anno's captions, once) before training",
        description="Build the frozen text tower's features of the captions of data.train_anno that training "
        "with model.text.feature_store=FOLDER reads (training builds them on first use too; build them here to "
        "see the projected size and the cost first). Under torchrun each rank encodes its share of the distinct "
        "captions. Takes the same config and overrides as `vidmask pretrain`.",
    )
    c.add_argument("--config", help="YAML config (e.g. configs/tiny.yaml)")
    c.add_argument("overrides", nargs="*", help="dotted overrides, e.g. model.text.feature_store=corpus/text/store")
    c.set_defaults(func=run_cache)


def run_cache(args: argparse.Namespace) -> int:
    import logging
    import time

    from vidmask.commands.runconfig import config_from_args
    from vidmask.train.distributed import init_distributed, teardown
    from vidmask.objectives import objective_class
    from vidmask.train.wiring import build_teacher_from, caption_store_for, init_model

    cfg = config_from_args(args.config, args.overrides, None)
    if not cfg.model.text.feature_store:
        print("vidmask text cache: the config needs model.text.feature_store (a folder; got "
              f"model.text.feature_store={cfg.model.text.feature_store!r})", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    # under torchrun every rank encodes its share of the captions (vidmask.models.caption_store)
    info = init_distributed(cfg.train.device, cfg.train.dist_timeout_min)
    import torch

    torch.manual_seed(cfg.train.seed)  # as training does: a randomly initialised tower gets the run's weights
    # the tower a run of this config trains with (finetune.init too), and the teacher's when an objective
    # reads the teacher's caption features every step (loss.relevance): training reads a store for both
    towers = [("text tower", init_model(cfg, info.device).text)]
    if any(objective_class(name).reads_teacher_text for name in cfg.loss.active()):
        teacher = build_teacher_from(cfg)
        tower = teacher.caption_tower() if teacher is not None else None
        if tower is not None:
            towers.append((f"teacher {cfg.teacher.name}'s text tower", tower))
    for who, tower in towers:
        t0 = time.time()
        store = caption_store_for(cfg, tower)  # two towers with one identity: one store, built once
        if info.main:
            print(f"caption store of the {who} in {store.folder}: {len(store)} captions, "
                  f"{store.nbytes / 1e6:.1f} MB, {time.time() - t0:.1f} s, {info.world} rank(s)")
    teardown()
    return 0
