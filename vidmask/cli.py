"""The `vidmask` command: one sub-command per job.

Each sub-command lives in `vidmask/commands/` and exposes
`add_parser(subparsers)`, which registers its arguments and sets
`func(args) -> int`. Heavy imports (torch, av) happen inside `func`, so
`vidmask --help` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys

# Each module registers one top-level sub-command through `add_parser(sub)`.
COMMAND_MODULES = [
    "vidmask.commands.corpus",
    "vidmask.commands.pretrain",
    "vidmask.commands.finetune",
    "vidmask.commands.evaluate",
    "vidmask.commands.probe",
    "vidmask.commands.demo",
    "vidmask.commands.masks",
    "vidmask.commands.teacher",
    "vidmask.commands.text",
    "vidmask.commands.anno",
    "vidmask.commands.shards",
]


def build_parser() -> argparse.ArgumentParser:
    import importlib

    from vidmask import __version__

    parser = argparse.ArgumentParser(
        prog="vidmask",
        description="Efficient video-language pretraining with semantic masking.",
    )
    parser.add_argument("--version", action="version", version=f"vidmask {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMAND_MODULES:
        importlib.import_module(module).add_parser(sub)
    return parser


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors that describe bad input (a config key, a file, a video, an annotation), not a bug:
    the CLI prints their message, which names the key or file and what to do, without a traceback."""
    from vidmask.config import ConfigError
    from vidmask.corpus.make import CorpusError
    from vidmask.data.annotations import AnnotationError
    from vidmask.data.dataset import TooManyBadSamples
    from vidmask.data.shards import ShardError
    from vidmask.data.video import VideoError
    from vidmask.train.checkpoint import CheckpointWriteError
    from vidmask.train.engine import RunStopped

    return (ConfigError, CorpusError, AnnotationError, TooManyBadSamples, VideoError, FileNotFoundError,
            RunStopped, CheckpointWriteError, ShardError)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        # VIDMASK_TRACEBACK=1 shows the full traceback of a user error too
        if not isinstance(error, user_errors()) or os.environ.get("VIDMASK_TRACEBACK"):
            raise
        print(f"vidmask {args.command}: {error}", file=sys.stderr)
        return 2
