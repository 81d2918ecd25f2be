"""The papers' claims against what vidmask measures: one row per claim, a verdict from paired seeds.

    python bench/claims.py [--lb runs/lb-motion] [--ledger bench/results/leaderboard-motion-runs.json]
                           [--mascot runs/mascot-motion] [--mascot-ledger bench/results/mascot-motion-runs.json]
                           [--name claims]

Reads finished runs only (it trains nothing), so the table fills as the runs of
bench/leaderboard.py (``--lb``: recipes on top of the positive control, 1,000 steps,
seeds 0-2; ``--ledger``: the figures of those finished on other machines) and bench/mascot.py (``--mascot``: MASCOT's Table 1 masks in its H-completer)
finish, over several sessions. Each claim is a paired comparison: the difference of a
metric between two recipes seed by seed (runs with one seed see the same batches), its
mean and 95 % interval over seeds (t distribution), and a verdict by :func:`verdict`:

* ``holds``: the difference lies on the claimed side and its interval excludes 0;
* ``contradicted``: it lies on the other side and its interval excludes 0;
* ``not resolved``: the interval includes 0 (the seeds cannot tell);
* ``one seed``: fewer than two paired seeds, no interval;
* ``two seeds``: two paired seeds, no verdict yet (the issue asks for three: two give a t interval
  of 12.7 standard deviations, and none at all when both differences are equal, as accuracies counted
  on 109 clips can be);
* ``not run``: a run it needs is missing.

A claim of a tie ("matches or exceeds") holds unless the difference is below 0 with its
interval excluding 0. A claim about several comparisons holds when all of them hold and is
contradicted when any is. What each paper reports is quoted from its text
(``../shared/papers``): the ClusterSTM summary gives its ablations in words, MASCOT's
Table 1 in numbers. Writes bench/results/claims.md and, with ``--readme``, the same table into the
README between its ``<!-- claims -->`` and ``<!-- /claims -->`` lines (``_common.write_readme``), so the
README's table is always the one the runs give.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import Counter
from pathlib import Path

from _common import RESULTS, table, write, write_readme
from _ledger import Ledger, config_digest
from leaderboard import ci_half, read_run
from mascot import MASCOT, masking, run_key

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

HOLDS, CONTRADICTED, UNRESOLVED, NOT_RUN = "holds", "contradicted", "not resolved", "not run"
ONE_SEED, TWO_SEEDS = "one seed", "two seeds"


def verdict(deltas: list[float], tie_ok: bool = False) -> str:
    """The verdict on ``deltas`` (claimed-better minus the other, one per seed; > 0 = the claim's side).
    ``tie_ok``: a claim of "matches or exceeds", which only a clear loss contradicts."""
    if not deltas:
        return NOT_RUN
    if len(deltas) < 2:
        return ONE_SEED
    if len(deltas) < 3:
        return TWO_SEEDS
    mean, half = statistics.fmean(deltas), ci_half(deltas)
    if mean - half > 0:
        return HOLDS
    if mean + half < 0:
        return CONTRADICTED
    return HOLDS if tie_ok else UNRESOLVED


def combine(verdicts: list[str]) -> str:
    """One verdict for a claim made of several comparisons."""
    for v in (NOT_RUN, CONTRADICTED, ONE_SEED, TWO_SEEDS, UNRESOLVED):
        if v in verdicts:
            return v
    return HOLDS


def paired(a: dict[int, dict], b: dict[int, dict], key: str) -> list[float]:
    """a[key] - b[key] for each seed both have."""
    return [a[s][key] - b[s][key] for s in sorted(a) if s in b]


def fmt(deltas: list[float]) -> str:
    if not deltas:
        return "-"
    m = statistics.fmean(deltas)
    sign = "+" if m >= 0 else ""
    seeds = f"{len(deltas)} seed" + ("s" if len(deltas) > 1 else "")
    return f"{sign}{m:.2f}" + (f" ± {ci_half(deltas):.2f}" if len(deltas) > 1 else "") + f" ({seeds})"


def lb_runs(folder: Path, recipe: str, recorded: dict[str, dict] | None = None) -> dict[int, dict]:
    """{seed: figures} of a recipe's finished leaderboard runs: the run folders ({recipe}-s{seed}/eval_all.json
    and probe.json) and, for seeds with no folder here, the ``recorded`` figures (:func:`ledger_figures`)."""
    out = recorded_seeds(recorded, recipe)
    for run in sorted(folder.glob(f"{recipe}-s*")):
        seed = run.name[len(recipe) + 2:]
        if seed.isdigit() and (run / "eval_all.json").is_file() and (run / "probe.json").is_file():
            out[int(seed)] = read_run(run, int(seed))
    return out


def recorded_seeds(recorded: dict[str, dict] | None, key: str) -> dict[int, dict]:
    """{seed: figures} of the ``recorded`` runs named ``key``-s{seed}."""
    out = {}
    for name, figures in (recorded or {}).items():
        seed = name[len(key) + 2:]
        if name.startswith(f"{key}-s") and seed.isdigit():
            out[int(seed)] = figures
    return out


def ledger_figures(path: Path) -> dict[str, dict]:
    """{run name: figures} of a leaderboard's ledger (bench/_ledger.py): the records made under its most
    common setup (a claim compares runs of one setup; each recipe's own file digest aside), and only those
    whose recipe file still has the settings they ran with; the others are named and left out."""
    if not path.is_file():
        return {}
    records = Ledger(path).records

    def shared(rec: dict) -> str:  # the setup every recipe of one leaderboard shares
        return json.dumps({k: v for k, v in rec["setup"].items() if k != "recipe"}, sort_keys=True)

    def current(rec: dict) -> bool:  # its recipe file unchanged since it ran (mascot's records name none)
        recipe = ROOT / "configs" / "recipes" / f"{rec.get('recipe')}.yaml"
        return "recipe" not in rec["setup"] or not recipe.is_file() or rec["setup"]["recipe"] == config_digest(recipe)

    setups = Counter(shared(r) for r in records.values())
    if not setups:
        return {}
    main_setup = setups.most_common(1)[0][0]
    kept = {n: r for n, r in records.items() if shared(r) == main_setup and current(r)}
    left_out = sorted(set(records) - set(kept))
    if left_out:
        print(f"{path.name}: left out, made under another setup or recipe: {', '.join(left_out)}", flush=True)
    return {n: r["figures"] for n, r in kept.items()}


def mascot_runs(folder: Path, key: str, recorded: dict[str, dict] | None = None) -> dict[int, dict]:
    """{seed: {"R@1": ...}} of bench/mascot.py's finished runs named ``key``-s{seed}: the run folders and,
    for seeds with no folder here, the ``recorded`` figures (its ledger, :func:`ledger_figures`)."""
    out = recorded_seeds(recorded, key)
    for run in sorted(folder.glob(f"{key}-s*")):
        seed = run.name[len(key) + 2:]
        if seed.isdigit() and (run / "eval_retrieval.json").is_file():
            res = json.loads((run / "eval_retrieval.json").read_text())
            out[int(seed)] = {"R@1": res["t2v"]["R@1"], "Rsum": res["rsum"]}
    return out


def comparison(runs, better: str, worse: str, key: str, tie_ok: bool = False,
               names: tuple[str, str] | None = None) -> tuple[str, str]:
    """(measured text, verdict) of ``better`` against ``worse`` on ``key``; ``names`` labels the two runs."""
    a, b = runs(better), runs(worse)
    d = paired(a, b, key)
    shown = names or (better, worse)
    if not a or not b:
        missing = [n for n, r in zip(shown, (a, b)) if not r]
        return f"not run yet: {', '.join(missing)}", NOT_RUN
    return f"{shown[0]} − {shown[1]}, {key}: {fmt(d)}", verdict(d, tie_ok)


def claims(lb: Path, mascot: Path, ledger: Path | None = None, mascot_ledger: Path | None = None
           ) -> list[list[str]]:
    cache: dict[str, dict] = {}
    recorded = ledger_figures(ledger) if ledger else {}
    mrecorded = ledger_figures(mascot_ledger) if mascot_ledger else {}

    def runs(recipe: str) -> dict[int, dict]:
        if recipe not in cache:
            cache[recipe] = lb_runs(lb, recipe, recorded)
        return cache[recipe]

    def mruns(key: str) -> dict[int, dict]:
        if "m:" + key not in cache:
            cache["m:" + key] = mascot_runs(mascot, key, mrecorded)
        return cache["m:" + key]

    rows = []

    def row(paper: str, claim: str, reported: str, parts: list[tuple[str, str]]) -> None:
        rows.append([paper, claim, reported, "; ".join(p for p, _ in parts), combine([v for _, v in parts])])

    ablations = {name: comparison(runs, "clusterstm", f"clusterstm-{name}", "R@1")
                 for name in ("no-cluster", "no-density", "no-relevance")}
    row("ClusterSTM", "intra-frame clustering matters most", "w/o clustering (random masking): \"significant drop\", "
        "the largest of the three ablations", [ablations["no-cluster"]] + largest_drop(runs, "no-cluster",
                                                                                      ["no-density", "no-relevance"]))
    density_reported = "\"consistently ... by approximately 1-2 %\""
    row("ClusterSTM", "temporal-density selection beats random selection within clusters", density_reported,
        [ablations["no-density"]])
    row("ClusterSTM", "the same, with the summary's temporal density (change against the same position in the "
        "adjacent frames; the row above reads Algorithm II)", density_reported,
        [comparison(runs, "clusterstm-adjacent", "clusterstm-no-density", "R@1")])
    row("ClusterSTM", "the relevance reconstruction helps", "w/o it: \"drop\"", [ablations["no-relevance"]])
    row("ClusterSTM", "85 % masking is best of 75 / 85 / 90 %", "\"85 % is optimal\"",
        [comparison(runs, "clusterstm", "clusterstm-ratio0.75", "R@1"),
         comparison(runs, "clusterstm", "clusterstm-ratio0.9", "R@1")])
    row("ClusterSTM", "15 % of the tokens match or beat all of them", "\"matches or exceeds full-token training on "
        "retrieval\"", [comparison(runs, "clusterstm", "full", "R@1", tie_ok=True)])
    row("STM", "masking across adjacent frames makes the model learn temporal dynamics (less temporal leakage)",
        "\"enforces the model to learn spatio-temporal feature representation comprehensively\"; better "
        "retrieval, QA and captioning than its baselines (the README gives no temporal test)",
        [comparison(runs, "stm", "umt", "motion"), comparison(runs, "stm", "umt", "probe_motion"),
         comparison(runs, "stm", "random", "motion")])
    key = {name: run_key(MASCOT, masking(mask, 0.7))  # bench/mascot.py's folder names of its Table 1 rows
           for name, mask in (("random", "random"), ("tube", "tube"), ("low", "mascot-low"), ("high", "mascot-high"))}
    row("MASCOT", "high-informed > low-informed > tube > random masks (70 %, H-completer)",
        "Table 1, MSR-VTT t2v R@1 at 70 %: high 48.0, low 47.3, tube 47.1, random 46.2",
        [comparison(mruns, key[a], key[b], "R@1", names=(a, b))
         for a, b in (("high", "low"), ("low", "tube"), ("tube", "random"))])
    return rows


def largest_drop(runs, name: str, others: list[str]) -> list[tuple[str, str]]:
    """Whether removing ``name`` costs more R@1 than removing each of ``others`` (paired by seed)."""
    return [comparison(runs, f"clusterstm-{o}", f"clusterstm-{name}", "R@1") for o in others]


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lb", default="runs/lb-motion", help="bench/leaderboard.py's --out with the recipes' runs")
    ap.add_argument("--ledger", default=str(RESULTS / "leaderboard-motion-runs.json"),
                    help="the leaderboard's record of finished runs (bench/_ledger.py), for runs whose folder is "
                         "not on this machine; '' for none")
    # MASCOT's claim on top of the motion leaderboard's control (bench/mascot.py --name mascot-motion)
    ap.add_argument("--mascot", default="runs/mascot-motion", help="bench/mascot.py's --out")
    ap.add_argument("--mascot-ledger", default=str(RESULTS / "mascot-motion-runs.json"),
                    help="bench/mascot.py's record of finished runs; '' for none")
    ap.add_argument("--name", default="claims")
    ap.add_argument("--readme", nargs="?", const=str(ROOT / "README.md"), default=None,
                    help="also write the table into this README (default README.md), between its "
                         "'<!-- claims -->' and '<!-- /claims -->' lines")
    args = ap.parse_args(argv)
    ledger = Path(args.ledger) if args.ledger else None
    rows = claims(Path(args.lb), Path(args.mascot), ledger, Path(args.mascot_ledger) if args.mascot_ledger else None)
    claims_table = table(["paper", "claim", "what the paper reports", "what vidmask measures", "verdict"], rows)
    shown = f"`{ledger.relative_to(ROOT) if ledger.is_relative_to(ROOT) else ledger}`" if ledger else "none"
    body = (f"Leaderboard runs from `{args.lb}` and, for runs made on another machine, from {shown}; MASCOT fine-tuning runs from `{args.mascot}` (from whichever "
            "pretrained run bench/mascot.py was given as --init). Each comparison is "
            "paired by seed (mean ± 95 % interval, t distribution); `R@1` is t2v R@1 on every caption of every "
            "test video, `motion` the motion-twin accuracy, `probe_motion` the linear motion probe of the frozen "
            "video features. Verdicts: holds / contradicted when the interval excludes 0 on the claimed / the "
            "other side, not resolved when it includes 0 (a claim of a tie holds then); one seed / two seeds: "
            "no verdict before three; not run.\n\n" + claims_table)
    if args.readme:
        write_readme(Path(args.readme), "claims", claims_table)
    return write(f"{args.name}.md", "The papers' claims, tested", body)


if __name__ == "__main__":
    main()
