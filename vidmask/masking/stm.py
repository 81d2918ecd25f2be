"""`stm`: STM's spatio-temporal mask module, as its authors ran it (Wu et al., CVPR 2025; ``May2333/STM``).

Per frame of a clip, from the teacher's **patch embeddings** (before its
transformer) and its CLS-to-patch attention (``docs/fidelity.md``, STM, has
the official code file and function of every step):

1. ``x = LayerNorm(Linear(patch_embeds))`` (STM's ``temp_fc``, ``temp_ln``; the
   embeddings are detached, so only the module learns through them);
2. adjacent frames concatenated on channels, ILA's pair network
   (:class:`~vidmask.models.ila.PairAligner`) predicts one point per frame of
   each pair; each point becomes a window over the grid, averaged over 9
   jittered copies; per frame the mean of its two pairs' windows (the first
   frame: pair 0's; the last frame: the last pair's *first* point, as STM's
   ``AlignMask`` takes it), then a softmax over the frame's N tokens;
3. ``score = softmax(lam * aligned + (1 - lam) * attn)`` with a learnable
   scalar ``lam`` (init 0.5, its own learning rate: ``lambda_lr_scale`` x the
   run's, 500 = STM's 5e-2 against its base 1e-4);
4. Gumbel-softmax top-k (:func:`gumbel_topk`, tau = 0.05): ``int(N * ratio)``
   tokens per frame (STM: 0.7) are **masked**, the top of the score: tokens with
   high attention and a well-aligned window are hidden; the rest are kept.

Straight-through, as STM's ``y_hard - y_soft.detach() + y_soft``: the kept
tokens carry ``MaskOut.token_weight`` (1 - mask, exactly 1.0 forward) and the
masked ones ``MaskOut.masked_weight`` (mask, exactly 1.0 forward); the encoder
multiplies them onto the tokens it encodes, so the losses reach ``lam`` and the
pair network. STM encodes **both** sets (``video_text_set = "masked"``): the
kept 30 % for the teacher distillation (the ``stm`` objective), the masked 70 %
for vtc, vtm and mlm (``vidmask.tasks.pretrain``).

The Gumbel noise is always drawn (STM samples every time it masks), from the
explicit generator: one standard Gumbel tensor [B,T,N] per call. Its scale
(std 1.28) dwarfs the differences of the score, a softmax over N tokens of
values below 1 (at N = 196 its entries span about 0.0051 to 0.0059), so the
sampled mask is close to uniform with a slight lean to the score; that is the
official behaviour and is kept. With the teacher's patch embeddings
absent (``lit-effnet``, or no teacher) the module reads the raw pixel patches:
CLIP's patch embedding is a linear map of them, and ``Linear`` follows.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vidmask.masking.base import Masker, MaskOut, keep_to_ids, register, topk_keep
from vidmask.masking.umt import gumbel_noise
from vidmask.models.ila import PairAligner, jittered_window_map, per_frame
from vidmask.tokens import grid_side

VIDEO_TEXT_SETS = ("masked", "kept")


def gumbel_topk(score: Tensor, k: int, tau: float, noise: Tensor) -> tuple[Tensor, Tensor]:
    """STM's ``gumbel_softmax_topk(score, k, tau, hard=True)`` with the noise given.

    score, noise: float[..., N] -> (hard bool[..., N] with exactly k True: the top-k of ``score + noise``,
    ties to the lowest index; soft float[..., N] = ``softmax((score + noise) / tau)``, the relaxation the
    gradient follows). STM takes the top-k of ``soft``: the same tokens, without the ties its underflow
    to 0 would make at tau = 0.05.
    """
    key = (score + noise) / tau  # (..., N)
    return topk_keep(key.detach(), k), key.softmax(-1)  # (..., N), (..., N)


@register("stm")
class StmMasker(nn.Module, Masker):
    """STM's mask module: learnable, reads the teacher's patch embeddings, hides the top of its score.

    token_dim: width of the patch embeddings (supplied by the run). width: the module's width (STM:
    its joint space, 512). channels: the pair network's convolution width (STM: 256). tau: Gumbel-softmax
    temperature (STM: 0.05). jitter: the window points' jitter (STM: 0.2). lambda_init: lam's start
    (STM: 0.5). lambda_lr_scale: lam's learning rate over the run's (STM: 5e-2 / 1e-4 = 500).
    video_text_set: "masked" (STM: vtc, vtm and mlm read a second pass over the masked tokens) or
    "kept" (one pass, every objective on the kept tokens: an ablation).

    Keeps ``N - int(N * ratio)`` tokens per frame (STM's count), needs T >= 2 frames and a square
    grid of side >= 4.
    """

    needs_attn = True
    stochastic = True
    inputs = "patch_embeds"
    needs_grid = True

    def __init__(self, ratio: float = 0.7, *, token_dim: int, width: int = 512, channels: int = 256,
                 tau: float = 0.05, jitter: float = 0.2, lambda_init: float = 0.5, lambda_lr_scale: float = 500.0,
                 video_text_set: str = "masked"):
        nn.Module.__init__(self)
        Masker.__init__(self, ratio)
        if tau <= 0 or jitter < 0 or lambda_lr_scale <= 0 or width < 1:
            raise ValueError(f"stm: tau and lambda_lr_scale must be > 0, jitter >= 0 and width >= 1; got tau={tau}, "
                             f"jitter={jitter}, lambda_lr_scale={lambda_lr_scale}, width={width}")
        if video_text_set not in VIDEO_TEXT_SETS:
            raise ValueError(f"stm: video_text_set must be one of {', '.join(VIDEO_TEXT_SETS)}, got {video_text_set!r}")
        self.tau, self.jitter = float(tau), float(jitter)
        self.video_text_set = video_text_set
        self.lr_scales = {"lam": float(lambda_lr_scale)}
        self.fc = nn.Linear(token_dim, width)  # STM's temp_fc
        self.norm = nn.LayerNorm(width)  # STM's temp_ln
        self.align = PairAligner(width, channels)  # STM's AlignMask: ILA's pair network
        self.lam = nn.Parameter(torch.tensor(float(lambda_init)))  # STM's lambda_param_tp

    def kept_per_frame(self, num_tokens: int) -> int:
        """STM masks ``int(N * ratio)`` tokens per frame and keeps the rest (59 of 196 at 0.7)."""
        return num_tokens - min(int(num_tokens * self.ratio), num_tokens - 1)

    def scores(self, tokens: Tensor, attn: Tensor) -> Tensor:
        """The blended score STM samples from: tokens float[B,T,N,C] (patch embeddings), attn float[B,T,N]
        -> float[B,T,N], a softmax over each frame's tokens (higher = more likely masked)."""
        B, T, N, _ = tokens.shape
        side = grid_side(N, "stm")
        x = self.norm(self.fc(tokens.detach().float()))  # (B, T, N, W)
        _, points = self.align(x[:, :-1], x[:, 1:])  # (B, T-1, 4): a point in frame t, one in frame t+1
        first = jittered_window_map(points[..., :2], side, self.jitter)  # (B, T-1, N)
        second = jittered_window_map(points[..., 2:], side, self.jitter)  # (B, T-1, N)
        aligned = per_frame(first, second, last="first").softmax(-1)  # (B, T, N)
        blend = self.lam * aligned + (1 - self.lam) * attn.detach().float()  # (B, T, N)
        return blend.softmax(-1)  # (B, T, N)

    def forward(self, tokens: Tensor, *, attn: Tensor | None = None, generator=None) -> MaskOut:
        self._check(tokens, attn)
        B, T, N, _ = tokens.shape
        if T < 2:
            raise ValueError("stm aligns adjacent frames: it needs at least 2 token frames")
        n_mask = N - self.kept_per_frame(N)
        if n_mask == 0 and self.video_text_set == "masked":
            raise ValueError(f"stm: ratio {self.ratio} masks no token of {N}, and the video-text objectives read "
                             "the masked set")
        with torch.autocast(tokens.device.type, enabled=False):
            score = self.scores(tokens, attn)  # (B, T, N)
            noise = gumbel_noise(score.shape, generator, tokens.device)  # (B, T, N)
            masked, soft = gumbel_topk(score, n_mask, self.tau, noise)  # (B, T, N) bool, (B, T, N)
            delta = (soft - soft.detach()).flatten(1)  # (B, L): 0 forward, the soft mask's gradient
        keep = ~masked
        ids_keep, ids_masked = self.kept_ids(keep), keep_to_ids(masked, T * n_mask)  # (B, K), (B, L-K)
        # STM multiplies the kept tokens by 1 - mask and the masked ones by mask (mask = hard + delta)
        token_weight = 1.0 - delta.gather(1, ids_keep)  # (B, K)
        masked_weight = 1.0 + delta.gather(1, ids_masked)  # (B, L-K)
        return MaskOut(keep=keep, ids_keep=ids_keep, saliency=score.detach(), token_weight=token_weight,
                       masked_weight=masked_weight)

    def __repr__(self) -> str:
        return (f"StmMasker(ratio={self.ratio}, token_dim={self.fc.in_features}, width={self.fc.out_features}, "
                f"tau={self.tau}, video_text_set={self.video_text_set!r})")
