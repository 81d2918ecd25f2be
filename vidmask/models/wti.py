"""Weighted token interaction (WTI): a text-video similarity over all tokens of both sides.

From DRL (Wang et al., "Disentangled Representation Learning for Text-Video
Retrieval"), the similarity MASCOT trains and retrieves with (its eq. 6-8):
every text token finds its best-matching frame token (max of cosines) and
every frame token its best-matching text token; each side's maxima are
averaged with weights that a small head predicts from the tokens themselves
(softmax over the valid tokens of one text or one video), and the two
directions are averaged::

    t2v(a, v) = sum_s  w_t[a,s] * max_t cos(text[a,s], video[v,t])
    v2t(a, v) = sum_t  w_v[v,t] * max_s cos(text[a,s], video[v,t])   (valid s only)
    WTI(a, v) = (t2v + v2t) / 2

:func:`wti_similarity` is the pure function; :class:`TokenWeights` the head.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class TokenSet:
    """One side of WTI: unit tokens, their weight logits and which are real (not padding)."""

    tokens: Tensor  # float[B,M,E], unit length
    weights: Tensor  # float[B,M] weight logits (softmax over the valid tokens gives the weights)
    valid: Tensor  # bool[B,M], False = padding

    def __getitem__(self, rows) -> "TokenSet":
        return TokenSet(self.tokens[rows], self.weights[rows], self.valid[rows])

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def to(self, device) -> "TokenSet":
        return TokenSet(self.tokens.to(device), self.weights.to(device), self.valid.to(device))


def token_softmax(weights: Tensor, valid: Tensor) -> Tensor:
    """Softmax of weight logits [B,M] over the valid tokens of each row (padding gets 0)."""
    w = weights.float().masked_fill(~valid, float("-inf"))  # (B, M)
    return w.softmax(-1)  # (B, M)


def wti_similarity(text: TokenSet, video: TokenSet) -> Tensor:
    """WTI of every text against every video: [A] x [V] token sets -> float[A,V] in [-1, 1]."""
    tw = token_softmax(text.weights, text.valid)  # (A, S)
    vw = token_softmax(video.weights, video.valid)  # (V, T)
    sim = torch.einsum("ase,vte->avst", text.tokens.float(), video.tokens.float())  # (A, V, S, T)
    neg = torch.finfo(sim.dtype).min
    # each text token's best frame (padded frames never chosen), weighted over the text's tokens
    t2v = sim.masked_fill(~video.valid[None, :, None, :], neg).amax(-1)  # (A, V, S)
    t2v = (t2v * tw[:, None, :]).sum(-1)  # (A, V)
    # each frame's best text token (padding never chosen), weighted over the video's frames
    v2t = sim.masked_fill(~text.valid[:, None, :, None], neg).amax(2)  # (A, V, T)
    v2t = (v2t * vw[None, :, :]).sum(-1)  # (A, V)
    return 0.5 * (t2v + v2t)  # (A, V)


def wti_similarity_chunked(text: TokenSet, video: TokenSet, max_elements: int = 1 << 26) -> Tensor:
    """:func:`wti_similarity` in blocks of texts so that A x V x S x T stays under ``max_elements``
    (evaluation on thousands of clips: 1000 x 1000 x 32 x 12 would be 1.5 GB at once)."""
    per_text = max(1, video.tokens.shape[0] * text.tokens.shape[1] * video.tokens.shape[1])
    step = max(1, max_elements // per_text)
    return torch.cat([wti_similarity(text[s : s + step], video) for s in range(0, len(text), step)])  # (A, V)


class TokenWeights(nn.Module):
    """DRL's weight head: token [.., E] -> one weight logit. The last layer starts at zero, so
    training starts from uniform weights (plain averages of the best matches)."""

    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, 1))
        nn.init.zeros_(self.net[2].weight)
        nn.init.zeros_(self.net[2].bias)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.net(tokens).squeeze(-1)  # (B, M)


def token_set(tokens: Tensor, head: TokenWeights, valid: Tensor | None = None) -> TokenSet:
    """Projected tokens [B,M,E] -> a TokenSet: unit tokens, the head's weight logits, validity."""
    if valid is None:
        valid = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)  # (B, M)
    return TokenSet(F.normalize(tokens.float(), dim=-1), head(tokens).float(), valid.bool())
