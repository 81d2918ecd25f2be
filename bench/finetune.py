"""Fine-tuning from a pretrained run against the same model trained from scratch, same steps.

    python bench/finetune.py --init runs/demo [--corpus corpus] [--tasks retrieval qa caption]

Runs `vidmask finetune TASK --config configs/finetune/TASK.yaml` twice per task
(with --init, and from scratch), reads each run's evaluation and writes
bench/results/finetune.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from _common import table, train_or_resume, write

ROOT = Path(__file__).resolve().parents[1]
METRICS = {
    "retrieval": ("eval_retrieval.json", [("t2v R@1", lambda r: r["t2v"]["R@1"]), ("Rsum", lambda r: r["rsum"]),
                                          ("re-ranked t2v R@1", lambda r: r.get("reranked", {}).get("t2v", {}).get("R@1", float("nan")))]),
    "qa": ("eval_qa.json", [("accuracy %", lambda r: r["acc"])]),
    "caption": ("eval_caption.json", [("CIDEr", lambda r: r["CIDEr"]), ("BLEU-4", lambda r: r["BLEU-4"]),
                                      ("ROUGE-L", lambda r: r["ROUGE-L"])]),
}


def run(task: str, init: str | None, corpus: str, out: Path) -> tuple[dict, float]:
    args = ["--config", str(ROOT / f"configs/finetune/{task}.yaml"), f"data.corpus={corpus}", f"run_dir={out}"]
    if init:
        args[:0] = ["--init", init]
    t0 = time.time()
    train_or_resume(["finetune", task], out, *args)
    return json.loads((out / METRICS[task][0]).read_text()), (time.time() - t0) / 60


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--init", required=True, help="a pretrained run folder")
    ap.add_argument("--corpus", default="corpus")
    ap.add_argument("--tasks", nargs="+", default=list(METRICS))
    ap.add_argument("--out", default="runs/finetune-bench")
    args = ap.parse_args()
    rows = []
    for task in args.tasks:
        for label, init in (("pretrained", args.init), ("scratch", None)):
            res, minutes = run(task, init, args.corpus, Path(args.out) / f"{task}-{label}")
            for name, get in METRICS[task][1]:
                rows.append([task, name, label, f"{get(res):.2f}", f"{minutes:.1f}"])
            print(rows[-1], flush=True)
    body = (f"Each task fine-tuned with `configs/finetune/TASK.yaml` on the motion-shapes corpus, once from "
            f"`{args.init}` and once from scratch (same steps, same seed); evaluated on the test split.\n\n"
            + table(["task", "metric", "init", "value", "minutes"], rows))
    write("finetune.md", "Fine-tuning: pretrained vs from scratch", body)


if __name__ == "__main__":
    main()
