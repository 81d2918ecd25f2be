"""Density-peak clustering (DPC-kNN) of the tokens of each frame.

The ClusterSTM pseudocode calls a ``DPC`` it does not give; this is the usual
recipe from TCFormer (Zeng et al., 2022), on L2-normalised tokens:

1. local density from the k nearest neighbours: ``rho_i = exp(-mean_k d_ik^2)``
   (the k nearest include the token itself, as in TCFormer);
2. ``delta_i`` = distance to the nearest *denser* token; the densest token of
   the frame gets the largest distance in the frame;
3. ``score = rho * delta``; the K highest scores are the cluster centres;
4. every token joins its nearest centre, and each centre its own cluster.

Two deliberate differences from TCFormer, and one choice:

* **Distance scale** (a choice, ``density_scale``). TCFormer divides its
  distances by sqrt(C) before the density exponential, so ``rho =
  exp(-mean_k d^2 / C)``; for unit vectors (``d^2`` in [0, 4]) with C in the
  hundreds that makes every density nearly 1 and the centre score
  ``rho * delta`` almost ``delta`` alone. vidmask's default (``density_scale
  = 1``) keeps the unit vectors' own distances, so density counts as much as
  separation; ``clusterstm``'s ``dpc_distance="tcformer"`` gives TCFormer's
  scale (``density_scale = C``). The density order, ``delta`` and the
  assignment do not depend on it: only which tokens become centres.

* **Deterministic ties.** TCFormer adds ``1e-6`` uniform noise to the density
  so that no two tokens tie. Densities of normalised tokens sit within a few
  float32 steps of each other (identical tokens of a letterboxed frame tie
  exactly), the noise does not separate them, and two tied peaks of one region
  both become centres while another region gets none. Here "denser" is the
  strict total order (higher density, then lower token index), computed from
  the mean kNN distance itself rather than from its rounded exponential.
* **Distances from a Gram matrix** ``d2_ij = g_ii + g_jj - 2 g_ij`` (clamped at
  0, exact 0 on the diagonal), so identical tokens are at distance exactly 0 and
  ClusterSTM can reuse the per-clip Gram it builds for the temporal density.

Cluster ids are numbered 0..K-1 in ascending order of the centre's token index.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def sqdist_from_gram(gram: Tensor) -> Tensor:
    """Squared Euclidean distances from a Gram matrix: [M,N,N] -> [M,N,N]."""
    sq = gram.diagonal(dim1=1, dim2=2)  # (M, N)
    d2 = (sq.unsqueeze(2) + sq.unsqueeze(1) - 2.0 * gram).clamp_min_(0.0)  # (M, N, N)
    d2.diagonal(dim1=1, dim2=2).zero_()
    return d2


def dense_order_rank(knn_mean: Tensor) -> Tensor:
    """Rank of each token in the strict density order (0 = densest): long[M,N].

    Denser = smaller mean kNN squared distance; ties go to the lower index
    (stable sort), so the order is total and exactly one token is the peak.
    """
    M, N = knn_mean.shape
    order = torch.argsort(knn_mean, dim=-1, stable=True)  # (M, N), densest first
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(N, device=order.device).expand(M, N))
    return rank  # (M, N)


def dpc_knn_from_gram(gram: Tensor, num_clusters: int, knn: int = 5,
                      density_scale: float = 1.0) -> tuple[Tensor, Tensor]:
    """DPC-kNN on precomputed Gram matrices of normalised tokens.

    gram: float[M,N,N]; density_scale: the squared distances are divided by it in
    the density exponential (TCFormer: C, the token width). Returns (clusters
    long[M,N] with ids 0..K-1, centres long[M,K] ascending token indices of the
    cluster centres).
    """
    M, N, _ = gram.shape
    K = max(1, min(int(num_clusters), N))
    k = max(1, min(int(knn), N))
    d2 = sqdist_from_gram(gram)  # (M, N, N)
    knn_mean = d2.topk(k, dim=-1, largest=False, sorted=True).values.mean(-1)  # (M, N)
    rank = dense_order_rank(knn_mean)  # (M, N)
    dist = d2.sqrt()  # (M, N, N)
    denser = rank.unsqueeze(1) < rank.unsqueeze(2)  # (M, N_i, N_j): j denser than i
    delta = torch.where(denser, dist, torch.full_like(dist, float("inf"))).amin(-1)  # (M, N)
    peak_delta = dist.flatten(1).amax(1, keepdim=True).expand(M, N)  # (M, N)
    delta = torch.where(rank == 0, peak_delta, delta)  # (M, N)
    score = torch.exp(-knn_mean / density_scale) * delta  # (M, N)
    # top-K scores, ties to the lower index, then centres in index order
    centres = torch.argsort(score, dim=-1, descending=True, stable=True)[:, :K]  # (M, K)
    centres = centres.sort(dim=-1).values  # (M, K)
    to_centre = d2.gather(2, centres.unsqueeze(1).expand(M, N, K))  # (M, N, K)
    clusters = to_centre.argmin(-1)  # (M, N), first minimum = lower centre id
    clusters.scatter_(1, centres, torch.arange(K, device=gram.device).expand(M, K))
    return clusters, centres


def kmeans_from_gram(gram: Tensor, centres: Tensor, iters: int = 10) -> Tensor:
    """Deterministic (kernel) k-means on normalised tokens, seeded from DPC centres.

    gram: float[M,N,N]; centres: long[M,K] seed tokens. No randomness: the seeds
    are the DPC centres. Every cluster keeps an *anchor* token (first the seed,
    then the member nearest the cluster mean) that is always assigned to it, so
    exactly K clusters stay non-empty. Returns clusters long[M,N] (ids 0..K-1).
    """
    M, N, _ = gram.shape
    K = centres.shape[1]
    sq = gram.diagonal(dim1=1, dim2=2)  # (M, N)
    ids = torch.arange(K, device=gram.device).expand(M, K)  # (M, K)
    anchors = centres
    # the seeds are single tokens: x_i . mu_k = g_{i,c_k}, |mu_k|^2 = g_{c_k,c_k}
    xm = gram.gather(2, centres.unsqueeze(1).expand(M, N, K))  # (M, N, K)
    mm = sq.gather(1, centres)  # (M, K)
    clusters = None
    for _ in range(max(1, int(iters))):
        d = sq.unsqueeze(2) - 2.0 * xm + mm.unsqueeze(1)  # (M, N, K)
        clusters = d.argmin(-1)  # (M, N)
        clusters.scatter_(1, anchors, ids)
        # one-hot by scatter: F.one_hot reads the ids' min and max back to the host off CUDA
        member = gram.new_zeros(M, N, K).scatter_(2, clusters.unsqueeze(2), 1.0)  # (M, N, K)
        weight = member / member.sum(1, keepdim=True)  # (M, N, K), columns sum to 1
        xm = torch.bmm(gram, weight)  # (M, N, K): x_i . mu_k
        mm = (weight * xm).sum(1)  # (M, K): |mu_k|^2
        d = sq.unsqueeze(2) - 2.0 * xm + mm.unsqueeze(1)  # (M, N, K)
        d = torch.where(member.bool(), d, torch.full_like(d, float("inf")))
        anchors = d.argmin(1)  # (M, K): member nearest the new mean
    return clusters


def dpc_knn(x: Tensor, num_clusters: int, knn: int = 5, normalize: bool = True) -> Tensor:
    """DPC-kNN cluster ids of each row's tokens: x float[M,N,C] -> long[M,N] in 0..K-1.

    Tokens are L2-normalised first (``normalize=False`` clusters raw vectors).
    Computed in float32 whatever the input dtype or autocast state.
    """
    if x.dim() != 3:
        raise ValueError(f"dpc_knn: x must be [M,N,C], got {tuple(x.shape)}")
    with torch.autocast(x.device.type, enabled=False):
        x = x.float()
        if normalize:
            x = F.normalize(x, dim=-1)  # (M, N, C)
        gram = torch.bmm(x, x.transpose(1, 2))  # (M, N, N)
        return dpc_knn_from_gram(gram, num_clusters, knn)[0]
