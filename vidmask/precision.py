"""Float32 where rounding decides the result, whatever the step's autocast and TF32 settings.

Training runs under bf16 / fp16 autocast and, on CUDA, with TF32 matmuls (``train.tf32``). Two kinds
of computation must not take either: contrastive logits (at a scale of 100, bf16's 8 bits of mantissa
blur a logit by about 0.4, and TF32's 10 bits by about 0.1) and the Grams that decide ClusterSTM's
masks (a tie or an order statistic must not move with the precision setting). ``float32_math`` turns
both off for a block and restores them after it.
"""

from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def float32_math(device_type: str):
    """Autocast off and TF32 matmuls off inside the block (``device_type``: the tensors' device type).

    The TF32 switch is process-wide, so it is restored on exit (also after an exception); the
    training step is single-threaded on the host, so nothing else runs in the block meanwhile.
    """
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.autocast(device_type, enabled=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
