"""Two-stage retrieval: re-score each query's top-k candidates with the matching head.

The dual encoder's similarity ranks everything cheaply; the fusion encoder
with the VTM head is too slow for all Nt x Nv pairs, so (as ALBEF and UMT,
which use k = 128) it only re-scores each text's k most similar videos.

The output is a score matrix for `retrieval_metrics`. ALBEF's evaluation
fills the other entries with a constant (-100), which ties every video outside
the top-k and makes MdR / MnR meaningless; here those videos keep their original
order, below every re-scored one: a ground truth outside the top-k keeps the
rank it had, and one inside stays inside.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from vidmask.models.fusion import FusionEncoder
from vidmask.objectives.vtm import vtm_scores

ScoreFn = Callable[[list[int], list[int]], Tensor]  # (text indices, video indices) -> float[n] scores of those pairs


def top_k_candidates(sim: Tensor, k: int) -> Tensor:
    """long[Nt,k]: each row's k best columns, best first; ties keep the lower index (stable sort)."""
    order = torch.sort(sim, dim=1, descending=True, stable=True).indices  # (Nt, Nv)
    return order[:, :k]  # (Nt, k)


def rerank(sim: Tensor, score_fn: ScoreFn, k: int = 128, batch_size: int = 256) -> Tensor:
    """Re-scored text-to-video matrix: sim float[Nt,Nv] -> float64[Nt,Nv].

    For text i, its top-k videos by `sim` get the scores `score_fn` gives the
    pairs, shifted so the lowest of them sits 1 above the best remaining
    video's similarity; the remaining videos keep `sim`. Within the top-k the
    order is the matching head's, below it the similarity's. `score_fn` is
    called on at most `batch_size` pairs at a time (flattened over queries).
    Float64, so the shift does not merge close scores. For video-to-text, call
    it on ``sim.T`` with a score_fn whose arguments are swapped.
    """
    sim = torch.as_tensor(sim)
    Nt, Nv = sim.shape
    k = min(k, Nv)
    out = sim.detach().double().cpu().clone()  # (Nt, Nv)
    if k == 0 or Nt == 0:
        return out
    cand = top_k_candidates(out, k)  # (Nt, k)
    texts = torch.arange(Nt).repeat_interleave(k)  # (Nt*k,)
    videos = cand.flatten()  # (Nt*k,)
    parts = []
    for s in range(0, Nt * k, batch_size):
        t_idx, v_idx = texts[s : s + batch_size].tolist(), videos[s : s + batch_size].tolist()
        scores = torch.as_tensor(score_fn(t_idx, v_idx)).detach().double().cpu().reshape(-1)  # (n,)
        if scores.numel() != len(t_idx):
            raise ValueError(f"score_fn returned {scores.numel()} scores for {len(t_idx)} pairs")
        parts.append(scores)
    scores = torch.cat(parts).reshape(Nt, k)  # (Nt, k)
    in_top = torch.zeros(Nt, Nv, dtype=torch.bool).scatter_(1, cand, True)  # (Nt, Nv)
    # the best similarity outside the top-k (none when k = Nv: any floor works)
    rest_best = out.masked_fill(in_top, float("-inf")).amax(1)  # (Nt,)
    rest_best = torch.where(torch.isfinite(rest_best), rest_best, torch.zeros_like(rest_best))  # (Nt,)
    lifted = scores - scores.amin(1, keepdim=True) + rest_best[:, None] + 1.0  # (Nt, k)
    return out.scatter_(1, cand, lifted)  # (Nt, Nv)


def vtm_score_fn(fusion: FusionEncoder, head: nn.Module, text_states: Tensor, text_mask: Tensor,
                 video_tokens: Tensor) -> ScoreFn:
    """A `score_fn` over pre-computed features: text_states [Nt,S,W], text_mask [Nt,S],
    video_tokens [Nv,K,C] (on the fusion's device); scores are `vtm_scores` log-odds."""

    @torch.no_grad()
    def score(text_idx: list[int], video_idx: list[int]) -> Tensor:
        t = torch.as_tensor(text_idx, device=text_states.device)  # (n,)
        v = torch.as_tensor(video_idx, device=video_tokens.device)  # (n,)
        out = torch.empty(len(text_idx), device=text_states.device)  # (n,)
        # one fusion pass per distinct clip: its keys and values are computed once and shared
        for vid in torch.unique(v):
            rows = torch.nonzero(v == vid).flatten()  # (m,)
            out[rows] = vtm_scores(fusion, head, text_states[t[rows]], text_mask[t[rows]],
                                   video_tokens[vid].unsqueeze(0)).float()  # (m,)
        return out

    return score
