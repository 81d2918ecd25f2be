"""ClusterSTM's video-text relevance reconstruction.

Target (supplement, Algorithm III, "relevance generation"): every token of
the teacher's grid is scored against the clip's caption by pooling its
``window x window`` neighbourhood with the teacher's own pooler and taking
the cosine with the caption feature. A 1x1 window scores single tokens, which
a teacher trained on global contrast scores poorly (supplement, Figure I and
Table I: 3x3 is better on retrieval, QA and captioning); 3x3 is the default.

Prediction: a light decoder (:class:`RelevanceDecoder`) reads the student's
kept-token features, puts a learned mask token at every masked position,
and predicts one relevance scalar per token; :func:`relevance_loss` scores
it on the masked tokens only ("predict the semantic relevance between
masked regions and text", the ClusterSTM summary).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vidmask.models.blocks import Block, init_weights
from vidmask.models.video_vit import resample_space, resample_time


def check_window(N: int, window: int) -> int:
    """The side of a square grid of N tokens, after checking that an odd ``window`` fits it."""
    L = math.isqrt(N)
    if L * L != N:
        raise ValueError(f"relevance needs a square token grid per frame, got N={N} (a CLS token left in?)")
    if window < 1 or window % 2 == 0:
        raise ValueError(f"relevance window must be odd and >= 1 (a centre token), got {window}")
    return L


def window_tokens(frames: Tensor, window: int) -> Tensor:
    """Every token's neighbourhood: frames float[F,N,C] -> [F*N, window*window, C].

    Tokens sit on the sqrt(N) x sqrt(N) grid in row-major order. Borders are
    padded by replicating the edge tokens (Algorithm III's
    ``pad(mode="replicate")``); inside a window the tokens are row-major, so
    the centre token is at index ``window*window // 2``.
    """
    Fr, N, C = frames.shape
    L = check_window(N, window)
    x = frames.transpose(1, 2).reshape(Fr, C, L, L)  # (F, C, L, L)
    r = window // 2
    if r:
        x = F.pad(x, (r, r, r, r), mode="replicate")  # (F, C, L+2r, L+2r)
    x = x.unfold(2, window, 1).unfold(3, window, 1)  # (F, C, L, L, w, w)
    x = x.permute(0, 2, 3, 4, 5, 1)  # (F, L, L, w, w, C)
    return x.reshape(Fr * N, window * window, C)  # (F*N, w*w, C)


def relevance_map(
    tokens: Tensor,
    text: Tensor,
    pooler: Callable[[Tensor], Tensor],
    window: int = 3,
    chunk: int = 8192,
    pool_windows: Callable[[Tensor, int], Tensor] | None = None,
) -> Tensor:
    """Algorithm III: per-token video-text relevance, float[B,T,N].

    tokens: teacher tokens float[B,T,N,C] (patch tokens only, N square);
    text: the clip's caption feature float[B,D]; pooler: the teacher's
    pooler mapping windows [M, window*window, C] -> [M, D]; window: odd side
    of the sliding window; chunk: windows per pooler call (memory bound);
    pool_windows: optional ``(frames [F,N,C], window) -> [F*N, D]`` equal to
    ``pooler(window_tokens(frames, window))`` but cheaper
    (:meth:`vidmask.teachers.base.Teacher.pool_windows`).
    Call it under ``torch.no_grad()``: it is a target.
    """
    B, T, N, C = tokens.shape
    frames = tokens.reshape(B * T, N, C)  # (B*T, N, C)
    check_window(N, window)  # whichever pooling path runs
    per = max(1, chunk // N)  # frames per pooler call
    pool = pool_windows or (lambda f, w: pooler(window_tokens(f, w)))
    pooled = torch.cat([pool(frames[s : s + per], window) for s in range(0, B * T, per)])  # (B*T*N, D)
    x = F.normalize(pooled.float(), dim=-1).reshape(B, T * N, -1)  # (B, L, D)
    y = F.normalize(text.float(), dim=-1)  # (B, D)
    return torch.einsum("bld,bd->bl", x, y).reshape(B, T, N)  # (B, T, N)


def scatter_kept(kept: Tensor, ids_keep: Tensor, filler: Tensor) -> Tensor:
    """Inverse of ``gather_tokens``: kept [B,K,C] placed at ids_keep in filler [B,L,C] -> [B,L,C].

    Out of place, so gradients reach both the kept features and the filler
    (a learned mask token, or STM's projected text).
    """
    C = kept.shape[-1]
    return filler.scatter(1, ids_keep.unsqueeze(-1).expand(-1, -1, C), kept.to(filler.dtype))  # (B, L, C)


class TokenDecoder(nn.Module):
    """A light MAE-style decoder over all L = T*N positions.

    Kept student features (projected to ``dim``) go to their positions, a
    filler (given by the subclass) to the masked ones; space + time position
    embeddings are added everywhere, a few shared ``Block``s run, and a
    linear head maps each position to ``out_dim``.
    """

    def __init__(self, in_dim: int, out_dim: int, dim: int, depth: int, heads: int,
                 frames: int, grid: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.dim = dim
        self.embed = nn.Linear(in_dim, dim)
        self.pos_space = nn.Parameter(torch.zeros(grid * grid, dim))  # (N, dim)
        self.pos_time = nn.Parameter(torch.zeros(frames, dim))  # (T, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, out_dim)
        init_weights(self)
        nn.init.trunc_normal_(self.pos_space, std=0.02)
        nn.init.trunc_normal_(self.pos_time, std=0.02)

    def pos_embed(self, frames: int, tokens: int) -> Tensor:
        """[T, N, dim], resampled when the clip differs from the tables' frames / grid."""
        space = resample_space(self.pos_space, math.isqrt(tokens))  # (N, dim)
        time = resample_time(self.pos_time, frames)  # (T, dim)
        return time[:, None, :] + space[None, :, :]  # (T, N, dim)

    def decode(self, kept: Tensor, ids_keep: Tensor, filler: Tensor, frames: int, tokens: int) -> Tensor:
        """kept [B,K,C], ids_keep long[B,K], filler [B or 1, 1 or L, dim] -> [B, L, out_dim]."""
        B, L = kept.shape[0], frames * tokens
        x = self.embed(kept)  # (B, K, dim)
        full = scatter_kept(x, ids_keep, filler.expand(B, L, self.dim))  # (B, L, dim)
        full = full + self.pos_embed(frames, tokens).flatten(0, 1).to(full.dtype)  # (B, L, dim)
        for blk in self.blocks:
            full = blk(full)  # (B, L, dim)
        return self.head(self.norm(full))  # (B, L, out_dim)


class RelevanceDecoder(TokenDecoder):
    """Student kept features [B,K,C] -> predicted relevance per token [B, T*N].

    A learned mask token fills the masked positions (MAE); the head predicts
    the per-clip standardised relevance that :func:`relevance_loss` targets.
    """

    def __init__(self, in_dim: int, dim: int = 128, depth: int = 2, heads: int = 4,
                 frames: int = 8, grid: int = 8, mlp_ratio: float = 4.0):
        super().__init__(in_dim, 1, dim, depth, heads, frames, grid, mlp_ratio)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))  # (1, 1, dim)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def forward(self, kept: Tensor, ids_keep: Tensor, frames: int, tokens: int) -> Tensor:
        return self.decode(kept, ids_keep, self.mask_token, frames, tokens).squeeze(-1)  # (B, L)


def relevance_loss(pred: Tensor, target: Tensor, keep: Tensor, eps: float = 1e-6) -> dict[str, Tensor]:
    """MSE on the masked tokens between pred [B,T*N] and the per-clip standardised target [B,T,N].

    Why standardised MSE (as MAE's normalised-pixel loss): raw relevance is a
    cosine that, for a given teacher, sits in a narrow band whose offset
    depends on the caption (e.g. 0.20-0.30); what carries information is
    which tokens are more relevant than others in the clip. Standardising
    each clip over all its T*N tokens (mean 0, std 1, independent of the
    mask) removes the caption offset and gives the loss an O(1) scale, where
    raw-value MSE or smooth-L1 would give vanishing gradients (smooth-L1 is
    quadratic at these magnitudes anyway). Kept tokens do not count: the
    decoder must infer the relevance of what the encoder did not see.
    """
    B = target.shape[0]
    t = target.detach().reshape(B, -1).float()  # (B, L)
    t = (t - t.mean(1, keepdim=True)) / (t.std(1, unbiased=False, keepdim=True) + eps)  # (B, L)
    masked = (~keep).reshape(B, -1).float()  # (B, L) 1 = masked
    err = (pred.float() - t).pow(2) * masked  # (B, L)
    return {"relevance_loss": err.sum() / masked.sum().clamp_min(1.0)}
