"""Each paper recipe trained briefly on the motion-shapes corpus: is every loss term finite, and falling?

    python bench/recipe_smoke.py [--recipes stm stm-guided umt clusterstm ...] [--steps 60] [--batch 16]
                                 [--corpus corpus] [--teacher corpus/teacher/lit-effnet-s2.safetensors]

A short run of each recipe file as it is (every loss term it names, its
masking, its teacher: the lit-effnet heads, trained once with
`vidmask teacher train` when the file is missing, and the teacher cache) on
the real corpus, not the test suite's synthetic clips. For every ``*_loss``
column of the run's metrics.csv: the mean of the first and of the last
quarter of the logged rows, whether every value is finite, and whether the
last quarter sits below the first. It says nothing about which recipe is
better (that is bench/leaderboard.py, at equal budget and several seeds).
Finished runs under ``--out`` are reused. Writes bench/results/recipe_smoke.md.
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import subprocess
import sys
from pathlib import Path

from _common import table, write

ROOT = Path(__file__).resolve().parents[1]
# the recipes the fidelity pass added or changed (issue 14), and UMT's
RECIPES = ["stm", "stm-guided", "umt", "clusterstm", "clusterstm-adjacent", "clusterstm-umt-losses"]


def vidmask(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "vidmask", *args], check=True, cwd=ROOT)


def loss_columns(metrics: Path) -> dict[str, list[float]]:
    """Every ``*_loss`` column of a metrics.csv, in step order (rows without the term skipped)."""
    with metrics.open() as f:
        rows = list(csv.DictReader(f))
    names = [k for k in (rows[0] if rows else {}) if k.endswith("_loss")]
    return {k: [float(r[k]) for r in rows if r.get(k) not in (None, "")] for k in names}


def verdict(values: list[float]) -> list:
    """[first-quarter mean, last-quarter mean, finite, falling] of one term's logged values."""
    q = max(1, len(values) // 4)
    first, last = statistics.fmean(values[:q]), statistics.fmean(values[-q:])
    finite = all(math.isfinite(v) for v in values)
    return [f"{first:.4f}", f"{last:.4f}", "yes" if finite else "NO", "yes" if finite and last < first else "NO"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", nargs="+", default=RECIPES)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--corpus", default="corpus")
    ap.add_argument("--teacher", default=None, help="lit-effnet heads (trained at --trunk-scale 2 if missing, as the recipes use)")
    ap.add_argument("--out", default="runs/recipe-smoke")
    args = ap.parse_args()
    teacher = Path(args.teacher or f"{args.corpus}/teacher/lit-effnet-s2.safetensors")
    if not teacher.is_file():
        teacher.parent.mkdir(parents=True, exist_ok=True)
        vidmask("teacher", "train", "--corpus", args.corpus, "--out", str(teacher), "--trunk-scale", "2")
    rows = []
    for recipe in args.recipes:
        run = Path(args.out) / recipe
        if not (run / "run.json").is_file() or not (run / "metrics.csv").is_file():
            vidmask("pretrain", "--config", f"configs/recipes/{recipe}.yaml", f"data.corpus={args.corpus}",
                    f"train.steps={args.steps}", f"train.batch_size={args.batch}",
                    f"train.warmup_steps={max(1, args.steps // 10)}", "train.log_every=2", "data.test_anno=",
                    f"teacher.path={teacher}", f"teacher.cache={teacher.parent / 'cache'}", f"run_dir={run}")
        for term, values in loss_columns(run / "metrics.csv").items():
            rows.append([recipe, term, len(values)] + verdict(values))
    body = (f"Corpus `{args.corpus}`, {args.steps} steps of {args.batch} clips per recipe (warm-up "
            f"{max(1, args.steps // 10)} steps), the recipe files as they are, lit-effnet teacher `{teacher}`; "
            "each term's mean over the first and the last quarter of its logged rows (every 2 steps).\n\n"
            + table(["recipe", "loss term", "rows", "first quarter", "last quarter", "finite", "falling"], rows))
    write("recipe_smoke.md", "Paper recipes: a short run each", body)


if __name__ == "__main__":
    main()
