"""Evaluation split across processes: each rank reads its share of the clips, every rank gets all outputs.

Under torchrun every rank evaluates ``items[rank::world]`` (a strided share, so
long and short videos spread evenly) and :func:`gather_ordered` puts the
per-item outputs of all ranks back in the items' order. With one process both
are the identity. Outputs travel as Python objects (CPU tensors, strings) by
``all_gather_object``, which gloo and NCCL both support.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def my_share(n: int) -> list[int]:
    """The indices of ``n`` items this rank evaluates."""
    rank, world = _world()
    return list(range(rank, n, world))


def gather_ordered(local: list, n: int) -> list:
    """This rank's outputs (one per index of :func:`my_share`, in that order) -> all ``n`` outputs in order."""
    rank, world = _world()
    if world == 1:
        return list(local)
    parts = [None] * world
    dist.all_gather_object(parts, [compact(value) for value in local])
    out = [None] * n
    for r, part in enumerate(parts):
        for i, value in zip(range(r, n, world), part):
            out[i] = value
    return out


def compact(value):
    """``value`` with every tensor in it (also inside tuples, lists and dicts) a CPU tensor that owns
    just its own elements. A row of a batch (``list(batch_tensor)``) is a view, and pickling a view
    writes its whole storage: 64 rows of one batch would travel as 64 copies of the batch, world
    times over, through ``all_gather_object`` (on NCCL, through every GPU's memory)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().clone()  # a fresh storage of exactly its elements
    if isinstance(value, tuple):
        return tuple(compact(v) for v in value)
    if isinstance(value, list):
        return [compact(v) for v in value]
    if isinstance(value, dict):
        return {k: compact(v) for k, v in value.items()}
    return value
