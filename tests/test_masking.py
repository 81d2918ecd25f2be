"""Mask strategies: one contract test for every registered masker, then each
strategy against what its paper promises; ClusterSTM against a slow float64
transcription of the supplement's Algorithms I and II (corrected)."""

import math

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange

from vidmask.masking import (MaskOut, build_masker, gather_tokens, keep_to_ids, list_maskers, replace_patches,
                             strategy_ratio)
from vidmask.masking.base import kept_per_frame
from vidmask.masking.clusterstm import (
    DC_MIN,
    cutoff_distance,
    dpc_knn,
    num_clusters,
    one_per_cluster,
    quantile_linear,
    temporal_density,
)
from vidmask.masking.stm_guided import StmGuidedMasker

B, T, N, C = 2, 4, 50, 16  # N = 50: not a perfect square
N_PLAIN = N
N_GRID = 64  # for a strategy that convolves over each frame's grid (Masker.needs_grid): 8 x 8


def gen(seed):
    return torch.Generator().manual_seed(seed)


def clip(b=B, t=T, n=N, c=C, seed=0):
    """Tokens with some temporal coherence (a shared per-position part) and a saliency map."""
    g = gen(seed)
    base = torch.randn(b, 1, n, c, generator=g)
    tokens = base + 0.7 * torch.randn(b, t, n, c, generator=g)  # (b, t, n, c)
    attn = torch.rand(b, t, n, generator=g).pow(3)  # (b, t, n)
    return tokens, attn / attn.sum(-1, keepdim=True)


def make(name, ratio=0.75, c=C, **params):
    """Build any registered masker with what it needs: the token width, its fixed ratio if it has one."""
    return build_masker(name, ratio=strategy_ratio(name, ratio), token_dim=c, **params)


# ----------------------------------------------------------------------------
# the contract, for every registered strategy
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", list_maskers())
def test_contract(name):
    masker = make(name)
    N = N_GRID if masker.needs_grid else N_PLAIN  # a grid strategy cannot see 50 tokens as a square
    tokens, attn = clip(n=N)
    assert set(masker.modes) <= {"drop", "replace"} and masker.modes
    assert masker.inputs in ("features", "patch_embeds") and masker.video_text_set in ("kept", "masked")
    out = masker(tokens, attn=attn, generator=gen(0))
    assert isinstance(out, MaskOut)
    keep = out.keep
    assert keep.shape == (B, T, N) and keep.dtype == torch.bool and keep.device == tokens.device

    K = out.num_kept  # raises if clips disagree
    per_frame = masker.kept_per_frame(N)  # None: a count per clip only (MASCOT, checked in its own test)
    if per_frame is not None:
        assert (keep.sum(-1) == per_frame).all(), keep.sum(-1)
    assert 0 < K <= T * N

    if "drop" in masker.modes:
        assert out.ids_keep is not None
    if out.ids_keep is not None:
        ids = out.ids_keep
        assert ids.shape == (B, K) and ids.dtype == torch.long
        assert torch.equal(ids, keep_to_ids(keep))
        assert (ids[:, 1:] > ids[:, :-1]).all()
        flat = tokens.reshape(B, T * N, C)
        assert torch.equal(gather_tokens(flat, ids), flat[keep.reshape(B, -1)].reshape(B, K, C))
    if masker.video_text_set == "masked":  # its masked set is encoded too: straight-through weights for it
        assert out.masked_weight.shape == (B, T * N - K)
        assert torch.equal(out.masked_weight.detach(), torch.ones(B, T * N - K))

    again = masker(tokens, attn=attn, generator=gen(0))
    assert torch.equal(again.keep, keep)

    if masker.stochastic and K < T * N:
        others = [masker(tokens, attn=attn, generator=gen(s)).keep for s in range(1, 6)]
        assert any(not torch.equal(o, keep) for o in others), "no randomness across seeds"

    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = masker(tokens, attn=attn, generator=gen(0))
    assert torch.equal(auto.keep, keep), "autocast changed the mask"
    for extra in (auto.saliency, auto.token_weight, auto.masked_weight, *(auto.extra or {}).values()):
        if torch.is_tensor(extra) and extra.is_floating_point():
            assert extra.dtype == torch.float32

    if not masker.needs_attn:
        assert masker(tokens, generator=gen(0)).keep.shape == (B, T, N)
    else:
        with pytest.raises(ValueError):
            masker(tokens, generator=gen(0))


# strategies that still read a value back per call, and why (each one sync on an accelerator)
READS_BACK = {
    "mascot-high": "the tube interval's length per clip decides the kept count (keep_to_ids counts it)",
    "mascot-low": "the tube interval's length per clip decides the kept count (keep_to_ids counts it)",
}


@pytest.mark.parametrize("name", list_maskers())
def test_a_strategy_reads_nothing_back_from_the_device(name):
    """No .item() / int() / bool() of a tensor, nonzero or boolean indexing in a call (counted on CPU
    with bench/masking.py's dispatch-mode counter): on an accelerator each would stall the step. The
    ClusterSTM family on its batched path, the one an accelerator takes."""
    from test_gpu_check import load

    bench = load("masking")
    params = {"impl": "batched"} if name in ("clusterstm", "density-topk", "cluster-random") else {}
    masker = make(name, **params)
    N = N_GRID if masker.needs_grid else N_PLAIN
    tokens, attn = clip(n=N)
    masker(tokens, attn=attn, generator=gen(0))  # first call outside the count (lazy set-up)
    with bench.OpLog() as log:
        masker(tokens, attn=attn, generator=gen(0))
    if name in READS_BACK:
        assert log.syncs > 0, f"{name} no longer reads back: take it off READS_BACK"
    else:
        assert log.syncs == 0, f"{name}: {log.syncs} host reads per call"


def test_unknown_name_is_rejected():
    with pytest.raises(KeyError):
        build_masker("cluster")  # no substring dispatch


def test_unknown_parameter_is_rejected_with_the_valid_ones():
    from vidmask.masking import masker_params

    assert {"dc_ratio", "knn"} <= set(masker_params("clusterstm"))
    assert build_masker("clusterstm", ratio=0.85, knn=3) is not None
    with pytest.raises(TypeError, match="'random' takes no parameter knn; it takes: none besides the ratio"):
        build_masker("random", knn=3)
    with pytest.raises(TypeError, match="takes no parameter k; it takes: .*knn"):
        build_masker("clusterstm", k=3)


# ----------------------------------------------------------------------------
# ClusterSTM: slow float64 reference of Algorithms I + II (corrected) and DPC-kNN
# ----------------------------------------------------------------------------


def ref_dpc(x, k_clusters, knn=5):
    """TCFormer's DPC-kNN written plainly, one frame, with density ties broken by index.

    x: float64 [N, C] L2-normalised. Returns cluster ids [N] numbered by ascending centre index.
    """
    n = x.shape[0]
    d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)  # exact 0 for identical tokens
    m = [float(torch.sort(d2[i]).values[: min(knn, n)].mean()) for i in range(n)]
    denser = lambda j, i: (m[j], j) < (m[i], i)  # noqa: E731
    dist = d2.sqrt()
    delta = []
    for i in range(n):
        cand = [float(dist[i, j]) for j in range(n) if denser(j, i)]
        delta.append(min(cand) if cand else float(dist.max()))
    score = [math.exp(-m[i]) * delta[i] for i in range(n)]
    centres = sorted(sorted(range(n), key=lambda i: (-score[i], i))[:k_clusters])
    ids = []
    for i in range(n):
        if i in centres:
            ids.append(centres.index(i))
        else:
            ids.append(min(range(len(centres)), key=lambda c: (float(d2[i, centres[c]]), c)))
    return torch.tensor(ids)


def ref_temporal_density(tokens, dc_ratio):
    """Algorithm II, one frame at a time, float64."""
    x = F.normalize(tokens.double(), dim=-1)
    b_, t_, n, _ = x.shape
    rho = torch.zeros(b_, t_, n, dtype=torch.float64)
    for b in range(b_):
        for t in range(t_):
            others = torch.cat([x[b, s] for s in range(t_) if s != t])  # ((T-1)*N, C)
            d = 1 - x[b, t] @ others.T  # (N, (T-1)*N)
            dc = torch.quantile(d.flatten(), dc_ratio).clamp_min(DC_MIN)
            rho[b, t] = torch.exp(-((d / dc) ** 2)).sum(-1) / n
    return rho


def ref_clusterstm(tokens, ratio, dc_ratio=0.02, knn=5, lowest=False):
    """Algorithm I: per frame, the token of highest (or lowest) temporal density in each cluster."""
    x = F.normalize(tokens.double(), dim=-1)
    b_, t_, n, _ = x.shape
    k = max(1, math.floor(n * (1 - ratio) + 1e-9))
    rho = ref_temporal_density(tokens, dc_ratio)
    keep = torch.zeros(b_, t_, n, dtype=torch.bool)
    for b in range(b_):
        for t in range(t_):
            ids = ref_dpc(x[b, t], k, knn)
            for c in range(k):
                members = [i for i in range(n) if ids[i] == c]
                val = lambda i: -float(rho[b, t, i]) if lowest else float(rho[b, t, i])  # noqa: E731
                best = max(members, key=lambda i: (val(i), -i))
                keep[b, t, best] = True
    return keep, rho


def same_partition(a, b):
    """Two cluster labelings of one frame describe the same partition."""
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def test_temporal_density_matches_reference():
    tokens, _ = clip(t=5, n=30, seed=1)
    for dc_ratio in (0.02, 0.3):
        fast = temporal_density(tokens, dc_ratio)
        assert fast.dtype == torch.float32 and fast.shape == tokens.shape[:3]
        torch.testing.assert_close(fast.double(), ref_temporal_density(tokens, dc_ratio), rtol=2e-5, atol=1e-6)


@pytest.mark.parametrize("R", [7, 999, 50_000, 200_003])
def test_quantile_linear_is_torch_quantile(R):
    g = gen(R)
    rows = torch.randn(3, R, generator=g)
    rows[1] = torch.randint(0, 5, (R,), generator=g).float()  # heavy ties
    for q in (0.0, 0.02, 0.37, 0.5, 1.0):
        assert torch.equal(quantile_linear(rows, q), torch.quantile(rows, q, dim=1))
    # values past n are +inf and never reached
    n = R - R // 4
    padded = rows.clone()
    padded[:, n:] = float("inf")
    assert torch.equal(quantile_linear(padded, 0.02, n=n), torch.quantile(rows[:, :n], 0.02, dim=1))


@pytest.mark.parametrize("R", [50, 120_000])
def test_cutoff_distance_is_torch_quantile_of_distances(R):
    g = gen(R)
    sim = torch.rand(R, generator=g) * 2 - 1
    sim[torch.rand(R, generator=g) < 0.1] = float("-inf")  # a frame's own block: does not count
    finite = sim[sim > float("-inf")]
    for q in (0.0, 0.02, 0.5, 1.0):
        assert torch.equal(cutoff_distance(sim, q), torch.quantile(1 - finite, q))


def test_quantile_linear_when_the_sample_misleads():
    """A row whose strided sample is unrepresentative: the bracket misses, the full selection answers."""
    R = 100_000
    rows = torch.rand(2, R, generator=gen(0))
    rows[0, :: R // 8192] = -1.0  # exactly the sampled positions: the sample says "all small"
    rows[1, :: R // 8192] = 2.0  # ... "all large"
    for q in (0.02, 0.4, 0.6, 0.98):  # ranks in the lower and in the upper half
        assert torch.equal(quantile_linear(rows, q), torch.quantile(rows, q, dim=1))
    for v in (-1.0, 2.0):  # every row misled the same way (the gathered values miss the rank in all)
        same = rows[:1].clone().expand(3, -1).contiguous()
        same[:, :: R // 8192] = v
        for q in (0.02, 0.4, 0.6, 0.98):
            assert torch.equal(quantile_linear(same, q), torch.quantile(same, q, dim=1))


def test_dpc_knn_matches_reference():
    g = gen(3)
    x = torch.randn(6, 40, 12, generator=g)
    for k in (1, 7, 40):
        ids = dpc_knn(x, k)
        assert ids.shape == (6, 40) and ids.dtype == torch.long
        for m in range(6):
            ref = ref_dpc(F.normalize(x[m].double(), dim=-1), k)
            assert torch.equal(ids[m], ref), (k, m)
            assert sorted(set(ids[m].tolist())) == list(range(k))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_clusterstm_matches_reference_on_random_clips(seed):
    tokens, _ = clip(t=4, n=36, seed=seed)
    out = build_masker("clusterstm", ratio=0.75)(tokens)
    keep_ref, rho_ref = ref_clusterstm(tokens, 0.75)
    assert torch.equal(out.keep, keep_ref)
    torch.testing.assert_close(out.saliency.double(), rho_ref, rtol=2e-5, atol=1e-6)
    for b in range(tokens.shape[0]):
        for t in range(tokens.shape[1]):
            ref_ids = ref_dpc(F.normalize(tokens[b, t].double(), dim=-1), num_clusters(36, 0.75))
            assert torch.equal(out.clusters[b, t], ref_ids)


def test_clusterstm_same_masks_with_one_or_two_clip_workers():
    """Two clips at a time on a multi-core CPU (clusterstm._map_clips) changes nothing but speed."""
    tokens, _ = clip(b=5, t=3, n=49, seed=7)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        two = build_masker("clusterstm", ratio=0.8)(tokens)
        torch.set_num_threads(1)
        one = build_masker("clusterstm", ratio=0.8)(tokens)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(two.keep, one.keep) and torch.equal(two.clusters, one.clusters)
    assert torch.equal(two.saliency, one.saliency)
    with torch.no_grad():  # the caller's grad mode reaches the worker threads
        assert not temporal_density(tokens.requires_grad_()).requires_grad


def test_clusterstm_dynamics_keeps_lowest_density():
    tokens, _ = clip(t=3, n=30, seed=5)
    out = build_masker("clusterstm", ratio=0.8, select="dynamics")(tokens)
    keep_ref, _ = ref_clusterstm(tokens, 0.8, lowest=True)
    assert torch.equal(out.keep, keep_ref)


def planted(b=2, t=4, n=40, k=8, c=32, spread=0.05, seed=0):
    """Tokens around k well-separated centres; every planted cluster has 2..n tokens per frame."""
    g = gen(seed)
    centres = torch.linalg.qr(torch.randn(c, c, generator=g))[0][:k] * 3.0  # (k, c), orthogonal
    labels = torch.empty(b, t, n, dtype=torch.long)
    for i in range(b):
        for j in range(t):
            lab = torch.cat([torch.arange(k).repeat(2), torch.randint(0, k, (n - 2 * k,), generator=g)])
            labels[i, j] = lab[torch.randperm(n, generator=g)]
    tokens = centres[labels] + spread * torch.randn(b, t, n, c, generator=g)
    return tokens, labels


@pytest.mark.parametrize("name,params", [("clusterstm", {}), ("clusterstm", {"cluster": "kmeans"}),
                                         ("clusterstm", {"select": "dynamics"}), ("cluster-random", {})])
def test_one_kept_token_per_planted_cluster(name, params):
    tokens, labels = planted()
    k = 8
    ratio = 1 - k / 40  # num_clusters(40, 0.8) == 8
    assert num_clusters(40, ratio) == k
    out = build_masker(name, ratio=ratio, **params)(tokens, generator=gen(0))
    for b in range(2):
        for t in range(4):
            kept_labels = labels[b, t][out.keep[b, t]]
            assert sorted(kept_labels.tolist()) == list(range(k))
            assert same_partition(out.clusters[b, t], labels[b, t])
    if name == "clusterstm" and not params:
        keep_ref, _ = ref_clusterstm(tokens, ratio)
        assert torch.equal(out.keep, keep_ref)


def test_kmeans_is_deterministic_with_k_nonempty_clusters():
    tokens, _ = clip(t=3, n=50, seed=2)
    masker = build_masker("clusterstm", ratio=0.85, cluster="kmeans")
    a, b = masker(tokens), masker(tokens, generator=gen(9))
    assert torch.equal(a.keep, b.keep) and torch.equal(a.clusters, b.clusters)
    k = num_clusters(50, 0.85)
    for row in a.clusters.reshape(-1, 50):
        assert sorted(set(row.tolist())) == list(range(k))


def test_density_topk_is_topk_of_temporal_density():
    tokens, _ = clip(seed=4)
    out = build_masker("density-topk", ratio=0.8)(tokens)
    rho = temporal_density(tokens)
    k = num_clusters(N, 0.8)
    kth = rho.topk(k, dim=-1).values[..., -1:]
    assert (rho[out.keep].view(B, T, k) >= kth).all()


def test_one_per_cluster_ties_go_to_lowest_index():
    score = torch.tensor([[1.0, 3.0, 3.0, 2.0, 2.0, 0.5]])
    clusters = torch.tensor([[0, 0, 0, 1, 1, 2]])
    assert one_per_cluster(score, clusters, 3).tolist() == [[False, True, False, True, False, True]]


# ---- edge cases ----


def test_single_frame():
    tokens, _ = clip(t=1)
    for name in ("clusterstm", "density-topk"):
        with pytest.raises(ValueError, match="at least 2 frames"):
            build_masker(name, ratio=0.75)(tokens)
    with pytest.raises(ValueError, match="at least 2 frames"):
        temporal_density(tokens)
    out = build_masker("cluster-random", ratio=0.75)(tokens, generator=gen(0))
    assert (out.keep.sum(-1) == num_clusters(N, 0.75)).all()


@pytest.mark.parametrize("fill", ["constant", "zeros", "static-clip"])
def test_identical_tokens(fill):
    """Letterboxed frames (many identical tokens) and a fully static clip: still exactly K, no NaN."""
    tokens, _ = clip(t=4, n=36, seed=6)
    if fill == "constant":
        tokens[:, :, 1::2] = torch.ones(C)  # identical "bar" tokens, in every frame, interleaved with content
    elif fill == "zeros":
        tokens[:, :, 1::2] = 0.0
    else:
        tokens[:] = torch.ones(C)
    k = num_clusters(36, 0.75)
    for name in ("clusterstm", "density-topk", "cluster-random"):
        out = build_masker(name, ratio=0.75)(tokens, generator=gen(0))
        assert (out.keep.sum(-1) == k).all(), name
        if out.saliency is not None:
            assert torch.isfinite(out.saliency).all()
    if fill == "constant":  # exact ties: the reference breaks them by index, so must we
        keep_ref, _ = ref_clusterstm(tokens, 0.75)
        out = build_masker("clusterstm", ratio=0.75)(tokens)
        assert torch.equal(out.keep, keep_ref)
        for b in range(tokens.shape[0]):
            for t in range(tokens.shape[1]):
                ref_ids = ref_dpc(F.normalize(tokens[b, t].double(), dim=-1), k)
                assert torch.equal(out.clusters[b, t], ref_ids)
                assert out.clusters[b, t, 1::2].unique().numel() == 1  # the bars are one cluster


def test_ratio_extremes():
    tokens, _ = clip()
    out = build_masker("clusterstm", ratio=0.0)(tokens)
    assert out.keep.all()
    for name in ("clusterstm", "density-topk", "cluster-random", "umt", "stm-guided", "random"):
        out = make(name, ratio=0.99)(tokens, attn=clip()[1], generator=gen(0))
        assert (out.keep.sum(-1) == 1).all(), name  # floor/round(50 * 0.01) = 0 -> at least 1
    square, attn = clip(n=N_GRID)
    out = make("stm", ratio=0.99)(square, attn=attn, generator=gen(0))
    assert (out.keep.sum(-1) == 1).all()  # STM masks int(64 * 0.99) = 63


def test_num_clusters_floors():
    assert num_clusters(196, 0.85) == 29  # 29.4
    assert kept_per_frame(196, 0.85) == 29
    assert num_clusters(196, 0.9) == 19 and kept_per_frame(196, 0.9) == 20  # floor vs round
    assert num_clusters(200, 0.85) == 30
    assert num_clusters(50, 0.99) == 1


# ----------------------------------------------------------------------------
# UMT
# ----------------------------------------------------------------------------


def test_umt_prefers_high_attention():
    n, k = 50, 10
    attn = torch.ones(1, 200, n)
    attn[..., :5] = 100.0  # five salient tokens
    attn[..., 45:] = 0.0  # five tokens the teacher ignores
    tokens = torch.randn(1, 200, n, 4)
    out = build_masker("umt", ratio=1 - k / n)(tokens, attn=attn, generator=gen(0))
    rate = out.keep.float().mean((0, 1))  # (n,)
    assert (out.keep.sum(-1) == k).all()
    assert rate[:5].min() > 0.95 and rate[5:45].mean() < 0.2
    assert rate[45:].max() == 0.0  # zero attention never drawn while positive tokens remain


def test_umt_single_draw_is_proportional_to_attention():
    attn = torch.tensor([1.0, 2.0, 3.0, 4.0]).expand(1, 4000, 4)
    out = build_masker("umt", ratio=0.75)(torch.zeros(1, 4000, 4, 2), attn=attn, generator=gen(1))
    freq = out.keep.float().mean((0, 1))
    torch.testing.assert_close(freq, torch.tensor([0.1, 0.2, 0.3, 0.4]), atol=0.03, rtol=0)


# ----------------------------------------------------------------------------
# MASCOT
# ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mascot-high", "mascot-low"])
def test_mascot_tube_over_interval(name):
    tokens, attn = clip(b=3, t=6, seed=7)
    ratio, length = 0.7, 3
    out = build_masker(name, ratio=ratio, interval=length)(tokens, attn=attn, generator=gen(0))
    k = math.floor(ratio * N)
    interval = out.extra["interval"]
    assert interval.shape == (3, 2) and (interval[:, 1] - interval[:, 0] == length).all()
    assert out.num_kept == 6 * N - length * k
    for b in range(3):
        s, e = interval[b].tolist()
        mean = attn[b, s:e].mean(0)
        order = mean.argsort(descending=(name == "mascot-high"), stable=True)
        masked = torch.zeros(N, dtype=torch.bool)
        masked[order[:k]] = True
        for t in range(6):
            if s <= t < e:
                assert torch.equal(out.keep[b, t], ~masked), (b, t)
            else:
                assert out.keep[b, t].all(), (b, t)
    if name == "mascot-high":
        inside = ~out.keep[0, interval[0, 0]]
        assert attn[0, interval[0, 0]:interval[0, 1]].mean(0)[inside].min() >= \
            attn[0, interval[0, 0]:interval[0, 1]].mean(0)[~inside].max()


def test_mascot_random_length_is_shared_across_the_batch():
    tokens, attn = clip(b=4, t=8, seed=8)
    masker = build_masker("mascot-high", ratio=0.7)
    lengths = set()
    for s in range(20):
        out = masker(tokens, attn=attn, generator=gen(s))
        iv = out.extra["interval"]
        span = (iv[:, 1] - iv[:, 0]).unique()
        assert span.numel() == 1 and (iv[:, 0] >= 0).all() and (iv[:, 1] <= 8).all()
        assert out.num_kept == 8 * N - int(span) * math.floor(0.7 * N)  # same for every clip: drop mode works
        lengths.add(int(span))
    assert len(lengths) > 3


def test_replace_patches_both_conventions():
    g = gen(0)
    b, t, p, gh, gw = 2, 3, 4, 5, 10  # N = 50 patches of 4x4 on a 20x40 frame
    n = gh * gw
    video = torch.rand(b, t, 3, gh * p, gw * p, generator=g) + 5.0  # outside [0, 1]: replaced pixels stand out
    keep = torch.rand(b, t, n, generator=g) > 0.5
    patches = rearrange(video, "b t c (h p1) (w p2) -> b t (h w) (p1 p2 c)", p1=p, p2=p)
    out_p = replace_patches(patches, keep, gen(1))
    assert torch.equal(out_p[keep], patches[keep])
    assert (out_p[~keep] <= 1.0).all() and (out_p[~keep] >= 0.0).all()
    out_v = replace_patches(video, keep, gen(1))
    as_patches = rearrange(out_v, "b t c (h p1) (w p2) -> b t (h w) (p1 p2 c)", p1=p, p2=p)
    assert torch.equal(as_patches[keep], patches[keep])
    assert (as_patches[~keep] <= 1.0).all()
    assert torch.equal(replace_patches(video, keep, gen(1)), out_v)  # deterministic
    with pytest.raises(ValueError):
        replace_patches(torch.rand(b, t, 3, 21, 40), keep)


# ----------------------------------------------------------------------------
# STM
# ----------------------------------------------------------------------------


def test_stm_guided_is_a_module_and_trains_through_token_weight():
    tokens, attn = clip()
    masker = make("stm-guided", ratio=0.75)
    assert isinstance(masker, torch.nn.Module) and isinstance(masker, StmGuidedMasker)
    for a in (attn, None):
        masker.zero_grad(set_to_none=True)
        out = masker(tokens, attn=a, generator=gen(0))
        st = out.token_weight
        assert st.shape == out.ids_keep.shape and st.dtype == torch.float32
        assert torch.equal(st.detach(), torch.ones_like(st))  # exactly 1.0 forward
        kept = gather_tokens(tokens.reshape(B, T * N, C), out.ids_keep)  # (B, K, C)
        loss = (kept * st.unsqueeze(-1)).pow(2).mean() + (kept * st.unsqueeze(-1)).mean()
        loss.backward()
        assert masker.proj.weight.grad is not None and masker.proj.weight.grad.abs().sum() > 0
        assert masker.log_scale.grad.abs() > 0
        if a is not None:
            assert masker.attn_logit.grad.abs() > 0


def test_stm_guided_masks_tokens_that_leak_across_adjacent_frames():
    g = gen(11)
    n, c = 40, 32
    tokens = torch.randn(2, 6, n, c, generator=g)
    static = torch.arange(20)  # these positions show the same content in every frame
    tokens[:, :, static] = torch.randn(2, 1, 20, c, generator=g)
    masker = StmGuidedMasker(ratio=0.5, token_dim=c).eval()  # no Gumbel noise: the score alone decides
    out = masker(tokens)
    assert not out.keep[:, :, static].any()
    assert (out.keep.sum(-1) == 20).all()
    single = masker(tokens[:, :1])  # one frame: no neighbour, still exactly k
    assert (single.keep.sum(-1) == 20).all()


def test_adjacent_dissimilarity_matches_a_loop():
    from vidmask.masking.clusterstm import adjacent_dissimilarity

    tokens, _ = clip()
    got = adjacent_dissimilarity(tokens)  # (B, T, N)
    ref = torch.zeros(B, T, N)
    for b in range(B):
        for t in range(T):
            for n in range(N):
                near = [s for s in (t - 1, t + 1) if 0 <= s < T]
                ref[b, t, n] = sum(1 - F.cosine_similarity(tokens[b, t, n], tokens[b, s, n], dim=0)
                                   for s in near) / len(near)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_clusterstm_adjacent_keeps_the_most_changing_token_of_each_cluster():
    tokens, _ = clip()
    out = make("clusterstm", ratio=0.75, select="adjacent")(tokens)
    from vidmask.masking.clusterstm import adjacent_dissimilarity

    score = adjacent_dissimilarity(tokens)  # (B, T, N)
    assert torch.equal(out.saliency, score)
    for b in range(B):
        for t in range(T):
            for c in out.clusters[b, t].unique():
                members = (out.clusters[b, t] == c).nonzero().flatten()
                best = members[score[b, t, members].argmax()]  # first maximum: the lowest index
                assert out.keep[b, t, members].tolist() == [bool(m == best) for m in members]


def test_dpc_distance_scale_only_changes_the_centres():
    from vidmask.masking.dpc import dpc_knn_from_gram

    tokens, _ = clip()
    x = F.normalize(tokens.flatten(0, 1).float(), dim=-1)  # (B*T, N, C)
    gram = torch.bmm(x, x.transpose(1, 2))
    unit, _ = dpc_knn_from_gram(gram, 6)
    again, _ = dpc_knn_from_gram(gram, 6, density_scale=1.0)
    assert torch.equal(unit, again)
    tcf, centres = dpc_knn_from_gram(gram, 6, density_scale=float(C))
    assert tcf.shape == unit.shape and int(tcf.max()) == 5
    masker = make("clusterstm", ratio=0.75, dpc_distance="tcformer")
    assert masker(tokens).keep.sum(-1).eq(masker.kept_per_frame(N)).all()


# ----------------------------------------------------------------------------
# ClusterSTM's batched path (impl="batched", for accelerators) against the loop path
# ----------------------------------------------------------------------------

IMPL_CASES = [
    ("clusterstm", {}),
    ("clusterstm", {"select": "dynamics"}),
    ("clusterstm", {"select": "adjacent"}),
    ("clusterstm", {"cluster": "kmeans"}),
    ("clusterstm", {"select": "dynamics", "cluster": "kmeans"}),
    ("clusterstm", {"dpc_distance": "tcformer"}),
    ("density-topk", {}),
    ("cluster-random", {}),
]


def assert_same_masks(tokens, ratio=0.75, cases=IMPL_CASES, **common):
    """impl="loop" and impl="batched" give the same keep, ids, saliency and clusters, bit for bit."""
    for name, params in cases:
        loop = build_masker(name, ratio=ratio, impl="loop", **common, **params)(tokens, generator=gen(5))
        batched = build_masker(name, ratio=ratio, impl="batched", **common, **params)(tokens, generator=gen(5))
        assert (batched.keep.sum(-1) == num_clusters(tokens.shape[2], ratio)).all(), (name, params)
        for field in ("keep", "ids_keep", "saliency", "clusters"):
            a, b = getattr(loop, field), getattr(batched, field)
            assert (a is None) == (b is None), (name, params, field)
            if a is not None:
                assert a.dtype == b.dtype and torch.equal(a, b), (name, params, field)
        if batched.saliency is not None:
            assert batched.saliency.dtype == torch.float32


@pytest.mark.parametrize("b", [1, 3])
@pytest.mark.parametrize("t", [2, 4, 8])
@pytest.mark.parametrize("n", [16, 36, 64])
def test_batched_same_masks_as_loop_on_random_clips(b, t, n):
    for seed in (0, 1):
        tokens, _ = clip(b=b, t=t, n=n, seed=100 * seed + 10 * t + n)
        assert_same_masks(tokens)


@pytest.mark.parametrize("dc_ratio,ratio", [(0.0, 0.75), (0.5, 0.5), (1.0, 0.9), (0.02, 0.0), (0.3, 0.99)])
def test_batched_same_masks_as_loop_at_other_ratios(dc_ratio, ratio):
    """The top order statistics from the bottom (dc_ratio 0.5, 1), K = N and K = 1."""
    tokens, _ = clip(b=3, t=4, n=36, seed=3)
    assert_same_masks(tokens, ratio=ratio, dc_ratio=dc_ratio)


@pytest.mark.parametrize("fill", ["constant", "zeros", "static-clip", "static-in-time"])
def test_batched_same_masks_as_loop_on_identical_tokens(fill):
    """Exact ties: letterbox bars, a fully static clip (dc clamped to DC_MIN), frames repeated in time."""
    tokens, _ = clip(b=3, t=4, n=36, seed=6)
    if fill == "constant":
        tokens[:, :, 1::2] = torch.ones(C)
    elif fill == "zeros":
        tokens[:, :, 1::2] = 0.0
    elif fill == "static-clip":
        tokens[:] = torch.ones(C)
    else:
        tokens[:] = tokens[:, :1]  # every frame the same: distances 0 across time
    assert_same_masks(tokens)


def test_batched_same_masks_as_loop_on_planted_clusters():
    tokens, labels = planted(b=3, t=4, n=40, k=8)
    assert_same_masks(tokens, ratio=0.8)
    out = build_masker("clusterstm", ratio=0.8, impl="batched")(tokens)
    for b in range(3):
        for t in range(4):
            assert sorted(labels[b, t][out.keep[b, t]].tolist()) == list(range(8))


def test_batched_same_masks_in_groups_of_clips(monkeypatch):
    """A bound that fits one clip per group: the groups change nothing."""
    from vidmask.masking import clusterstm as module

    tokens, _ = clip(b=5, t=3, n=25, seed=8)
    expected = {name + str(p): build_masker(name, ratio=0.75, impl="batched", **p)(tokens, generator=gen(5))
                for name, p in IMPL_CASES}
    monkeypatch.setattr(module, "GROUP_BYTES", 1)
    assert module.clips_per_group(3, 25, C, 0.02, 5) == 1
    assert_same_masks(tokens)
    for name, p in IMPL_CASES:
        out = build_masker(name, ratio=0.75, impl="batched", **p)(tokens, generator=gen(5))
        assert torch.equal(out.keep, expected[name + str(p)].keep), (name, p)


def test_clips_per_group_bounds_the_gram_and_evens_the_groups(monkeypatch):
    from vidmask.masking import clusterstm as module

    T_, N_ = 16, 196
    G = module.clips_per_group(T_, N_, 768, 0.02)
    assert G * (T_ * N_) ** 2 * 4 <= module.GROUP_BYTES < (G + 1) * (T_ * N_) ** 2 * 4
    assert module.clips_per_group(T_, N_, 768, 0.02, B=G + 1) == (G + 2) // 2  # two even groups, not G + 1
    assert module.clips_per_group(T_, N_, 768, 0.02, B=3) == 3
    monkeypatch.setattr(module, "GROUP_BYTES", 1)
    assert module.clips_per_group(T_, N_, 768, 0.02, B=4) == 1


class _OpLog(torch.utils._python_dispatch.TorchDispatchMode):
    """Every aten op dispatched on this thread, and those that read a device tensor back to the host
    (a sync on an accelerator): .item() / int() / bool(), nonzero, boolean indexing."""

    SYNCS = {"_local_scalar_dense", "item", "nonzero", "masked_select", "is_nonzero", "equal", "unique",
             "_unique", "_unique2", "unique_consecutive", "repeat_interleave"}

    def __init__(self):
        super().__init__()
        self.ops, self.syncs = [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.ops.append(name)
        bool_index = name.startswith("index") and len(args) > 1 and isinstance(args[1], (list, tuple)) and any(
            torch.is_tensor(i) and i.dtype == torch.bool for i in args[1])
        if name in self.SYNCS or bool_index:
            self.syncs.append(name)
        return func(*args, **(kwargs or {}))


def ops_of(masker, tokens):
    with _OpLog() as log:
        masker(tokens, generator=gen(0))
    return log


@pytest.mark.parametrize("name,params", IMPL_CASES)
def test_batched_path_never_syncs_and_its_op_count_does_not_grow_with_the_batch(name, params, monkeypatch):
    from vidmask.masking import clusterstm as module

    masker = build_masker(name, ratio=0.75, impl="batched", **params)
    small, large = ops_of(masker, clip(b=2, t=4, n=64)[0]), ops_of(masker, clip(b=8, t=4, n=64)[0])
    assert small.syncs == [] and large.syncs == []
    assert small.ops == large.ops  # one group either way: the same ops, whatever B
    # with one clip per group, the ops grow by one group's worth per group, nothing per clip besides
    monkeypatch.setattr(module, "GROUP_BYTES", 1)
    counts = [len(ops_of(masker, clip(b=b, t=4, n=64)[0]).ops) for b in (1, 2, 4)]
    assert counts[2] - counts[1] == 2 * (counts[1] - counts[0]) > 0


def test_loop_path_syncs_and_grows_with_the_batch():
    """The op log sees what it must: the loop path reads counts back, once per frame at least."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # one clip worker: the dispatch mode is per thread
        masker = build_masker("clusterstm", ratio=0.75, impl="loop")
        small, large = ops_of(masker, clip(b=2, t=4, n=64)[0]), ops_of(masker, clip(b=8, t=4, n=64)[0])
    finally:
        torch.set_num_threads(threads)
    assert len(small.syncs) >= 2 * 4 and len(large.syncs) >= 8 * 4
    assert len(large.ops) > 3 * len(small.ops)


def test_impl_is_a_strategy_parameter():
    from vidmask.masking import masker_params
    from vidmask.masking.clusterstm import resolve_impl

    for name in ("clusterstm", "density-topk", "cluster-random"):
        assert "impl" in masker_params(name)
        assert build_masker(name, ratio=0.75, impl="batched").impl == "batched"
        assert build_masker(name, ratio=0.75).impl == "auto"
        with pytest.raises(ValueError, match="impl must be one of"):
            build_masker(name, ratio=0.75, impl="gpu")
    assert resolve_impl("auto", torch.device("cpu")) == "loop"  # the loop is faster on CPU (bench/masking.py)
    assert resolve_impl("auto", torch.device("cuda")) == "batched"
    assert resolve_impl("loop", torch.device("cuda")) == "loop"
    tokens, _ = clip(t=1)
    with pytest.raises(ValueError, match="at least 2 frames"):
        build_masker("clusterstm", ratio=0.75, impl="batched")(tokens)
    out = build_masker("cluster-random", ratio=0.75, impl="batched")(tokens, generator=gen(0))
    assert torch.equal(out.keep, build_masker("cluster-random", ratio=0.75, impl="loop")(tokens, generator=gen(0)).keep)


def test_temporal_density_batched_is_the_loop_bit_for_bit():
    tokens, _ = clip(b=3, t=5, n=30, seed=1)
    for dc_ratio in (0.02, 0.3, 0.9):
        assert torch.equal(temporal_density(tokens, dc_ratio, impl="batched"),
                           temporal_density(tokens, dc_ratio, impl="loop"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert temporal_density(tokens, impl="batched").dtype == torch.float32


def test_quantile_rank_is_torch_quantile_arithmetic():
    """The rank arithmetic in plain Python (no tensor read back) is torch's float32 product, past 2**24 too."""
    from vidmask.masking.clusterstm import _quantile_rank

    for q in (0.0, 0.02, 0.1, 0.3, 0.37, 0.5, 1 / 3, 0.98, 1.0):
        for n in (1, 2, 7, 36 * 3 * 36, 196 * 15 * 196, 2**24 + 3, 33_554_435, 123_456_789):
            for dtype in (torch.float32, torch.float64):
                rank = torch.tensor(q, dtype=dtype) * (n - 1)
                below, above, weight = _quantile_rank(q, n, dtype)
                assert (below, above) == (int(rank.to(torch.long)), int(rank.ceil())), (q, n, dtype)
                assert weight == float(rank - rank.to(torch.long)), (q, n, dtype)
