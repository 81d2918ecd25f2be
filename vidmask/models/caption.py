"""A caption decoder over video tokens, and its greedy / beam-search decoding.

Each layer is the fusion block (`FusionLayer`) with a causal self-attention
mask: causal self-attention over caption tokens, cross-attention to the
(projected) video tokens, MLP. The vocabulary is the BERT tokenizer's, with
[CLS] as begin-of-sentence and [SEP] as end-of-sentence, so the text tower's
word embeddings can initialise the decoder's (copied, not shared: the
decoder trains them while the tower may stay frozen). The output layer is
tied to the decoder's own token embedding, which halves the largest weight.

Decoding is incremental: each layer's cross-attention keys and values over
the video tokens are computed once per clip, and the self-attention keys and
values of the caption so far are cached (`DecodeState`), so a step runs the
layers on one new token per row. `next_log_probs` (the whole prefix again)
is the plain reference the cached path is tested against.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vidmask.models.blocks import init_weights
from vidmask.models.fusion import FusionLayer, default_heads


class CaptionDecoder(nn.Module):
    """ids long[B,L] + video tokens [B,K,C] -> next-token logits [B,L,V]."""

    def __init__(self, vocab_size: int, width: int, video_width: int, bos_id: int, eos_id: int, pad_id: int,
                 depth: int = 2, heads: int | None = None, max_positions: int = 40, mlp_ratio: float = 4.0,
                 word_embeddings: Tensor | None = None):
        super().__init__()
        if depth < 1 or max_positions < 2:
            raise ValueError("caption decoder needs depth >= 1 and max_positions >= 2")
        self.bos_id, self.eos_id, self.pad_id = bos_id, eos_id, pad_id
        self.max_positions = max_positions
        self.tok = nn.Embedding(vocab_size, width)
        self.pos = nn.Parameter(torch.zeros(max_positions, width))  # (P, W)
        self.embed_norm = nn.LayerNorm(width)
        self.video_proj = nn.Linear(video_width, width)
        self.layers = nn.ModuleList(FusionLayer(width, heads or default_heads(width), mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, vocab_size)
        init_weights(self)
        nn.init.trunc_normal_(self.pos, std=0.02)
        if word_embeddings is not None:
            if tuple(word_embeddings.shape) != (vocab_size, width):
                raise ValueError(f"word embeddings {tuple(word_embeddings.shape)} do not fit ({vocab_size}, {width})")
            self.tok.weight.data.copy_(word_embeddings.detach())
        else:
            nn.init.trunc_normal_(self.tok.weight, std=0.02)
        self.out.weight = self.tok.weight  # tied

    def context(self, video_tokens: Tensor) -> Tensor:
        """video tokens [B,K,C] -> keys/values for cross-attention [B,K,W] (computed once per clip)."""
        return self.video_proj(video_tokens)  # (B, K, W)

    def logits(self, ids: Tensor, context: Tensor, valid: Tensor | None = None) -> Tensor:
        """ids long[B,L], context [B,K,W] from `context`, valid optional [B,L] (1 = real token) -> [B,L,V]."""
        B, L = ids.shape
        if L > self.max_positions:
            raise ValueError(f"{L} tokens exceed the decoder's {self.max_positions} positions")
        x = self.embed_norm(self.tok(ids) + self.pos[:L])  # (B, L, W)
        causal = torch.ones(L, L, dtype=torch.bool, device=ids.device).tril()  # (L, L): a token sees its past
        self_mask = causal[None, None]  # (1, 1, L, L)
        if valid is not None:
            # right padding only, so every row keeps its BOS as a key and no row is all-masked
            self_mask = self_mask & valid.bool()[:, None, None, :]  # (B, 1, L, L)
        ctx = context.to(x.dtype)  # (B, K, W)
        for layer in self.layers:
            x = layer(x, ctx, self_mask)  # (B, L, W)
        return self.out(self.norm(x))  # (B, L, V)

    def forward(self, ids: Tensor, video_tokens: Tensor, valid: Tensor | None = None) -> Tensor:
        return self.logits(ids, self.context(video_tokens), valid)  # (B, L, V)

    def next_log_probs(self, ids: Tensor, context: Tensor) -> Tensor:
        """Log-probabilities of the next token [B,V]; [PAD] and [CLS] are never generated."""
        logp = F.log_softmax(self.logits(ids, context)[:, -1].float(), dim=-1)  # (B, V)
        logp[:, [self.pad_id, self.bos_id]] = float("-inf")  # never targets in training either
        return logp


@dataclass
class DecodeState:
    """What incremental decoding keeps between steps, for R rows (clips x beams).

    context_kv: per layer, the cross-attention keys and values of the row's
    video tokens [R,K,2W]; cache: per layer, the self-attention keys and
    values of the tokens fed so far [R,l,2W] (None before the first);
    length: l, the position of the next token fed.
    """

    context_kv: list[Tensor]
    cache: list[Tensor | None]
    length: int = 0

    def reorder(self, rows: Tensor) -> None:
        """Row r continues the hypothesis of row ``rows[r]``, long[R], a row of the same clip
        (beam search), so the clip's keys and values stay where they are."""
        self.cache = [None if c is None else c[rows] for c in self.cache]


def start(decoder: CaptionDecoder, context: Tensor, repeat: int = 1) -> DecodeState:
    """context [B,K,W] from `CaptionDecoder.context` -> an empty state for R = B * repeat rows
    (clip b's rows are b*repeat .. b*repeat+repeat-1; the next token fed is BOS).
    Keys and values are projected once per clip, then repeated."""
    ctx = context.to(decoder.tok.weight.dtype)  # (B, K, W)
    kv = [layer.cross_attn.kv(ctx).repeat_interleave(repeat, 0) for layer in decoder.layers]  # L x (R, K, 2W)
    return DecodeState(kv, [None] * len(decoder.layers))


def step(decoder: CaptionDecoder, tokens: Tensor, state: DecodeState) -> Tensor:
    """Feed one token per row, long[R], at position ``state.length`` -> next-token log-probs [R,V].

    Equal to ``decoder.next_log_probs(prefix + tokens, context)`` (tested), at
    the cost of one position instead of the whole prefix.
    """
    if state.length >= decoder.max_positions:
        raise ValueError(f"position {state.length} exceeds the decoder's {decoder.max_positions} positions")
    x = decoder.embed_norm(decoder.tok(tokens)[:, None] + decoder.pos[state.length])  # (R, 1, W)
    for i, layer in enumerate(decoder.layers):
        x, state.cache[i] = layer.step(x, state.context_kv[i], state.cache[i])  # (R, 1, W)
    state.length += 1
    logp = F.log_softmax(decoder.out(decoder.norm(x))[:, 0].float(), dim=-1)  # (R, V)
    logp[:, [decoder.pad_id, decoder.bos_id]] = float("-inf")  # as next_log_probs
    return logp


@torch.no_grad()
def greedy_ids(decoder: CaptionDecoder, video_tokens: Tensor, max_len: int = 20) -> Tensor:
    """video tokens [B,K,C] -> ids long[B, 1 + <=max_len]: BOS, the argmax tokens, EOS, then [PAD]."""
    _check_len(decoder, max_len)
    ctx = decoder.context(video_tokens)  # (B, K, W)
    B = ctx.shape[0]
    ids = torch.full((B, 1), decoder.bos_id, dtype=torch.long, device=ctx.device)  # (B, 1)
    done = torch.zeros(B, dtype=torch.bool, device=ctx.device)  # (B,)
    state = start(decoder, ctx)
    for _ in range(max_len):
        nxt = step(decoder, ids[:, -1], state).argmax(-1)  # (B,)
        nxt = torch.where(done, torch.full_like(nxt, decoder.pad_id), nxt)  # (B,)
        ids = torch.cat([ids, nxt[:, None]], 1)  # (B, l+1)
        done |= nxt == decoder.eos_id
        if bool(done.all()):
            break
    return ids


@torch.no_grad()
def beam_search_ids(decoder: CaptionDecoder, video_tokens: Tensor, beam: int = 3, max_len: int = 20,
                    length_penalty: float = 1.0) -> Tensor:
    """Batched beam search: video tokens [B,K,C] -> the best hypothesis' ids long[B, 1 + <=max_len].

    All B clips advance together with `beam` hypotheses each ([B*beam] rows).
    A hypothesis that has produced [SEP] stays in the beam with its score
    frozen (it can only be extended by [PAD] at zero cost), so it competes
    with the live ones on raw log-probability sums during the search; the
    final pick among the beam divides by length ** length_penalty (length =
    generated tokens including [SEP]; 0 = no normalisation, 1 = mean
    log-probability). With beam = 1 this is exactly `greedy_ids`.
    """
    if beam < 1:
        raise ValueError(f"beam must be >= 1, got {beam}")
    _check_len(decoder, max_len)
    B = video_tokens.shape[0]
    ctx = decoder.context(video_tokens)  # (B, K, W)
    device = ctx.device
    ids = torch.full((B * beam, 1), decoder.bos_id, dtype=torch.long, device=device)  # (B*beam, 1)
    scores = torch.zeros(B, beam, device=device)  # (B, beam): summed log-probabilities
    scores[:, 1:] = float("-inf")  # all hypotheses start equal: expand only the first
    finished = torch.zeros(B * beam, dtype=torch.bool, device=device)  # (B*beam,)
    lengths = torch.zeros(B * beam, device=device)  # (B*beam,)
    state = start(decoder, ctx, repeat=beam)  # B*beam rows
    for _ in range(max_len):
        logp = step(decoder, ids[:, -1], state)  # (B*beam, V)
        pad_only = torch.full_like(logp[:1], float("-inf"))  # (1, V)
        pad_only[0, decoder.pad_id] = 0.0
        logp = torch.where(finished[:, None], pad_only, logp)  # (B*beam, V): a finished one only pads
        # the global best `beam` continuations lie among each row's own best `beam`:
        # beam*beam candidates per clip instead of beam*V (and beam=1 is greedy's argmax)
        r = min(beam, logp.shape[1])  # a beam wider than the vocabulary (tests) takes every token
        row_lp, row_tok = logp.topk(r, dim=1)  # (B*beam, r)
        cand = (scores.reshape(B * beam, 1) + row_lp).reshape(B, beam * r)  # (B, beam*r)
        scores, flat = cand.topk(beam, dim=1)  # (B, beam), (B, beam)
        src = (torch.arange(B, device=device)[:, None] * beam + flat // r).flatten()  # (B*beam,): parent row
        tok = row_tok.reshape(B, beam * r).gather(1, flat).flatten()  # (B*beam,)
        ids = torch.cat([ids[src], tok[:, None]], 1)  # (B*beam, l+1)
        state.reorder(src)  # each row's cache follows its parent, of the same clip
        was_finished = finished[src]  # (B*beam,)
        lengths = lengths[src] + (~was_finished).float()  # (B*beam,)
        finished = was_finished | (tok == decoder.eos_id)  # (B*beam,)
        if bool(finished.all()):
            break
    final = scores / lengths.reshape(B, beam).clamp(min=1.0) ** length_penalty  # (B, beam)
    best = torch.arange(B, device=device) * beam + final.argmax(1)  # (B,)
    return ids[best]  # (B, l)


def _check_len(decoder: CaptionDecoder, max_len: int) -> None:
    if not 1 <= max_len < decoder.max_positions:
        raise ValueError(f"max_len must be in [1, {decoder.max_positions - 1}] (BOS takes a position), got {max_len}")
