"""Where each strategy's kept tokens fall: on the moving objects or on the background; one column per teacher.

    python bench/kept_on_objects.py [--corpus corpus] [--clips 200]
        [--teachers corpus/teacher/lit-effnet.safetensors corpus/teacher/lit-effnet-s2.safetensors]

The motion-shapes corpus records every object's box in every frame
(``corpus.json``), so for each strategy this measures the share of kept
tokens whose 16 x 16 patch centre lies inside an object box, against the
share of all tokens that do (what uniform sampling keeps on average).
Strategies see what they see in pretraining: the teacher's tokens
(``clusterstm``, ``density-topk``, ``cluster-random``), its CLS attention
(``umt``, ``mascot-*``), the raw pixel patches (``motion-topk``: lit-effnet
has no patch embeddings). The first row is no strategy: the share of the
teacher's CLS attention mass that falls on object tokens. With several
``--teachers`` (lit-effnet heads trained at ``--trunk-scale`` 1 and 2: a 4x4
trunk map resampled to the student's 8x8 grid, or a native 8x8 one) each gets
its columns, which is issue 14's "which aligns better". Clips: the first
``--clips`` training videos, 8 frames each (``middle`` sampling), 128 px.
Writes ``bench/results/kept_on_objects.md``.
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
from vidmask.masking import build_masker, masker_class, masker_inputs  # noqa: E402
from vidmask.models.video_vit import patchify  # noqa: E402
from vidmask.teachers import build_teacher  # noqa: E402

STRATEGIES = [
    ("random", {}), ("tube", {}), ("umt", {}), ("mascot-high", {}), ("mascot-low", {}),
    ("clusterstm", {}), ("clusterstm", {"select": "dynamics"}), ("clusterstm", {"select": "adjacent"}),
    ("density-topk", {}), ("cluster-random", {}), ("motion-topk", {}),
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


def measure(corpus: Path, videos: list[dict], teacher_path: str, batch: int, size: int, T: int,
            patch: int) -> tuple[dict[str, tuple[int, int]], float, float, int]:
    """({row label: (kept on objects, kept)}, object share of all tokens %, attention mass on objects %,
    the teacher's trunk scale) over ``videos``."""
    grid = size // patch
    teacher = build_teacher("lit-effnet", path=teacher_path)
    transform = VideoTransform(size=size)
    kept_on: dict[str, tuple[int, int]] = {}
    total_on, total, mass_on, mass = 0, 0, 0.0, 0.0
    for s in range(0, len(videos), batch):
        chunk = videos[s : s + batch]
        clips, on = [], []
        for v in chunk:
            frames, ids = decode_sampled(corpus / v["video"], T, "middle")
            clips.append(transform(frames)[0])  # (T, 3, S, S)
            on.append(object_tokens(v, ids, grid, patch))  # (T, N)
        video, on = torch.stack(clips), torch.stack(on)  # (B, T, 3, S, S), (B, T, N)
        total_on, total = total_on + int(on.sum()), total + on.numel()
        with torch.no_grad():
            t_out = teacher(video, grid=grid)
        patches = patchify(video, patch)  # (B, T, N, P)
        # what each kind of strategy sees, as in pretraining: (tokens [B,T,N,D], attention [B,T,N])
        seen = {kind: masker_inputs(patches, t_out, kind) for kind in ("features", "patch_embeds")}
        attn = seen["features"][1]  # (B, T, N): sums to 1 per frame
        mass_on, mass = mass_on + float((attn * on).sum()), mass + float(attn.sum())
        for name, params in STRATEGIES:
            tokens, attn = seen[masker_class(name).inputs]  # (B, T, N, D), (B, T, N)
            label = name + "".join(f" {k}={v}" for k, v in params.items())
            masker = build_masker(name, ratio=RATIOS.get(name, 0.85), token_dim=tokens.shape[-1], **params)
            keep = masker(tokens, attn=attn, generator=torch.Generator().manual_seed(s)).keep  # (B, T, N)
            a, b = kept_on.get(label, (0, 0))
            kept_on[label] = (a + int((keep & on).sum()), b + int(keep.sum()))
    return kept_on, 100.0 * total_on / total, 100.0 * mass_on / mass, int(teacher.cfg.trunk_scale)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="corpus")
    ap.add_argument("--clips", type=int, default=200)
    ap.add_argument("--teachers", nargs="+", default=None, help="lit-effnet head files, one column pair each")
    ap.add_argument("--batch", type=int, default=25)
    args = ap.parse_args()
    corpus = Path(args.corpus)
    meta = json.loads((corpus / "corpus.json").read_text())
    size, T, patch = meta["params"]["size"], 8, 16
    grid = size // patch
    videos = [v for v in meta["videos"] if v["split"] == "train"][: args.clips]
    teachers = args.teachers or [str(corpus / "teacher" / "lit-effnet.safetensors")]
    results = [measure(corpus, videos, t, args.batch, size, T, patch) for t in teachers]
    base = results[0][1]
    headers, rows = ["strategy"], [["(the teacher's CLS attention mass)"]]
    for t, (_, _, attn_on, scale) in zip(teachers, results):
        headers += [f"on objects %: `{Path(t).name}` (trunk scale {scale})", "vs all tokens"]
        rows[0] += [f"{attn_on:.1f}", f"{attn_on / base:.2f}x"]
    for label in results[0][0]:
        row = [f"`{label}`"]
        for kept_on, *_ in results:
            a, b = kept_on[label]
            row += [f"{100.0 * a / b:.1f}", f"{100.0 * a / b / base:.2f}x"]
        rows.append(row)
    body = (f"{len(videos)} training clips of `{corpus}`, {T} frames each (`middle` sampling), {grid}x{grid} tokens "
            f"per frame; tokens and attention from each lit-effnet teacher, as in pretraining (trunk scale 1: its "
            f"4x4 map resampled to {grid}x{grid}; scale 2: frames resized 2x first, a native {grid}x{grid} map). "
            f"{base:.1f} % of all tokens have their patch centre inside an object's box (what uniform sampling keeps "
            f"on average). Ratios: {', '.join(f'{k} {v}' for k, v in RATIOS.items())}, the others 0.85.\n\n"
            + table(headers, rows))
    write("kept_on_objects.md", "Where kept tokens fall: objects or background", body)


if __name__ == "__main__":
    main()
