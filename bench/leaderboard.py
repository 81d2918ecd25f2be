"""Every recipe pretrained on the motion-shapes corpus at one budget, then zero-shot retrieval.

    python bench/leaderboard.py [--recipes full random tube umt stm clusterstm] [--seeds 0 1 2]
                                [--steps 300] [--minutes 0] [--losses core|paper] [--corpus corpus]

* trains the lit-effnet teacher once (`vidmask teacher train`) when a run that needs it starts;
  teacher recipes read its per-frame features from the teacher cache (built once);
* ``--losses core`` (default) trains each recipe's masking with ``vtc`` and the
  recipe's own teacher terms (``align``, ``relevance``, ``stm``) and switches
  ``vtm`` and ``mlm`` off in every recipe: zero-shot retrieval uses the dual
  encoder only, and the fusion layers those two terms train cost more than the
  rest of a masked step on 2 CPU cores (bench/loss_terms.py: 0.39 s for a
  ``vtc`` step, +0.56 s for both). ``--losses paper`` runs the recipe files as
  they are;
* pretrains each recipe with each seed for the same number of steps (table 1;
  a run cut short, by a kill or the end of a session, continues from its last
  checkpoint with `vidmask pretrain --resume`),
  and, with --minutes M, again with each recipe's step count set so that it
  trains for about M minutes at its own measured speed (table 2, same wall-clock);
* evaluates every caption of every test video as a query (test_retrieval_all.json:
  about 1,600 queries at the default corpus size), so binomial noise is small;
* reports mean and 95 % interval (t distribution over seeds) of t2v R@1, R@5,
  Rsum, the motion and colour twin accuracies, the linear motion and shape
  probes of the frozen video features (``vidmask probe``, chance 9.1 % and
  12.5 %), step time and encoder tokens per step (both of stm's passes),
  and each recipe's R@1 difference from ``--paired-with`` (default: the
  first recipe) paired by seed: runs with one seed see the same batches
  in the same order with the same sampled frames, and draw their initial
  weights from the same seed, so seed-to-seed luck partly cancels in the
  difference and its interval can be narrower than the two means' suggest; writes
  bench/results/leaderboard.md and leaderboard.png;
* ``--set KEY=VALUE ...`` applies overrides to every recipe (the strategies on
  top of a positive control), ``--curve-every N`` evaluates on the test split
  every N steps and charts R@1 against the step (has it stopped rising?);
* keeps each finished run's figures in bench/results/NAME-runs.json (``bench/_ledger.py``)
  with the setup they were run under: run folders stay on the machine that made them,
  the figures travel with the repository, so a fresh clone (another session, another
  machine) skips what is finished and trains only what is missing; a run recorded under
  another setup (steps, --set, --losses, corpus, the recipe file's settings) is trained
  again, never mixed in.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
from pathlib import Path

from _common import RESULTS, run_vidmask, table, write, write_readme
from _ledger import Ledger, config_digest, corpus_digest, file_digest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from vidmask.config import load_config  # noqa: E402
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def vidmask(*args: str) -> None:
    run_vidmask(*args)


def ci_half(xs: list[float]) -> float:
    """Half-width of the 95 % interval of the mean (t distribution over seeds); 0 for one value."""
    if len(xs) < 2:
        return 0.0
    return T95.get(len(xs) - 1, 1.96) * statistics.stdev(xs) / math.sqrt(len(xs))


def mean_ci(xs: list[float]) -> str:
    """'mean ± half-width of the 95 % interval' (t distribution over seeds); '-' when a value is missing (NaN,
    e.g. twin accuracy on a corpus without twins: statistics.stdev cannot take NaN)."""
    if any(math.isnan(x) for x in xs):
        return "-"
    m = statistics.fmean(xs)
    return f"{m:.2f}" if len(xs) < 2 else f"{m:.2f} ± {ci_half(xs):.2f}"


def step_stats(run: Path) -> tuple[float, float]:
    """(median seconds per step, encoder tokens per step) from a run's metrics.csv."""
    with (run / "metrics.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r.get("clips_per_s")]
    cfg = json.loads((run / "run.json").read_text())["config"]
    bs = cfg["train"]["batch_size"]
    sec = statistics.median(bs / float(r["clips_per_s"]) for r in rows[1:] or rows)
    # encoder_tokens counts both of stm's passes; runs logged before it existed have kept_tokens only
    return sec, float(rows[-1].get("encoder_tokens") or rows[-1]["kept_tokens"]) * bs


CORE = ["loss.vtm=0", "loss.mlm=0"]


def last_checkpoint_step(out: Path) -> int:
    """The step of a run folder's latest checkpoint (``checkpoints/step_NNNNNN``), 0 when it has none."""
    steps = [int(p.name.split("_")[1]) for p in (out / "checkpoints").glob("step_*") if p.name.split("_")[1].isdigit()]
    return max(steps, default=0)


SETUP_FILE = "bench_setup.json"  # in a run folder: the leaderboard setup it was started under


def made_under_other_setup(out: Path, setup: dict, ledger: Ledger | None) -> bool:
    """True when the run folder ``out`` exists and was started under another setup than ``setup``: its
    ``bench_setup.json`` says so, or, in a folder older than that file, the ledger's record of it does."""
    if not (out / "config.yaml").is_file():
        return False
    stamp = out / SETUP_FILE
    if stamp.is_file():
        return json.loads(stamp.read_text()) != setup
    return ledger is not None and ledger.other_setup(out.name, setup)


def run_recipe(recipe: str, seed: int, steps: int, corpus: str, out: Path, teacher: str, extra: list[str],
               curve_every: int = 0, ledger: Ledger | None = None, setup: dict | None = None) -> dict:
    """Train (or resume), evaluate and probe one run; its figures (:func:`read_run`).

    With a ``ledger``: a run it holds under ``setup`` is not trained again when its folder is absent (made
    on another machine); a run finished here is recorded in it. A run folder made under another setup (its
    ``bench_setup.json``, or for a folder older than that file the ledger's record) is refused, not resumed
    or read: its figures would be recorded under a setup they were not made with."""
    if setup is not None and made_under_other_setup(out, setup, ledger):
        raise SystemExit(f"{out}: this run folder was made under another setup than the one asked for now "
                         f"(steps, --set, --losses, the corpus or the recipe file's settings changed); move "
                         f"it aside, or give the new setup its own --out and --name")
    if ledger is not None and not (out / "eval_all.json").is_file():
        figures = ledger.get(out.name, setup)
        if figures is not None:
            print(f"{out.name}: finished earlier, figures from {ledger.path.name}", flush=True)
            return figures
    uses_teacher = bool(load_config(ROOT / f"configs/recipes/{recipe}.yaml", extra).teacher.name)
    if uses_teacher and not Path(teacher).is_file():  # trained once, when the first run that needs it starts
        Path(teacher).parent.mkdir(parents=True, exist_ok=True)
        vidmask("teacher", "train", "--corpus", corpus, "--out", teacher, "--trunk-scale", "2")
    done = last_checkpoint_step(out) if (out / "config.yaml").is_file() else 0
    if not (out / "eval_all.json").is_file() and 0 < done < steps:
        # an interrupted run (a session's end, a kill): continue it exactly from its last checkpoint
        vidmask("pretrain", "--resume", str(out))
    elif not (out / "eval_all.json").is_file() and done == 0:
        # curve_every: retrieval on the test split every so many steps, logged to metrics.csv (the R@1 curve)
        curve = ([f"train.eval_every={curve_every}", "data.test_anno=test_retrieval.json"] if curve_every
                 else ["data.test_anno="])
        if setup is not None:  # what the folder is made under, checked when it is resumed or read again
            out.mkdir(parents=True, exist_ok=True)
            (out / SETUP_FILE).write_text(json.dumps(setup, indent=1, sort_keys=True) + "\n")
        vidmask("pretrain", "--config", str(ROOT / f"configs/recipes/{recipe}.yaml"), f"data.corpus={corpus}",
                f"train.seed={seed}", f"train.steps={steps}", f"train.warmup_steps={max(1, steps // 10)}",
                f"run_dir={out}", *curve, *extra,
                *([f"teacher.path={teacher}", f"teacher.cache={Path(teacher).parent / 'cache'}"] if uses_teacher
                  else []))
    if not (out / "eval_all.json").is_file():
        vidmask("eval", "retrieval", "--run", str(out), "--anno", str(Path(corpus) / "test_retrieval_all.json"),
                "--rerank-k", "0", "--json", str(out / "eval_all.json"))
    if not (out / "probe.json").is_file():  # linear probes of the frozen video features (vidmask probe)
        vidmask("probe", "--run", str(out), "--corpus", corpus, "--max-train", "600")
    figures = read_run(out, seed)
    if ledger is not None:
        ledger.put(out.name, setup, figures, recipe=recipe,
                   teacher=file_digest(teacher) if uses_teacher and Path(teacher).is_file() else None)
    return figures


def read_run(out: Path, seed: int) -> dict:
    """A finished leaderboard run's figures (its eval_all.json, probe.json and metrics.csv)."""
    res = json.loads((out / "eval_all.json").read_text())
    probe = json.loads((out / "probe.json").read_text())["joint"]
    sec, tokens = step_stats(out)
    return {"seed": seed, "R@1": res["t2v"]["R@1"], "R@5": res["t2v"]["R@5"], "Rsum": res["rsum"],
            "motion": res.get("twins", {}).get("motion", float("nan")),
            "colour": res.get("twins", {}).get("colour", float("nan")),
            "probe_motion": probe["motion"], "probe_shape": probe["shape"],
            "curve": r1_curve(out), "step_s": sec, "tokens": tokens, "queries": res["num_texts"]}


def r1_curve(run: Path) -> list[tuple[int, float]]:
    """(step, t2v R@1 on the test split) of the evaluations logged during training, in step order."""
    with (run / "metrics.csv").open() as f:
        return [(int(r["step"]), float(r["eval_t2v_R@1"])) for r in csv.DictReader(f) if r.get("eval_t2v_R@1")]


def paired_delta(runs: list[dict], base: list[dict]) -> str:
    """R@1 of ``runs`` minus R@1 of ``base`` seed by seed (seeds both have), as mean ± 95 % CI."""
    base_by_seed = {r["seed"]: r["R@1"] for r in base}
    deltas = [r["R@1"] - base_by_seed[r["seed"]] for r in runs if r["seed"] in base_by_seed]
    return f"{'+' if statistics.fmean(deltas) >= 0 else ''}{mean_ci(deltas)}" if deltas else "n/a"


def summarise(results: dict[str, list[dict]], base: str, step_s: dict[str, float] | None = None) -> list[list]:
    """Table rows; ``base`` is the recipe (row) the paired R@1 differences are taken from;
    ``step_s`` replaces the measured step time per recipe (the same-wall-clock table shows
    the table-1 speed its step counts were set from)."""
    rows = []
    for recipe, runs in results.items():
        sec = step_s[recipe] if step_s else statistics.fmean(r["step_s"] for r in runs)
        delta = "(reference)" if recipe == base else paired_delta(runs, results.get(base, []))
        keys = ("R@1", "R@5", "Rsum", "motion", "colour", "probe_motion", "probe_shape")
        rows.append([recipe, len(runs)] + [mean_ci([r[k] for r in runs]) for k in keys]
                    + [delta, f"{sec:.2f}", f"{runs[0]['tokens']:.0f}"])
    return rows


def per_seed(results: dict[str, list[dict]], base: str, seeds: list[int]) -> list[list]:
    """Table rows with each seed's own figures side by side ("s0 / s1 / s2", "-" where a seed has not run):
    with two or three seeds a mean ± t interval says little, the figures themselves say more. The Δ column
    is each seed's R@1 minus ``base``'s at the same seed."""
    base_r1 = {r["seed"]: r["R@1"] for r in results.get(base, [])}

    def cell(value: float | None, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    rows = []
    for recipe, runs in results.items():
        by_seed = {r["seed"]: r for r in runs}

        def col(k: str, fmt: str) -> str:
            return " / ".join(cell(by_seed[s][k] if s in by_seed else None, fmt) for s in seeds)

        delta = "(reference)" if recipe == base else " / ".join(
            cell(by_seed[s]["R@1"] - base_r1[s] if s in by_seed and s in base_r1 else None, "+.2f") for s in seeds)
        # the first seed's curve; a run recorded before the ledger kept curves has none, then the next seed's
        shown = next((s for s in seeds if s in by_seed and by_seed[s].get("curve")), None)
        curve = "-"
        if shown is not None:
            label = "" if shown == seeds[0] else f"s{shown}: "
            curve = label + ", ".join(f"{r1:g}" for _, r1 in by_seed[shown]["curve"])
        rows.append([recipe, col("R@1", ".2f"), delta, col("motion", ".1f"), col("probe_motion", ".1f"),
                     col("colour", ".1f"), curve, f"{statistics.fmean(r['step_s'] for r in runs):.2f}"])
    return rows


def per_seed_head(base: str, seeds: list[int], runs: dict[str, list[dict]]) -> list[str]:
    """The columns of :func:`per_seed`'s rows (the curve's steps from the first run that has one)."""
    curve = next((r["curve"] for rs in runs.values() for r in rs if r.get("curve")), [])
    steps = f"{curve[0][0]}-{curve[-1][0]}" if curve else "-"
    return ["recipe", f"t2v R@1 ({' / '.join(f's{s}' for s in seeds)})", f"Δ R@1 vs {base}, same seed",
            "motion twins %", "motion probe %", "colour twins %", f"R@1 curve of s{seeds[0]} at steps {steps}",
            "s / step"]


def chart(results: dict[str, list[dict]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    means = [statistics.fmean(r["R@1"] for r in results[n]) for n in names]
    errs = [ci_half([r["R@1"] for r in results[n]]) for n in names]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(names, means, yerr=errs, capsize=4, color="#4c72b0")
    ax.set_ylabel("t2v R@1 (%), mean ± 95 % CI")
    ax.set_title(f"Zero-shot retrieval on the motion-shapes corpus, {title}", fontsize=10)
    ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def curve_chart(results: dict[str, list[dict]], path: Path, title: str) -> bool:
    """Mean t2v R@1 over seeds against training step, one line per recipe; False when no run logged a curve."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    drawn = False
    for name, runs in results.items():
        curves = [dict(r["curve"]) for r in runs if r["curve"]]
        steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
        if steps:
            ax.plot(steps, [statistics.fmean(c[s] for c in curves) for s in steps], marker="o", label=name)
            drawn = True
    if drawn:
        ax.set_xlabel("training step")
        ax.set_ylabel("t2v R@1 (%), test split, mean over seeds")
        ax.set_title(f"Retrieval during training, {title}", fontsize=10)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", nargs="+", default=["full", "random", "tube", "umt", "stm", "clusterstm"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--minutes", type=float, default=0.0, help="also compare at this wall-clock budget per run")
    ap.add_argument("--losses", choices=["core", "paper"], default="core",
                    help="core: vtm and mlm off in every recipe; paper: the recipe files as they are")
    ap.add_argument("--corpus", default="corpus")
    ap.add_argument("--teacher", default=None, help="lit-effnet heads (trained at --trunk-scale 2 if missing, as the recipes use)")
    ap.add_argument("--out", default="runs/leaderboard")
    ap.add_argument("--name", default="leaderboard", help="results file stem under bench/results/")
    ap.add_argument("--paired-with", default=None,
                    help="recipe the paired-by-seed R@1 differences are taken from (default: the first of --recipes)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="overrides for every recipe, e.g. a positive control under all strategies "
                         "(model.pos_embed=sincos model.tubelet=2)")
    ap.add_argument("--curve-every", type=int, default=0,
                    help="also evaluate on the test split every N steps and chart R@1 against the step")
    ap.add_argument("--report-only", action="store_true",
                    help="tabulate the runs already finished under --out (the seeds column counts them); train nothing")
    ap.add_argument("--readme", nargs="?", const=str(ROOT / "README.md"), default=None,
                    help="also write the seed-by-seed table into this README (default README.md), between its "
                         "'<!-- NAME -->' and '<!-- /NAME -->' lines (NAME: --name)")
    args = ap.parse_args()
    out = Path(args.out)
    extra = (CORE if args.losses == "core" else []) + list(args.set)
    teacher = args.teacher or f"{args.corpus}/teacher/lit-effnet-s2.safetensors"
    base = args.paired_with or args.recipes[0]
    if base not in args.recipes:
        ap.error(f"--paired-with {base}: not one of --recipes")
    head = ["recipe", "seeds", "t2v R@1", "t2v R@5", "Rsum", "motion twins %", "colour twins %",
            "motion probe %", "shape probe %",
            f"Δ R@1 vs {base}, paired by seed", "s / step", "encoder tokens / step"]
    losses = ("vtc plus each recipe's teacher terms (align, relevance, stm); vtm and mlm off in every recipe"
              if args.losses == "core" else "the recipe files as they are")
    if args.set:
        losses += f"; every recipe with {' '.join(args.set)}"
    same_steps: dict[str, list[dict]] = {r: [] for r in args.recipes}
    speed: dict[str, float] = {}  # wall-clock row -> its recipe's mean s / step in table 1 (sets its steps)

    def report(done_seeds: list[int], same_time: dict | None = None, same_time_base: str = "") -> None:
        done = {r: runs for r, runs in same_steps.items() if runs}  # --report-only may leave a recipe empty
        if not done:
            print(f"no finished run under {out} or in {ledger.path}: nothing to report", flush=True)
            return
        queries = next(iter(done.values()))[0]["queries"]
        by_seed = table(per_seed_head(base, done_seeds, done), per_seed(done, base, done_seeds))
        body = (f"Motion-shapes corpus `{args.corpus}`, {queries} text queries (every caption of every test "
                f"video), seeds {done_seeds}; mean ± 95 % interval over seeds (t distribution). Losses: "
                f"{losses}. `s / step` is the median step time of a run (batch 32), on the machine and with the "
                f"threads it ran with (the line above gives this report's).\n\n"
                f"## Same training steps ({args.steps})\n\n" + table(head, summarise(done, base))
                + f"\n\n### Seed by seed ({' / '.join(f's{s}' for s in done_seeds)})\n\n" + by_seed)
        if args.readme:
            write_readme(Path(args.readme), args.name, by_seed)
        same_time = {k: v for k, v in (same_time or {}).items() if v}
        if same_time:
            seeds_done = max(len(v) for v in same_time.values())
            body += (f"\n\n## Same wall-clock ({args.minutes:g} minutes of training per run, {seeds_done} "
                     f"seed(s) so far)\n\nEach recipe's step count is the budget divided by its mean step "
                     f"time in the table above, which `s / step` repeats (these runs' own timings vary with "
                     f"machine load; their step counts do not).\n\n"
                     + table(head, summarise(same_time, same_time_base, speed))
                     + f"\n\n![t2v R@1 at the same wall-clock]({args.name}-wallclock.png)")
            chart(same_time, RESULTS / f"{args.name}-wallclock.png", f"{args.minutes:g} min per run")
        chart(done, RESULTS / f"{args.name}.png", f"{args.steps} steps per run")
        body += f"\n\n![t2v R@1 by recipe]({args.name}.png)\n"
        if curve_chart(done, RESULTS / f"{args.name}-curve.png", f"{args.steps} steps per run"):
            body += f"\n![t2v R@1 during training]({args.name}-curve.png)\n"
        write(f"{args.name}.md", "Recipe leaderboard", body)

    ledger = Ledger(RESULTS / f"{args.name}-runs.json")
    # what a run's figures depend on besides its recipe and seed; a ledger record made otherwise is not used
    setup = {"steps": args.steps, "losses": args.losses, "set": list(args.set), "curve_every": args.curve_every,
             "corpus": corpus_digest(args.corpus)}

    def setup_for(recipe: str, steps: int, curve_every: int = args.curve_every) -> dict:
        return {**setup, "steps": steps, "curve_every": curve_every,
                "recipe": config_digest(ROOT / f"configs/recipes/{recipe}.yaml")}

    def finished(run: Path, run_setup: dict) -> bool:
        if ledger.other_setup(run.name, run_setup):
            print(f"{run.name}: {ledger.path.name} holds it under another setup; not used", flush=True)
        if args.report_only and made_under_other_setup(run, run_setup, ledger):
            print(f"{run}: made under another setup; left out of the report", flush=True)
            return False
        return (not args.report_only or (run / "eval_all.json").is_file()
                or ledger.get(run.name, run_setup) is not None)

    # seeds outside, recipes inside: every finished seed gives a complete (if wider) table
    for i, seed in enumerate(args.seeds):
        for r in args.recipes:
            run_setup = setup_for(r, args.steps)
            if finished(out / f"{r}-s{seed}", run_setup):
                same_steps[r].append(run_recipe(r, seed, args.steps, args.corpus, out / f"{r}-s{seed}", teacher,
                                                extra, args.curve_every, ledger, run_setup))
        if not args.report_only or i == len(args.seeds) - 1:
            report(args.seeds[: i + 1])
    if args.minutes:
        # each recipe's step count from its measured speed in table 1; seeds outside again
        rows = {}  # recipe -> (row label, steps)
        for r, runs in same_steps.items():
            sec = statistics.fmean(x["step_s"] for x in runs)
            n = max(10, int(args.minutes * 60 / sec))
            rows[r] = (f"{r} ({n} steps)", n)
            speed[rows[r][0]] = sec
        same_time: dict[str, list[dict]] = {label: [] for label, _ in rows.values()}
        for seed in args.seeds:
            for r, (label, n) in rows.items():
                run_setup = setup_for(r, n, 0)
                if finished(out / f"{r}-t{args.minutes:g}-s{seed}", run_setup):
                    same_time[label].append(
                        run_recipe(r, seed, n, args.corpus, out / f"{r}-t{args.minutes:g}-s{seed}", teacher, extra,
                                   0, ledger, run_setup))
            report(args.seeds, same_time, rows[base][0])


if __name__ == "__main__":
    main()
