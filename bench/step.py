"""Pretraining step time at mask ratios 0, 0.5, 0.75, 0.9 (the tiny default model).

    python bench/step.py [--steps 8] [--batch 32] [overrides like model.dim=256]

Synthetic clips and captions, frozen text tower with cached features (the
default), random masking; forward + backward + AdamW step. Writes
bench/results/step.md.
"""

from __future__ import annotations

import argparse


from _common import median_pretrain_step, table, write
from vidmask.config import load_config


def time_steps(cfg, ratio: float, steps: int, batch: int) -> tuple[float, int]:
    cfg.mask.strategy, cfg.mask.ratio = ("none", 0.0) if ratio == 0 else ("random", ratio)
    return median_pretrain_step(cfg, [f"a small red circle number {i} moves left" for i in range(batch)], steps)


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
