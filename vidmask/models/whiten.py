"""A locked, whitened text head: the frozen tower's caption features, PCA-whitened, as the joint space.

``model.proj_head=whitened``. The text side of the joint space has no trained
parameter: a caption's feature is its frozen tower feature, centred on the
training captions' mean, rotated onto their top ``model.embed_dim`` principal
directions and each scaled to unit variance (PCA whitening, the "BERT-whitening"
of sentence embeddings: Su et al. 2021; Huang et al., WhiteningBERT, 2021). Only
the video side learns, towards fixed targets (LiT's locked tower, Zhai et al.
CVPR 2022, with the text tower locked instead of the image tower).

Why (issue 15, measured on the motion-shapes corpus): with the learned
two-layer head on a frozen MiniLM, both sides co-adapt to what tells the
training clips apart most cheaply (colour, position signatures), and the head
*shrinks* what it does not need: two captions that differ in one motion word
have cosine 0.9625 in MiniLM's space and 0.990 in the trained joint space, while
the video features of a clip and its time-reversed self stay at 0.990. Neither
side can start using motion before the other does. A locked head cannot shrink
the motion words, and whitening undoes MiniLM's anisotropy (random captions of
the corpus at cosine 0.46 raw, 0.01 whitened; one-word motion swaps at 0.976
raw, 0.87 whitened), so a motion word moves a caption as far as any other
attribute does.

The statistics are fitted once, before training, from up to
``model.whiten_captions`` training captions spread evenly over the annotation
file; with many processes each rank encodes its share and the sums are
all-reduced in float64, so every rank holds the same head. They are buffers of
the model: a checkpoint carries them, and an evaluation or a resumed run uses
the fitted ones. A head that was never fitted refuses to run.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vidmask.config import ConfigError


def caption_moments(features: Tensor) -> tuple[Tensor, Tensor]:
    """Sums a whitening needs, in float64: features float[n,W] -> (sum [W], sum of outer products [W,W])."""
    x = features.double()  # (n, W)
    return x.sum(0), x.T @ x  # (W,), (W, W)


def pca_whitening(total: Tensor, outer: Tensor, count: int, dim: int, eps: float) -> tuple[Tensor, Tensor]:
    """(mean float[W], projection float[W,dim]) from the moments of ``count`` features.

    ``(x - mean) @ projection`` has unit variance along each of the top ``dim``
    principal directions; ``eps`` (relative to the largest eigenvalue) is added
    to every eigenvalue so that near-empty directions are not blown up. Each
    direction's sign is fixed (largest-magnitude loading positive) so that the
    same moments give the same head on any machine.
    """
    W = total.shape[0]
    if not 1 <= dim <= W:
        raise ValueError(f"a whitening keeps 1..{W} directions of {W}-wide features, asked for {dim}")
    if count < 2:
        raise ValueError(f"a whitening needs at least 2 captions, got {count}")
    mean = total / count  # (W,)
    cov = (outer - count * torch.outer(mean, mean)) / (count - 1)  # (W, W)
    values, vectors = torch.linalg.eigh(cov)  # (W,), (W, W) ascending
    values, vectors = values.flip(0)[:dim].clamp(min=0.0), vectors.flip(1)[:, :dim]  # (dim,), (W, dim)
    pivot = vectors.abs().argmax(0)  # (dim,)
    signs = torch.sign(vectors.gather(0, pivot.unsqueeze(0))).squeeze(0)  # (dim,)
    vectors = vectors * torch.where(signs == 0, torch.ones_like(signs), signs)  # (W, dim)
    scale = (values + eps * values[0].clamp(min=1e-12)).rsqrt()  # (dim,)
    return mean.float(), (vectors * scale).float()  # (W,), (W, dim)


class WhitenedHead(nn.Module):
    """Frozen pooled text features [B,W] -> whitened features [B,E]; no trained parameter."""

    def __init__(self, width: int, dim: int):
        super().__init__()
        if not 1 <= dim <= width:
            raise ConfigError(f"model.embed_dim={dim}: a whitened head keeps at most the text tower's "
                             f"{width} directions; set model.embed_dim to at most {width}")
        self.register_buffer("mean", torch.zeros(width))  # (W,)
        self.register_buffer("projection", torch.zeros(width, dim))  # (W, E)
        self.register_buffer("captions", torch.zeros((), dtype=torch.long))  # how many captions fitted it; 0 = none
        self._ready = False  # checked fitted once (a host read), not at every step

    @property
    def fitted(self) -> bool:
        return bool(self.captions.item())  # a host read, once per call site outside the step

    def set_statistics(self, mean: Tensor, projection: Tensor, captions: int) -> None:
        self.mean.copy_(mean)
        self.projection.copy_(projection)
        self.captions.fill_(captions)
        self._ready = False

    def forward(self, pooled: Tensor) -> Tensor:
        if not self._ready:
            if not self.fitted:
                raise RuntimeError("model.proj_head=whitened: the text head was never fitted (its statistics come "
                                   "from the training captions when training starts, and travel in checkpoints); "
                                   "load a checkpoint of a run trained with it")
            self._ready = True
        return (pooled.float() - self.mean) @ self.projection  # (B, E)


def spread(n: int, limit: int) -> list[int]:
    """Up to ``limit`` of ``n`` indices, evenly spread and deterministic (every rank computes the same)."""
    take = min(n, limit)
    return [i * n // take for i in range(take)]


@torch.no_grad()
def share_moments(encode, captions, picks: list[int], width: int, rank: int = 0, world: int = 1,
                  batch_size: int = 256) -> tuple[Tensor, Tensor]:
    """This rank's contiguous share of ``picks`` encoded (``encode(list[str]) -> float[b,width]``): its float64
    moments (sum [W], sum of outer products [W,W]); the ranks' moments add up to all of picks'. A rank with
    no share returns zeros, so it still takes part in the sums."""
    lo, hi = rank * len(picks) // world, (rank + 1) * len(picks) // world
    total, outer = torch.zeros(width, dtype=torch.float64), torch.zeros(width, width, dtype=torch.float64)
    for s in range(lo, hi, batch_size):
        t, o = caption_moments(encode([captions[i] for i in picks[s:min(s + batch_size, hi)]]))  # (W,), (W, W)
        total += t
        outer += o
    return total, outer


def fit_whitening(head: WhitenedHead, encode, captions, limit: int, eps: float, rank: int = 0, world: int = 1,
                  all_reduce=None) -> int:
    """Fit ``head`` from up to ``limit`` of ``captions`` (a sequence of str, read by index), evenly spread
    over it; ``encode(list[str]) -> float[b,W]`` is the frozen tower. With ``world`` ranks, each encodes its
    share and ``all_reduce(float64 tensor) -> tensor`` returns the sum over ranks. Returns the number of
    captions used."""
    if len(captions) < 2:
        raise ValueError(f"model.proj_head=whitened is fitted on the training captions, and there are "
                         f"{len(captions)}")
    picks = spread(len(captions), limit)
    total, outer = share_moments(encode, captions, picks, head.mean.shape[0], rank, world)  # (W,), (W, W)
    if world > 1:
        total, outer = all_reduce(total), all_reduce(outer)
    mean, projection = pca_whitening(total, outer, len(picks), head.projection.shape[1], eps)
    head.set_statistics(mean.to(head.mean.device), projection.to(head.mean.device), len(picks))
    return len(picks)
