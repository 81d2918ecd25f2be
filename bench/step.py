"""Pretraining step time at mask ratios 0, 0.5, 0.75, 0.9 (the tiny default model).

    python bench/step.py [--steps 8] [--batch 32] [overrides like model.dim=256]

Synthetic clips and captions, frozen text tower with cached features (the
default), random masking; forward + backward + AdamW step. Writes
bench/results/step.md.
"""

from __future__ import annotations

import argparse
import time

import torch

from _common import table, write
from vidmask.config import load_config
from vidmask.train.pretrain import build_model, build_task, param_groups


def time_steps(cfg, ratio: float, steps: int, batch: int) -> tuple[float, int]:
    cfg.mask.strategy, cfg.mask.ratio = ("none", 0.0) if ratio == 0 else ("random", ratio)
    torch.manual_seed(0)
    task = build_task(cfg, build_model(cfg))
    opt = torch.optim.AdamW(param_groups(task, 0.05), lr=1e-4)
    T, S = cfg.data.num_frames, cfg.data.size
    video = torch.randn(batch, T, 3, S, S)
    caps = [f"a small red circle number {i} moves left" for i in range(batch)]
    task.model.text.warm_cache(caps)
    times, kept = [], 0
    for i in range(steps + 2):  # two warm-up steps
        t0 = time.perf_counter()
        losses, report = task({"video": video, "caption": caps}, torch.Generator().manual_seed(i))
        opt.zero_grad()
        losses["vtc_loss"].backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t0)
        kept = int(report["kept_tokens"])
    times.sort()
    return times[len(times) // 2], kept


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    rows = []
    base = None
    for ratio in (0.0, 0.5, 0.75, 0.9):
        cfg = load_config(None, args.overrides)
        med, kept = time_steps(cfg, ratio, args.steps, args.batch)
        base = base or med
        rows.append([f"{ratio:.2f}", kept, f"{med * 1000:.0f}", f"{args.batch / med:.1f}", f"{base / med:.2f}x"])
    cfg = load_config(None, args.overrides)
    m = cfg.model
    body = (f"Model: ViT dim {m.dim}, depth {m.depth}, heads {m.heads}, patch {m.patch}; "
            f"{cfg.data.num_frames} frames of {cfg.data.size} px; batch {args.batch}; median of {args.steps} steps "
            f"(forward + backward + AdamW), frozen text tower with cached caption features.\n\n"
            + table(["mask ratio", "encoder tokens / clip", "step ms", "clips / s", "speed-up vs all tokens"], rows))
    write("step.md", "Pretraining step time by mask ratio", body)


if __name__ == "__main__":
    main()
