"""`vidmask finetune retrieval|qa|caption`: fine-tune a pretrained run on a downstream task."""

from __future__ import annotations

import argparse
import sys

TASKS = {
    "retrieval": "text-video retrieval with vtc (+ vtm re-ranking when loss.vtm > 0)",
    "qa": "open-ended video QA: a classifier over answer_list.json (MSRVTT-QA style)",
    "caption": "video captioning: a text decoder with cross-attention to the video (MSVD style)",
}


def add_parser(sub) -> None:
    p = sub.add_parser("finetune", help="fine-tune a pretrained model on retrieval, QA or captioning",
                       description="Fine-tune on a downstream task; shares configs, run folders, checkpoints, "
                       "--resume and torchrun with pretraining.")
    tasks = p.add_subparsers(dest="task", metavar="TASK", required=True)
    for name, help_text in TASKS.items():
        t = tasks.add_parser(name, help=help_text, description=help_text)
        t.add_argument("--init", help="pretrained run folder, checkpoint folder or .safetensors (omit: from scratch)")
        t.add_argument("--config", help="YAML config (e.g. configs/finetune/%s.yaml)" % name)
        t.add_argument("--resume", metavar="RUN_DIR", help="continue this fine-tuning run exactly")
        t.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
        t.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vidmask.commands.runconfig import config_from_args
    from vidmask.config import ConfigError
    from vidmask.train.finetune import TASK_FILES

    train_anno, test_anno = TASK_FILES[args.task]
    base = [f"finetune.task={args.task}", f"data.train_anno={train_anno}", f"data.test_anno={test_anno}",
            f"name=finetune-{args.task}"]
    if args.init:
        base.append(f"finetune.init={args.init}")
    try:
        cfg = config_from_args(args.config, args.overrides, args.resume, tuple(base))
    except ConfigError as e:
        print(f"vidmask finetune: {e}", file=sys.stderr)
        return 2
    from vidmask.train.finetune import run_finetune

    run_dir = run_finetune(cfg, resume=bool(args.resume))
    print(f"run folder: {run_dir}")
    return 0
