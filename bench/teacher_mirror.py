"""How near a flipped frame's teacher features are to its mirrored cached features (``teacher.cache_mirror``).

    python bench/teacher_mirror.py [--corpus corpus] [--clips 40] [--teacher corpus/teacher/lit-effnet-s2.safetensors]

A teacher cache holds the features of unflipped frames. With ``data.hflip_p`` and
``teacher.cache_mirror=true`` a flipped training clip is served its cached features mirrored
left-right (:func:`vidmask.teachers.base.mirror_frames`), which is exact only for a
mirror-symmetric teacher. Here, on the first ``--clips`` training clips of the corpus (8 frames,
``middle`` sampling), the teacher's output on the flipped clip (what a live teacher gives) is
compared with the output from the mirrored features of the unflipped clip (what the cache gives),
and, as the floor, with the output from the unflipped features unmirrored (what a cache would give
without mirroring). Per row: the mean cosine of corresponding tokens, the Pearson correlation of
each frame's CLS attention map, the overlap of the tokens ``umt`` keeps (ratio 0.8, the same
generator) and of those ``clusterstm`` keeps (ratio 0.85), and the clip feature's cosine.
Writes bench/results/teacher_mirror.md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from _common import table, write

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vidmask.data import VideoTransform, decode_sampled  # noqa: E402
from vidmask.masking import build_masker, masker_inputs  # noqa: E402
from vidmask.models.video_vit import patchify  # noqa: E402
from vidmask.teachers import build_teacher  # noqa: E402
from vidmask.teachers.base import mirror_frames  # noqa: E402


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Correlation of the last dimension's entries, per leading index."""
    a, b = a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True)
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(1e-12)


def keeps(out, video, patch: int, seed: int) -> dict[str, torch.Tensor]:
    """The kept tokens bool[B,T,N] of umt (attention) and clusterstm (features) on one teacher output."""
    tokens, attn = masker_inputs(patchify(video, patch), out, "features")  # (B, T, N, D), (B, T, N)
    res = {}
    for name, ratio in (("umt", 0.8), ("clusterstm", 0.85)):
        masker = build_masker(name, ratio=ratio, token_dim=tokens.shape[-1])
        res[name] = masker(tokens, attn=attn, generator=torch.Generator().manual_seed(seed)).keep
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="corpus")
    ap.add_argument("--clips", type=int, default=40)
    ap.add_argument("--teacher", default=None, help="lit-effnet heads (default: the recipes' scale-2 heads)")
    ap.add_argument("--batch", type=int, default=10)
    args = ap.parse_args()
    corpus = Path(args.corpus)
    teacher_path = args.teacher or str(corpus / "teacher" / "lit-effnet-s2.safetensors")
    if not Path(teacher_path).is_file():
        raise SystemExit(f"{teacher_path} not found: vidmask teacher train --corpus {corpus} --out {teacher_path} "
                         "--trunk-scale 2")
    meta = json.loads((corpus / "corpus.json").read_text())
    size, T, patch = meta["params"]["size"], 8, 16
    grid = size // patch
    videos = [v for v in meta["videos"] if v["split"] == "train"][: args.clips]
    teacher = build_teacher("lit-effnet", path=teacher_path).eval()
    transform = VideoTransform(size=size)
    sums: dict[str, dict[str, list[float]]] = {"mirrored": {}, "not mirrored": {}}
    for s in range(0, len(videos), args.batch):
        video = torch.stack([transform(decode_sampled(corpus / v["video"], T, "middle")[0])[0]
                             for v in videos[s : s + args.batch]])  # (B, T, 3, S, S)
        flipped = video.flip(-1)  # (B, T, 3, S, S)
        B = video.shape[0]
        with torch.no_grad():
            live = teacher.from_frames(teacher.encode_frames(flipped), grid)  # what a live teacher gives
            feats = teacher.encode_frames(video)  # what the cache holds
            served = {"mirrored": teacher.from_frames(mirror_frames(feats, torch.ones(B, dtype=torch.bool)), grid),
                      "not mirrored": teacher.from_frames(feats, grid)}
        live_keep = keeps(live, flipped, patch, s)
        for row, out in served.items():
            keep = keeps(out, flipped, patch, s)
            vals = {
                "token cosine": F.cosine_similarity(out.tokens, live.tokens, dim=-1).flatten(),  # (B*T*N,)
                "attention correlation": pearson(out.attn, live.attn).flatten(),  # (B*T,)
                "clip feature cosine": F.cosine_similarity(out.video, live.video, dim=-1),  # (B,)
            }
            for name, k in keep.items():  # share of the live mask's kept tokens that the served one keeps too
                vals[f"`{name}` kept overlap"] = ((k & live_keep[name]).sum((1, 2)).float()
                                                  / live_keep[name].sum((1, 2)).float())  # (B,)
            for k, v in vals.items():
                sums[row].setdefault(k, []).extend(v.tolist())
    measures = list(sums["mirrored"])
    rows = [[row] + [f"{sum(v) / len(v):.3f}" for v in (sums[row][m] for m in measures)] for row in sums]
    body = (f"{len(videos)} training clips of `{corpus}`, {T} frames each (`middle` sampling), teacher "
            f"`{teacher_path}` on a {grid}x{grid} grid. Each clip flipped left-right: the teacher's output on the "
            "flipped frames (live) against the output from the unflipped frames' features mirrored (what "
            "`teacher.cache_mirror` serves) and not mirrored (a cache without it). Means over tokens, frames or "
            "clips; kept overlap = share of the live mask's kept tokens the served mask keeps too (umt at 0.8 "
            "draws with the same generator; random sampling would overlap by the kept share, 0.20 for umt and "
            "0.15 for clusterstm).\n\n" + table(["served"] + measures, rows))
    write("teacher_mirror.md", "Mirrored cached teacher features against the teacher on flipped frames", body)


if __name__ == "__main__":
    main()
