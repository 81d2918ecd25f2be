"""MASCOT's Tables 1 and 2 on the motion-shapes corpus, against plain vtc fine-tuning at the same steps.

    python bench/mascot.py --init runs/demo [--seeds 0 1] [--rows all|table1|table2|NAME ...] [--name mascot]

Every row is one `vidmask finetune retrieval` from ``--init`` with the same
steps, batch, learning rate and seeds; rows differ only by the overrides
below (the paper's masking types x ratios in the H-completer, then the
component rows of its Table 2). ``vtc`` is the dual encoder fine-tuned with
vtc alone on every token (no masking, mean pooling): the reference each row's
Rsum and t2v R@1 differences are paired with, seed by seed (mean and 95 %
interval over seeds, t distribution). A run whose evaluation exists is not
run again, so the table fills over several sessions; each finished run's
figures are also kept in bench/results/NAME-runs.json (bench/_ledger.py)
with its setup (the init's weights by digest, corpus, steps, batch, lr, configs), so a
fresh clone with the same init trains only what is missing; writes
bench/results/NAME.md. The ledger is keyed by run name, so a table from another --init
takes a --name (and an --out) of its own: the motion leaderboard's is
``--init runs/lb-motion/motion-s1 --out runs/mascot-motion --name mascot-motion``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

from _common import RESULTS, table, train_or_resume, write
from _ledger import Ledger, config_digest, corpus_digest, file_digest
from leaderboard import mean_ci

ROOT = Path(__file__).resolve().parents[1]
MASCOT = str(ROOT / "configs/finetune/mascot.yaml")
H_ONLY = ["finetune.mascot.low.weight=0"]
L_ONLY = ["finetune.mascot.high.weight=0"]


def h(co: str, rec: str) -> list[str]:
    return H_ONLY + [f"finetune.mascot.high.co_encoder={co}", f"finetune.mascot.high.reconstructor={rec}"]


def l(co: str, rec: str, disc: bool) -> list[str]:
    return L_ONLY + [f"finetune.mascot.low.co_encoder={co}", f"finetune.mascot.low.reconstructor={rec}",
                     f"finetune.mascot.low.discriminator={str(disc).lower()}"]


def masking(mask: str, ratio: float) -> list[str]:
    return H_ONLY + [f"finetune.mascot.high.mask={mask}", f"finetune.mascot.high.ratio={ratio}"]


# (table, row label, config, overrides); the same overrides in two tables are one run
ROWS = [
    ("reference", "vtc (dual encoder, mean pooling, all tokens)", None, []),
    ("table1", "- (WTI, no masking)", MASCOT, H_ONLY + ["finetune.mascot.high.weight=0"]),
    *[("table1", f"{name} {int(r * 100)}%", MASCOT, masking(mask, r))
      for name, mask in (("random", "random"), ("tube", "tube"), ("low-informed", "mascot-low"),
                         ("high-informed", "mascot-high")) for r in (0.5, 0.7)],
    ("table2", "H: T + V", MASCOT, h("full", "none")),
    ("table2", "H: T + V + R", MASCOT, h("full", "full")),
    ("table2", "H: T + V + R_u", MASCOT, h("full", "unidirectional")),
    ("table2", "H: T + V_u + R", MASCOT, h("unidirectional", "full")),
    ("table2", "H: T + V_u + R_u (H)", MASCOT, h("unidirectional", "unidirectional")),
    ("table2", "L: T + V", MASCOT, l("full", "none", False)),
    ("table2", "L: T + V + R_u", MASCOT, l("full", "unidirectional", False)),
    ("table2", "L: T + V_u", MASCOT, l("unidirectional", "none", False)),
    ("table2", "L: T + V + D", MASCOT, l("full", "none", True)),
    ("table2", "L: T + V_u + D (L)", MASCOT, l("unidirectional", "none", True)),
    ("table2", "H + L (co-learning)", MASCOT, []),
]


H_DEFAULTS = {"finetune.mascot.high.mask": "mascot-high", "finetune.mascot.high.ratio": "0.7",
              "finetune.mascot.high.co_encoder": "unidirectional",
              "finetune.mascot.high.reconstructor": "unidirectional"}


def run_key(config: str | None, overrides: list[str]) -> str:
    """A folder name for a configuration: the overrides that differ from mascot.yaml's defaults, so
    rows of both tables with the same settings (high-informed 70 % and H) share their runs."""
    if config is None:
        return "vtc"
    explicit = dict(o.split("=", 1) for o in overrides)
    canon = sorted((k, v) for k, v in explicit.items() if H_DEFAULTS.get(k) != v)
    return "mascot" + "".join(f"_{k.split('.')[-2][0]}{k.split('.')[-1]}-{v}" for k, v in canon)


def finetune(config: str | None, overrides: list[str], seed: int, args, out: Path,
             ledger: Ledger | None = None, setup: dict | None = None) -> dict:
    """One row's run with one seed: fine-tune (or resume), or its figures from ``ledger`` when it finished
    under ``setup`` on another machine; a run finished here is recorded there."""
    if ledger is not None and not (out / "eval_retrieval.json").is_file():
        figures = ledger.get(out.name, setup)
        if figures is not None:
            return figures
    if not (out / "eval_retrieval.json").is_file():
        common = [f"data.corpus={args.corpus}", f"train.seed={seed}", f"train.steps={args.steps}",
                  f"train.batch_size={args.batch}", f"train.lr={args.lr}", f"train.warmup_steps={args.steps // 10}",
                  f"run_dir={out}", f"train.ckpt_every={args.steps}"]
        if config is None:  # the reference: vtc alone, every token, mean pooling
            cmd = ["--config", str(ROOT / "configs/finetune/retrieval.yaml"), "loss.vtm=0", "mask.ratio=0",
                   "finetune.rerank_k=0"]
        else:
            cmd = ["--config", config, *overrides]
        t0 = time.time()
        train_or_resume(["finetune", "retrieval"], out, "--init", args.init, *cmd, *common)
        (out / "bench_minutes.txt").write_text(f"{(time.time() - t0) / 60:.2f}\n")
    res = json.loads((out / "eval_retrieval.json").read_text())
    minutes = float((out / "bench_minutes.txt").read_text()) if (out / "bench_minutes.txt").is_file() else float("nan")
    figures = {"seed": seed, "R@1": res["t2v"]["R@1"], "Rsum": res["rsum"], "minutes": minutes,
               "motion": res.get("twins", {}).get("motion", float("nan"))}
    if ledger is not None:
        ledger.put(out.name, setup, figures)
    return figures


def init_digest(init: str) -> str:
    """Which pretrained weights ``--init`` names (its run folder is machine-local, its weights' digest is not)."""
    from vidmask.train.checkpoint import resolve_weights

    try:
        return file_digest(resolve_weights(init))
    except FileNotFoundError as e:
        raise SystemExit(f"--init {init}: {e}") from None


def recorded_init(ledger: Ledger, init: str) -> str:
    """The digest of ``init``'s weights: from the file when it is here, else the one the ledger's runs from
    that init were made with (a table of another machine's runs, --only-existing)."""
    if Path(init).exists():
        return init_digest(init)
    seen = Counter(r["setup"]["init_weights"] for r in ledger.records.values() if r["setup"]["init"] == init)
    if not seen:
        raise SystemExit(f"--init {init}: not on this machine and no run from it in {ledger.path}")
    return seen.most_common(1)[0][0]


def paired(runs: list[dict], ref: list[dict], key: str) -> str:
    by_seed = {r["seed"]: r[key] for r in ref}
    d = [r[key] - by_seed[r["seed"]] for r in runs if r["seed"] in by_seed]
    return (("+" if statistics.fmean(d) >= 0 else "") + mean_ci(d)) if d else "n/a"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--init", required=True, help="the pretrained run every row starts from (e.g. runs/demo)")
    ap.add_argument("--corpus", default="corpus")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--rows", nargs="+", default=["all"], help="all, table1, table2, or row labels")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--out", default="runs/mascot-bench")
    ap.add_argument("--name", default="mascot", help="bench/results/NAME.md and its ledger NAME-runs.json")
    ap.add_argument("--only-existing", action="store_true",
                    help="write the table from the runs already there (or in the ledger); train nothing")
    args = ap.parse_args()
    ledger = Ledger(RESULTS / f"{args.name}-runs.json")
    setup = {"init": args.init, "init_weights": recorded_init(ledger, args.init) if args.only_existing
             else init_digest(args.init), "corpus": corpus_digest(args.corpus),
             "steps": args.steps, "batch": args.batch, "lr": args.lr,
             "configs": config_digest(MASCOT, ROOT / "configs/finetune/retrieval.yaml")}
    chosen = [r for r in ROWS if r[0] == "reference" or "all" in args.rows or r[0] in args.rows or r[1] in args.rows]
    results: dict[str, list[dict]] = {}
    for _, label, config, over in chosen:
        for seed in args.seeds:
            out = Path(args.out) / f"{run_key(config, over)}-s{seed}"
            if args.only_existing and not ((out / "eval_retrieval.json").is_file() or ledger.get(out.name, setup)):
                continue
            results.setdefault(label, []).append(finetune(config, over, seed, args, out, ledger, setup))
            print(label, results[label][-1], flush=True)
    ref = results.get(ROWS[0][1], [])
    rows = []
    for tab, label, _, _ in chosen:
        runs = results.get(label, [])
        if not runs:
            continue
        rows.append([tab, label, len(runs), mean_ci([r["R@1"] for r in runs]), mean_ci([r["Rsum"] for r in runs]),
                     "(reference)" if label == ROWS[0][1] else paired(runs, ref, "R@1"),
                     "(reference)" if label == ROWS[0][1] else paired(runs, ref, "Rsum"),
                     mean_ci([r["motion"] for r in runs]), f"{statistics.fmean(r['minutes'] for r in runs):.1f}"])
    body = (f"Retrieval fine-tuning from `{args.init}` on the motion-shapes corpus ({args.corpus}), "
            f"{args.steps} steps of {args.batch} clips, lr {args.lr:g} (MASCOT's new modules 10x), seeds "
            f"{sorted({r['seed'] for rs in results.values() for r in rs})}; evaluated on the test split "
            "(WTI for the MASCOT rows). Mean ± 95 % interval over seeds (t distribution); Δ columns paired "
            "by seed with the vtc reference. Table 1 rows run the H-completer alone with the named mask; "
            "Table 2 rows name the paper's components (T temporal transformer, V / V_u co-encoder with full / "
            "unidirectional interaction, R / R_u reconstructor, D discriminator).\n\n"
            + table(["table", "row", "seeds", "t2v R@1", "Rsum", "Δ R@1 vs vtc", "Δ Rsum vs vtc",
                     "motion twins %", "minutes / run"], rows))
    print(write(f"{args.name}.md", "MASCOT: masking types and components (paper Tables 1 and 2)", body))


if __name__ == "__main__":
    main()
