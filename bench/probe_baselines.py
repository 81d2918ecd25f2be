"""How much can `vidmask probe`'s linear probes read from features that did not learn anything?

    python bench/probe_baselines.py [--corpus corpus] [--max-train 600]

The temporal probe (``vidmask.tasks.probe``) fits a linear probe per attribute
(motion, colour, shape) on the single-object training clips of the
motion-shapes corpus and scores the test clips. This puts its numbers for a
trained run in context with the same probe on:

* an **untrained** tiny model (``configs/tiny.yaml``, seed 0): the joint-space
  feature and the mean encoder token, as `vidmask probe` reads them;
* **raw pixels** of the same clips (middle-sampled frames, each average-pooled
  to 16x16, standardised): all frames concatenated (time kept), their mean
  over time (time lost), and the differences of consecutive frames (motion only).

A trained encoder that scores below the raw pixels on motion has lost what
the pixels show. Writes bench/results/probe_baselines.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from _common import table, write

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from vidmask.config import load_config  # noqa: E402
from vidmask.data import eval_loader  # noqa: E402
from vidmask.metrics.probe import probe_accuracy  # noqa: E402
from vidmask.tasks.probe import ATTRIBUTES, evaluate_probe, probe_items  # noqa: E402
from vidmask.train.wiring import build_model  # noqa: E402

PIXEL_FEATURES = {
    "raw pixels, 8 frames concatenated": lambda v: v.flatten(1),  # (n, T*3*16*16)
    "raw pixels, mean over time": lambda v: v.mean(1).flatten(1),  # (n, 3*16*16)
    "raw pixels, consecutive-frame differences": lambda v: (v[:, 1:] - v[:, :-1]).flatten(1),  # (n, (T-1)*3*16*16)
}


def pooled_pixels(items, frames: int, size: int) -> torch.Tensor:
    """Clips -> float[n,T,3,16,16]: each evaluation frame (normalised) average-pooled to 16x16."""
    out = []
    for batch in eval_loader(items, frames, size, 0, device="cpu"):
        video = batch["video"]  # (b, T, 3, S, S)
        out.append(torch.nn.functional.adaptive_avg_pool2d(video.flatten(0, 1), 16).unflatten(0, video.shape[:2]))
    return torch.cat(out)  # (n, T, 3, 16, 16)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="corpus")
    ap.add_argument("--max-train", type=int, default=600)
    args = ap.parse_args()
    corpus = Path(args.corpus)
    cfg = load_config(ROOT / "configs" / "tiny.yaml", [f"data.corpus={corpus}"])
    torch.manual_seed(0)
    res = evaluate_probe(build_model(cfg), corpus, cfg, torch.device("cpu"), max_train=args.max_train)
    rows = [[f"untrained tiny model, {f}"] + [f"{res[f][a]:.1f}" for a in ATTRIBUTES] for f in ("joint", "mean_token")]
    split = probe_items(corpus, args.max_train)
    pixels = {s: pooled_pixels([it for it, _ in split[s]], cfg.data.num_frames, cfg.data.size) for s in split}
    labels = {}
    for attr in ATTRIBUTES:
        names = sorted({o[attr] for s in split for _, o in split[s]})
        labels[attr] = ({s: torch.tensor([names.index(o[attr]) for _, o in split[s]]) for s in split}, len(names))
    for name, feature in PIXEL_FEATURES.items():
        train, test = feature(pixels["train"]), feature(pixels["test"])  # (n, D)
        mu, sd = train.mean(0), train.std(0) + 1e-6
        accs = [probe_accuracy((train - mu) / sd, ys["train"], (test - mu) / sd, ys["test"], k)
                for ys, k in (labels[a] for a in ATTRIBUTES)]
        rows.append([name] + [f"{a:.1f}" for a in accs])
    rows.append(["chance"] + [f"{res['chance'][a]:.1f}" for a in ATTRIBUTES])
    body = (f"Corpus `{corpus}`: {res['train_clips']} single-object training clips, {res['test_clips']} test clips; "
            "held-out accuracy (%) of the linear probe `vidmask probe` fits (vidmask.metrics.probe).\n\n"
            + table(["feature", "motion", "colour", "shape"], rows))
    write("probe_baselines.md", "What the temporal probe reads from features that learned nothing", body)


if __name__ == "__main__":
    main()
