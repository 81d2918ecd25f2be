"""`vidmask probe`: how much motion a run's frozen video features hold (linear probes on the corpus)."""

from __future__ import annotations

import argparse


HELP = "linear probes of motion, colour and shape from a run's frozen video features"
DESCRIPTION = ("Fit linear probes (logistic regression) of each object's motion, colour and shape on the frozen "
               "video features of the motion-shapes corpus's single-object training clips, report held-out "
               "accuracy on the test clips beside chance, with the retrieval twin accuracies; writes "
               "RUN/probe.json and TensorBoard scalars (probe/...).")


def add_parser(sub) -> None:
    """`vidmask probe`; `vidmask eval probe` is the same command (vidmask/commands/evaluate.py)."""
    add_arguments(sub.add_parser("probe", help=HELP, description=DESCRIPTION))


def add_arguments(p) -> None:
    p.add_argument("--run", required=True, help="run folder (pretraining or fine-tuning)")
    p.add_argument("--corpus", help="motion-shapes corpus folder (default: the run's data.corpus)")
    p.add_argument("--max-train", type=int, default=0, help="fit on an even sample of this many clips (0: all)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch

    from vidmask.commands.evaluate import find_run_dir
    from vidmask.commands.runconfig import rebase_on_origin
    from vidmask.config import load_config
    from vidmask.tasks.probe import evaluate_probe, probe_table
    from vidmask.tasks.retrieval import evaluate_retrieval
    from vidmask.train import checkpoint as ckpt
    from vidmask.train.distributed import pick_device
    from vidmask.train.runlog import write_json
    from vidmask.train.wiring import build_model

    run_dir = find_run_dir(args.run)
    cfg = load_config(run_dir / "config.yaml")
    rebase_on_origin(cfg, run_dir)
    corpus = Path(args.corpus or cfg.data.corpus)
    device = pick_device(args.device, 0)
    weights = ckpt.resolve_weights(args.run)
    model = build_model(cfg)
    ckpt.load_model_weights(model, weights)
    model.to(device)
    res = evaluate_probe(model, corpus, cfg, device, args.max_train)
    test = corpus / "test_retrieval.json"
    if test.is_file():  # the twin accuracies the retrieval evaluation reports, beside the probes
        with torch.no_grad():
            twins = evaluate_retrieval(model, test, cfg, device).get("twins")
        if twins:
            res["twins"] = twins
    res["weights"] = str(weights)
    write_json(run_dir / "probe.json", res)
    latest = ckpt.latest_checkpoint_name(run_dir / "checkpoints")  # "step_000200", or "" without a pointer
    step = int(latest.split("_")[-1]) if latest else 0
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(run_dir / "tb")) as tb:
        for feature in ("joint", "mean_token"):
            for attr, acc in res[feature].items():
                tb.add_scalar(f"probe/{feature}/{attr}", acc, step)
        for kind, acc in res.get("twins", {}).items():  # motion, colour, each by scene size; not the counts
            if not kind.endswith("_n") and ":" not in kind:  # nor each pair of values (probe.json has them)
                tb.add_scalar(f"probe/twins/{kind}", acc, step)
    print(probe_table(res))
    print(f"wrote {run_dir / 'probe.json'}")
    return 0
