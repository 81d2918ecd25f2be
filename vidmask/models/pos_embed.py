"""Separable space + time position embeddings, resampled to the clip at hand.

The one position embedding of vidmask's video models (the encoder and the
token decoders): a square spatial table ``[N0, C]`` and a temporal table
``[T0, C]``, summed into ``[T, N, C]``. When a clip has another resolution or
frame count than the tables were made for, space is resampled bicubically
and time linearly (ViT / ViViT practice), so one set of weights serves
several input sizes.
"""

from __future__ import annotations

import math

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
