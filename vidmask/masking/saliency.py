"""What strategies consume when no teacher is configured: pixel tokens and a saliency.

`pixel_tokens` is what clustering strategies cluster: per-patch normalised
pixels.

`umt`, `mascot-*`, `stm` and `stm-guided` rank tokens by a teacher's CLS-to-patch attention.
When no teacher is configured, pretraining gives them this stand-in instead:
how far each patch's mean colour lies from the frame's median patch colour.
On the motion-shapes corpus (saturated objects on muted textures) it lights
up the objects; on natural video it is only a rough foreground cue, so a
teacher's attention should be preferred wherever one is available.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def pixel_tokens(patches: Tensor) -> Tensor:
    """patches float[B,T,N,P] -> zero-mean, unit-norm tokens float[B,T,N,P] (float32)."""
    patches = patches.float()
    return F.normalize(patches - patches.mean(-1, keepdim=True), dim=-1)  # (B, T, N, P)


def colour_saliency(patches: Tensor, eps: float = 1e-6) -> Tensor:
    """patches float[B,T,N,P*P*3] in (p1 p2 c) order -> saliency float[B,T,N] summing to 1 per frame."""
    B, T, N, D = patches.shape
    rgb = patches.float().reshape(B, T, N, D // 3, 3).mean(3)  # (B, T, N, 3) mean colour per patch
    ref = rgb.median(dim=2, keepdim=True).values  # (B, T, 1, 3) the frame's typical colour
    dist = (rgb - ref).norm(dim=-1) + eps  # (B, T, N)
    return dist / dist.sum(-1, keepdim=True)  # (B, T, N)
