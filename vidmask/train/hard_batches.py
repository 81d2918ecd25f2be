"""train.hard_batches: the caption neighbours a run composes its batches by, found once per run.

Each clip's caption feature is the mean of the text tower's pooled features of
its captions (the frozen tower's cache when the tower is frozen); the k
nearest clips by cosine (`vidmask.data.neighbours.caption_neighbours`) are
written to ``RUN/neighbours.npy`` by rank 0. A resumed run reads that file, so
its batches are exactly those of the uninterrupted run even when the text
tower has trained since. Every rank computes the same table from the same
weights, so no rank waits for another.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from vidmask.config import ConfigError
from vidmask.data.neighbours import caption_neighbours

log = logging.getLogger("vidmask")


@torch.no_grad()
def caption_features(text, items, batch_size: int = 256) -> torch.Tensor:
    """float[n,W]: per clip, the mean pooled feature of its captions (``text``: a TextEncoder)."""
    caps = [list(it.captions) for it in items]
    flat = [c for cs in caps for c in cs]
    feats = torch.cat([text(flat[s : s + batch_size]).float().cpu() for s in range(0, len(flat), batch_size)])  # (Nc, W)
    owner = torch.repeat_interleave(torch.arange(len(caps)), torch.tensor([len(cs) for cs in caps]))  # (Nc,)
    out = torch.zeros(len(caps), feats.shape[1]).index_add_(0, owner, feats)  # (n, W)
    return out / torch.bincount(owner, minlength=len(caps)).clamp(min=1).unsqueeze(1)  # (n, W)


def run_neighbours(text, items, k: int, run_dir: Path, main: bool) -> np.ndarray:
    """int64[n,k]: the run's caption neighbours, from ``run_dir/neighbours.npy`` when a resumed run has it."""
    path = Path(run_dir) / "neighbours.npy"
    if path.is_file():
        table = np.load(path)
        if table.shape != (len(items), min(k, len(items) - 1)):
            raise ConfigError(f"train.hard_batches={k}: {path} holds neighbours of shape {table.shape} for "
                              f"{len(items)} clips; a resumed run keeps its train.hard_batches and data")
        return table
    table = caption_neighbours(caption_features(text, items), k)
    if main:
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, table)
        os.replace(tmp, path)
        log.info("hard batches: each clip beside one of its %d nearest captions' clips (%s)", k, path.name)
    return table
