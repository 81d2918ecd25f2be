"""Clause-to-token contrast: each clause of a caption must find its own token in its clip.

A caption of a scene with several moving objects ("a red box becomes smaller, a yellow plus
sign moves into view from the left and a big orange semicircle rotates") names one motion per
object. Contrasted as one pooled vector against one pooled clip feature, the clause that
changes between two such scenes is a third of the caption and its object a third of the
tokens: the difference is diluted on both sides, and nothing ties a motion to its object.
Late interaction (FILIP, Yao et al. ICLR 2022: each word's best-matching patch; DRL's WTI,
which MASCOT trains with) scores a caption against a clip by matching units to units. Here the
text units are **clauses** (the caption cut at commas, semicolons, colons and at "and", "while", "then",
a generic English rule, never the corpus's structure), each encoded alone by the text tower
and head, and the video units are the clip's encoder tokens projected by the video head (the
head that projects their mean, so the mean of the token embeddings is the pooled feature's
direction before normalising):

    s(clause, clip) = max over the clip's tokens of cos(clause, token)
    S(caption, clip) = mean over the caption's clauses of s(clause, clip)

and ``S``, scaled by the model's contrastive temperature, enters a symmetric InfoNCE over the
batch like ``vtc``'s (another caption of the same video is no negative). A clause can only
score high on a clip that has a token holding its object *and* its motion, so the encoder is
pushed to bind them in one token. Retrieval still scores pooled features; this term shapes
the tokens they are pooled from.

Cost: the clauses through the text tower (cached with a frozen tower, as captions are) and a
[clauses, B, K] product of E-dim vectors; the video encoder does no more work.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from vidmask.config import ConfigError
from vidmask.objectives.base import Objective, ObjectiveConfig, ObjectiveEnv, StepContext, register_objective
from vidmask.objectives.vtc import drop_same_video
from vidmask.precision import float32_math

_JOIN = r"(?:and|while|then)"
_CUT = re.compile(rf"\s*[,;:]\s*(?:{_JOIN}\s+)?|\s+{_JOIN}\s+", re.IGNORECASE)  # ", and" is one cut


def split_clauses(caption: str, min_words: int = 2) -> list[str]:
    """The caption's clauses of at least ``min_words`` words, in order; the whole caption when none is."""
    parts = [p.strip() for p in _CUT.split(caption)]
    kept = [p for p in parts if len(p.split()) >= min_words]
    return kept or [caption.strip()]


def clause_scores(clauses: Tensor, owner: Tensor, tokens: Tensor, captions: int) -> Tensor:
    """Late-interaction scores of captions against clips.

    clauses float[M,E] unit clause features, owner long[M] the caption of each clause (0..captions-1,
    every caption at least one), tokens float[B,K,E] unit token embeddings of B clips ->
    float[captions,B]: the mean over each caption's clauses of the clause's best cosine over a clip's tokens.
    """
    best = torch.einsum("me,bke->mbk", clauses, tokens).amax(-1)  # (M, B)
    total = best.new_zeros(captions, best.shape[1]).index_add_(0, owner, best)  # (captions, B)
    count = torch.bincount(owner, minlength=captions).clamp_min(1).to(best.dtype)  # (captions,)
    return total / count[:, None]  # (captions, B)


@dataclass
class ClausesConfig(ObjectiveConfig):
    min_words: int = 2  # shorter pieces of a caption are not clauses ("and" alone, a stray word)

    def __post_init__(self):
        if self.min_words < 1:
            raise ConfigError(f"loss.clauses.min_words must be >= 1, got {self.min_words}")


@register_objective("clauses", ClausesConfig)
class ClauseContrast(Objective):
    """Symmetric InfoNCE over clause-to-token late-interaction scores (:func:`clause_scores`)."""

    def __init__(self, cfg: ClausesConfig, env: ObjectiveEnv):
        super().__init__()
        self.min_words = cfg.min_words

    def forward(self, ctx: StepContext) -> dict[str, Tensor]:
        model, tokens = ctx.model, ctx.video_tokens  # (B, K, C)
        B, device = tokens.shape[0], tokens.device
        pieces = [split_clauses(c, self.min_words) for c in ctx.captions]
        owner = torch.tensor([i for i, p in enumerate(pieces) for _ in p], device=device)  # (M,)
        clauses = model.encode_text([c for p in pieces for c in p]).float()  # (M, E) unit
        emb = F.normalize(model.vision_proj(tokens).float(), dim=-1)  # (B, K, E)
        scale = model.temperature_scale()
        with float32_math(device.type):
            logits = scale.float() * clause_scores(clauses, owner, emb, B)  # (B, B): caption i, clip j
            logits = drop_same_video(logits, ctx.pair_ids)  # another caption of one video is no negative
            target = torch.arange(B, device=device)
            loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        return {"clauses_loss": loss, "clauses_per_caption": torch.tensor(owner.numel() / B)}
