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

``loss.clauses.swap=w`` adds counterfactual clauses at the token level: each clause with a word of
``loss.swap``'s lexicon of opposites is copied with one such word turned ("a red arrow sinks" ->
"a red arrow rises"), and the clip's best token for the true clause must score above its best token
for the turned one (a two-way softmax at the contrastive temperature, weighted by w, term
``clauses_swap_loss``). ``loss.swap`` does this with the pooled feature, where another object
that rises can answer for the red arrow; here no token may hold "red arrow" with "rises" unless
one does, so the motion is pushed into the token of its object. ``clauses_swap_acc``: the share
of turned clauses scored below their true clause.

Cost: the clauses through the text tower (cached with a frozen tower, as captions are) and a
[clauses, B, K] product of E-dim vectors (with the swap, the turned clauses too, against their
own clip's tokens only); the video encoder does no more work.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from vidmask.config import ConfigError
from vidmask.lexicon import pair_table
from vidmask.objectives.base import Objective, ObjectiveConfig, ObjectiveEnv, StepContext, register_objective
from vidmask.objectives.swap import DEFAULT_PAIRS, host_generator, swap_word
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


def clause_similarity(clauses: Tensor, owner: Tensor, tokens: Tensor, captions: int, chunk: int = 256) -> Tensor:
    """:func:`clause_scores` of every caption against every clip, ``chunk`` clauses at a time (an evaluation's
    [clauses, clips, tokens] product does not fit at once): float[M,E], long[M], float[Nv,K,E] -> float[captions,Nv]."""
    total = tokens.new_zeros(captions, tokens.shape[0])  # (captions, Nv)
    for s in range(0, clauses.shape[0], chunk):
        best = torch.einsum("me,vke->mvk", clauses[s : s + chunk], tokens).amax(-1)  # (m, Nv)
        total.index_add_(0, owner[s : s + chunk], best)
    count = torch.bincount(owner, minlength=captions).clamp_min(1).to(total.dtype)  # (captions,)
    return total / count[:, None]  # (captions, Nv)


def own_clip_scores(clauses: Tensor, clip: Tensor, tokens: Tensor) -> Tensor:
    """clauses float[M,E] unit, clip long[M] the clip of each, tokens float[B,K,E] unit -> float[M]: each
    clause's best cosine over its own clip's tokens."""
    return torch.einsum("me,mke->mk", clauses, tokens[clip]).amax(-1)  # (M,)


@dataclass
class ClausesConfig(ObjectiveConfig):
    min_words: int = 2  # shorter pieces of a caption are not clauses ("and" alone, a stray word)
    # weight of the token-level counterfactual: each clause against itself with one word of `pairs` turned
    swap: float = 0.0
    pairs: list[str] = field(default_factory=lambda: list(DEFAULT_PAIRS))  # loss.swap's lexicon of opposites

    def __post_init__(self):
        if self.min_words < 1:
            raise ConfigError(f"loss.clauses.min_words must be >= 1, got {self.min_words}")
        if isinstance(self.swap, bool) or not (math.isfinite(self.swap) and self.swap >= 0):
            raise ConfigError(f"loss.clauses.swap must be a finite number >= 0 (0 = off), got {self.swap!r}")
        try:
            pair_table(self.pairs, source="loss.clauses.pairs")
        except ValueError as e:
            raise ConfigError(str(e)) from None


@register_objective("clauses", ClausesConfig)
class ClauseContrast(Objective):
    """Symmetric InfoNCE over clause-to-token late-interaction scores (:func:`clause_scores`), and with
    ``swap`` each clause against its counterfactual on its own clip's tokens."""

    def __init__(self, cfg: ClausesConfig, env: ObjectiveEnv):
        super().__init__()
        self.min_words, self.swap = cfg.min_words, cfg.swap
        self.table = pair_table(cfg.pairs, source="loss.clauses.pairs")

    def forward(self, ctx: StepContext) -> dict[str, Tensor]:
        model, tokens = ctx.model, ctx.video_tokens  # (B, K, C)
        B, device = tokens.shape[0], tokens.device
        pieces = [split_clauses(c, self.min_words) for c in ctx.captions]
        flat = [c for p in pieces for c in p]
        owner = torch.tensor([i for i, p in enumerate(pieces) for _ in p], device=device)  # (M,)
        turned: list[str | None] = []
        if self.swap > 0:
            # one word per clause, drawn on the host from the step's seed (salted: not loss.swap's draws)
            choice = torch.rand(len(flat), generator=host_generator(ctx.generator, salt=1)).tolist()
            turned = [swap_word(c, self.table, u) for c, u in zip(flat, choice)]
        rows = [m for m, t in enumerate(turned) if t is not None]
        encoded = model.encode_text(flat + [turned[m] for m in rows]).float()  # (M + n, E) unit
        clauses = encoded[: len(flat)]  # (M, E)
        emb = F.normalize(model.vision_proj(tokens).float(), dim=-1)  # (B, K, E)
        scale = model.temperature_scale()
        out = {"clauses_per_caption": torch.tensor(len(flat) / B)}
        with float32_math(device.type):
            logits = scale.float() * clause_scores(clauses, owner, emb, B)  # (B, B): caption i, clip j
            logits = drop_same_video(logits, ctx.pair_ids)  # another caption of one video is no negative
            target = torch.arange(B, device=device)
            out["clauses_loss"] = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
            if self.swap > 0:
                if rows:
                    at = torch.tensor(rows, device=device)  # (n,) the clauses that have a counterfactual
                    clip = owner[at]  # (n,)
                    true = own_clip_scores(clauses[at], clip, emb)  # (n,)
                    fake = own_clip_scores(encoded[len(flat):], clip, emb)  # (n,)
                    margin = scale.float() * (true - fake)  # (n,)
                    out["clauses_swap_loss"] = self.swap * F.softplus(-margin).mean()  # two-way softmax
                    out["clauses_swap_acc"] = 100.0 * (true > fake).float().mean().detach()
                else:  # no clause of this batch has a word to turn: a zero that keeps the graph
                    out["clauses_swap_loss"] = 0.0 * emb.sum()
                    out["clauses_swap_acc"] = torch.zeros((), device=device)
        return out
