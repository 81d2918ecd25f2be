"""`umt`: attention-guided sampling of the visible tokens (Unmasked Teacher, Li et al. 2023).

UMT keeps, in every frame, ``K = round(N * (1 - ratio))`` tokens drawn without
replacement with probability proportional to the teacher's CLS-to-patch
attention: semantically important tokens are seen more often, but not always.

Sampling uses the Gumbel-top-k trick: the K largest ``log(attn) + Gumbel``
keys are a sample without replacement proportional to ``attn`` (the same law
as drawing one token at a time and renormalising), in one vectorised step.
Tokens with zero (or negative, clamped to zero) attention rank after every
positive one and are drawn uniformly among themselves only when a frame has
fewer than K positive tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vidmask.masking.base import Masker, MaskOut, register, topk_keep

_ZERO_ATTN_OFFSET = 1e4  # below log(smallest float32) + any Gumbel draw: zero attention ranks last


def gumbel_noise(shape, generator: torch.Generator | None, device) -> Tensor:
    """Standard Gumbel samples, float32, from the explicit generator."""
    u = torch.rand(shape, generator=generator, device=device)
    tiny = torch.finfo(torch.float32).tiny
    return -torch.log(-torch.log(u.clamp(tiny, 1.0 - 1e-7)))


def umt_keep(attn: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
    """k tokens per frame sampled without replacement proportionally to attn: float[B,T,N] -> bool[B,T,N]."""
    a = attn.float().clamp_min(0.0)  # (B, T, N)
    g = gumbel_noise(a.shape, generator, a.device)  # (B, T, N)
    key = torch.where(a > 0, torch.log(a.clamp_min(torch.finfo(torch.float32).tiny)) + g, g - _ZERO_ATTN_OFFSET)
    return topk_keep(key, k)  # (B, T, N)


@register("umt")
class UmtMasker(Masker):
    """UMT masking: exactly ``kept_per_frame(N, ratio)`` visible tokens per frame,
    sampled without replacement with probability proportional to ``attn``."""

    needs_attn = True
    stochastic = True

    def __call__(self, tokens, *, attn=None, generator=None) -> MaskOut:
        self._check(tokens, attn)
        with torch.autocast(tokens.device.type, enabled=False):
            keep = umt_keep(attn.to(tokens.device), self.kept_per_frame(tokens.shape[2]), generator)  # (B, T, N)
        return MaskOut(keep=keep, ids_keep=self.kept_ids(keep), saliency=attn.float())
