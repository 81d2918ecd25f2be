"""`vidmask eval retrieval|qa|caption`: evaluate a run's latest checkpoint."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate a trained run", description="Evaluate a run's latest checkpoint.")
    tasks = p.add_subparsers(dest="task", metavar="TASK", required=True)
    helps = {
        "retrieval": "text-to-video and video-to-text retrieval (R@1/5/10, MdR, MnR, Rsum, twin accuracy; "
                     "re-ranked with the matching head where the run has one)",
        "qa": "video QA top-1 accuracy, overall and per question type",
        "caption": "captioning CIDEr, BLEU-4, ROUGE-L (and METEOR with Java) via pycocoevalcap",
    }
    for name, text in helps.items():
        r = tasks.add_parser(name, help=text, description=text)
        r.add_argument("--run", required=True, help="run folder (or a checkpoint folder inside it)")
        r.add_argument("--anno", help="annotation file (default: the run's data.test_anno)")
        r.add_argument("--json", metavar="OUT", help="write the metrics as JSON here")
        r.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
        if name == "retrieval":
            r.add_argument("--dsl", action="store_true", help="also report dual-softmax (DSL) re-weighted scores")
            r.add_argument("--paragraph", action="store_true",
                           help="join all captions of a video into one query (DiDeMo / ActivityNet paragraph retrieval)")
            r.add_argument("--rerank-k", type=int, help="re-rank each query's top-k with the matching head (0: off)")
        if name == "caption":
            r.add_argument("--beam", type=int, help="beam size (1 = greedy)")
        r.set_defaults(func=run_eval)


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
    from vidmask.config import load_config
    from vidmask.train import checkpoint as ckpt
    from vidmask.train.distributed import pick_device
    from vidmask.train.finetune import TASK_FILES, evaluate_run

    try:
        run_dir = find_run_dir(args.run)
        cfg = load_config(run_dir / "config.yaml")
        rebase_on_origin(cfg, run_dir)
        weights = ckpt.resolve_weights(args.run)
    except (FileNotFoundError, ValueError) as e:
        print(f"vidmask eval: {e}", file=sys.stderr)
        return 2
    ran = cfg.finetune.task or "retrieval"  # a pretraining run is a retrieval model
    if ran != args.task:
        print(f"vidmask eval {args.task}: {run_dir} was trained for {ran}; evaluate it with `vidmask eval {ran}`",
              file=sys.stderr)
        return 2
    cfg.finetune.task = args.task
    if not args.anno and cfg.data.test_anno == "":
        cfg.data.test_anno = TASK_FILES[args.task][1]
    if args.task == "retrieval":
        cfg.finetune.dsl = cfg.finetune.dsl or args.dsl
        cfg.finetune.paragraph = cfg.finetune.paragraph or args.paragraph
        if args.rerank_k is not None:
            cfg.finetune.rerank_k = args.rerank_k
    if args.task == "caption" and args.beam:
        cfg.finetune.beam = args.beam
    device = pick_device(args.device, 0)
    with torch.no_grad():
        res, table = evaluate_run(cfg, weights, device, Path(args.anno) if args.anno else None)
    res["weights"] = str(weights)
    print(table(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
        print(f"wrote {args.json}")
    return 0
