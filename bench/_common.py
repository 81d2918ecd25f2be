"""Shared bits of the benchmark scripts: machine description and Markdown tables."""

from __future__ import annotations

import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    return (f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPU cores ({cpu}), torch {torch.__version__}, "
            f"{torch.get_num_threads()} intra-op threads")


def table(headers: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def write_readme(readme: Path, name: str, block: str) -> None:
    """Replace the lines between ``<!-- name -->`` and ``<!-- /name -->`` in ``readme`` by ``block``: a README
    table that a bench script writes, so that it is always the one the runs give."""
    text = readme.read_text()
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise SystemExit(f"{readme}: needs one '{start}' line and one '{end}' line after it, around the "
                         f"table to replace; add them where the table belongs")
    head, rest = text.split(start, 1)
    readme.write_text(f"{head}{start}\n{block}\n{end}{rest.split(end, 1)[1]}")


def write(name: str, title: str, body: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(f"# {title}\n\n{machine()}\n\n{body}\n")
    print(path.read_text())
    return path


def run_vidmask(*args: str, **popen) -> None:
    """``python -m vidmask ARGS`` as a child; raises CalledProcessError on failure.

    A SIGTERM or SIGINT to this script is passed on to the child, and the script waits for it: the trainer
    saves a checkpoint at its next step and exits, so a long bench stopped from outside (``kill``, a
    scheduler) loses no training and leaves no orphan behind; rerunning the bench resumes or skips the run.
    """
    popen.setdefault("stdout", subprocess.DEVNULL)
    proc = subprocess.Popen([sys.executable, "-m", "vidmask", *args], start_new_session=True, **popen)
    stopped: list[int] = []

    def forward(signum, _frame):
        stopped.append(signum)
        proc.send_signal(signal.SIGTERM)  # the trainer's signal to checkpoint and stop

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        rc = proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if stopped:
        raise SystemExit(f"stopped by signal {stopped[0]}; the child (vidmask {args[0]}) exited with {rc}")
    if rc:
        raise subprocess.CalledProcessError(rc, ["vidmask", *args])


def train_or_resume(command: list[str], out: Path, *args: str) -> None:
    """``vidmask COMMAND ARGS`` into the run folder ``out``, or ``vidmask COMMAND --resume out`` when an
    interrupted earlier attempt left a checkpoint there (a fresh start over it is refused)."""
    if (Path(out) / "checkpoints" / "latest").is_file():
        run_vidmask(*command, "--resume", str(out))
    else:
        run_vidmask(*command, *args)


def median_pretrain_step(cfg, captions: list[str], steps: int) -> tuple[float, int]:
    """(median seconds per step, kept tokens per clip): a pretraining task built from ``cfg`` on
    synthetic clips and the given captions (one per clip), forward + backward of the summed
    losses + AdamW, after two warm-up steps."""
    from vidmask.train.optim import param_groups
    from vidmask.train.wiring import build_model, build_task

    torch.manual_seed(0)
    task = build_task(cfg, build_model(cfg))
    opt = torch.optim.AdamW(param_groups(task, 0.05), lr=1e-4)
    T, S = cfg.data.num_frames, cfg.data.size
    video = torch.randn(len(captions), T, 3, S, S)  # (B, T, 3, H, W)
    task.model.text.warm_cache(captions)
    times, kept = [], 0
    for i in range(steps + 2):  # two warm-up steps
        t0 = time.perf_counter()
        losses, report = task({"video": video, "caption": captions}, torch.Generator().manual_seed(i))
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t0)
        kept = int(report["kept_tokens"])
    return sorted(times)[len(times) // 2], kept
