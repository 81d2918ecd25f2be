"""`vidmask eval retrieval|qa|caption`: evaluate a run's latest checkpoint (`eval probe`: `vidmask probe`)."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub) -> None:
    from vidmask.tasks import list_tasks, task_info

    p = sub.add_parser("eval", help="evaluate a trained run", description="Evaluate a run's latest checkpoint.")
    tasks = p.add_subparsers(dest="task", metavar="TASK", required=True)
    for name in list_tasks(finetune=True):
        text = task_info(name).eval_help
        r = tasks.add_parser(name, help=text, description=text)
        r.add_argument("--run", required=True, help="run folder (or a checkpoint folder inside it)")
        r.add_argument("--anno", help="annotation file (default: the run's data.test_anno)")
        r.add_argument("--json", metavar="OUT", help="write the metrics as JSON here")
        r.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
        for opt in task_info(name).eval_options:  # the task's own options, each setting one config key
            if opt.type is bool:
                r.add_argument(opt.flag, action="store_true", default=None, help=f"{opt.help} (sets {opt.key})")
            else:
                r.add_argument(opt.flag, type=opt.type, help=f"{opt.help} (sets {opt.key})")
        r.set_defaults(func=run_eval)
    from vidmask.commands import probe  # a probe of the frozen features, not a task's own evaluation

    probe.add_arguments(tasks.add_parser("probe", help=probe.HELP, description=probe.DESCRIPTION))


def find_run_dir(path):
    from pathlib import Path

    p = Path(path)
    for cand in (p, p.parent, p.parent.parent):
        if (cand / "config.yaml").is_file():
            return cand
    raise FileNotFoundError(f"{path}: no config.yaml found here or above; pass a run folder made by vidmask")


def run_eval(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import torch

    from vidmask.commands.runconfig import rebase_on_origin
    from vidmask.config import ConfigError, load_config
    from vidmask.train import checkpoint as ckpt
    from vidmask.train.distributed import pick_device
    from vidmask.tasks import task_info
    from vidmask.train.run import evaluate_run, task_name

    try:
        run_dir = find_run_dir(args.run)
        cfg = load_config(run_dir / "config.yaml")
        rebase_on_origin(cfg, run_dir)
        weights = ckpt.resolve_weights(args.run)
    except (FileNotFoundError, ValueError) as e:
        print(f"vidmask eval: {e}", file=sys.stderr)
        return 2
    info = task_info(task_name(cfg))
    ran = info.eval_as or info.name  # a pretraining run is a retrieval model
    if ran != args.task:
        print(f"vidmask eval {args.task}: {run_dir} was trained for {ran}; evaluate it with `vidmask eval {ran}`",
              file=sys.stderr)
        return 2
    cfg.finetune.task = args.task
    if not args.anno and cfg.data.test_anno == "":
        cfg.data.test_anno = task_info(args.task).files[1]
    for opt in task_info(args.task).eval_options:
        value = getattr(args, opt.flag.lstrip("-").replace("-", "_"))
        if value is not None:  # a switch only turns its key on; an absent option keeps the run's value
            section, key = opt.key.split(".")
            setattr(getattr(cfg, section), key, value)
            try:
                getattr(cfg, section).__post_init__()  # the section's own checks on the new value
            except ConfigError as e:
                print(f"vidmask eval {args.task}: {opt.flag} {value}: {e}", file=sys.stderr)
                return 2
    device = pick_device(args.device, 0)
    with torch.no_grad():
        res, table = evaluate_run(cfg, weights, device, Path(args.anno) if args.anno else None)
    res["weights"] = str(weights)
    print(table(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
        print(f"wrote {args.json}")
    return 0
