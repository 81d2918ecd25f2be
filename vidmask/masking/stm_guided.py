"""`stm-guided`: vidmask's learnable adjacent-frame masking, its own reading of STM (Wu et al., CVPR 2025).

Not the official algorithm: ``stm`` (``vidmask.masking.stm``) is STM as its
authors ran it (a convolutional alignment network on the teacher's patch
embeddings, blended with the CLS attention, the top of the blend **hidden**,
Gumbel top-k at tau = 0.05, two encoder passes). This variant is the
coherent method vidmask called ``stm`` before it had the official one
(``docs/fidelity.md``, STM, "stm-guided"); an old ``stm`` run loads as it.

The idea it keeps: a token whose content reappears in frame t-1 or t+1 leaks,
because the encoder could copy it from its neighbour instead of modelling
time. This masker scores that leak and hides the leakiest tokens, keeping
high-attention ones (the opposite direction to the official code's):

1. a light projection ``z = normalize(W x)`` of every token (``proj_dim``) of
   the teacher's output tokens;
2. cross-frame similarity of each token with every token of its adjacent
   frames, pooled by a soft maximum (``log mean exp`` with a learnable scale):
   how well the token's best counterpart in frame t-1 / t+1 matches it;
3. the leak score (z-scored per frame) is blended with the teacher attention
   (z-scored per frame, when given) by a learnable weight
   ``w = sigmoid(attn_logit)``: ``keep_logit = (1 - w) * (-leak) + w * attn``,
   so attention-rich tokens stay visible as in UMT, leaky ones are hidden;
4. a hard top-k per frame of ``keep_logit + Gumbel`` (the Gumbel noise only in
   training mode), with a straight-through estimator: ``MaskOut.token_weight``,
   float[B,K] aligned with ``ids_keep``, is exactly 1.0 in the forward pass and
   carries the gradient of ``sigmoid((key - threshold) / tau)`` backward.

One encoder pass over the kept tokens, read by every objective. The encoder
multiplies ``token_weight`` onto the gathered kept tokens so the task loss
reaches the masker's parameters (a trainer that wants the masker to make the
task *harder* puts a gradient-reversal layer on ``token_weight``). The input
tokens are detached: only the masker's own parameters learn through it.

``StmGuidedMasker`` subclasses both ``torch.nn.Module`` and
:class:`~vidmask.masking.base.Masker`, so it goes into the optimiser and the
checkpoint with the model. With one frame (T = 1) there is no neighbour: the
leak is 0 and only ``attn`` (or the noise) decides.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vidmask.masking.base import Masker, MaskOut, kept_per_frame, register, topk_keep
from vidmask.masking.umt import gumbel_noise


def _zscore(x: Tensor, eps: float = 1e-6) -> Tensor:
    """Standardise over the last dim (tokens of a frame)."""
    return (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True, unbiased=False) + eps)


def adjacent_leak(z: Tensor, scale: Tensor) -> Tensor:
    """Soft-max similarity of each token to the tokens of frames t-1 and t+1.

    z: float[B,T,N,D] normalised projections; scale: () > 0. Returns float[B,T,N]
    ``log(mean_j exp(scale * <z_i, z_j>)) / scale`` over the adjacent frames' tokens
    (0 when T = 1).
    """
    B, T, N, _ = z.shape
    if T < 2:
        return z.new_zeros(B, T, N)
    sim = torch.einsum("btnd,btmd->btnm", z[:, :-1], z[:, 1:]) * scale  # (B, T-1, N, N): frame t vs t+1
    fwd = sim.logsumexp(-1)  # (B, T-1, N): frames 0..T-2 against their next frame
    bwd = sim.transpose(-1, -2).logsumexp(-1)  # (B, T-1, N): frames 1..T-1 against their previous
    pad = z.new_full((B, 1, N), float("-inf"))
    both = torch.stack([torch.cat([fwd, pad], 1), torch.cat([pad, bwd], 1)], 0)  # (2, B, T, N)
    neighbours = torch.full((T,), 2.0, device=z.device)
    neighbours[0] = neighbours[-1] = 1.0  # the first and last frames have one neighbour
    return (both.logsumexp(0) - torch.log(neighbours * N).view(1, T, 1)) / scale  # (B, T, N)


@register("stm-guided")
class StmGuidedMasker(nn.Module, Masker):
    """vidmask's adjacent-frame leak masking with learnable weights (``stm-guided``).

    Subclasses both ``torch.nn.Module`` (its parameters train with the model)
    and ``Masker`` (the mask contract). Keeps exactly
    ``kept_per_frame(N, ratio)`` tokens per frame; ``token_weight``
    float[B,K] is the straight-through weight for the gathered kept tokens.

    token_dim: token channels C (supplied by the run: `build_masker(..., token_dim=)`). tau: temperature
    of the soft top-k the gradient follows. proj_dim: width of the projection the similarity is taken in.
    """

    needs_attn = False
    stochastic = True

    def __init__(self, ratio: float = 0.75, *, token_dim: int, tau: float = 1.0, proj_dim: int = 64):
        nn.Module.__init__(self)
        Masker.__init__(self, ratio)
        if tau <= 0:
            raise ValueError(f"stm-guided: tau must be > 0, got {tau}")
        self.tau = float(tau)
        self.proj = nn.Linear(token_dim, proj_dim, bias=False)
        self.log_scale = nn.Parameter(torch.tensor(math.log(10.0)))  # similarity sharpness
        self.attn_logit = nn.Parameter(torch.zeros(()))  # blend weight of attn, sigmoid(0) = 0.5

    def keep_logits(self, tokens: Tensor, attn: Tensor | None) -> Tensor:
        """Differentiable keep scores: float[B,T,N] (higher = more likely visible)."""
        z = F.normalize(self.proj(tokens.detach().float()), dim=-1)  # (B, T, N, D)
        leak = adjacent_leak(z, self.log_scale.exp())  # (B, T, N)
        logit = -_zscore(leak)  # (B, T, N)
        if attn is not None:
            w = torch.sigmoid(self.attn_logit)
            logit = (1 - w) * logit + w * _zscore(attn.detach().float())
        return logit

    def forward(self, tokens: Tensor, *, attn: Tensor | None = None, generator=None) -> MaskOut:
        self._check(tokens, attn)
        B, T, N, _ = tokens.shape
        k = kept_per_frame(N, self.ratio)
        with torch.autocast(tokens.device.type, enabled=False):
            logit = self.keep_logits(tokens, attn)  # (B, T, N)
            key = logit
            if self.training:
                key = logit + gumbel_noise(logit.shape, generator, tokens.device)  # (B, T, N)
            keep = topk_keep(key.detach(), k)  # (B, T, N)
            # soft top-k: a sigmoid around the midpoint of the k-th and (k+1)-th keys
            top = key.detach().topk(min(k + 1, N), dim=-1).values  # (B, T, k+1)
            threshold = (top[..., k - 1] + top[..., k]) / 2 if k < N else top[..., -1] - 1.0  # (B, T)
            soft = torch.sigmoid((key - threshold.unsqueeze(-1)) / self.tau)  # (B, T, N)
            st = keep.float() + (soft - soft.detach())  # (B, T, N): 1.0 / 0.0 forward, soft gradient
        ids_keep = self.kept_ids(keep)  # (B, K)
        weight = st.reshape(B, T * N).gather(1, ids_keep)  # (B, K)
        return MaskOut(keep=keep, ids_keep=ids_keep, saliency=logit.detach(), token_weight=weight)

    def __repr__(self) -> str:
        return f"StmGuidedMasker(ratio={self.ratio}, token_dim={self.proj.in_features}, tau={self.tau})"
