"""Where each strategy's kept tokens fall: on the moving objects or on the background.

    python bench/kept_on_objects.py [--corpus corpus] [--clips 200] [--teacher corpus/teacher/lit-effnet.safetensors]

The motion-shapes corpus records every object's box in every frame
(``corpus.json``), so for each strategy this measures the share of kept
tokens whose 16 x 16 patch centre lies inside an object box, against the
share of all tokens that do (what uniform sampling keeps on average).
Strategies see what they see in pretraining: the lit-effnet teacher's tokens
(``clusterstm``, ``density-topk``, ``cluster-random``) and its CLS attention
(``umt``, ``mascot-*``). Clips: the first ``--clips`` training videos, 8
frames each (``middle`` sampling), 128 px. Writes
``bench/results/kept_on_objects.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from _common import table, write

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vidmask.data import VideoTransform, decode_sampled  # noqa: E402
from vidmask.masking import build_masker, masker_inputs  # noqa: E402
from vidmask.teachers import build_teacher  # noqa: E402

STRATEGIES = [
    ("random", {}), ("tube", {}), ("umt", {}), ("mascot-high", {}), ("mascot-low", {}),
    ("clusterstm", {}), ("clusterstm", {"select": "dynamics"}), ("density-topk", {}), ("cluster-random", {}),
]
RATIOS = {"random": 0.75, "tube": 0.75, "umt": 0.8}  # the recipes' ratios; others 0.85


def object_tokens(video: dict, frames: list[int], grid: int, patch: int) -> torch.Tensor:
    """bool[T,N]: patch centres inside any object's box in each sampled frame."""
    centres = (torch.arange(grid) * patch + patch / 2).float()  # (grid,)
    cy, cx = torch.meshgrid(centres, centres, indexing="ij")  # (grid, grid) each
    out = torch.zeros(len(frames), grid * grid, dtype=torch.bool)
    for obj in video["objects"]:
        for i, f in enumerate(frames):
            x0, y0, x1, y1 = obj["boxes"][min(f, len(obj["boxes"]) - 1)]
            inside = (cx >= x0) & (cx <= x1) & (cy >= y0) & (cy <= y1)  # (grid, grid)
            out[i] |= inside.flatten()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="corpus")
    ap.add_argument("--clips", type=int, default=200)
    ap.add_argument("--teacher", default=None)
    ap.add_argument("--batch", type=int, default=25)
    args = ap.parse_args()
    corpus = Path(args.corpus)
    meta = json.loads((corpus / "corpus.json").read_text())
    size, T, patch = meta["params"]["size"], 8, 16
    grid = size // patch
    videos = [v for v in meta["videos"] if v["split"] == "train"][: args.clips]
    teacher = build_teacher("lit-effnet", path=args.teacher or str(corpus / "teacher" / "lit-effnet.safetensors"))
    transform = VideoTransform(size=size)
    kept_on = {}
    total_on, total = 0, 0
    for s in range(0, len(videos), args.batch):
        chunk = videos[s : s + args.batch]
        clips, on = [], []
        for v in chunk:
            frames, ids = decode_sampled(corpus / v["video"], T, "middle")
            clips.append(transform(frames)[0])  # (T, 3, S, S)
            on.append(object_tokens(v, ids, grid, patch))  # (T, N)
        video, on = torch.stack(clips), torch.stack(on)  # (B, T, 3, S, S), (B, T, N)
        total_on, total = total_on + int(on.sum()), total + on.numel()
        t_out = teacher(video, grid=grid)
        tokens, attn = masker_inputs(teacher_out=t_out)  # (B, T, N, D), (B, T, N): as in pretraining
        for name, params in STRATEGIES:
            label = name + "".join(f" {k}={v}" for k, v in params.items())
            masker = build_masker(name, ratio=RATIOS.get(name, 0.85), token_dim=tokens.shape[-1], **params)
            keep = masker(tokens, attn=attn, generator=torch.Generator().manual_seed(s)).keep  # (B, T, N)
            a, b = kept_on.get(label, (0, 0))
            kept_on[label] = (a + int((keep & on).sum()), b + int(keep.sum()))
    base = 100.0 * total_on / total
    rows = [[f"`{label}`", f"{100.0 * a / b:.1f}", f"{100.0 * a / b / base:.2f}x"] for label, (a, b) in kept_on.items()]
    body = (f"{len(videos)} training clips of `{corpus}`, {T} frames each (`middle` sampling), {grid}x{grid} tokens "
            f"per frame; tokens and attention from the lit-effnet teacher, as in pretraining. {base:.1f} % of all "
            f"tokens have their patch centre inside an object's box (what uniform sampling keeps on average).\n\n"
            + table(["strategy", "kept tokens on objects %", "vs all tokens"], rows))
    write("kept_on_objects.md", "Where kept tokens fall: objects or background", body)


if __name__ == "__main__":
    main()
