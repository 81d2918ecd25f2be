"""`vidmask finetune TASK`: fine-tune a pretrained run on a downstream task from the task registry."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub) -> None:
    from vidmask.tasks import list_tasks, task_info

    p = sub.add_parser("finetune", help="fine-tune a pretrained model on a downstream task ("
                       + ", ".join(list_tasks(finetune=True)) + ")",
                       description="Fine-tune on a downstream task; shares configs, run folders, checkpoints, "
                       "--resume and torchrun with pretraining.")
    tasks = p.add_subparsers(dest="task", metavar="TASK", required=True)
    for name in list_tasks(finetune=True):
        info = task_info(name)
        t = tasks.add_parser(name, help=info.help, description=f"{info.help}. Default annotation files in "
                             f"data.corpus: {info.files[0]} (train), {info.files[1]} (test).")
        t.add_argument("--init", help="pretrained run folder, checkpoint folder or .safetensors, or hf-clip:FOLDER "
                       "(a local Hugging Face CLIPModel folder; sets the model.* keys it fixes); omit: from scratch")
        t.add_argument("--config", help="YAML config (e.g. configs/finetune/%s.yaml)" % name)
        t.add_argument("--resume", metavar="RUN_DIR", help="continue this fine-tuning run exactly")
        t.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
        t.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from vidmask.commands.runconfig import config_from_args
    from vidmask.config import ConfigError
    from vidmask.tasks import task_info

    train_anno, test_anno = task_info(args.task).files
    base = [f"finetune.task={args.task}", f"data.train_anno={train_anno}", f"data.test_anno={test_anno}",
            f"name=finetune-{args.task}"]
    if args.init:
        base.append(f"finetune.init={args.init}")
    try:
        cfg = config_from_args(args.config, args.overrides, args.resume, tuple(base))
    except ConfigError as e:
        print(f"vidmask finetune: {e}", file=sys.stderr)
        return 2
    from vidmask.train.run import run_training

    run_dir = run_training(cfg, resume=bool(args.resume))
    print(f"run folder: {run_dir}")
    return 0
