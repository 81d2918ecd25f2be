"""The gradient reversal layer (Ganin and Lempitsky, 2015): identity forward, -scale x gradient backward.

MASCOT (eq. 5) puts it between the encoders and the content discriminator:
the discriminator learns to tell masked from unmasked video representations,
and the encoders, receiving the reversed gradient, learn to make them
indistinguishable, in one backward pass.
"""

from __future__ import annotations

import torch
from torch import Tensor


class _GradReverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, scale: float) -> Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return -ctx.scale * grad, None


def grad_reverse(x: Tensor, scale: float = 1.0) -> Tensor:
    """x unchanged; in backward, the incoming gradient multiplied by ``-scale``."""
    if scale < 0:
        raise ValueError(f"grad_reverse: scale must be >= 0 (it is negated in backward), got {scale}")
    return _GradReverse.apply(x, float(scale))
