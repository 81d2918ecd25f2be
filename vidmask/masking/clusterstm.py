"""ClusterSTM: cluster-wise spatio-temporal masking (CVPR 2026), and its ablations.

Supplement, Algorithms I and II, corrected (see ``papers/README.md``):

* **Clusters.** Each frame's tokens are split into ``K = floor(N * (1 - ratio))``
  clusters (at least 1) by density-peak clustering (:mod:`vidmask.masking.dpc`),
  on L2-normalised tokens. ``K`` is the paper's ``num_clusters`` and may differ
  by one from :func:`~vidmask.masking.base.kept_per_frame`'s rounding; it is
  the same for every frame and clip, so drop mode works.
* **Temporal density** (Algorithm II). Token i of frame t against every token
  j of every *other* frame of its clip: ``d_ij = 1 - <x_i, x_j>``;
  ``dc_t`` = the ``dc_ratio`` quantile of all of frame t's distances (linear
  interpolation, as ``torch.quantile``); ``rho_i = sum_j exp(-(d_ij/dc_t)^2) / N``.
* **Selection** (Algorithm I). Exactly one token per cluster is kept: the one
  of highest temporal density, ties to the lowest token index. The pseudocode's
  cluster-wise "softmax" divides by the cluster's sum and cannot change the
  argmax, so it is skipped; its ``!=`` comparison would keep every tied token.

Defaults and edge cases:

* ``dc_ratio = 0.02``: the rule of thumb of density-peak clustering (Rodriguez &
  Laio, 2014): a cut-off within which about 1-2 % of all pairs fall. ``dc`` is
  clamped to at least ``1e-6`` so a static clip (all distances 0) gives no 0/0.
* ``T = 1`` raises ``ValueError``: temporal density has no other frame to look
  at (``cluster-random`` needs no density and accepts one frame).
* Identical tokens (letterboxing) are at distance exactly 0 and tie exactly;
  ties resolve by token index, so there are still exactly K kept per frame.

Speed (same masks as the pseudocode, which materialises
``[B*T, N, (T-1)*N]`` distances, a ``[B*T, (T-1)*N, C]`` copy of the tokens and
a full sort for the quantile):

* the clip's Gram matrix is symmetric: only its upper block triangle (frame t
  against frames s >= t) is multiplied and stored, about half the
  multiply-adds and half the memory of ``[L, L]``; the rows of similarities
  ``[N, L]`` of a few frames at a time (at most 8 MiB) are assembled from it,
  mirroring the blocks s < t. The diagonal blocks are the frames' own Gram
  matrices, which DPC reuses;
* in those rows a frame's own block is set to ``-inf`` instead of being cut
  out: it sorts out of the way and ``exp(-inf) = 0``;
* the quantile is taken on the similarities ``g`` (``d = 1 - g`` is
  decreasing, also after rounding) and its two order statistics are found
  exactly by selection, not a sort: a strided sample bounds them, one
  comparison pass gathers the few per cent of values beyond the bound, and
  ``kthvalue`` runs on those (on the whole row if the sample misled); the rank
  arithmetic and the lerp are ``torch.quantile``'s own, so ``dc`` is
  bit-identical to it on the same distances (tested), and
  ``fl(g - 1) = -fl(1 - g)`` keeps ``exp(-(d / dc)^2)`` the pseudocode's value;
* clips are processed one at a time per worker (DPC included), two workers
  on a multi-core CPU (:func:`_map_clips`), so the peak extra memory is two
  clips' half Grams (20 MB each at T=16, N=196), their normalised tokens and
  8 MiB chunks of rows, whatever the batch size: about 100 MiB measured at
  B=8, T=16, against 2.3 GiB for the transcription (``bench/masking.py``);
* the selection after the quantile's comparison pass is batched over a
  chunk's frames (one ``kthvalue`` per rank), not a loop over frames.

Cost: at B=8, T=16, N=196, C=768 on 2 CPU cores, 0.41-0.43 s, of which
0.26-0.28 s are the Gram blocks' multiply-adds at the cores' peak (the floor
of an exact float32 method); ~7.5x faster than the transcription, with the
same masks.

Float32 throughout, whatever the input dtype or autocast state: bf16 distances
would change the masks.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from vidmask.masking.base import Masker, MaskOut, keep_to_ids, register, topk_keep
from vidmask.masking.dpc import dpc_knn, dpc_knn_from_gram, kmeans_from_gram

__all__ = [
    "DEFAULT_DC_RATIO",
    "clusterstm_keep",
    "cutoff_distance",
    "dpc_knn",
    "num_clusters",
    "one_per_cluster",
    "quantile_linear",
    "temporal_density",
]

DEFAULT_DC_RATIO = 0.02
# how clusterstm picks the one token of a cluster (see clusterstm_keep)
SELECTS = ("density", "dynamics", "adjacent")
DC_MIN = 1e-6  # floor on the cut-off distance: a static clip has dc = 0
_SAMPLE = 8192  # size of the strided sample that brackets the quantile
_CHUNK_BYTES = 8 * 2**20  # frames of distance rows processed together per clip (bounds memory)


def num_clusters(num_tokens: int, ratio: float) -> int:
    """Clusters (= kept tokens) per frame: floor(N * (1 - ratio)), at least 1.

    The 1e-9 guards against products like 200 * 0.15 = 29.999999999999996.
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must be in [0, 1), got {ratio}")
    return max(1, math.floor(num_tokens * (1.0 - ratio) + 1e-9))


# ----------------------------------------------------------------------------
# exact quantile by selection
# ----------------------------------------------------------------------------


def _order_stats(rows: Tensor, lo: int, hi: int) -> tuple[Tensor, Tensor]:
    """The lo-th and hi-th smallest values (0-based, lo <= hi) of each row, exactly:
    float[F, R] -> 2 x float[F].

    A strided sample of each row gives a bound on the far side of the ranks
    (below them when they lie in the upper half, above otherwise); one
    comparison pass gathers every value on the near side of that bound, and
    ``kthvalue`` runs on those few. The gathered values are padded to one
    width W with the value that sorts first on the far side (``-inf`` when
    gathering from the top, ``+inf`` from the bottom), which puts the wanted
    ranks in the same column of every row: one ``kthvalue`` per rank for all
    rows. A row whose bound misses gets ``kthvalue`` on the whole row.
    """
    Fr, R = rows.shape
    step = max(1, R // _SAMPLE)
    if step == 1:
        return rows.kthvalue(lo + 1, dim=1).values, rows.kthvalue(hi + 1, dim=1).values
    sample = rows[:, ::step]  # (F, R/step)
    ns = sample.shape[1]
    upper = lo >= R // 2  # gather the values above a bound, else below one
    p = (lo if upper else hi) / R
    margin = 6.0 * math.sqrt(ns * p * (1.0 - p)) + 2.0
    k = int(p * ns - margin) if upper else int(math.ceil(p * ns + margin)) + 1
    bound = sample.kthvalue(min(ns, max(1, k)), dim=1, keepdim=True).values  # (F, 1)
    near = rows >= bound if upper else rows <= bound  # (F, R)
    # (count_nonzero along a dim would cast the mask to int64 first; per row it does not)
    counts = [int(torch.count_nonzero(m)) for m in near]  # (F,)
    parts = rows[near].split(counts)  # F x the values on the near side, unordered
    padded = pad_sequence(parts, batch_first=True, padding_value=float("-inf") if upper else float("inf"),
                          padding_side="left" if upper else "right")  # (F, W)
    W = padded.shape[1]
    # column of rank r: upper rows hold the top c values right-aligned, lower rows the bottom c left-aligned
    shift = W - R if upper else 0
    # (a column outside 1..W means every row was misled; the loop below answers them all)
    v_lo = padded.kthvalue(min(W, max(1, lo + shift + 1)), dim=1).values  # (F,)
    v_hi = v_lo if hi == lo else padded.kthvalue(min(W, max(1, hi + shift + 1)), dim=1).values  # (F,)
    for f, c in enumerate(counts):  # the sample misled us: select on the whole row
        if (upper and R - c > lo) or (not upper and hi >= c):
            v_lo[f] = rows[f].kthvalue(lo + 1).values
            v_hi[f] = rows[f].kthvalue(hi + 1).values
    return v_lo, v_hi  # (F,), (F,)


def _quantile_rank(q: float, n: int, dtype: torch.dtype) -> tuple[int, int, Tensor]:
    """torch.quantile's rank arithmetic: (rank below, rank above, interpolation weight).

    It computes ``q * (n - 1)`` in the input's dtype; doing the same here keeps
    ``dc`` bit-identical.
    """
    rank = torch.tensor(q, dtype=dtype) * (n - 1)
    below = rank.to(torch.long)
    return int(below), int(rank.ceil()), rank - below


def quantile_linear(rows: Tensor, q: float, n: int | None = None) -> Tensor:
    """``torch.quantile(rows[:, :n], q, dim=1)`` without sorting: float[F, R] -> float[F].

    ``n`` is how many values of each row count (default all); the others must
    be ``+inf`` (they sort last and are never reached). Reproduces
    ``torch.quantile``'s linear interpolation bit for bit: the rank
    ``q * (n - 1)`` in the input dtype, then a lerp between the order
    statistics on either side of it.
    """
    Fr, R = rows.shape
    n = R if n is None else int(n)
    if not 0.0 <= q <= 1.0 or n < 1 or n > R:
        raise ValueError(f"quantile_linear: need 0 <= q <= 1 and 1 <= n <= {R}, got q={q}, n={n}")
    lo, hi, weight = _quantile_rank(q, n, rows.dtype)
    v_lo, v_hi = _order_stats(rows, lo, hi)  # (F,), (F,)
    return torch.lerp(v_lo, v_hi, weight.to(rows.device))  # (F,)


# ----------------------------------------------------------------------------
# temporal density (Algorithm II)
# ----------------------------------------------------------------------------


def _cutoff_from_similarity(sim: Tensor, lo: int, hi: int, weight: Tensor) -> Tensor:
    """Per row, the quantile of the distances ``1 - sim`` at ranks (lo, hi, weight) of
    :func:`_quantile_rank`: float[F, R] -> float[F].

    Entries that do not count are ``-inf``. The lo-th smallest distance is
    ``1 -`` the lo-th largest similarity.
    """
    R = sim.shape[1]
    g_hi, g_lo = _order_stats(sim, R - 1 - hi, R - 1 - lo)  # (F,), (F,)
    return torch.lerp(1 - g_lo, 1 - g_hi, weight.to(sim.device))  # (F,)


def cutoff_distance(sim: Tensor, q: float) -> Tensor:
    """``torch.quantile(1 - sim[sim > -inf], q)`` by selection, bit for bit: 1-D float -> () float.

    What Algorithm II's ``dc`` is for one frame, given its similarities to the
    other frames (``-inf`` marks values that do not count).
    """
    n = int((sim > float("-inf")).sum())
    lo, hi, weight = _quantile_rank(q, n, sim.dtype)
    return _cutoff_from_similarity(sim.view(1, -1), lo, hi, weight)[0]


def _clip_density(x: Tensor, dc_ratio: float) -> tuple[Tensor, Tensor]:
    """One clip: normalised tokens [T,N,C] -> (temporal density [T,N], frame Grams [T,N,N]).

    Only the upper block triangle of the clip's Gram matrix is computed and
    stored (frame t against frames s >= t); the rows of similarities
    ``g = <x_i, x_j>`` of a chunk of frames are assembled from it, mirroring
    the blocks s < t. The quantile and the density are taken on ``g`` directly:
    ``d = 1 - g`` is decreasing in ``g`` (also after rounding), so the order
    statistics of ``d`` are ``1 - `` those of ``g`` counted from the top, and
    ``fl(g - 1) = -fl(1 - g)`` exactly, so ``exp(-((g - 1) / dc)^2)`` is the
    pseudocode's value bit for bit.
    """
    T, N, C = x.shape
    L = T * N
    flat = x.reshape(L, C)  # (L, C)
    upper = [flat[t * N : (t + 1) * N] @ flat[t * N :].T for t in range(T)]  # T x (N, L - t*N)
    frame_gram = torch.stack([u[:, :N] for u in upper])  # (T, N, N): the diagonal blocks, for DPC
    lo, hi, weight = _quantile_rank(dc_ratio, N * (T - 1) * N, x.dtype)
    fc = max(1, min(T, _CHUNK_BYTES // (N * L * x.element_size())))  # frames per chunk
    rows = torch.empty(fc, N, L, dtype=x.dtype, device=x.device)  # (fc, N, L)
    rho = torch.empty(T, N, dtype=x.dtype, device=x.device)  # (T, N)
    for t0 in range(0, T, fc):
        t1 = min(T, t0 + fc)
        row = rows[: t1 - t0]  # (F, N, L): frames t0..t1 against the clip
        for i, t in enumerate(range(t0, t1)):
            for s in range(t):
                row[i, :, s * N : (s + 1) * N] = upper[s][:, (t - s) * N : (t - s + 1) * N].T
            row[i, :, t * N :] = upper[t]
            row[i, :, t * N : (t + 1) * N] = float("-inf")  # the frame itself: sorts first, exp(-inf) = 0
        dc = _cutoff_from_similarity(row.view(t1 - t0, -1), lo, hi, weight).clamp_min(DC_MIN)  # (F,)
        row.sub_(1.0).div_(dc.view(-1, 1, 1))  # (F, N, L): -d / dc
        row.mul_(row).neg_().exp_()  # exp(-(d / dc)^2)
        rho[t0:t1] = row.sum(-1) / N
    return rho, frame_gram


def _check_frames(T: int, dc_ratio: float) -> None:
    if T < 2:
        raise ValueError(
            f"temporal density needs at least 2 frames, got T={T} "
            "(use `cluster-random` or a spatial strategy for single images)"
        )
    if not 0.0 <= dc_ratio <= 1.0:
        raise ValueError(f"dc_ratio must be in [0, 1], got {dc_ratio}")


def _map_clips(fn, B: int, device: torch.device) -> list:
    """``[fn(b) for b in range(B)]``, two clips at a time on a multi-core CPU.

    One clip's work is a large matrix product (which uses every core) and a
    tail of selection ops that mostly run on one; two Python threads overlap
    one clip's tail with the other's product (about 10 % faster on 2 cores,
    ``bench/masking.py``). The clips are independent, so the result does not
    depend on the order. On GPU, or with one intra-op thread, it is a loop.
    """
    workers = min(B, 2) if device.type == "cpu" and torch.get_num_threads() > 1 else 1
    if workers == 1:
        return [fn(b) for b in range(B)]
    grad = torch.is_grad_enabled()  # grad mode is thread-local: carry the caller's into the workers

    def run(b: int):
        with torch.set_grad_enabled(grad):
            return fn(b)

    with ThreadPoolExecutor(workers, thread_name_prefix="clusterstm") as pool:
        return list(pool.map(run, range(B)))


def _clip_density_of(tokens: Tensor, b: int, dc_ratio: float) -> tuple[Tensor, Tensor]:
    """Clip b of tokens [B,T,N,C] -> (temporal density [T,N], frame Grams [T,N,N]).

    One clip's half Gram matrix at a time (two with :func:`_map_clips`) bounds
    the memory whatever the batch size.
    """
    x = F.normalize(tokens[b].float(), dim=-1)  # (T, N, C)
    return _clip_density(x, dc_ratio)


def temporal_density(tokens: Tensor, dc_ratio: float = DEFAULT_DC_RATIO) -> Tensor:
    """Algorithm II: temporal density of every token against all other frames of its clip.

    tokens: float[B,T,N,C] (normalised inside) -> float32[B,T,N]. Needs T >= 2.
    """
    if tokens.dim() != 4:
        raise ValueError(f"temporal_density: tokens must be [B,T,N,C], got {tuple(tokens.shape)}")
    B, T, N, _ = tokens.shape
    _check_frames(T, dc_ratio)
    with torch.autocast(tokens.device.type, enabled=False):
        per_clip = _map_clips(lambda b: _clip_density_of(tokens, b, dc_ratio)[0], B, tokens.device)
    return torch.stack(per_clip)  # (B, T, N)


# ----------------------------------------------------------------------------
# cluster-wise selection (Algorithm I)
# ----------------------------------------------------------------------------


def one_per_cluster(score: Tensor, clusters: Tensor, K: int) -> Tensor:
    """Keep the highest-scoring token of each cluster, ties to the lowest index.

    score: float[M,N]; clusters: long[M,N] ids in 0..K-1, none empty -> bool[M,N]
    with exactly K True per row.
    """
    M, N = score.shape
    score = torch.nan_to_num(score, nan=float("-inf"))
    best = torch.full((M, K), float("-inf"), device=score.device, dtype=score.dtype)
    best = best.scatter_reduce(1, clusters, score, reduce="amax", include_self=True)  # (M, K)
    is_best = score == best.gather(1, clusters)  # (M, N)
    index = torch.arange(N, device=score.device).expand(M, N)  # (M, N)
    index = torch.where(is_best, index, torch.full_like(index, N))
    first = torch.full((M, K), N, device=score.device, dtype=torch.long)
    first = first.scatter_reduce(1, clusters, index, reduce="amin", include_self=True)  # (M, K)
    keep = torch.zeros(M, N, dtype=torch.bool, device=score.device)
    keep.scatter_(1, first, True)
    return keep  # (M, N)


def adjacent_dissimilarity(tokens: Tensor) -> Tensor:
    """The ClusterSTM summary's temporal density: each token's dissimilarity ``1 - cos`` to the token at the
    same spatial position in the adjacent frames (t-1 and t+1, their mean; one neighbour at the ends):
    tokens float[B,T,N,C] -> float[B,T,N]. More motion at a position, higher value."""
    B, T, N, _ = tokens.shape
    x = F.normalize(tokens.float(), dim=-1)  # (B, T, N, C)
    d = 1.0 - (x[:, 1:] * x[:, :-1]).sum(-1)  # (B, T-1, N): frame t+1 against frame t
    total = x.new_zeros(B, T, N)  # (B, T, N)
    total[:, 1:] += d  # against the previous frame
    total[:, :-1] += d  # against the next frame
    count = torch.full((T,), 2.0, device=x.device)
    count[0] = count[-1] = 1.0
    return total / count.view(1, T, 1)  # (B, T, N)


def _frame_clusters(grams: Tensor, K: int, knn: int, cluster: str, kmeans_iters: int,
                    density_scale: float = 1.0) -> Tensor:
    """Frame Grams [M,N,N] -> cluster ids long[M,N] (0..K-1)."""
    clusters, centres = dpc_knn_from_gram(grams, K, knn, density_scale)
    if cluster == "kmeans":
        clusters = kmeans_from_gram(grams, centres, kmeans_iters)
    return clusters


def clusterstm_keep(
    tokens: Tensor,
    ratio: float,
    dc_ratio: float = DEFAULT_DC_RATIO,
    knn: int = 5,
    select: str = "density",
    cluster: str = "dpc",
    kmeans_iters: int = 10,
    density_scale: float = 1.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """ClusterSTM keep mask: tokens [B,T,N,C] -> (keep bool[B,T,N], density [B,T,N], clusters long[B,T,N]).

    ``select="density"`` keeps the highest temporal density of each cluster
    (the pseudocode, Algorithm II), ``"dynamics"`` the lowest, ``"adjacent"``
    the highest :func:`adjacent_dissimilarity` (the summary's definition: the
    dissimilarity to the same position in the adjacent frames; the returned
    "density" is then that dissimilarity). ``cluster="kmeans"`` refines the
    DPC clusters with deterministic k-means seeded from the DPC centres;
    ``density_scale`` is DPC's (:func:`~vidmask.masking.dpc.dpc_knn_from_gram`).
    """
    if select not in SELECTS:
        raise ValueError(f"select must be one of {', '.join(SELECTS)}, got {select!r}")
    if cluster not in ("dpc", "kmeans"):
        raise ValueError(f"cluster must be 'dpc' or 'kmeans', got {cluster!r}")
    B, T, N, _ = tokens.shape
    K = num_clusters(N, ratio)
    _check_frames(T, dc_ratio)

    def one_clip(b: int) -> tuple[Tensor, Tensor, Tensor]:
        if select == "adjacent":
            x = F.normalize(tokens[b].float(), dim=-1)  # (T, N, C)
            grams = torch.bmm(x, x.transpose(1, 2))  # (T, N, N): the frames' own Grams, for DPC
            rho_b = adjacent_dissimilarity(tokens[b : b + 1])[0]  # (T, N)
        else:
            rho_b, grams = _clip_density_of(tokens, b, dc_ratio)  # (T, N), (T, N, N)
        clusters_b = _frame_clusters(grams, K, knn, cluster, kmeans_iters, density_scale)  # (T, N)
        keep_b = one_per_cluster(-rho_b if select == "dynamics" else rho_b, clusters_b, K)  # (T, N)
        return keep_b, rho_b, clusters_b

    keep, rho, clusters = zip(*_map_clips(one_clip, B, tokens.device))
    return torch.stack(keep), torch.stack(rho), torch.stack(clusters)  # (B, T, N) each


class _ClusterBase(Masker):
    needs_attn = False
    stochastic = False

    def __init__(self, ratio: float = 0.85, dc_ratio: float = DEFAULT_DC_RATIO, knn: int = 5):
        super().__init__(ratio)
        if not 0.0 <= dc_ratio <= 1.0:
            raise ValueError(f"{self.name}: dc_ratio must be in [0, 1], got {dc_ratio}")
        if knn < 1:
            raise ValueError(f"{self.name}: knn must be >= 1, got {knn}")
        self.dc_ratio = float(dc_ratio)
        self.knn = int(knn)

    def kept_per_frame(self, num_tokens: int) -> int:
        """One token per cluster: the paper's ``num_clusters = floor(N * (1 - ratio))``, at least 1."""
        return num_clusters(num_tokens, self.ratio)


@register("clusterstm")
class ClusterStmMasker(_ClusterBase):
    """ClusterSTM (Algorithms I + II): one kept token per DPC cluster, the temporally densest.

    Keeps exactly ``floor(N * (1 - ratio))`` (at least 1) tokens per frame.
    Deterministic: ``generator`` is not used. Needs T >= 2.
    """

    def __init__(
        self,
        ratio: float = 0.85,
        dc_ratio: float = DEFAULT_DC_RATIO,
        knn: int = 5,
        select: str = "density",
        cluster: str = "dpc",
        kmeans_iters: int = 10,
        dpc_distance: str = "unit",
    ):
        super().__init__(ratio, dc_ratio, knn)
        if select not in SELECTS:
            raise ValueError(f"clusterstm: select must be one of {', '.join(SELECTS)}, got {select!r}")
        if cluster not in ("dpc", "kmeans"):
            raise ValueError(f"clusterstm: cluster must be 'dpc' or 'kmeans', got {cluster!r}")
        if dpc_distance not in ("unit", "tcformer"):
            raise ValueError(f"clusterstm: dpc_distance must be 'unit' or 'tcformer', got {dpc_distance!r}")
        self.select, self.cluster, self.kmeans_iters = select, cluster, int(kmeans_iters)
        self.dpc_distance = dpc_distance

    def __call__(self, tokens, *, attn=None, generator=None) -> MaskOut:
        self._check(tokens, attn)
        with torch.autocast(tokens.device.type, enabled=False):
            scale = float(tokens.shape[-1]) if self.dpc_distance == "tcformer" else 1.0  # TCFormer: d / sqrt(C)
            keep, rho, clusters = clusterstm_keep(
                tokens, self.ratio, self.dc_ratio, self.knn, self.select, self.cluster, self.kmeans_iters, scale
            )
        return MaskOut(keep=keep, ids_keep=keep_to_ids(keep), saliency=rho, clusters=clusters)

    def __repr__(self) -> str:
        return (
            f"ClusterStmMasker(ratio={self.ratio}, dc_ratio={self.dc_ratio}, knn={self.knn}, "
            f"select={self.select!r}, cluster={self.cluster!r})"
        )


@register("cluster-random")
class ClusterRandomMasker(_ClusterBase):
    """Ablation "w/o temporal density": DPC clusters, one uniformly random token per cluster.

    Keeps exactly ``floor(N * (1 - ratio))`` per frame; works with T = 1.
    """

    stochastic = True

    def __call__(self, tokens, *, attn=None, generator=None) -> MaskOut:
        self._check(tokens, attn)
        B, T, N, _ = tokens.shape
        K = num_clusters(N, self.ratio)
        with torch.autocast(tokens.device.type, enabled=False):
            x = F.normalize(tokens.float(), dim=-1).view(B * T, N, -1)  # (B*T, N, C)
            grams = torch.bmm(x, x.transpose(1, 2))  # (B*T, N, N)
            clusters = dpc_knn_from_gram(grams, K, self.knn)[0]  # (B*T, N)
            noise = torch.rand(B * T, N, generator=generator, device=tokens.device)  # (B*T, N)
            keep = one_per_cluster(noise, clusters, K).view(B, T, N)
        return MaskOut(keep=keep, ids_keep=keep_to_ids(keep), clusters=clusters.view(B, T, N))


@register("density-topk")
class DensityTopkMasker(_ClusterBase):
    """Ablation "w/o clustering": the ``floor(N * (1 - ratio))`` temporally densest tokens per frame.

    Same K as ``clusterstm`` so the two compare at equal cost; ties to the
    lowest index. Deterministic; needs T >= 2.
    """

    def __call__(self, tokens, *, attn=None, generator=None) -> MaskOut:
        self._check(tokens, attn)
        K = num_clusters(tokens.shape[2], self.ratio)
        with torch.autocast(tokens.device.type, enabled=False):
            rho = temporal_density(tokens, self.dc_ratio)  # (B, T, N)
            keep = topk_keep(rho, K)  # (B, T, N)
        return MaskOut(keep=keep, ids_keep=keep_to_ids(keep), saliency=rho)
