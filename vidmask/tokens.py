"""Token plumbing every layer of vidmask shares: gather, scatter, windows, grid resampling.

The ground floor: pure tensor functions that import nothing from vidmask,
used by masking (gather the kept tokens), models (encoders and decoders),
teachers (their grid onto the student's) and objectives (windows of a
frame's grid). Tokens of a frame sit on a square ``g x g`` grid in
row-major order, N = g * g; L = T * N is a clip's flat token index.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor


def gather_tokens(x: Tensor, ids_keep: Tensor) -> Tensor:
    """x: [B,L,C], ids_keep: long[B,K] -> [B,K,C]."""
    C = x.shape[-1]
    return x.gather(1, ids_keep.unsqueeze(-1).expand(-1, -1, C))  # (B, K, C)


def scatter_kept(kept: Tensor, ids_keep: Tensor, filler: Tensor) -> Tensor:
    """Inverse of :func:`gather_tokens`: kept [B,K,C] placed at ids_keep in filler [B,L,C] -> [B,L,C].

    Out of place, so gradients reach both the kept features and the filler
    (a learned mask token, or STM's projected text).
    """
    C = kept.shape[-1]
    return filler.scatter(1, ids_keep.unsqueeze(-1).expand(-1, -1, C), kept.to(filler.dtype))  # (B, L, C)


def grid_side(N: int, what: str = "this") -> int:
    """The side g of a square grid of N tokens (ValueError when N is not a square)."""
    g = math.isqrt(N)
    if g * g != N:
        raise ValueError(f"{what} needs a square token grid per frame, got N={N} (a CLS token left in?)")
    return g


def window_tokens(frames: Tensor, window: int) -> Tensor:
    """Every token's neighbourhood: frames float[F,N,C] -> [F*N, window*window, C].

    Borders are padded by replicating the edge tokens (ClusterSTM's
    Algorithm III ``pad(mode="replicate")``); inside a window the tokens are
    row-major, so the centre token is at index ``window*window // 2``.
    """
    Fr, N, C = frames.shape
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be odd and >= 1 (a centre token), got {window}")
    g = grid_side(N, "a window")
    x = frames.transpose(1, 2).reshape(Fr, C, g, g)  # (F, C, g, g)
    r = window // 2
    if r:
        x = F.pad(x, (r, r, r, r), mode="replicate")  # (F, C, g+2r, g+2r)
    x = x.unfold(2, window, 1).unfold(3, window, 1)  # (F, C, g, g, w, w)
    x = x.permute(0, 2, 3, 4, 5, 1)  # (F, g, g, w, w, C)
    return x.reshape(Fr * N, window * window, C)  # (F*N, w*w, C)


def window_attend(logits: Tensor, values: Tensor, window: int) -> Tensor:
    """One query's attention over every token's window, without materialising the windows.

    logits float[F,N,h] (the query's score of each token, per head), values
    [F,N,h,d] -> [F,N,h,d]: for token i, the softmax of the logits in its
    ``window x window`` neighbourhood weights the values there. The same as
    attending over :func:`window_tokens` (replicate borders, so an edge token
    counts as often as it is repeated), but the F*N*window^2 windowed values
    are never built: the window's w^2 offsets are w^2 shifted views of the
    padded values, each weighted and added once (memory F*N*h*d, not w^2
    times it). The softmax is exact per window (its own maximum subtracted).
    Computed in float32, returned in the values' dtype.
    """
    Fr, N, h = logits.shape
    d = values.shape[-1]
    g = grid_side(N, "a window")
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be odd and >= 1 (a centre token), got {window}")
    r = window // 2
    lg = logits.float().transpose(1, 2).reshape(Fr, h, g, g)  # (F, h, g, g)
    v = values.float().reshape(Fr, g, g, h * d).permute(0, 3, 1, 2)  # (F, h*d, g, g)
    if r:
        lg = F.pad(lg, (r, r, r, r), mode="replicate")  # (F, h, g+2r, g+2r)
        v = F.pad(v, (r, r, r, r), mode="replicate")  # (F, h*d, g+2r, g+2r)
    w = lg.unfold(2, window, 1).unfold(3, window, 1).reshape(Fr, h, g, g, window * window)  # (F, h, g, g, w*w)
    # offsets first and contiguous: each offset's weights are one dense block (row-major offsets)
    w = w.softmax(-1).permute(4, 0, 2, 3, 1).contiguous().unsqueeze(-1)  # (w*w, F, g, g, h, 1)
    v = v.permute(0, 2, 3, 1).reshape(Fr, g + 2 * r, g + 2 * r, h, d)  # (F, g+2r, g+2r, h, d)
    out = v.new_zeros(Fr, g, g, h, d)  # (F, g, g, h, d)
    for dy in range(window):
        for dx in range(window):
            out.addcmul_(w[dy * window + dx], v[:, dy : dy + g, dx : dx + g])  # (F, g, g, h, d), in place
    return out.reshape(Fr, N, h, d).to(values.dtype)  # (F, N, h, d)


def resample_grid(x: Tensor, N: int, mode: str = "bilinear") -> Tensor:
    """Resample square token grids: [..., n, D] -> [..., N, D] (a no-op when n == N).

    The one grid resampler: ``bilinear`` (``align_corners=False``) for
    features (each output token a convex mix of its nearest inputs, so a
    teacher's features stay on its scale), ``bicubic`` for position tables
    (ViT practice when the resolution changes). Computed in float32, returned
    in the input's dtype.
    """
    *lead, n, D = x.shape
    if n == N:
        return x
    g0, g = grid_side(n, "resample_grid"), grid_side(N, "resample_grid")
    img = x.reshape(-1, g0, g0, D).permute(0, 3, 1, 2)  # (M, D, g0, g0)
    img = F.interpolate(img.float(), size=(g, g), mode=mode, align_corners=False)  # (M, D, g, g)
    return img.permute(0, 2, 3, 1).reshape(*lead, N, D).to(x.dtype)  # (..., N, D)
