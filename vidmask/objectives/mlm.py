"""Masked language modelling conditioned on video, through the fusion layers.

Caption tokens are masked with BERT's rule (of the chosen positions, 80 %
become [MASK], 10 % a random token, 10 % stay), the masked caption goes
through the text tower and the fusion encoder (which sees the video), and a
BERT-style head predicts the original tokens at the chosen positions only.
ALBEF uses prob 0.15; UMT 0.5, since a short caption with 15 % masking
often has nothing masked at all.

One step, with a `VideoTextModel` ``model``::

    batch = model.text.tokenize(captions, device)
    ids, labels = mask_tokens(batch["input_ids"], batch["attention_mask"], model.text.tokenizer, 0.5, gen)
    states, mask = model.text.token_states(None, ids, batch["attention_mask"])  # (B, S, W), (B, S)
    losses = mlm_loss(fusion, head, states, mask, video_tokens, labels)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vidmask.config import ConfigError
from vidmask.models.fusion import FusionEncoder
from vidmask.objectives.base import Objective, ObjectiveConfig, ObjectiveEnv, StepContext, register_objective

IGNORE = -100  # the label of a position that is not predicted (F.cross_entropy's ignore_index)


def special_token_ids(tokenizer) -> Tensor:
    """long[n]: the ids of [CLS], [SEP], [PAD], [MASK], [UNK], ... in the tokenizer."""
    return torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)


def mask_tokens(input_ids: Tensor, attention_mask: Tensor, tokenizer, prob: float = 0.5,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """BERT's 80/10/10 masking: input_ids long[B,S], attention_mask [B,S] -> (masked_ids, labels) long[B,S].

    Each real, non-special token is chosen with probability `prob`; labels hold
    the original id at chosen positions and -100 elsewhere. Special tokens and
    padding are never chosen. Random replacements are drawn over the whole
    vocabulary, as BERT and ALBEF do. The generator must live on input_ids' device.
    """
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"mask prob must be in [0, 1], got {prob}")
    device = input_ids.device
    specials = special_token_ids(tokenizer).to(device)  # (n,)
    eligible = attention_mask.bool() & ~torch.isin(input_ids, specials)  # (B, S)
    chosen = eligible & (torch.rand(input_ids.shape, generator=generator, device=device) < prob)  # (B, S)
    labels = torch.where(chosen, input_ids, torch.full_like(input_ids, IGNORE))  # (B, S)
    # one more draw per position splits the chosen ones 80 / 10 / 10
    u = torch.rand(input_ids.shape, generator=generator, device=device)  # (B, S)
    to_mask = chosen & (u < 0.8)  # (B, S)
    to_random = chosen & (u >= 0.8) & (u < 0.9)  # (B, S); u >= 0.9 keeps the token
    random_ids = torch.randint(tokenizer.vocab_size, input_ids.shape, generator=generator, device=device)  # (B, S)
    masked = torch.where(to_mask, torch.full_like(input_ids, tokenizer.mask_token_id), input_ids)  # (B, S)
    masked = torch.where(to_random, random_ids, masked)  # (B, S)
    return masked, labels


class MlmHead(nn.Module):
    """BERT's prediction head: dense + GELU + LayerNorm, then a decoder to the vocabulary.

    With `tie_to` (the text tower's word embeddings) the decoder shares that
    weight, as BERT does; the decoder keeps its own bias. A frozen tower's
    embedding stays frozen here too (only the bias and the transform train).
    """

    def __init__(self, width: int, vocab_size: int, tie_to: nn.Embedding | None = None):
        super().__init__()
        self.dense = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width)
        self.decoder = nn.Linear(width, vocab_size)
        nn.init.trunc_normal_(self.dense.weight, std=0.02)
        nn.init.zeros_(self.dense.bias)
        nn.init.trunc_normal_(self.decoder.weight, std=0.02)
        nn.init.zeros_(self.decoder.bias)
        if tie_to is not None:
            if tuple(tie_to.weight.shape) != (vocab_size, width):
                raise ValueError(f"cannot tie: embedding {tuple(tie_to.weight.shape)} vs head ({vocab_size}, {width})")
            self.decoder.weight = tie_to.weight

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.norm(F.gelu(self.dense(x))))  # (..., V)


def mlm_loss(fusion: FusionEncoder, head: MlmHead, text_states: Tensor, text_mask: Tensor,
             video_tokens: Tensor, labels: Tensor, dense: bool | None = None) -> dict[str, Tensor]:
    """Cross-entropy on the masked positions only.

    text_states [B,S,W]: the text tower's states of the *masked* ids; text_mask
    [B,S]; video_tokens [B,K,C]; labels long[B,S] from `mask_tokens`.
    A batch with no masked position gives a zero loss that still has a graph.

    ``dense`` (default: off a CPU): the vocabulary projection runs on every position and the
    cross-entropy ignores the unmasked ones; else on the masked positions only, picked by a boolean
    index, whose count is read back from the device (a host sync per step). On a CPU the projection
    is the expensive part and picking wins; on an accelerator it is a small share of the step
    (B*S positions, not the masked ~30 %), and no sync is worth more. The same loss either way.
    """
    fused = fusion(text_states, text_mask, video_tokens)  # (B, S, W)
    chosen = labels != IGNORE  # (B, S)
    if dense if dense is not None else fused.device.type != "cpu":
        logits = head(fused)  # (B, S, V)
        total = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE, reduction="sum")
    else:
        logits = head(fused[chosen])  # (M, V)
        total = F.cross_entropy(logits.float(), labels[chosen], reduction="sum")
    return {"mlm_loss": total / chosen.sum().clamp(min=1)}


@dataclass
class MlmConfig(ObjectiveConfig):
    prob: float = 0.5  # share of caption tokens masked (UMT uses 0.5, ALBEF 0.15)

    def __post_init__(self):
        if not 0.0 < self.prob < 1.0:
            raise ConfigError("loss.mlm.prob must be in (0, 1)")


@register_objective("mlm", MlmConfig)
class Mlm(Objective):
    """Masked language modelling through the shared fusion encoder, conditioned on the video-text set
    (the kept video tokens; STM: the masked ones, ``StepContext``)."""

    uses_fusion = True

    def __init__(self, cfg: MlmConfig, env: ObjectiveEnv):
        super().__init__()
        self.prob = cfg.prob
        if env.model.text.tokenizer.mask_token_id is None:  # CLIP's BPE tokenizer has none
            raise ConfigError(f"loss.mlm masks caption tokens with the tokenizer's mask token, and the text tower "
                              f"of model.text.init={env.model.text.cfg.init!r} has none (a CLIP text tower): set "
                              "loss.mlm=0 or use a BERT tower")
        words = env.model.text.word_embeddings()
        self.head = MlmHead(env.model.text.width, words.num_embeddings, tie_to=words)

    def forward(self, ctx: StepContext) -> dict[str, Tensor]:
        text = ctx.model.text
        tok = ctx.tokenized()
        ids, labels = mask_tokens(tok["input_ids"], tok["attention_mask"], text.tokenizer, self.prob,
                                  ctx.generator)  # (B, S), (B, S)
        states, mask = text.token_states(ctx.captions, ids, tok["attention_mask"])  # (B, S, W), (B, S)
        return mlm_loss(ctx.fusion, self.head, states, mask, ctx.video_tokens, labels)
