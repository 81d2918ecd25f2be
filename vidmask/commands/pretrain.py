"""`vidmask pretrain`: masked video-text pretraining from a YAML config."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub) -> None:
    p = sub.add_parser(
        "pretrain",
        help="pretrain a video-text model with masked visual tokens",
        description="Pretrain from a YAML config with dotted overrides, e.g. "
        "`vidmask pretrain --config configs/tiny.yaml mask.ratio=0.9 train.steps=500`. "
        "Runs under `torchrun --nproc_per_node=N -m vidmask pretrain ...` too.",
    )
    p.add_argument("--config", help="YAML file (only what differs from the defaults)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue this run exactly from its latest checkpoint")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vidmask.commands.runconfig import config_from_args
    from vidmask.config import ConfigError

    try:
        cfg = config_from_args(args.config, args.overrides, args.resume)
    except ConfigError as e:
        print(f"vidmask pretrain: {e}", file=sys.stderr)
        return 2
    from vidmask.train.run import run_training

    run_dir = run_training(cfg, resume=bool(args.resume))
    print(f"run folder: {run_dir}")
    return 0
