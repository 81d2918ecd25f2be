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
  over time (time lost), and the differences of consecutive frames (motion only);
* the two **motion streams** the encoder can be given, computed at full
  resolution and average-pooled to 4x4 per frame: the frame differences
  (``model.frame_diff``) and the per-pixel normal flow (``model.normal_flow``).

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
from vidmask.models.video_vit import frame_differences, normal_flow  # noqa: E402
from vidmask.tasks.probe import ATTRIBUTES, evaluate_probe, probe_items  # noqa: E402
from vidmask.train.wiring import build_model  # noqa: E402

PIXEL_FEATURES = {
    "raw pixels, 8 frames concatenated": lambda v: v.flatten(1),  # (n, T*3*16*16)
    "raw pixels, mean over time": lambda v: v.mean(1).flatten(1),  # (n, 3*16*16)
    "raw pixels, consecutive-frame differences": lambda v: (v[:, 1:] - v[:, :-1]).flatten(1),  # (n, (T-1)*3*16*16)
}
# the motion streams, computed on the full-resolution frames, then pooled to 4x4 per frame
STREAMS = {
    "frame differences (model.frame_diff), pooled to 4x4": frame_differences,
    "normal flow (model.normal_flow), pooled to 4x4": normal_flow,
}


def pool(x: torch.Tensor, grid: int) -> torch.Tensor:
    """[b,T,c,S,S] -> [b,T,c,grid,grid], each frame average-pooled."""
    return torch.nn.functional.adaptive_avg_pool2d(x.flatten(0, 1), grid).unflatten(0, x.shape[:2])


def pooled_pixels(items, frames: int, size: int) -> dict[str, torch.Tensor]:
    """Clips -> {"pixels": float[n,T,3,16,16], each STREAMS name: float[n,T,c,4,4]}: each evaluation frame
    (normalised) average-pooled to 16x16, each motion stream computed at full resolution, pooled to 4x4."""
    out: dict[str, list] = {"pixels": [], **{name: [] for name in STREAMS}}
    for batch in eval_loader(items, frames, size, 0, device="cpu"):
        video = batch["video"]  # (b, T, 3, S, S)
        out["pixels"].append(pool(video, 16))  # (b, T, 3, 16, 16)
        for name, stream in STREAMS.items():
            out[name].append(pool(stream(video), 4))  # (b, T, c, 4, 4)
    return {k: torch.cat(v) for k, v in out.items()}


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
    features = {name: (f(pixels["train"]["pixels"]), f(pixels["test"]["pixels"]))
                for name, f in PIXEL_FEATURES.items()}
    features.update({name: (pixels["train"][name].flatten(1), pixels["test"][name].flatten(1)) for name in STREAMS})
    for name, (train, test) in features.items():  # (n, D) each
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
