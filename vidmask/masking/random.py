"""`random` and `tube` masking: the baselines every paper compares with."""

from __future__ import annotations

import torch
from torch import Tensor

from vidmask.masking.base import Masker, MaskOut, register, topk_keep


def random_keep(B: int, T: int, N: int, k: int, generator: torch.Generator | None, device) -> Tensor:
    """Uniformly random, exactly k kept tokens in every frame: bool[B,T,N]."""
    noise = torch.rand(B, T, N, generator=generator, device=device)  # (B, T, N)
    return topk_keep(noise, k)  # (B, T, N)


def tube_keep(B: int, T: int, N: int, k: int, generator: torch.Generator | None, device) -> Tensor:
    """One random spatial mask per clip, repeated over all frames (VideoMAE): bool[B,T,N]."""
    noise = torch.rand(B, 1, N, generator=generator, device=device)  # (B, 1, N)
    return topk_keep(noise, k).expand(B, T, N).contiguous()  # (B, T, N)


@register("random")
class RandomMasker(Masker):
    """Uniform random masking with a fixed count per frame."""

    def __call__(self, tokens, *, attn=None, generator=None) -> MaskOut:
        self._check(tokens, attn)
        B, T, N, _ = tokens.shape
        keep = random_keep(B, T, N, self.kept_per_frame(N), generator, tokens.device)  # (B, T, N)
        return MaskOut(keep=keep, ids_keep=self.kept_ids(keep))


@register("tube")
class TubeMasker(Masker):
    """VideoMAE tube masking: the same spatial positions are kept in every frame."""

    def __call__(self, tokens, *, attn=None, generator=None) -> MaskOut:
        self._check(tokens, attn)
        B, T, N, _ = tokens.shape
        keep = tube_keep(B, T, N, self.kept_per_frame(N), generator, tokens.device)  # (B, T, N)
        return MaskOut(keep=keep, ids_keep=self.kept_ids(keep))


@register("none")
class NoMasker(Masker):
    """All tokens (the `full` recipe): ratio is ignored and must be 0."""

    fixed_ratio = 0.0

    def __init__(self, ratio: float = 0.0):
        super().__init__(ratio)
        if ratio != 0.0:
            raise ValueError("`none` keeps every token; set mask.ratio=0")

    def kept_per_frame(self, num_tokens: int) -> int:
        return num_tokens

    def __call__(self, tokens, *, attn=None, generator=None) -> MaskOut:
        self._check(tokens, attn)
        B, T, N, _ = tokens.shape
        keep = torch.ones(B, T, N, dtype=torch.bool, device=tokens.device)  # (B, T, N)
        return MaskOut(keep=keep, ids_keep=self.kept_ids(keep))
