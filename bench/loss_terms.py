"""What each caption-side loss term costs in a pretraining step (the tiny default model).

    python bench/loss_terms.py [--steps 5] [--batch 32] [overrides like mask.ratio=0.85]

The `random` recipe (75 % masking) on synthetic clips and captions, frozen
text tower, forward + backward + AdamW, with the loss terms switched on one
set at a time: `vtc` alone, `+ vtm` (the fusion encoder over B positives and
2B hard negatives), `+ mlm` (the text tower again on the masked caption, the
fusion encoder, the vocabulary head on masked positions), and all three.
Writes bench/results/loss_terms.md.
"""

from __future__ import annotations

import argparse
import time

import torch

from _common import table, write
from vidmask.config import load_config
from vidmask.train.pretrain import build_model, build_task, param_groups

SETS = {"vtc": ["loss.vtm=0", "loss.mlm=0"], "vtc + vtm": ["loss.mlm=0"], "vtc + mlm": ["loss.vtm=0"],
        "vtc + vtm + mlm": []}


def median_step(overrides: list[str], steps: int, batch: int) -> float:
    cfg = load_config("configs/recipes/random.yaml", overrides)
    torch.manual_seed(0)
    task = build_task(cfg, build_model(cfg))
    opt = torch.optim.AdamW(param_groups(task, 0.05), lr=1e-4)
    T, S = cfg.data.num_frames, cfg.data.size
    video = torch.randn(batch, T, 3, S, S)  # (B, T, 3, H, W)
    colours, moves = ["red", "blue", "green", "yellow"], ["left", "up", "right", "down", "in a circle"]
    caps = [f"a small {colours[i % 4]} circle moves {moves[i % 5]} then stops near edge {i}" for i in range(batch)]
    task.model.text.warm_cache(caps)
    times = []
    for i in range(steps + 2):  # two warm-up steps
        t0 = time.perf_counter()
        losses, _ = task({"video": video, "caption": caps}, torch.Generator().manual_seed(i))
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    rows, base = [], None
    for name, extra in SETS.items():
        sec = median_step(extra + args.overrides, args.steps, args.batch)
        base = base or sec
        rows.append([name, f"{sec * 1000:.0f}", f"{(sec - base) * 1000:+.0f}", f"{args.batch / sec:.1f}"])
    body = (f"`random` recipe (75 % masking), tiny default model, batch {args.batch}, median of {args.steps} steps "
            f"(forward + backward + AdamW), frozen text tower; overrides: {args.overrides or 'none'}.\n\n"
            + table(["loss terms", "step ms", "vs vtc alone (ms)", "clips / s"], rows))
    write("loss_terms.md", "Step time by loss terms", body)


if __name__ == "__main__":
    main()
