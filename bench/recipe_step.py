"""Pretraining step time of the demo and of the motion recipe, part by part (issue 15: the positive
control at no more than the demo's step cost).

    python bench/recipe_step.py [--steps 8] [--corpus corpus] [--teacher corpus/teacher/lit-effnet-s2.safetensors]
                                [--tables demo teacher]

Each row is the motion recipe (configs/recipes/motion.yaml) with one part turned back to the demo's
setting, plus the demo itself. One batch of synthetic clips for every step, the corpus's real training captions (a new draw of 32
each step; the frozen towers' caption caches warmed on them first, the student's and the teacher's
where an objective reads it, as training warms them, so loss.swap's swapped captions miss as in
training and the training captions do not), the
whitened head fitted first on 2,000 captions; forward + backward + AdamW, median of --steps after two
warm-up steps. The loader is not timed (bench/loader.py).

A second table (when the --teacher heads exist) times the leaderboard's recipes that read the teacher
against ``random`` with the leaderboard's settings (LEADERBOARD_SET): the teacher's trunk features are
computed before each timed step and handed to the step as the teacher cache hands them to training (the
teacher's per-step half, ``from_frames``, is timed), so the rows compare the masking, the teacher's heads,
encoder, decoders and losses (issue 16: the clusterstm step at most 1.5x random's). Writes
bench/results/recipe_step.md (``--tables teacher`` alone: recipe_step_teacher.md); compare rows
within one run only.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch

from _common import table, write
from vidmask.config import load_config

ROWS = [
    ("demo (configs/tiny.yaml)", None, []),
    ("motion recipe", "configs/recipes/motion.yaml", []),
    ("- frame_diff", "configs/recipes/motion.yaml", ["model.frame_diff=false"]),
    ("- swap", "configs/recipes/motion.yaml", ["loss.swap=0"]),
    ("- whitened head", "configs/recipes/motion.yaml", ["model.proj_head=vidmask"]),
    ("motion-topk -> random", "configs/recipes/motion.yaml", ["mask.strategy=random"]),
]


# bench/leaderboard.py's --set for the motion leaderboard, with vtm and mlm off (--losses core)
LEADERBOARD_SET = ["model.frame_diff=true", "model.proj_head=whitened", "data.hflip_p=0", "data.reverse_p=0.5",
                   "train.hard_batches=4", "loss.swap=1.0", "train.precision=bf16", "loss.vtm=0", "loss.mlm=0"]
TEACHER_ROWS = [
    ("random", "random", []),
    ("clusterstm (relevance on recon's decoder trunk)", "clusterstm", []),
    ("clusterstm, relevance with its own decoder", "clusterstm", ["loss.relevance.decoder=own"]),
    ("clusterstm, no relevance", "clusterstm", ["loss.relevance=0"]),
    ("clusterstm, recon decoder of 2 blocks (before)", "clusterstm", ["loss.recon.depth=2"]),
    ("umt", "umt", []),
]


class Precomputed:
    """A stand-in for the teacher cache (vidmask.teachers.cache.TeacherCache) that hands back one batch's
    precomputed frame features: the step then runs the teacher's per-step half (``from_frames``) as training
    with a cache does."""

    def __init__(self, feats):
        self.feats = feats

    def lookup(self, index, frame_ids):
        return self.feats


def stepper(cfg, captions: list[str], steps: int, batch: int, teacher: bool = False):
    """A function that runs the next training step of ``cfg``'s task and returns its seconds (forward,
    backward, AdamW), set up as training is: caption caches warmed on the captions its steps draw (a new
    draw of ``batch`` each step, ``steps`` + 2 draws), the teacher's trunk features handed to the step as
    the teacher cache hands them."""
    from vidmask.models.whiten import WhitenedHead, fit_whitening
    from vidmask.train.engine import autocast_ctx
    from vidmask.train.optim import param_groups
    from vidmask.train.wiring import build_model, build_task, build_teacher_from

    torch.manual_seed(0)
    task = build_task(cfg, build_model(cfg), teacher=build_teacher_from(cfg) if teacher else None)
    model = task.model
    if isinstance(model.text_proj, WhitenedHead):
        fit_whitening(model.text_proj, lambda caps: model.text(caps).float().cpu(), captions[:2000], 2000,
                      cfg.model.whiten_eps)
    rng = random.Random(0)
    draws = [rng.sample(captions, batch) for _ in range(steps + 2)]  # each step's captions (two warm-up steps)
    for tower in task.frozen_caption_towers():  # the training captions' features held before step 1, as in training
        tower.warm_cache(c for caps in draws for c in caps)
    opt = torch.optim.AdamW(param_groups(task, 0.05), lr=1e-4)
    T, S = cfg.data.num_frames, cfg.data.size
    # one batch of clips for every step (the teacher's trunk, about 0.5 s a clip here, runs once, untimed)
    video = torch.randn(batch, T, 3, S, S)  # (B, T, 3, H, W)
    cached = {}
    if teacher and task.teacher is not None:  # the trunk's frame features, as the teacher cache gives them
        with torch.no_grad():
            task.teacher_cache = Precomputed(task.teacher.encode_frames(video))  # fields (B, T, n, D)
        cached = {"index": torch.arange(batch), "frame_ids": torch.zeros(batch, T, dtype=torch.long)}
    upcoming = iter(enumerate(draws))

    def step() -> float:
        i, caps = next(upcoming)
        t0 = time.perf_counter()
        with autocast_ctx(torch.device("cpu"), cfg.train.precision):  # as the training loop runs the step
            losses, _ = task({"video": video, "caption": caps, **cached}, torch.Generator().manual_seed(i))
        opt.zero_grad()
        sum(v for k, v in losses.items() if k.endswith("_loss")).backward()
        opt.step()
        return time.perf_counter() - t0

    return step


def interleaved(rows: list[tuple[str, object]], captions: list[str], steps: int, batch: int,
                teacher: bool = False) -> dict[str, float]:
    """Median seconds a step of each (name, cfg) row: every row set up first and warmed up by two steps,
    then one step of each row in turn, ``steps`` rounds, so a change of machine load falls on every row."""
    steppers = {name: stepper(cfg, captions, steps, batch, teacher) for name, cfg in rows}
    for step in steppers.values():
        step(), step()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in steppers}
    for _ in range(steps):
        for name, step in steppers.items():
            times[name].append(step())
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--corpus", default="corpus")
    ap.add_argument("--teacher", default="corpus/teacher/lit-effnet-s2.safetensors",
                    help="the recipes' lit-effnet heads (the second table is skipped without them)")
    ap.add_argument("--tables", nargs="+", choices=["demo", "teacher"], default=["demo", "teacher"])
    args = ap.parse_args()
    anno = Path(args.corpus) / "train.json"
    if not anno.is_file():
        raise SystemExit(f"{anno} not found: make the corpus first (vidmask corpus make --out {args.corpus})")
    captions = [c for item in json.loads(anno.read_text()) for c in item["caption"]]

    def table_rows(rows: list[tuple[str, object]], teacher: bool = False) -> list[list[str]]:
        """Each row's median ms, clips / s and ratio to the first row, measured interleaved."""
        med = interleaved(rows, captions, args.steps, args.batch, teacher)
        base = med[rows[0][0]]
        out = [[name, f"{m * 1000:.0f}", f"{args.batch / m:.1f}", f"{m / base:.2f}x"] for name, m in med.items()]
        for row in out:
            print(row, flush=True)
        return out

    body = (f"Batch {args.batch} of synthetic clips with the captions of {anno}; median of {args.steps} steps "
            "(forward, backward, AdamW) after two warm-up steps, the rows of a table interleaved step by step; "
            "no loader.")
    if "demo" in args.tables:
        rows = table_rows([(name, load_config(config, overrides)) for name, config, overrides in ROWS])
        body += "\n\n" + table(["recipe", "ms / step", "clips / s", "vs demo"], rows)
    if Path(args.teacher).is_file() and "teacher" in args.tables:
        rows = table_rows([(name, load_config(f"configs/recipes/{recipe}.yaml", LEADERBOARD_SET + overrides
                                              + [f"teacher.path={args.teacher}", "teacher.cache="]))
                           for name, recipe, overrides in TEACHER_ROWS], teacher=True)
        body += ("\n\n## The teacher recipes against random, with the leaderboard's settings\n\n"
                 f"`{' '.join(LEADERBOARD_SET)}`; the teacher's trunk features ({args.teacher}) computed "
                 "before the timed steps and handed to each as the teacher cache does (its heads, "
                 "`from_frames`, are timed).\n\n"
                 + table(["recipe", "ms / step", "clips / s", "vs random"], rows))
    # the teacher table alone goes to a file of its own, so the demo table is not overwritten
    demo = "demo" in args.tables
    write("recipe_step.md" if demo else "recipe_step_teacher.md",
          "Step time: the demo and the motion recipe, part by part" if demo
          else "Step time: the teacher recipes against random", body)


if __name__ == "__main__":
    main()
