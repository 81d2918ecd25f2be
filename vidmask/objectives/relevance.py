"""ClusterSTM's video-text relevance reconstruction.

Target (supplement, Algorithm III, "relevance generation"): every token of
the teacher's grid is scored against the clip's caption by pooling its
``window x window`` neighbourhood with the teacher's own pooler and taking
the cosine with the caption feature. A 1x1 window scores single tokens, which
a teacher trained on global contrast scores poorly (supplement, Figure I and
Table I: 3x3 is better on retrieval, QA and captioning); 3x3 is the default.

Prediction: one relevance scalar per token from the student's kept-token
features, with a learned mask token at every masked position: by a light
decoder of its own (:class:`RelevanceDecoder`, ``decoder: own``, the
default) or by a linear head on the visual reconstruction decoder's trunk
(``decoder: recon``, what the clusterstm recipes use; the papers do not say
which, vidmask's choice is in docs/fidelity.md); :func:`relevance_loss`
scores it on the masked tokens only ("predict the semantic relevance between
masked regions and text", the ClusterSTM summary).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vidmask.config import ConfigError
from vidmask.models.blocks import init_weights
from vidmask.models.decoder import MaskTokenDecoder
from vidmask.objectives.base import (
    RECON_TRUNK, Objective, ObjectiveConfig, ObjectiveEnv, StepContext, register_objective,
)
from vidmask.tokens import grid_side, window_tokens


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
    grid_side(N, "relevance")  # whichever pooling path runs
    if window < 1 or window % 2 == 0:
        raise ValueError(f"relevance window must be odd and >= 1 (a centre token), got {window}")
    per = max(1, chunk // N)  # frames per pooler call
    pool = pool_windows or (lambda f, w: pooler(window_tokens(f, w)))
    pooled = torch.cat([pool(frames[s : s + per], window) for s in range(0, B * T, per)])  # (B*T*N, D)
    x = F.normalize(pooled.float(), dim=-1).reshape(B, T * N, -1)  # (B, L, D)
    y = F.normalize(text.float(), dim=-1)  # (B, D)
    return torch.einsum("bld,bd->bl", x, y).reshape(B, T, N)  # (B, T, N)


class RelevanceDecoder(MaskTokenDecoder):
    """Student kept features [B,K,C] -> predicted relevance per token [B, T*N].

    A learned mask token fills the masked positions (MAE); the head predicts
    the per-clip standardised relevance that :func:`relevance_loss` targets.
    """

    def __init__(self, in_dim: int, dim: int = 128, depth: int = 2, heads: int = 4,
                 frames: int = 8, grid: int = 8, mlp_ratio: float = 4.0):
        super().__init__(in_dim, 1, dim, depth, heads, frames, grid, mlp_ratio)

    def forward(self, kept: Tensor, ids_keep: Tensor, frames: int, tokens: int) -> Tensor:
        return super().forward(kept, ids_keep, frames, tokens).squeeze(-1)  # (B, L)


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


DECODERS = ("own", "recon")


@dataclass
class RelevanceConfig(ObjectiveConfig):
    window: int = 3  # sliding window of relevance generation (the supplement compares 1 and 3)
    decoder_dim: int = 128  # width of the relevance decoder (decoder: own)
    # own: a decoder of its own; recon: one linear head on the visual reconstruction's decoder trunk
    # (loss.recon), so both targets are decoded from one pass over the clip's L = T*N positions
    decoder: str = "own"

    def __post_init__(self):
        if self.window < 1 or self.window % 2 == 0:
            raise ConfigError("loss.relevance.window must be odd (1, 3, 5, ...)")
        if self.decoder_dim < 1:
            raise ConfigError("loss.relevance.decoder_dim must be >= 1")
        if self.decoder not in DECODERS:
            raise ConfigError(f"loss.relevance.decoder must be one of {', '.join(DECODERS)}, got {self.decoder!r}")
        if self.decoder == "recon" and self.decoder_dim != RelevanceConfig.decoder_dim:
            raise ConfigError(f"loss.relevance.decoder_dim={self.decoder_dim} sizes a decoder of relevance's own, "
                              "but loss.relevance.decoder=recon reads the reconstruction decoder's trunk (its width "
                              "is loss.recon.decoder_dim): set that one, or loss.relevance.decoder=own")


@register_objective("relevance", RelevanceConfig)
class Relevance(Objective):
    """ClusterSTM's relevance reconstruction: the teacher's per-token relevance to the
    caption (Algorithm III) predicted on the masked tokens from the kept ones."""

    needs_teacher = True
    reads_teacher_text = True  # every step's captions, through the teacher's caption cache or store

    def __init__(self, cfg: RelevanceConfig, env: ObjectiveEnv):
        super().__init__()
        self.window = cfg.window
        self.shares_trunk = cfg.decoder == "recon"
        if self.shares_trunk:
            self.decoder = None
            self.head = None  # Linear(loss.recon's decoder_dim, 1), made by bind()
            self._trunk: list = []  # recon's decoder, set by bind(); a list keeps it out of this module's tree
        else:
            self.decoder = RelevanceDecoder(env.model.cfg.dim, dim=cfg.decoder_dim, frames=env.frames,
                                            grid=env.grid)

    def bind(self, objectives: dict) -> None:
        if not self.shares_trunk:
            return
        recon = objectives.get("recon")
        if recon is None:
            raise ConfigError("loss.relevance.decoder=recon decodes from the visual reconstruction's decoder: "
                              "switch loss.recon on (a weight > 0) or set loss.relevance.decoder=own")
        self._trunk = [recon.decoder]
        self.head = nn.Linear(recon.decoder.dim, 1)
        init_weights(self.head)

    def forward(self, ctx: StepContext) -> dict[str, Tensor]:
        teacher = ctx.teacher
        with torch.no_grad():
            text = teacher.encode_text(ctx.captions)  # (B, E_teacher)
            target = relevance_map(ctx.teacher_out.tokens, text, teacher.pool, self.window,
                                   pool_windows=teacher.pool_windows)  # (B, T, N)
        if self.shares_trunk:
            trunk = self._trunk[0]
            hidden = ctx.shared(RECON_TRUNK, lambda: trunk.trunk(ctx.feats, ctx.masking.ids_keep, ctx.frames,
                                                           ctx.tokens))  # (B, T*N, decoder_dim)
            pred = self.head(hidden).squeeze(-1)  # (B, T*N)
        else:
            pred = self.decoder(ctx.feats, ctx.masking.ids_keep, ctx.frames, ctx.tokens)  # (B, T*N)
        return relevance_loss(pred, target, ctx.masking.keep)
