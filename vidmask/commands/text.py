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
    from vidmask.train.wiring import caption_store_for, init_model

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
    text = init_model(cfg, info.device).text  # the tower a run of this config trains with (finetune.init too)
    t0 = time.time()
    store = caption_store_for(cfg, text)
    if info.main:
        print(f"caption store in {store.folder}: {len(store)} captions, {store.nbytes / 1e6:.1f} MB, "
              f"{time.time() - t0:.1f} s, {info.world} rank(s)")
    teardown()
    return 0
