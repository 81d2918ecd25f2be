"""Video-text contrastive loss (symmetric InfoNCE) with features gathered across ranks."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor


class _AllGather(torch.autograd.Function):
    """all_gather whose backward sums every rank's gradient for this rank's rows.

    (A plain all_gather cuts the graph; reduce_scatter would do the backward in
    one call but gloo lacks it, so the backward is an all_reduce and a slice.)
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        world, rank = dist.get_world_size(), dist.get_rank()
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.rows = rank, x.shape[0]
        return torch.cat(parts, 0)  # (W*B, E)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)  # every rank's loss touches every row
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]  # (B, E)


def gather_with_grad(x: Tensor) -> tuple[Tensor, int]:
    """Concatenate x [B,E] from every rank -> ([W*B, E], offset of this rank's rows).

    Every rank must hold the same B (the trainer's batches guarantee it).
    Gradients flow back to each rank's own features.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x, 0
    return _AllGather.apply(x), dist.get_rank() * x.shape[0]


def vtc_loss(video: Tensor, text: Tensor, scale: Tensor, gather: bool = True) -> dict[str, Tensor]:
    """Symmetric InfoNCE between unit features video [B,E] and text [B,E].

    Each local row is contrasted against the captions / clips of all ranks
    (open_clip's local loss): the same objective as a single big batch.
    """
    v_all, off = gather_with_grad(video) if gather else (video, 0)  # (W*B, E)
    t_all, _ = gather_with_grad(text) if gather else (text, 0)  # (W*B, E)
    labels = torch.arange(video.shape[0], device=video.device) + off  # (B,)
    logits_v2t = scale * video.float() @ t_all.float().T  # (B, W*B)
    logits_t2v = scale * text.float() @ v_all.float().T  # (B, W*B)
    loss = 0.5 * (F.cross_entropy(logits_v2t, labels) + F.cross_entropy(logits_t2v, labels))
    return {"vtc_loss": loss}
