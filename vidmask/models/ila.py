"""Adjacent-frame alignment after ILA (Implicit Learnable Alignment, Tu et al., ICCV 2023), as STM uses it.

STM (Wu et al., CVPR 2025; code ``May2333/STM``) runs one small convolutional
network on every pair of adjacent frames (t, t+1), their token maps
concatenated on channels, and reads two things from it:

* two **points** per pair, one in frame t and one in frame t+1 (tanh x 0.75,
  in [-1, 1] grid coordinates, x then y): where the pair's content lines up.
  Each point becomes a soft **window** over the frame's grid
  (:func:`window_map`), averaged over 9 jittered copies of the point
  (:func:`jittered_window_map`);
* the **interactive features** of the pair (its first half of channels for
  frame t, its second half for frame t+1).

A frame belongs to two pairs (one for the first and last frames), so per-frame
values are the mean of the two (:func:`per_frame`). STM's mask module
(``vidmask.masking.stm``) turns the windows into a per-frame score; its
decoder (``vidmask.objectives.stm_decoder``) passes messages between frames
with :class:`Ila`: the windowed features of the neighbouring frame plus the
interactive features.

Tokens sit on a square ``side x side`` grid per frame in row-major order
(token ``y * side + x``); the network pools twice by 2, so ``side >= 4``.
Every function takes ``[B, P, ...]`` with P = T-1 pairs, or ``[B, T, ...]``.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from vidmask.tokens import grid_side

# ILA's 9 jitter directions: the point itself, the 4 axis neighbours, the 4 diagonal ones (times `jitter`)
JITTER = ((0, 0), (0, 1), (1, 0), (0, -1), (-1, 0), (1, 1), (-1, -1), (1, -1), (-1, 1))
POINT_SCALE = 0.75  # ILA scales the tanh points so a window centre stays inside the grid


def window_profile(offset: Tensor) -> Tensor:
    """One axis of a window: 1 + a trapezoid of the signed distance to the point (grid units of [-1, 1]).

    The trapezoid is 1 within 0.25 of the point and falls linearly (slope 1.5) to 0 at 0.25 + 1/1.5.
    The constant 1 is what STM's ``aligned_mask_generation`` adds with its second pair of conditions
    (they sum to 1 everywhere), so a window's values lie in [1, 2] per axis, [1, 4] per token.
    """
    d = offset.abs()
    ramp = torch.relu(1.0 - (d - 0.25) * 1.5)
    return 1.0 + torch.where(d <= 0.25, torch.ones_like(ramp), ramp)


def window_map(points: Tensor, side: int) -> Tensor:
    """Soft windows around points: float[..., 2] (x, y in [-1, 1]) -> float[..., side*side] (row-major).

    The value at token (y, x) is ``profile(gx - px) * profile(gy - py)`` with grid coordinates
    ``g = -1 + 2 i / (side - 1)``; differentiable in the points (through the ramps).
    """
    coords = torch.linspace(-1.0, 1.0, side, device=points.device, dtype=points.dtype)  # (side,)
    wx = window_profile(coords - points[..., :1])  # (..., side) columns
    wy = window_profile(coords - points[..., 1:])  # (..., side) rows
    return (wy.unsqueeze(-1) * wx.unsqueeze(-2)).flatten(-2)  # (..., side*side)


def jittered_window_map(points: Tensor, side: int, jitter: float) -> Tensor:
    """The mean of :func:`window_map` over the point moved by ``jitter`` in ILA's 9 directions:
    float[..., 2] -> float[..., side*side]. ILA (and STM, which builds it with ``is_training=True``) always
    jitters, with ``jitter = 0.2``; 0 gives the plain window."""
    offsets = torch.tensor(JITTER, device=points.device, dtype=points.dtype) * jitter  # (9, 2)
    return window_map(points.unsqueeze(-2) + offsets, side).mean(-2)  # (..., side*side)


def per_frame(first: Tensor, second: Tensor, last: str = "second") -> Tensor:
    """Pair values -> frame values: first, second float[B,P,...] (pair t's value for frame t and for frame
    t+1, P = T-1) -> float[B,T,...].

    Frame 0 takes pair 0's ``first``; frame t in 1..T-2 the mean of pair t's ``first`` and pair t-1's
    ``second``; the last frame pair T-2's ``second`` (``last="second"``, ILA) or, with ``last="first"``,
    pair T-2's ``first``, which is what STM's mask module (``AlignMask.forward``) takes.
    """
    if last not in ("first", "second"):
        raise ValueError(f"last must be 'first' or 'second', got {last!r}")
    end = (second if last == "second" else first)[:, -1:]  # (B, 1, ...)
    middle = (first[:, 1:] + second[:, :-1]) / 2  # (B, P-1, ...)
    return torch.cat([first[:, :1], middle, end], 1)  # (B, T, ...)


def _conv_bn_relu(cin: int, cout: int, kernel: int, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, padding=kernel // 2, groups=groups), nn.BatchNorm2d(cout), nn.ReLU()]


class PairAligner(nn.Module):
    """ILA's pair network: adjacent frames -> interactive features and two points per pair.

    ``pre``, ``cur`` float[B,P,N,D] (frame t and frame t+1 of each pair) -> (features
    float[B,P,channels,side,side], points float[B,P,4]: (x, y) in frame t, then (x, y) in frame t+1).

    Layers as ILA's: a depthwise-separable 3x3 conv (2D -> channels), a 3x3 conv, each with
    batch norm and ReLU (the interactive features); then two 3x3 convs (channels/2) each followed by
    batch norm, 2x2 max pooling and ReLU, a global max pool, and per pair two grouped linear maps
    (groups of 2: one half of the channels predicts frame t's point, the other frame t+1's) and a tanh,
    scaled by 0.75. The last map starts at zero, so every point starts at the grid centre.
    """

    def __init__(self, dim: int, channels: int = 256):
        super().__init__()
        if channels < 8 or channels % 8:
            raise ValueError(f"PairAligner channels must be a multiple of 8, got {channels}")
        self.channels = channels
        self.extract = nn.Sequential(
            *_conv_bn_relu(2 * dim, 2 * dim, 3, groups=2 * dim),  # depthwise
            *_conv_bn_relu(2 * dim, channels, 1),  # pointwise
            *_conv_bn_relu(channels, channels, 3),
        )
        half = channels // 2
        self.pool = nn.Sequential(
            nn.Conv2d(channels, half, 3, padding=1), nn.BatchNorm2d(half), nn.MaxPool2d(2), nn.ReLU(),
            nn.Conv2d(half, half, 3, padding=1), nn.BatchNorm2d(half), nn.MaxPool2d(2), nn.ReLU(),
            nn.AdaptiveMaxPool2d(1),
        )
        # kernel-1 Conv1d over pairs = a grouped linear map per pair
        self.points = nn.Sequential(nn.Conv1d(half, half // 2, 1, groups=2), nn.ReLU(),
                                    nn.Conv1d(half // 2, 4, 1, groups=2), nn.Tanh())
        nn.init.zeros_(self.points[2].weight)
        nn.init.zeros_(self.points[2].bias)

    def forward(self, pre: Tensor, cur: Tensor) -> tuple[Tensor, Tensor]:
        B, P, N, D = pre.shape
        side = grid_side(N, "STM's alignment")
        if side < 4:
            raise ValueError(f"STM's alignment pools its grid twice by 2: it needs a grid side >= 4, got {side}")
        pairs = torch.cat([pre, cur], -1)  # (B, P, N, 2D): frame t's channels, then frame t+1's
        pairs = rearrange(pairs, "b p (h w) c -> (b p) c h w", h=side)  # (B*P, 2D, side, side)
        feats = self.extract(pairs)  # (B*P, channels, side, side)
        pooled = self.pool(feats).flatten(1).unsqueeze(-1)  # (B*P, channels/2, 1)
        points = POINT_SCALE * self.points(pooled).squeeze(-1)  # (B*P, 4)
        return feats.reshape(B, P, *feats.shape[1:]), points.reshape(B, P, 4)  # (B, P, ch, s, s), (B, P, 4)


class Ila(nn.Module):
    """ILA's message passing between adjacent frames, as STM's decoder runs it.

    x float[B,T,N,D] -> (aligned float[B,T,N,D], interactive float[B,T,N,D]):

    * aligned: each frame's tokens weighted by its window (:func:`jittered_window_map` of its point in
      the pair), per frame by :func:`per_frame` (ILA's: the last frame from the last pair's second point);
    * interactive: the pair features split into frame t's half and frame t+1's half, per frame,
      a temporal convolution (kernel 3 over T), then a linear map from channels/2 to D.

    Needs T >= 2 frames.
    """

    def __init__(self, dim: int, channels: int = 256, jitter: float = 0.2):
        super().__init__()
        self.align = PairAligner(dim, channels)
        half = channels // 2
        self.temporal = nn.Conv3d(half, half, kernel_size=(3, 1, 1), padding=(1, 0, 0))
        self.fc = nn.Linear(half, dim)
        self.jitter = float(jitter)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        B, T, N, D = x.shape
        if T < 2:
            raise ValueError("ILA aligns adjacent frames: it needs at least 2 frames")
        side = grid_side(N, "ILA")
        feats, points = self.align(x[:, :-1], x[:, 1:])  # (B, T-1, ch, s, s), (B, T-1, 4)
        half = feats.shape[2] // 2
        inter = per_frame(feats[:, :, :half], feats[:, :, half:])  # (B, T, ch/2, s, s)
        # in float32: under CPU bf16 autocast this Conv3d's weight gradient comes out non-finite now and
        # then at T = 2 (torch 2.13); the conv is small
        with torch.autocast(x.device.type, enabled=False):
            inter = self.temporal(inter.transpose(1, 2).float())  # (B, ch/2, T, s, s)
        inter = self.fc(rearrange(inter, "b c t h w -> b t (h w) c"))  # (B, T, N, D)
        first = jittered_window_map(points[..., :2], side, self.jitter).unsqueeze(-1) * x[:, :-1]  # (B, T-1, N, D)
        second = jittered_window_map(points[..., 2:], side, self.jitter).unsqueeze(-1) * x[:, 1:]  # (B, T-1, N, D)
        return per_frame(first, second), inter  # (B, T, N, D) each
