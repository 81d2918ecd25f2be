"""Separable space + time position embeddings, resampled to the clip at hand.

The one position embedding of vidmask's video models (the encoder and the
token decoders): a square spatial table ``[N0, C]`` and a temporal table
``[T0, C]``, summed into ``[T, N, C]``. When a clip has another resolution or
frame count than the tables were made for, space is resampled bicubically
and time linearly (ViT / ViViT practice), so one set of weights serves
several input sizes.

The tables are learned (initialised at std 0.02, ViT practice) or fixed
sin-cos codes (:func:`sincos_tables`, MAE / VideoMAE practice): ``model.pos_embed``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from vidmask.tokens import resample_grid


def resample_time(pos: Tensor, frames: int) -> Tensor:
    """Linear resampling of a temporal table: [T0, C] -> [frames, C]."""
    t0, C = pos.shape
    if t0 == frames:
        return pos
    seq = pos.T.unsqueeze(0)  # (1, C, T0)
    seq = F.interpolate(seq.float(), size=frames, mode="linear", align_corners=True)  # (1, C, T)
    return seq[0].T.to(pos.dtype)  # (T, C)


def space_time_pos(pos_space: Tensor, pos_time: Tensor, frames: int, tokens: int) -> Tensor:
    """pos_space [N0,C], pos_time [T0,C] -> [frames, tokens, C] (tokens: a square number)."""
    if math.isqrt(tokens) ** 2 != tokens:
        raise ValueError(f"position embedding needs a square token grid, got {tokens} tokens per frame")
    space = resample_grid(pos_space, tokens, mode="bicubic")  # (N, C)
    time = resample_time(pos_time, frames)  # (T, C)
    return time[:, None, :] + space[None, :, :]  # (T, N, C)


def sincos_1d(positions: Tensor, dim: int, base: float = 10000.0) -> Tensor:
    """Transformer sin-cos code of ``positions`` float[P]: [P, dim] (dim even), sines then cosines.

    Frequencies base^(-2i/dim), i < dim/2, as "Attention is all you need" and MAE.
    """
    if dim % 2:
        raise ValueError(f"a sin-cos code needs an even width, got {dim}")
    omega = base ** (-torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))  # (dim/2,)
    angles = positions.double()[:, None] * omega[None, :]  # (P, dim/2)
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()  # (P, dim)


def sincos_tables(grid: int, frames: int, dim: int) -> tuple[Tensor, Tensor]:
    """Fixed space and time tables whose sum codes (t, h, w) without aliasing: ([grid*grid, dim], [frames, dim]).

    MAE's 2-D sin-cos code (half of its channels for rows, half for columns)
    fills the first ``dim - dim_t`` channels of the space table and a 1-D code
    of the frame index fills the last ``dim_t = dim // 4`` (rounded to an even
    width) channels of the time table; each table is zero where the other
    writes, so the separable sum :func:`space_time_pos` is a concatenation
    and two positions never share a code. Every entry is in [-1, 1] (RMS
    0.71 over its channels), the scale of the patch embeddings, unlike a
    learned table initialised at std 0.02.
    """
    dim_t = max(2, (dim // 4) // 2 * 2)  # (time channels, even)
    dim_s = dim - dim_t
    if dim_s % 4:
        raise ValueError(f"sin-cos positions need (dim - dim//4 rounded to even) divisible by 4, got dim={dim}")
    rows = torch.arange(grid).repeat_interleave(grid)  # (N,) row of each token, row-major
    cols = torch.arange(grid).repeat(grid)  # (N,)
    space = torch.zeros(grid * grid, dim)  # (N, C)
    space[:, : dim_s // 2] = sincos_1d(rows, dim_s // 2)  # (N, C_s/2)
    space[:, dim_s // 2: dim_s] = sincos_1d(cols, dim_s // 2)  # (N, C_s/2)
    time = torch.zeros(frames, dim)  # (T, C)
    time[:, dim_s:] = sincos_1d(torch.arange(frames), dim_t)  # (T, C_t)
    return space, time
