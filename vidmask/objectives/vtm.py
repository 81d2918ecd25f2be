"""Video-text matching (VTM) with similarity-mined hard negatives (ALBEF / UMT).

For each video one negative caption is drawn from the batch with probability
proportional to softmax(similarity / temperature) over the captions that are
not its own, and for each caption one negative video the same way. The
similarities are the contrastive logits (unit features times the learnable
scale 1/temperature), as ALBEF and UMT draw them: on raw cosines in [-1, 1]
the softmax is nearly uniform and the "hard" negatives are random ones. The fusion encoder
reads (caption, video) pairs and a binary head on the fused [CLS] state says
"match" (class 1) or not (class 0): B positives and 2B negatives per batch,
one cross-entropy over all 3B pairs, as ALBEF's ``loss_itm``.

Differences from ALBEF / UMT, deliberate:
* negatives are drawn from the softmax restricted to the non-positives
  (masked to -inf before the softmax) rather than softmax + 1e-4 with the
  positive zeroed afterwards: the same distribution up to the 1e-4 floor,
  without a row of zeros when one caption dominates;
* none besides: like UMT, negatives come from this process's batch only
  (ALBEF gathers the features of all ranks for its contrastive loss, not for
  the matching negatives' pool in UMT's video code).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vidmask.models.fusion import FusionEncoder
from vidmask.objectives.base import Objective, ObjectiveConfig, ObjectiveEnv, StepContext, register_objective


def positive_pairs(batch: int, pair_ids: Tensor | None, device) -> Tensor:
    """bool[B,B], True where text i and video j belong together (the diagonal,
    plus every pair that shares a `pair_ids` entry, e.g. two captions of one video)."""
    if pair_ids is None:
        return torch.eye(batch, dtype=torch.bool, device=device)  # (B, B)
    return pair_ids[:, None] == pair_ids[None, :]  # (B, B)


def has_negatives(pos: Tensor) -> Tensor:
    """bool[B]: whether sample i has any negative in the batch, from ``positive_pairs`` bool[B,B]
    (symmetric: the same for text i and video i)."""
    return ~pos.all(1)  # (B,)


def sample_hard_negatives(sim: Tensor, generator: torch.Generator | None = None,
                          pair_ids: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One hard negative per sample, drawn by similarity.

    sim: float[B,B], sim[i, j] = similarity (logit) of text i and video j;
    pair_ids: optional long[B], samples sharing an id are never each other's negative.
    Returns (neg_video_for_text long[B], neg_text_for_video long[B]): for text i a
    video drawn from softmax_j(sim[i, j]) over the non-positive j, and for video j a
    text drawn from softmax_i(sim[i, j]) over the non-positive i.
    """
    B = sim.shape[0]
    if sim.shape != (B, B):
        raise ValueError(f"sim must be square [B,B], got {tuple(sim.shape)}")
    pos = positive_pairs(B, pair_ids, sim.device)  # (B, B)
    # a sample with no negative (a batch of 1, or one video's captions only) is not refused here, which
    # would read a flag back from the device every step: its draw is uniform and meaningless, and
    # vtm_loss gives its negative rows no weight (has_negatives)
    logits = sim.detach().float().masked_fill(pos, float("-inf"))  # (B, B): positives can never be drawn
    logits = logits.masked_fill(~has_negatives(pos).unsqueeze(1), 0.0)  # (B, B)
    w_t2v = torch.softmax(logits, dim=1)  # (B, B): row i, over videos
    w_v2t = torch.softmax(logits.T, dim=1)  # (B, B): row j, over texts
    neg_video = torch.multinomial(w_t2v, 1, generator=generator).squeeze(1)  # (B,)
    neg_text = torch.multinomial(w_v2t, 1, generator=generator).squeeze(1)  # (B,)
    return neg_video, neg_text


def match_logits(fusion: FusionEncoder, head: nn.Module, text_states: Tensor, text_mask: Tensor,
                 video_tokens: Tensor, video_index: Tensor | None = None) -> Tensor:
    """Two-way logits [B,2] (0 = no match, 1 = match) for aligned pairs of rows
    (or text b with clip ``video_index[b]``, see `FusionEncoder.forward`)."""
    fused = fusion(text_states, text_mask, video_tokens, video_index=video_index)  # (B, S, W)
    return head(fused[:, 0])  # (B, 2): the [CLS] state decides


def vtm_loss(fusion: FusionEncoder, head: nn.Module, text_states: Tensor, text_mask: Tensor,
             video_tokens: Tensor, sim: Tensor, generator: torch.Generator | None = None,
             pair_ids: Tensor | None = None) -> dict[str, Tensor]:
    """Matching loss over B positives and 2B similarity-mined negatives.

    text_states [B,S,W] and text_mask [B,S] from ``TextEncoder.token_states``,
    video_tokens [B,K,C] from ``VideoViT.forward_features``, sim [B,B] text-video
    similarity, e.g. ``scale * encode_text(c) @ encode_video(v).T`` (only used to
    sample negatives, no gradient flows through it). pair_ids: see
    `sample_hard_negatives`.
    """
    B = text_states.shape[0]
    neg_video, neg_text = sample_hard_negatives(sim, generator, pair_ids)  # (B,), (B,)
    # rows: (text i, video i) | (text i, hard video) | (hard text, video j)
    texts = torch.cat([text_states, text_states, text_states[neg_text]])  # (3B, S, W)
    masks = torch.cat([text_mask, text_mask, text_mask[neg_text]])  # (3B, S)
    own = torch.arange(B, device=neg_video.device)  # (B,)
    # each clip's keys and values are computed once and read by its three rows
    video_rows = torch.cat([own, neg_video, own])  # (3B,) index into video_tokens
    logits = match_logits(fusion, head, texts, masks, video_tokens, video_rows)  # (3B, 2)
    labels = (torch.arange(3 * B, device=logits.device) < B).long()  # (3B,): the first B rows match
    # the negative rows of a sample that has no negative carry no weight (sample_hard_negatives)
    neg = has_negatives(positive_pairs(B, pair_ids, logits.device)).float()  # (B,)
    weight = torch.cat([torch.ones_like(neg), neg, neg])  # (3B,)
    ce = F.cross_entropy(logits.float(), labels, reduction="none")  # (3B,)
    return {"vtm_loss": (ce * weight).sum() / weight.sum()}


def vtm_scores(fusion: FusionEncoder, head: nn.Module, text_states: Tensor, text_mask: Tensor,
               video_tokens: Tensor) -> Tensor:
    """Matching score of aligned pairs -> float[B]: the log-odds logit[1] - logit[0].

    sigmoid(score) is the head's probability of "match"; the log-odds orders
    pairs exactly as that probability does, without saturating at 0 or 1, which
    is what re-ranking needs.
    """
    logits = match_logits(fusion, head, text_states, text_mask, video_tokens).float()  # (B, 2)
    return logits[:, 1] - logits[:, 0]  # (B,)


class VtmHead(nn.Linear):
    """The binary matching head on the fused [CLS] state: W -> 2."""

    def __init__(self, width: int):
        super().__init__(width, 2)
        nn.init.trunc_normal_(self.weight, std=0.02)
        nn.init.zeros_(self.bias)


@register_objective("vtm", ObjectiveConfig)
class Vtm(Objective):
    """Video-text matching through the shared fusion encoder; its head also re-ranks retrieval."""

    uses_fusion = True

    def __init__(self, cfg: ObjectiveConfig, env: ObjectiveEnv):
        super().__init__()
        self.head = VtmHead(env.model.text.width)

    def forward(self, ctx: StepContext) -> dict[str, Tensor]:
        tok = ctx.tokenized()
        states, mask = ctx.model.text.token_states(ctx.captions, tok["input_ids"], tok["attention_mask"])
        scale = ctx.model.temperature_scale().detach()  # 1 / temperature, as the contrastive logits
        sim = (scale * ctx.text_feat @ ctx.video_feat.T).detach()  # (B, B): text i against video j
        return vtm_loss(ctx.fusion, self.head, states, mask, ctx.video_tokens, sim, ctx.generator,
                        pair_ids=ctx.pair_ids)

    def scorer(self, fusion: FusionEncoder):
        """The matching head re-scores retrieval pairs (ALBEF / UMT re-ranking, `vidmask.tasks.rerank`)."""
        from vidmask.tasks.rerank import vtm_score_fn

        return lambda states, mask, tokens: vtm_score_fn(fusion, self.head, states, mask, tokens)
