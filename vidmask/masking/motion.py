"""`motion-topk`: keep each frame's tokens that change most from the adjacent frames.

A motion-guided selection from the patches alone, no teacher and no optical
flow: a token's motion energy is the squared distance of its patch (the
teacher's patch embedding where it has one, else the raw pixels) to the patch
at the same position in the previous and the next frame, averaged over the
neighbours it has. Each frame keeps its ``round(N * (1 - ratio))`` highest.

Precedents: EVEREST (Hwang et al., ICML 2024) selects the tokens whose
embeddings change most between adjacent frames; MGM / MGMAE (Fan et al.; Huang et al., ICCV 2023) guide masks by
motion vectors or flow; the ClusterSTM summary's temporal density is the
same-position adjacent-frame dissimilarity (``clusterstm select=adjacent``
clusters first and uses a cosine). Here the distance is not normalised, so a
static patch scores zero whatever its texture, and a moving object scores
on both its leading and trailing edges. On a static clip every score is
(near) zero and the choice falls to decoding noise and then the lowest index.

The same rule selects the tokens an encoder sees at evaluation with
``model.eval_tokens=motion`` (:func:`motion_ids`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from vidmask.masking.base import Masker, MaskOut, keep_to_ids, kept_per_frame, register, topk_keep


def adjacent_mean(pairs: Tensor) -> Tensor:
    """A score per pair of adjacent frames float[B,T-1,N] (frame t+1 against frame t) -> float[B,T,N]: each
    frame's mean over the pairs it is in, t-1 and t+1 (one at the ends; T = 1 from an empty [B,0,N]: zeros)."""
    B, P, N = pairs.shape
    T = P + 1
    total = pairs.new_zeros(B, T, N)  # (B, T, N)
    total[:, 1:] += pairs  # against the previous frame
    total[:, :-1] += pairs  # against the next frame
    count = pairs.new_full((T,), 2.0)  # (T,): neighbours of each frame
    count[0].fill_(1.0)  # (fill_ on a view: no scalar copied from the host)
    count[-1].fill_(1.0)
    return total / count.view(1, T, 1)  # (B, T, N)


def motion_energy(patches: Tensor) -> Tensor:
    """patches float[B,T,N,P] -> float[B,T,N]: mean squared change to the same position in frames t-1 and t+1
    (one neighbour at the ends; zeros when T = 1)."""
    x = patches.float()  # (B, T, N, P)
    return adjacent_mean((x[:, 1:] - x[:, :-1]).pow(2).mean(-1))  # (B, T, N)


def motion_keep(patches: Tensor, k: int) -> Tensor:
    """patches float[B,T,N,P] -> keep bool[B,T,N]: the k highest-energy tokens of every frame, ties to the
    lowest index."""
    return topk_keep(motion_energy(patches), k)  # (B, T, N)


def motion_ids(patches: Tensor, ratio: float) -> Tensor:
    """The kept-token indices long[B,K] (into T*N, ascending) of :func:`motion_keep` at mask ratio ``ratio``."""
    k = kept_per_frame(patches.shape[2], ratio)
    return keep_to_ids(motion_keep(patches, k), patches.shape[1] * k)  # (B, K)


@register("motion-topk")
class MotionTopkMasker(Masker):
    """Each frame's most-changing tokens (motion energy to the adjacent frames). Deterministic."""

    stochastic = False
    inputs = "patch_embeds"  # the change of a patch, before any transformer mixes positions

    def __call__(self, tokens, *, attn=None, generator=None) -> MaskOut:
        self._check(tokens, attn)
        with torch.autocast(tokens.device.type, enabled=False):
            energy = motion_energy(tokens)  # (B, T, N)
            keep = topk_keep(energy, self.kept_per_frame(tokens.shape[2]))  # (B, T, N)
        return MaskOut(keep=keep, ids_keep=self.kept_ids(keep), saliency=energy)
