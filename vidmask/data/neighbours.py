"""Hard-negative batch composition: clips whose captions are near neighbours meet in one batch.

A contrastive batch of random clips almost never holds two clips whose
captions differ only in a verb or a direction ("a red circle moves left" /
"... moves right"), so nothing asks the video encoder for motion: appearance
separates every pair it sees. Batches built from caption neighbours put those
pairs side by side (the idea of hard-negative batch mining, here chosen by
the text tower's own caption similarity, never by reading a corpus's labels).

Two pure pieces:

* :func:`caption_neighbours` -- each clip's k nearest clips by the cosine of
  its caption feature (exact, in blocks; ``n x n`` work, which is minutes for
  a million clips on a GPU; beyond that, bucket first and search within
  buckets);
* :func:`paired_order` -- one epoch's order of all clips, each exactly once,
  in which every clip that can be is followed by one of its neighbours that
  the epoch has not used yet. :func:`vidmask.train.schedule.epoch_batches`
  cuts it into batches as it cuts a random permutation, so the steps per
  epoch, the rank slices and exact resume are unchanged.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


def caption_neighbours(feats: Tensor, k: int, block: int = 4096) -> np.ndarray:
    """feats float[n,W] (one caption feature per clip) -> int64[n,k]: each row's k most similar
    other rows by cosine, most similar first (ties to the lower index). Computed in float32 on
    the features' device, ``block`` rows at a time."""
    n = feats.shape[0]
    k = min(k, n - 1)
    if k < 1:
        return np.zeros((n, 0), dtype=np.int64)
    unit = F.normalize(feats.float(), dim=-1)  # (n, W)
    out = np.empty((n, k), dtype=np.int64)
    for s in range(0, n, block):
        sim = unit[s : s + block] @ unit.T  # (b, n)
        rows = torch.arange(sim.shape[0], device=sim.device)
        sim[rows, rows + s] = float("-inf")  # never one's own neighbour
        # a stable order: by similarity, then by index (topk alone leaves ties unordered)
        order = torch.sort(-sim, dim=1, stable=True).indices[:, :k]  # (b, k)
        out[s : s + block] = order.cpu().numpy()
    return out


def paired_order(perm: list[int], neighbours: np.ndarray) -> list[int]:
    """An epoch's clip order from a permutation: walking ``perm``, each clip not yet placed is
    placed, followed by its first neighbour (``neighbours[i]``, nearest first) not yet placed,
    if any. Every clip appears exactly once; pairs are adjacent."""
    placed = np.zeros(len(perm), dtype=bool)
    out: list[int] = []
    for i in perm:
        if placed[i]:
            continue
        placed[i] = True
        out.append(i)
        for j in neighbours[i]:
            if not placed[j]:
                placed[j] = True
                out.append(int(j))
                break
    return out
