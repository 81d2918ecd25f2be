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


from _common import median_pretrain_step, table, write
from vidmask.config import load_config

SETS = {"vtc": ["loss.vtm=0", "loss.mlm=0"], "vtc + vtm": ["loss.mlm=0"], "vtc + mlm": ["loss.vtm=0"],
        "vtc + vtm + mlm": []}


def median_step(overrides: list[str], steps: int, batch: int) -> float:
    cfg = load_config("configs/recipes/random.yaml", overrides)
    colours, moves = ["red", "blue", "green", "yellow"], ["left", "up", "right", "down", "in a circle"]
    caps = [f"a small {colours[i % 4]} circle moves {moves[i % 5]} then stops near edge {i}" for i in range(batch)]
    return median_pretrain_step(cfg, caps, steps)[0]


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
