"""Can the tiny video encoder learn motion at all? Supervised motion classification, per input embedding.

The contrastive recipes leave the motion probe at chance (README, issue 15). This
bench asks the narrower question first: with the motion labels themselves as
the target (no text, no contrastive batch), does the tiny VideoViT (the demo's
encoder: 6 blocks of 192, random 75 % masking, the mean token into a linear
head) learn each single-object clip's motion (11 classes) from the corpus's
399 training clips, and does it generalise to the 109 test clips? Run per
embedding switch (per-frame patches, sin-cos positions, tubelets of 2,
the frame-difference stream of ``model.frame_diff``), same seed, same steps.

    python bench/motion_supervised.py --corpus corpus --steps 300

Writes bench/results/motion_supervised.md. Clips are decoded once (uint8,
middle frames) and held in memory.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vidmask.data import eval_loader
from vidmask.data.transforms import CLIP_MEAN, CLIP_STD
from vidmask.models.video_vit import VideoViT
from vidmask.tasks.probe import probe_items

VARIANTS = {
    "per-frame patches, learned positions (the demo)": {},
    "sin-cos positions": {"pos_embed": "sincos"},
    "tubelets of 2 frames, sin-cos positions": {"tubelet": 2, "pos_embed": "sincos"},
    "frame-difference stream (model.frame_diff)": {"frame_diff": True},
    "normal-flow stream (model.normal_flow)": {"normal_flow": True},
    "both streams": {"frame_diff": True, "normal_flow": True},
}


def decode(corpus: Path, frames: int, size: int) -> dict[str, tuple[torch.Tensor, list[str]]]:
    """Single-object clips per split: (uint8[n,T,3,S,S], motion names)."""
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)  # (3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)  # (3, 1, 1)
    out = {}
    for split, items in probe_items(corpus).items():
        clips = [((b["video"] * std + mean) * 255).round().clamp(0, 255).to(torch.uint8)  # (b, T, 3, S, S)
                 for b in eval_loader([it for it, _ in items], frames, size, 2, device="cpu")]
        out[split] = (torch.cat(clips), [o["motion"] for _, o in items])
    return out


def train_variant(data, options: dict, steps: int, ratio: float, batch: int, lr: float, seed: int) -> dict:
    torch.manual_seed(seed)
    names = sorted(set(data["train"][1]))
    index = {n: i for i, n in enumerate(names)}
    x_train, y_train = data["train"][0], torch.tensor([index[m] for m in data["train"][1]])
    x_test, y_test = data["test"][0], torch.tensor([index[m] for m in data["test"][1]])
    frames, size = x_train.shape[1], x_train.shape[-1]
    mean = torch.tensor(CLIP_MEAN).view(3, 1, 1)  # (3, 1, 1)
    std = torch.tensor(CLIP_STD).view(3, 1, 1)  # (3, 1, 1)

    def norm(x: torch.Tensor) -> torch.Tensor:
        return (x.float() / 255 - mean) / std  # (b, T, 3, S, S)

    vit = VideoViT(img_size=size, frames=frames, **options)
    head = nn.Linear(vit.dim, len(names))
    params = list(vit.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW([p for p in params if p.requires_grad], lr=lr, weight_decay=0.05)
    tokens = vit.frames * vit.grid ** 2
    keep = max(1, round(tokens * (1 - ratio)))
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr * min(1.0, (step + 1) / 50)  # linear warm-up, then flat
        pick = torch.randint(len(y_train), (batch,), generator=gen)  # (b,)
        ids = torch.rand(batch, tokens, generator=gen).argsort(1)[:, :keep].sort(1).values  # (b, K)
        feats = vit.forward_features(vit.embed_kept(norm(x_train[pick]), ids)).tokens.mean(1)  # (b, C)
        loss = F.cross_entropy(head(feats), y_train[pick])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    seconds = time.perf_counter() - start
    vit.eval()

    @torch.no_grad()
    def accuracy(x: torch.Tensor, y: torch.Tensor) -> float:
        pred = torch.cat([head(vit(norm(x[i:i + 64]))).argmax(1) for i in range(0, len(x), 64)])  # (n,)
        return 100.0 * (pred == y).float().mean().item()

    return {"train": accuracy(x_train, y_train), "test": accuracy(x_test, y_test), "seconds": seconds,
            "chance": 100.0 / len(names), "train_clips": len(y_train), "test_clips": len(y_test)}


def earlier_rows(path: Path) -> dict[str, list[str]]:
    """The table rows of an earlier result file by variant name: [name, train, test, seconds, run on] (a row
    of the older four-column table gets the date of the file's date line, or "?")."""
    if not path.is_file():
        return {}
    text = path.read_text().splitlines()
    date = next((line[:10] for line in text if line[:4].isdigit() and line[4:5] == "-"), "?")
    rows = {}
    for line in text:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] in VARIANTS:
            rows[cells[0]] = (cells + [date])[:5]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default="corpus")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--ratio", type=float, default=0.75, help="share of tokens hidden (random masking)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", default="", help="run only the variants whose name contains this")
    ap.add_argument("--out", default="bench/results/motion_supervised.md")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    data = decode(Path(args.corpus), 8, 128)
    rows = []
    for name, options in VARIANTS.items():
        if args.only and args.only not in name:
            continue
        res = train_variant(data, options, args.steps, args.ratio, args.batch, args.lr, args.seed)
        print(f"{name}: train {res['train']:.1f} %, test {res['test']:.1f} % ({res['seconds']:.0f} s)", flush=True)
        rows.append((name, res))
    first = rows[0][1]
    today = time.strftime("%Y-%m-%d")
    table_rows = {n: [n, f"{r['train']:.1f}", f"{r['test']:.1f}", f"{r['seconds']:.0f}", today] for n, r in rows}
    out = Path(args.out)
    # --only: the variants not run now keep their rows (and dates) from the file's last run
    merged = {**earlier_rows(out), **table_rows}  # earlier_rows holds VARIANTS' rows only
    lines = [
        "# Supervised motion classification with the tiny video encoder",
        "",
        f"`python bench/motion_supervised.py --corpus {args.corpus} --steps {args.steps}`: the demo's VideoViT "
        f"(6 blocks of 192, random {args.ratio:.0%} masking while training, all tokens when scored) and a linear "
        f"head on the mean token, trained on the motion labels of the corpus's {first['train_clips']} single-object "
        f"training clips ({args.steps} steps of {args.batch}, AdamW lr {args.lr:g}, seed {args.seed}); accuracy on "
        f"the {first['test_clips']} single-object test clips. Chance {first['chance']:.1f} % (11 motions). "
        "One seed each; the seconds compare only rows run on the same day with nothing else running.",
        "",
        "| input embedding | train accuracy % | test accuracy % | training s | run on |",
        "|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(merged[n]) + " |" for n in VARIANTS if n in merged]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
