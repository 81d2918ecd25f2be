"""`vidmask masks`: draw which tokens a strategy keeps on a real clip."""

from __future__ import annotations

import argparse
import sys


def add_parser(sub) -> None:
    p = sub.add_parser(
        "masks",
        help="draw a strategy's mask on a video (frames, clusters or saliency, kept tokens)",
        description="The ClusterSTM supplement's Figure II for any strategy and video file: a row of frames, "
        "a row with the clusters coloured (clustering strategies) or the saliency (attention strategies), and "
        "a row with the kept tokens marked. Without a teacher, token features are normalised pixel patches "
        "and the saliency is a colour-contrast stand-in for a teacher's attention.",
    )
    p.add_argument("--video", required=True, help="a video file (mp4, mkv, ...) or an image")
    p.add_argument("--strategy", required=True, help="a name from `vidmask masks --list`-able registry")
    p.add_argument("--ratio", type=float, default=0.85, help="mask ratio (default 0.85)")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--size", type=int, default=128, help="square size in pixels, a multiple of --patch")
    p.add_argument("--patch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="strategy parameter, e.g. --param knn=5 (repeatable)")
    p.add_argument("--out", default="masks.png", help="output PNG")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch
    import yaml

    from vidmask.data import VideoError, VideoTransform, decode_frames
    from vidmask.masking import (build_masker, list_maskers, masker_inputs, masker_params, masker_token_dim,
                                 strategy_ratio)
    from vidmask.models.video_vit import patchify
    from vidmask.viz.masks import draw_masks, frames_for_model

    if args.strategy not in list_maskers():
        print(f"vidmask masks: unknown strategy {args.strategy!r}; known: {', '.join(list_maskers())}", file=sys.stderr)
        return 2
    if args.size % args.patch:
        print(f"vidmask masks: --size {args.size} is not a multiple of --patch {args.patch}", file=sys.stderr)
        return 2
    params = {}
    for item in args.param:
        if "=" not in item:
            print(f"vidmask masks: --param {item!r} must look like key=value", file=sys.stderr)
            return 2
        k, v = item.split("=", 1)
        params[k] = yaml.safe_load(v)
    unknown = sorted(set(params) - set(masker_params(args.strategy)))
    if unknown:
        print(f"vidmask masks: --param {', '.join(unknown)}: {args.strategy} takes "
              f"{', '.join(masker_params(args.strategy)) or 'no parameters besides the ratio'}", file=sys.stderr)
        return 2
    try:
        raw = decode_frames(args.video, args.frames, mode="middle")  # (T, H, W, 3) uint8
    except VideoError as e:
        print(f"vidmask masks: {e}", file=sys.stderr)
        return 2
    video, _ = VideoTransform(size=args.size, train=False)(raw)  # (T, 3, S, S)
    p = args.patch
    patches = patchify(video.unsqueeze(0), p)  # (1, T, N, p*p*3)
    ratio = strategy_ratio(args.strategy, args.ratio)
    masker = build_masker(args.strategy, ratio=ratio, token_dim=masker_token_dim(p, None, args.strategy), **params)
    # (1, T, N, P), (1, T, N): what a strategy sees without a teacher
    tokens, attn = masker_inputs(patches, inputs=masker.inputs)
    with torch.no_grad():
        out = masker(tokens, attn=attn, generator=torch.Generator().manual_seed(args.seed))
    if out.saliency is None and masker.needs_attn:
        out.saliency = attn
    from pathlib import Path

    title = f"{args.strategy} @ {ratio:.2f} on {Path(args.video).name}"
    path = draw_masks(frames_for_model(video), out, p, title, args.out)
    print(f"wrote {path}")
    return 0
