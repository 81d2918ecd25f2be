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

Two paths, the same masks (``impl``: a parameter of the three maskers and of
:func:`clusterstm_keep` / :func:`temporal_density`; "auto" takes the batched
path on an accelerator and the loop on CPU, where the loop is faster):

**The loop** (``impl="loop"``, CPU; same masks as the pseudocode, which
materialises ``[B*T, N, (T-1)*N]`` distances, a ``[B*T, (T-1)*N, C]`` copy of
the tokens and a full sort for the quantile):

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

  Its price on an accelerator: per clip ~T^2/2 block copies, a count read
  back per frame and boolean indexing per chunk of frames: at T=8, N=196,
  ~390 aten operations (~640 with k-means) and 10 host syncs a clip, 25,000
  operations and 642 syncs at B=64 (``bench/results/masking.md``).

**The batched path** (``impl="batched"``, accelerators): the clips of a batch
in groups of fixed size, each group in a few large operations, with no host
sync (no ``.item()``, ``int(tensor)`` or boolean indexing: every count comes
from the shapes and the ratio), so its number of operations depends on the
number of groups, not on B:

* the group's Grams are one ``bmm`` ``[G, L, C] x [G, C, L]``: the full,
  symmetric matrix (twice the loop's multiply-adds), whose view
  ``[G*T, N*L]`` is every frame's row of similarities; its diagonal blocks are
  copied out for DPC, then set to ``-inf`` as in the loop;
* ``dc``: the two order statistics of each row by one ``topk`` (from the top,
  or from the bottom when that is shorter), then the same rank arithmetic and
  lerp: values only, so how ``topk`` orders ties cannot change anything;
* the density is the loop's exp-sum, in place on the Grams, in the same order
  of operations; DPC, k-means and the one-per-cluster selection run on all
  ``G*T`` frames at once (``cluster-random``: the noise is one draw of
  ``[B*T, N]`` either way, so the same generator gives the same masks);
* ``G`` keeps a group's largest intermediate (its Grams ``[G, L, L]``, float32)
  under :data:`GROUP_BYTES` (512 MiB), the groups evened out: at N=196, 54
  clips at T=8, 13 at T=16.

Equality is tested bit for bit on CPU (keep, density, clusters; random clips,
letterboxing, static clips, planted clusters; every ``select``, ``cluster``,
``dpc_distance``): the Gram entries, the order statistics and the exp-sum are
the same floating-point operations on the same values. On a GPU the two paths
multiply matrices of different shapes, and cuBLAS may round a Gram entry
differently: a near-tie within float32 rounding could then resolve differently.

Cost of the loop: at B=8, T=16, N=196, C=768 on 2 CPU cores, 0.41-0.43 s, of which
0.26-0.28 s are the Gram blocks' multiply-adds at the cores' peak (the floor
of an exact float32 method); ~7.5x faster than the transcription, with the
same masks. The batched path is slower on that CPU (twice the multiply-adds,
a full ``topk`` instead of the sampled selection, no overlap of two clips):
``bench/results/masking.md``.

Float32 throughout, whatever the input dtype or autocast state: bf16 distances
would change the masks.
"""

from __future__ import annotations

import math
import struct
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from vidmask.masking.base import Masker, MaskOut, register, topk_keep
from vidmask.masking.dpc import dpc_knn, dpc_knn_from_gram, kmeans_from_gram
from vidmask.masking.motion import adjacent_mean
from vidmask.precision import float32_math

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
IMPLS = ("auto", "batched", "loop")  # the two paths (see the module docstring); auto: batched off CPU
GROUP_BYTES = 512 * 2**20  # batched path: bound on a group of clips' largest intermediate (its Grams)


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


def _float32(v: float) -> float:
    """``v`` rounded to the nearest float32 (ties to even), as a Python float."""
    return struct.unpack("f", struct.pack("f", v))[0]


def _quantile_rank(q: float, n: int, dtype: torch.dtype) -> tuple[int, int, float]:
    """torch.quantile's rank arithmetic: (rank below, rank above, interpolation weight).

    It computes ``q * (n - 1)`` in the input's dtype (float32: both factors
    rounded to float32, then their product); doing the same here keeps ``dc``
    bit-identical. Plain Python, no tensor: nothing is read back from a device.
    The weight ``rank - below`` is exact in the dtype.
    """
    if dtype == torch.float32:
        rank = _float32(_float32(q) * _float32(float(n - 1)))  # the exact double product, rounded once
    elif dtype == torch.float64:
        rank = float(q) * float(n - 1)
    else:  # other dtypes: torch's own arithmetic, read back on the host (a CPU tensor, no device)
        rank = float(torch.tensor(q, dtype=dtype) * (n - 1))
    below = int(rank)
    return below, math.ceil(rank), rank - below


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
    return torch.lerp(v_lo, v_hi, weight)  # (F,)


# ----------------------------------------------------------------------------
# temporal density (Algorithm II)
# ----------------------------------------------------------------------------


def _cutoff_from_similarity(sim: Tensor, lo: int, hi: int, weight: float) -> Tensor:
    """Per row, the quantile of the distances ``1 - sim`` at ranks (lo, hi, weight) of
    :func:`_quantile_rank`: float[F, R] -> float[F].

    Entries that do not count are ``-inf``. The lo-th smallest distance is
    ``1 -`` the lo-th largest similarity.
    """
    R = sim.shape[1]
    g_hi, g_lo = _order_stats(sim, R - 1 - hi, R - 1 - lo)  # (F,), (F,)
    return torch.lerp(1 - g_lo, 1 - g_hi, weight)  # (F,)


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


def temporal_density(tokens: Tensor, dc_ratio: float = DEFAULT_DC_RATIO, impl: str = "auto") -> Tensor:
    """Algorithm II: temporal density of every token against all other frames of its clip.

    tokens: float[B,T,N,C] (normalised inside) -> float32[B,T,N]. Needs T >= 2.
    ``impl``: "loop" (clip by clip), "batched" (groups of clips, no host
    sync) or "auto" (:func:`resolve_impl`); the same values either way.
    """
    if tokens.dim() != 4:
        raise ValueError(f"temporal_density: tokens must be [B,T,N,C], got {tuple(tokens.shape)}")
    B, T, N, C = tokens.shape
    _check_frames(T, dc_ratio)
    with float32_math(tokens.device.type):
        if resolve_impl(impl, tokens.device) == "batched":
            groups = _groups(B, clips_per_group(T, N, C, dc_ratio, B))
            per_group = [_group_density(F.normalize(tokens[g].float(), dim=-1), dc_ratio, grams=False)[0]
                         for g in groups]
            return torch.cat(per_group)  # (B, T, N)
        per_clip = _map_clips(lambda b: _clip_density_of(tokens, b, dc_ratio)[0], B, tokens.device)
    return torch.stack(per_clip)  # (B, T, N)


# ----------------------------------------------------------------------------
# the batched path: groups of clips in a few large operations, no host sync
# ----------------------------------------------------------------------------


def resolve_impl(impl: str, device: torch.device) -> str:
    """"auto" -> "batched" on an accelerator, "loop" on CPU (where the loop is faster:
    ``bench/results/masking.md``); "batched" and "loop" as given."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {', '.join(IMPLS)}, got {impl!r}")
    if impl == "auto":
        return "loop" if device.type == "cpu" else "batched"
    return impl


def clips_per_group(T: int, N: int, C: int, dc_ratio: float | None, B: int | None = None) -> int:
    """Clips the batched path takes at once, so that a group's largest intermediate stays
    under :data:`GROUP_BYTES` (at least one clip); with ``B``, evened out over the
    ``ceil(B / G)`` groups so that they all have (nearly) the same size.

    Per clip, the largest are its Gram matrix ``[L, L]`` and the top order statistics
    ``[T, k]`` (values and int64 indices) when the temporal density is computed
    (``dc_ratio`` not None), its normalised tokens ``[T, N, C]`` and DPC's ``[T, N, N]``
    (k-means': ``[T, N, K]``, K <= N) otherwise.
    """
    L = T * N
    per_clip = max(T * N * C * 4, T * N * N * 4)
    if dc_ratio is not None:
        lo, hi, _ = _quantile_rank(dc_ratio, N * (T - 1) * N, torch.float32)
        per_clip = max(per_clip, L * L * 4, T * min(hi + 1, N * L - lo) * 12)
    G = max(1, GROUP_BYTES // per_clip)
    if B is None or B <= G:
        return G if B is None else max(1, B)
    groups = -(-B // G)
    return -(-B // groups)


def _groups(B: int, G: int) -> list[slice]:
    """Slices of the batch, G clips each (the last one may be shorter)."""
    return [slice(g0, min(B, g0 + G)) for g0 in range(0, B, G)]


def _top_order_stats(rows: Tensor, lo: int, hi: int) -> tuple[Tensor, Tensor]:
    """The lo-th and hi-th largest values (0-based, lo <= hi) of each row, exactly:
    float[F, R] -> 2 x float[F]. One ``topk`` of ``hi + 1`` values from the top, or of
    ``R - lo`` from the bottom when that is fewer; values only, so how ties are
    ordered does not matter. Counts are Python ints: no host sync."""
    R = rows.shape[1]
    if hi + 1 <= R - lo:
        top = rows.topk(hi + 1, dim=1, largest=True, sorted=True).values  # (F, hi+1), descending
        return top[:, lo], top[:, hi]
    bottom = rows.topk(R - lo, dim=1, largest=False, sorted=True).values  # (F, R-lo), ascending
    return bottom[:, R - 1 - lo], bottom[:, R - 1 - hi]


def _group_density(x: Tensor, dc_ratio: float, grams: bool = True) -> tuple[Tensor, Tensor | None]:
    """Batched Algorithm II for a group of clips: normalised tokens [G,T,N,C] ->
    (temporal density float[G,T,N], the frames' own Grams float[G*T,N,N] or None).

    The same values as :func:`_clip_density`, bit for bit (tested): the whole Gram
    ``[G, L, L]`` is one ``bmm`` (symmetric, so its lower blocks are the loop's
    mirrored upper ones); viewed as ``[G*T, N*L]`` it *is* every frame's row of
    similarities, its own block set to ``-inf`` as in the loop; ``dc`` from two
    order statistics of each row (:func:`_top_order_stats`) and the loop's lerp;
    then the loop's exp-sum, in place, in the same order of operations.
    """
    G, T, N, C = x.shape
    L = T * N
    flat = x.reshape(G, L, C)  # (G, L, C)
    gram = torch.bmm(flat, flat.transpose(1, 2))  # (G, L, L)
    own = gram.view(G, T, N, T, N).diagonal(dim1=1, dim2=3)  # (G, N, N, T): each frame against itself
    frame_gram = None
    if grams:  # copied out before the -inf overwrites them: DPC's input
        frame_gram = own.permute(0, 3, 1, 2).clone(memory_format=torch.contiguous_format).view(G * T, N, N)
    own.fill_(float("-inf"))  # the frame itself: sorts last from the top, exp(-inf) = 0
    lo, hi, weight = _quantile_rank(dc_ratio, N * (T - 1) * N, x.dtype)
    g_lo, g_hi = _top_order_stats(gram.view(G * T, N * L), lo, hi)  # (G*T,), (G*T,)
    dc = torch.lerp(1 - g_lo, 1 - g_hi, weight).clamp_min(DC_MIN)  # (G*T,)
    rows = gram.view(G, T, N, L)  # (G, T, N, L)
    rows.sub_(1.0).div_(dc.view(G, T, 1, 1))  # -d / dc
    rows.mul_(rows).neg_().exp_()  # exp(-(d / dc)^2)
    return rows.sum(-1) / N, frame_gram  # (G, T, N), (G*T, N, N)


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
    x = F.normalize(tokens.float(), dim=-1)  # (B, T, N, C)
    return adjacent_mean(1.0 - (x[:, 1:] * x[:, :-1]).sum(-1))  # (B, T, N)


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
    impl: str = "auto",
) -> tuple[Tensor, Tensor, Tensor]:
    """ClusterSTM keep mask: tokens [B,T,N,C] -> (keep bool[B,T,N], density [B,T,N], clusters long[B,T,N]).

    ``select="density"`` keeps the highest temporal density of each cluster
    (the pseudocode, Algorithm II), ``"dynamics"`` the lowest, ``"adjacent"``
    the highest :func:`adjacent_dissimilarity` (the summary's definition: the
    dissimilarity to the same position in the adjacent frames; the returned
    "density" is then that dissimilarity). ``cluster="kmeans"`` refines the
    DPC clusters with deterministic k-means seeded from the DPC centres;
    ``density_scale`` is DPC's (:func:`~vidmask.masking.dpc.dpc_knn_from_gram`).
    ``impl``: "loop" (clip by clip), "batched" (groups of clips, no host
    sync) or "auto" (:func:`resolve_impl`); the same masks either way.
    """
    if select not in SELECTS:
        raise ValueError(f"select must be one of {', '.join(SELECTS)}, got {select!r}")
    if cluster not in ("dpc", "kmeans"):
        raise ValueError(f"cluster must be 'dpc' or 'kmeans', got {cluster!r}")
    B, T, N, C = tokens.shape
    K = num_clusters(N, ratio)
    _check_frames(T, dc_ratio)

    if resolve_impl(impl, tokens.device) == "batched":
        G = clips_per_group(T, N, C, None if select == "adjacent" else dc_ratio, B)
        parts = [_clusterstm_group(tokens[g], K, dc_ratio, knn, select, cluster, kmeans_iters, density_scale)
                 for g in _groups(B, G)]
        keep, rho, clusters = (torch.cat(p) for p in zip(*parts))
        return keep, rho, clusters  # (B, T, N) each

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


def _clusterstm_group(tokens: Tensor, K: int, dc_ratio: float, knn: int, select: str, cluster: str,
                      kmeans_iters: int, density_scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """Batched :func:`clusterstm_keep` on a group of clips: tokens [G,T,N,C] ->
    (keep bool[G,T,N], density [G,T,N], clusters long[G,T,N]); DPC, k-means and the
    selection run on all G*T frames at once."""
    G, T, N, C = tokens.shape
    x = F.normalize(tokens.float(), dim=-1)  # (G, T, N, C)
    if select == "adjacent":
        frames = x.reshape(G * T, N, C)  # (G*T, N, C)
        grams = torch.bmm(frames, frames.transpose(1, 2))  # (G*T, N, N)
        rho = adjacent_dissimilarity(tokens)  # (G, T, N)
    else:
        rho, grams = _group_density(x, dc_ratio)  # (G, T, N), (G*T, N, N)
    clusters = _frame_clusters(grams, K, knn, cluster, kmeans_iters, density_scale)  # (G*T, N)
    score = (-rho if select == "dynamics" else rho).reshape(G * T, N)  # (G*T, N)
    keep = one_per_cluster(score, clusters, K)  # (G*T, N)
    return keep.view(G, T, N), rho, clusters.view(G, T, N)


class _ClusterBase(Masker):
    needs_attn = False
    stochastic = False

    def __init__(self, ratio: float = 0.85, dc_ratio: float = DEFAULT_DC_RATIO, knn: int = 5, impl: str = "auto"):
        """``impl``: "batched" (groups of clips in a few large operations, no host sync:
        for accelerators), "loop" (clip by clip: faster on CPU) or "auto" (batched off
        CPU, loop on CPU). The same masks either way."""
        super().__init__(ratio)
        if not 0.0 <= dc_ratio <= 1.0:
            raise ValueError(f"{self.name}: dc_ratio must be in [0, 1], got {dc_ratio}")
        if knn < 1:
            raise ValueError(f"{self.name}: knn must be >= 1, got {knn}")
        if impl not in IMPLS:
            raise ValueError(f"{self.name}: impl must be one of {', '.join(IMPLS)}, got {impl!r}")
        self.dc_ratio = float(dc_ratio)
        self.knn = int(knn)
        self.impl = impl

    def _batched(self, tokens: Tensor) -> bool:
        return resolve_impl(self.impl, tokens.device) == "batched"

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
        impl: str = "auto",
    ):
        super().__init__(ratio, dc_ratio, knn, impl)
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
        with float32_math(tokens.device.type):
            scale = float(tokens.shape[-1]) if self.dpc_distance == "tcformer" else 1.0  # TCFormer: d / sqrt(C)
            batched = self._batched(tokens)
            keep, rho, clusters = clusterstm_keep(
                tokens, self.ratio, self.dc_ratio, self.knn, self.select, self.cluster, self.kmeans_iters, scale,
                impl="batched" if batched else "loop",
            )
        return MaskOut(keep=keep, ids_keep=self.kept_ids(keep), saliency=rho, clusters=clusters)

    def __repr__(self) -> str:
        return (
            f"ClusterStmMasker(ratio={self.ratio}, dc_ratio={self.dc_ratio}, knn={self.knn}, "
            f"select={self.select!r}, cluster={self.cluster!r}, impl={self.impl!r})"
        )


def _random_per_cluster(tokens: Tensor, noise: Tensor, K: int, knn: int) -> tuple[Tensor, Tensor]:
    """DPC clusters of every frame, one token per cluster by ``noise``: tokens [B,T,N,C],
    noise [B,T,N] -> (keep bool[B,T,N], clusters long[B,T,N])."""
    B, T, N, C = tokens.shape
    x = F.normalize(tokens.float(), dim=-1).reshape(B * T, N, C)  # (B*T, N, C)
    grams = torch.bmm(x, x.transpose(1, 2))  # (B*T, N, N)
    clusters = dpc_knn_from_gram(grams, K, knn)[0]  # (B*T, N)
    keep = one_per_cluster(noise.reshape(B * T, N), clusters, K)  # (B*T, N)
    return keep.view(B, T, N), clusters.view(B, T, N)


@register("cluster-random")
class ClusterRandomMasker(_ClusterBase):
    """Ablation "w/o temporal density": DPC clusters, one uniformly random token per cluster.

    Keeps exactly ``floor(N * (1 - ratio))`` per frame; works with T = 1.
    "loop" is the whole batch at once (no loop over clips here); "batched" the
    same operations in groups of clips (bounded memory) and without reading the
    kept count back. Either way the noise is one draw of ``[B*T, N]`` from
    ``generator``, so both give the same masks.
    """

    stochastic = True

    def __call__(self, tokens, *, attn=None, generator=None) -> MaskOut:
        self._check(tokens, attn)
        B, T, N, C = tokens.shape
        K = num_clusters(N, self.ratio)
        batched = self._batched(tokens)
        with float32_math(tokens.device.type):
            # one draw for the whole batch whichever the path: the same noise for the same generator
            noise = torch.rand(B * T, N, generator=generator, device=tokens.device).view(B, T, N)  # (B, T, N)
            G = clips_per_group(T, N, C, None, B) if batched else B
            parts = [_random_per_cluster(tokens[g], noise[g], K, self.knn) for g in _groups(B, G)]
            keep, clusters = (torch.cat(p) for p in zip(*parts))  # (B, T, N) each
        return MaskOut(keep=keep, ids_keep=self.kept_ids(keep), clusters=clusters)


@register("density-topk")
class DensityTopkMasker(_ClusterBase):
    """Ablation "w/o clustering": the ``floor(N * (1 - ratio))`` temporally densest tokens per frame.

    Same K as ``clusterstm`` so the two compare at equal cost; ties to the
    lowest index. Deterministic; needs T >= 2.
    """

    def __call__(self, tokens, *, attn=None, generator=None) -> MaskOut:
        self._check(tokens, attn)
        K = num_clusters(tokens.shape[2], self.ratio)
        batched = self._batched(tokens)
        with float32_math(tokens.device.type):
            rho = temporal_density(tokens, self.dc_ratio, impl="batched" if batched else "loop")  # (B, T, N)
            keep = topk_keep(rho, K)  # (B, T, N)
        return MaskOut(keep=keep, ids_keep=self.kept_ids(keep), saliency=rho)
