"""`vidmask demo`: the main job on the embedded default, end to end, in minutes on a CPU."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub) -> None:
    p = sub.add_parser(
        "demo",
        help="generate the motion-shapes corpus (if absent), pretrain the tiny model, evaluate retrieval",
        description="The main job on the embedded default: make the motion-shapes corpus if it is not there, "
        "pretrain the tiny model with masked video tokens, and print zero-shot retrieval on the test split "
        "next to chance level.",
    )
    p.add_argument("--corpus", default="corpus", help="corpus folder (generated if it has no corpus.json)")
    p.add_argument("--videos", type=int, default=2000, help="videos to generate when the corpus is made")
    p.add_argument("--workers", type=int, default=2, help="processes for corpus generation")
    p.add_argument("--config", default=None, help="YAML config (default: the built-in tiny model)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
    p.set_defaults(func=run)


def demo_overrides(corpus, overrides: list[str], native_bf16: bool | None = None) -> list[str]:
    """The demo's settings over the tiny model's defaults, then the user's ``overrides`` (which win).

    Sized to finish in about 10 minutes on 2 CPU cores, install included (issue 15): a complete 600-step
    schedule (the defaults' 1,000 steps took 11-13 minutes here), in bf16 autocast where the CPU has it
    in hardware (``native_bf16``; None = ask this CPU: :func:`vidmask.train.engine.cpu_bf16_is_native`);
    the corpus's frames decoded once into memory (about 1.1 GB), so that the loader workers do not decode
    video on the cores that train; and, for slower machines, a stop after 11 minutes (checkpointed,
    resumable), then the evaluation.
    """
    if native_bf16 is None:
        from vidmask.train.engine import cpu_bf16_is_native

        native_bf16 = cpu_bf16_is_native()
    return [f"data.corpus={corpus}", "name=demo", "train.steps=600", "train.time_limit_min=11",
            "data.cache_frames=true", *(["train.precision=bf16"] if native_bf16 else []), *overrides]


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vidmask.config import ConfigError, load_config

    corpus = Path(args.corpus)
    if not (corpus / "corpus.json").is_file():
        from vidmask.corpus import make_corpus

        print(f"making the motion-shapes corpus in {corpus} ({args.videos} videos) ...", flush=True)
        make_corpus(corpus, videos=args.videos, workers=args.workers, overwrite=True)
    try:
        cfg = load_config(args.config, demo_overrides(corpus, args.overrides))
    except ConfigError as e:
        print(f"vidmask demo: {e}", file=sys.stderr)
        return 2
    from vidmask.train.run import run_training

    run_dir = run_training(cfg)
    # the temporal probe beside the twin accuracies: does the video encoder hold motion?
    from vidmask.commands.probe import run as probe

    probe(argparse.Namespace(run=str(run_dir), corpus=str(corpus), max_train=600, device=cfg.train.device))
    print(f"\nrun folder: {run_dir} (config.yaml, metrics.csv, loss.png, tb/, checkpoints/, eval_retrieval.json, "
          "probe.json)")
    print(f"evaluate again with: vidmask eval retrieval --run {run_dir}")
    return 0
