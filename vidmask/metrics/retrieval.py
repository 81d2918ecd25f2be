"""Text-video retrieval metrics: R@K, MdR, MnR, Rsum, and twin accuracy.

Conventions (those of CLIP4Clip / UMT reports):

* rank of the ground truth = 1 + the number of candidates that score
  **strictly** higher (a tie does not push the ground truth down);
* MdR is the median as NumPy computes it (mean of the two middle values for an
  even count; ``torch.median`` would return the lower one), MnR the mean;
* several captions per video: every caption is a text query (t2v); for
  video-to-text, the best-ranked of the video's captions counts.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def ranks_t2v(sim: Tensor, text_to_video: Tensor) -> Tensor:
    """Rank of each text's video among all videos.

    sim: float[num_texts, num_videos], text_to_video: long[num_texts] -> long[num_texts]
    """
    rows = torch.arange(sim.shape[0], device=sim.device)  # (Nt,)
    truth = sim[rows, text_to_video]  # (Nt,)
    return 1 + (sim > truth[:, None]).sum(1)  # (Nt,)


def ranks_v2t(sim: Tensor, text_to_video: Tensor) -> Tensor:
    """Best rank, over a video's own captions, among all texts.

    sim: float[num_texts, num_videos] -> long[num_videos]; a video with no
    caption is an error (it cannot be a query).
    """
    num_videos = sim.shape[1]
    counts = torch.bincount(text_to_video, minlength=num_videos)  # (Nv,)
    if bool((counts == 0).any()):
        missing = torch.nonzero(counts == 0).flatten()[:5].tolist()
        raise ValueError(f"videos without any caption cannot be queried: indices {missing} ...")
    cols = sim.T  # (Nv, Nt)
    # score of each caption on its own video, then how many texts beat it there
    own = sim[torch.arange(sim.shape[0], device=sim.device), text_to_video]  # (Nt,)
    beaten_by = torch.empty_like(text_to_video)  # (Nt,)
    # chunk over captions to bound memory at [chunk, Nt]
    chunk = 1024
    for s in range(0, sim.shape[0], chunk):
        idx = slice(s, s + chunk)
        scores = cols[text_to_video[idx]]  # (c, Nt): every text's score on the caption's video
        beaten_by[idx] = (scores > own[idx, None]).sum(1)  # (c,)
    best = torch.full((num_videos,), torch.iinfo(torch.long).max, dtype=torch.long, device=sim.device)
    best.scatter_reduce_(0, text_to_video, beaten_by, reduce="amin")  # (Nv,)
    return 1 + best


def _summary(ranks: Tensor) -> dict[str, float]:
    r = ranks.detach().cpu().double().numpy()
    return {
        "R@1": float(100.0 * np.mean(r <= 1)),
        "R@5": float(100.0 * np.mean(r <= 5)),
        "R@10": float(100.0 * np.mean(r <= 10)),
        "MdR": float(np.median(r)),
        "MnR": float(np.mean(r)),
    }


def retrieval_metrics(sim: Tensor, text_to_video: Tensor) -> dict:
    """Both directions' metrics for a similarity matrix.

    sim: float[num_texts, num_videos]; text_to_video: long[num_texts], the
    ground-truth video of each text. Returns
    ``{"t2v": {"R@1", "R@5", "R@10", "MdR", "MnR"}, "v2t": {...}, "rsum": float}``
    with recalls in percent; ``rsum`` sums the six recalls.
    """
    sim = torch.as_tensor(sim).float()
    text_to_video = torch.as_tensor(text_to_video, dtype=torch.long, device=sim.device)
    if sim.dim() != 2 or text_to_video.shape != (sim.shape[0],):
        raise ValueError(
            f"sim must be [num_texts, num_videos] and text_to_video [num_texts]; "
            f"got {tuple(sim.shape)} and {tuple(text_to_video.shape)}"
        )
    if text_to_video.numel() and (int(text_to_video.min()) < 0 or int(text_to_video.max()) >= sim.shape[1]):
        raise ValueError("text_to_video holds an index outside [0, num_videos)")
    t2v = _summary(ranks_t2v(sim, text_to_video))
    v2t = _summary(ranks_v2t(sim, text_to_video))
    rsum = sum(d[k] for d in (t2v, v2t) for k in ("R@1", "R@5", "R@10"))
    return {"t2v": t2v, "v2t": v2t, "rsum": rsum}


def dual_softmax(sim: Tensor, temperature: float = 100.0) -> Tensor:
    """Dual-softmax re-weighting (DSL) at inference, as used with CLIP4Clip.

    Each score is multiplied by the softmax, over all texts, of the scores the
    same video gives: a text that many videos like gets down-weighted.
    sim: float[num_texts, num_videos] -> float[num_texts, num_videos]
    """
    prior = torch.softmax(sim.float() * temperature, dim=0)  # (Nt, Nv), sums to 1 over texts
    return sim.float() * prior


def twin_accuracy(sim: Tensor, text_to_video: Tensor, pairs: list[tuple[int, int, str]]) -> dict[str, float]:
    """Share of a twin's captions that score their own video strictly above its sibling.

    pairs: (video_a, video_b, kind) with kind e.g. "motion" or "colour"; both
    directions count (captions of a against b, captions of b against a).
    Returns ``{kind: percent}`` plus ``{kind + "_n": number of captions}``.
    """
    sim = torch.as_tensor(sim).float()
    text_to_video = torch.as_tensor(text_to_video, dtype=torch.long)
    captions_of: dict[int, list[int]] = {}
    for t, v in enumerate(text_to_video.tolist()):
        captions_of.setdefault(v, []).append(t)
    wins: dict[str, list[bool]] = {}
    for a, b, kind in pairs:
        for own, other in ((a, b), (b, a)):
            for t in captions_of.get(own, []):
                wins.setdefault(kind, []).append(bool(sim[t, own] > sim[t, other]))
    out: dict[str, float] = {}
    for kind, w in sorted(wins.items()):
        out[kind] = 100.0 * sum(w) / len(w)
        out[kind + "_n"] = float(len(w))
    return out
