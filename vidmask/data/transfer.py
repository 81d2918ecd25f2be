"""A batch's trip from the DataLoader to the device: pinned uint8 clips out, normalised float in.

Workers return clips as ``uint8[B,T,3,S,S]`` (:meth:`VideoTransform.pixels`): 4x fewer bytes
than float32 through the workers' shared memory, the pinned buffer and the host-to-device copy
(at B=64, 8 x 224 px: 77 MB a step instead of 308 MB). With ``pin_memory`` (on CUDA) the
DataLoader's pin thread puts each batch in page-locked memory, so ``non_blocking=True`` copies
are asynchronous; the ``(x / 255 - mean) / std`` of :func:`normalize_video` then runs on the
device, once, where every consumer (the training tasks, evaluation, probes, the teacher) reads
the batch: :func:`to_device` is the only place a loaded batch is normalised.
"""

from __future__ import annotations

import torch

from vidmask.data.transforms import CLIP_MEAN, CLIP_STD, normalize_video


def loader_options(device: torch.device | str, num_workers: int, prefetch_factor: int = 2) -> dict:
    """The DataLoader keywords that move batches well to ``device``: ``num_workers``,
    ``pin_memory`` (on CUDA only: pinning for a CPU step is a wasted copy) and, with workers,
    ``prefetch_factor`` (batches each worker loads ahead; torch refuses it without workers)."""
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    if prefetch_factor < 1:
        raise ValueError(f"prefetch_factor must be >= 1, got {prefetch_factor}")
    opts = {"num_workers": num_workers, "pin_memory": torch.device(device).type == "cuda"}
    if num_workers > 0:
        opts["prefetch_factor"] = prefetch_factor
    return opts


def to_device(batch: dict, device: torch.device | str, mean: tuple[float, ...] = CLIP_MEAN,
              std: tuple[float, ...] = CLIP_STD) -> dict:
    """The batch with its tensors on ``device`` (asynchronous copies from pinned memory) and its
    ``video`` uint8[B,T,3,S,S] normalised there to float32[B,T,3,S,S]; strings (captions,
    paths) and lists stay as they are. The loop never sends an empty batch (B = 0): it skips the step."""
    out = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
    if "video" in out:
        out["video"] = normalize_video(out["video"], mean, std)  # (B, T, 3, S, S) float32
    return out
