"""Deterministic data order and learning-rate schedule: everything a resume must reproduce."""

from __future__ import annotations

import math

import numpy as np
import torch

from vidmask.config import ConfigError
from vidmask.data.neighbours import paired_order


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, rank: int = 0, world: int = 1,
                  neighbours: np.ndarray | None = None) -> list[list[int]]:
    """This rank's batches of sample indices for one epoch.

    The permutation depends only on (seed, epoch), so every rank agrees on it
    and a resumed run can skip exactly the batches it already consumed. Each
    rank takes a disjoint slice of every global batch (DistributedSampler
    semantics, last partial global batch dropped). ``neighbours`` int64[n,k]
    (train.hard_batches): the permutation is reordered so that each clip is
    followed by one of its caption neighbours (`vidmask.data.neighbours`); a
    pair can straddle two slices or batches.
    """
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g).tolist()
    if neighbours is not None:
        perm = paired_order(perm, neighbours)
    global_bs = batch_size * world
    batches = []
    for s in range(0, n - global_bs + 1, global_bs):
        chunk = perm[s : s + global_bs]
        batches.append(chunk[rank * batch_size : (rank + 1) * batch_size])
    return batches


def steps_per_epoch(n: int, batch_size: int, world: int) -> int:
    spe = n // (batch_size * world)
    if spe < 1:
        raise ConfigError(
            f"train.batch_size: {n} training samples (data.train_anno) cannot fill one global batch of "
            f"{batch_size} x {world} processes; lower train.batch_size or add samples"
        )
    return spe


def shard_steps_per_epoch(n: int, batch_size: int, world: int, num_workers: int) -> int:
    """Steps per epoch from tar shards (`vidmask.data.shards`): each of world x workers loader
    units emits (n // units) // batch_size batches, the same number on every rank."""
    from vidmask.data.shards import batches_per_unit

    workers = max(1, num_workers)
    per_unit = batches_per_unit(n, world * workers, batch_size)
    if per_unit < 1:
        raise ConfigError(
            f"train.batch_size: the {n} samples of data.shards, split between {world} processes x {workers} "
            f"loader workers (data.num_workers), cannot give each worker one batch of {batch_size}; lower "
            "train.batch_size or data.num_workers, or add samples"
        )
    return per_unit * workers


def lr_at(step: int, total: int, peak: float, floor: float, warmup: int) -> float:
    """Linear warm-up to `peak`, then cosine decay to `floor` at `total`."""
    if warmup and step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))


def step_generator(seed: int, step: int, rank: int, device: torch.device) -> torch.Generator:
    """The mask RNG of one step: a pure function of (seed, step, rank), so resume needs no RNG state."""
    g = torch.Generator(device=device)
    g.manual_seed((seed * 7_919 + step) * 131 + rank)
    return g
