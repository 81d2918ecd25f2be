"""Video-text contrastive loss (symmetric InfoNCE) with features gathered across ranks."""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from vidmask.objectives.base import Objective, ObjectiveConfig, ObjectiveEnv, StepContext, register_objective
from vidmask.precision import float32_math


class _AllGather(torch.autograd.Function):
    """all_gather of rows whose count may differ by rank (bad samples are dropped
    per rank), with a backward that sums every rank's gradient for this rank's rows.

    (A plain all_gather cuts the graph; reduce_scatter would do the backward in
    one call but gloo lacks it, so the backward is an all_reduce and a slice.)
    """

    @staticmethod
    def forward(ctx, x: Tensor, sizes: list[int]) -> Tensor:
        ctx.rank, ctx.sizes, ctx.most = dist.get_rank(), sizes, max(sizes)
        return _gather_rows(x, sizes)  # (sum B, E)

    @staticmethod
    def backward(ctx, grad: Tensor):
        sizes, most = ctx.sizes, ctx.most
        padded = grad.new_zeros((len(sizes) * most, *grad.shape[1:]))  # (W*Bmax, E)
        start = 0
        for r, n in enumerate(sizes):
            padded[r * most : r * most + n] = grad[start : start + n]
            start += n
        dist.all_reduce(padded)  # every rank's loss touches every row
        own = padded[ctx.rank * most : ctx.rank * most + sizes[ctx.rank]]  # (B, E)
        return own, None


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


# each rank's row count for this step when the trainer already knows it (its per-step agreement):
# rank_sizes then reads nothing back from the device (known_rank_sizes)
_KNOWN_SIZES: contextvars.ContextVar[list[int] | None] = contextvars.ContextVar("rank_sizes", default=None)


@contextlib.contextmanager
def known_rank_sizes(sizes: list[int] | None):
    """Inside the block, :func:`rank_sizes` answers ``sizes`` (every rank's rows, in rank order)
    instead of gathering and reading them back (a host sync per loss); None: gather as usual."""
    token = _KNOWN_SIZES.set(sizes)
    try:
        yield
    finally:
        _KNOWN_SIZES.reset(token)


def rank_sizes(rows: int, device: torch.device) -> list[int] | None:
    """Every rank's row count (one all-gather, or :func:`known_rank_sizes`): ranks may hold
    different B after dropping unreadable samples. None in a single process (nothing to gather)."""
    if not _distributed():
        return None
    known = _KNOWN_SIZES.get()
    if known is not None:
        rank = dist.get_rank()
        # a rank that gathered here while the others did not would pair its collective with theirs:
        # counts that do not describe this rank's rows are a bug to name, not a reason to gather
        if len(known) != dist.get_world_size() or known[rank] != rows:
            raise ValueError(f"rank {rank}: the step's known rank sizes {known} do not match the {rows} rows "
                             "this loss got (known_rank_sizes must count what every rank feeds it)")
        return list(known)
    n = torch.tensor([rows], dtype=torch.long, device=device)
    counts = [torch.zeros_like(n) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, n)
    return [int(c) for c in counts]


def _gather_rows(x: Tensor, sizes: list[int]) -> Tensor:
    """x [B,...] of every rank, ``sizes[r]`` rows each -> [sum B,...] in rank order (no gradient):
    one all-gather of blocks zero-padded to the largest B."""
    padded = x.new_zeros((max(sizes), *x.shape[1:]))  # (Bmax, ...)
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([p[:n] for p, n in zip(parts, sizes)], 0)  # (sum B, ...)


def gather_with_grad(x: Tensor, sizes: list[int] | None = None) -> tuple[Tensor, int]:
    """Concatenate x [B,E] from every rank -> ([sum B, E], offset of this rank's rows).

    Ranks may hold different B (after dropping unreadable samples); ``sizes``
    (:func:`rank_sizes`) when the caller has them already. Gradients flow back
    to each rank's own features.
    """
    if not _distributed():
        return x, 0
    sizes = sizes or rank_sizes(x.shape[0], x.device)
    return _AllGather.apply(x, sizes), sum(sizes[: dist.get_rank()])


def gather_ids(ids: Tensor, sizes: list[int] | None = None) -> Tensor:
    """Concatenate long[B] ids from every rank (no gradient; B may differ by rank) -> long[sum B]."""
    if not _distributed():
        return ids
    return _gather_rows(ids, sizes or rank_sizes(ids.shape[0], ids.device))  # (sum B,)


def drop_same_video(logits: Tensor, pair_ids: Tensor | None) -> Tensor:
    """Local logits [B,B] (row i's caption or clip against column j's) with the off-diagonal pairs of one
    video set to -inf: another caption of the same video is no negative. ``pair_ids`` long[B] or None."""
    if pair_ids is None:
        return logits
    B = logits.shape[0]
    same = pair_ids[:, None] == pair_ids[None, :]  # (B, B)
    return logits.masked_fill(same & ~torch.eye(B, dtype=torch.bool, device=logits.device), float("-inf"))


def vtc_loss(video: Tensor, text: Tensor, scale: Tensor, gather: bool = True,
             pair_ids: Tensor | None = None) -> dict[str, Tensor]:
    """Symmetric InfoNCE between unit features video [B,E] and text [B,E].

    Each local row is contrasted against the captions / clips of all ranks
    (open_clip's local loss): the same objective as a single big batch.
    pair_ids: optional long[B], one id per video (``VideoText.video_id``):
    every gathered pair with the same id is a positive, the target spread
    evenly over them (UMT's and ALBEF's ``idx`` targets), so two captions of
    one video in a batch, or a sample repeated on two ranks, never push each
    other apart. Without it (or with all ids distinct) the target is the
    diagonal, and the loss the same.
    """
    sizes = rank_sizes(video.shape[0], video.device) if gather else None  # one count for features and ids
    v_all, off = gather_with_grad(video, sizes) if gather else (video, 0)  # (sum B, E)
    t_all, _ = gather_with_grad(text, sizes) if gather else (text, 0)  # (sum B, E)
    # float32 logits even under autocast, which would otherwise recast the matmul to bf16 / fp16
    # (at scale 100, bf16's 8 bits of mantissa blur logits by about 0.4), and without TF32 on CUDA
    with float32_math(video.device.type):
        logits_v2t = scale.float() * video.float() @ t_all.float().T  # (B, W*B)
        logits_t2v = scale.float() * text.float() @ v_all.float().T  # (B, W*B)
        if pair_ids is None:
            target = torch.arange(video.shape[0], device=video.device) + off  # (B,): the diagonal
        else:
            ids_all = gather_ids(pair_ids, sizes) if gather else pair_ids  # (W*B,)
            same = (pair_ids[:, None] == ids_all[None, :]).float()  # (B, W*B), the diagonal among them
            target = same / same.sum(1, keepdim=True)  # (B, W*B): rows sum to 1
        loss = 0.5 * (F.cross_entropy(logits_v2t, target) + F.cross_entropy(logits_t2v, target))
    return {"vtc_loss": loss}


@dataclass
class VtcConfig(ObjectiveConfig):
    weight: float = 1.0  # on by default: every recipe aligns the two towers


@register_objective("vtc", VtcConfig)
class Vtc(Objective):
    """Video-text contrastive loss on the joint-space features, with the model's learnable temperature."""

    def __init__(self, cfg: VtcConfig, env: ObjectiveEnv):
        super().__init__()

    def forward(self, ctx: StepContext) -> dict[str, Tensor]:
        return vtc_loss(ctx.video_feat, ctx.text_feat, ctx.model.temperature_scale(), pair_ids=ctx.pair_ids)
