"""Teacher-driven objectives against slow, obvious references on small tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vidmask.masking.base import keep_to_ids
from vidmask.objectives.align import AlignHead, align_loss
from vidmask.objectives.relevance import RelevanceDecoder, relevance_loss, relevance_map
from vidmask.tokens import gather_tokens, scatter_kept, window_tokens
from vidmask.objectives.stm_guided import StmGuidedDecoder, stm_guided_loss


def _keep(B, T, N, k, seed=0) -> torch.Tensor:
    """bool[B,T,N] with exactly k kept tokens per frame, random positions."""
    g = torch.Generator().manual_seed(seed)
    order = torch.rand(B, T, N, generator=g).argsort(-1)  # (B, T, N)
    return order < k


# ---- relevance generation (Algorithm III) --------------------------------


def _relevance_loop(tokens, text, W, window):
    """Explicit windows: clamp (= replicate pad) each neighbour, row-major, flatten, linear pooler, cosine."""
    B, T, N, C = tokens.shape
    L = math.isqrt(N)
    r = window // 2
    out = torch.zeros(B, T, N)
    for b in range(B):
        for t in range(T):
            for i in range(L):
                for j in range(L):
                    parts = []
                    for di in range(-r, r + 1):  # rows first: row-major order, centre in the middle
                        for dj in range(-r, r + 1):
                            ii, jj = min(max(i + di, 0), L - 1), min(max(j + dj, 0), L - 1)
                            parts.append(tokens[b, t, ii * L + jj])
                    pooled = torch.cat(parts) @ W  # (D,)
                    out[b, t, i * L + j] = F.cosine_similarity(pooled, text[b], dim=0)
    return out


@pytest.mark.parametrize("window", [1, 3])
def test_relevance_map_matches_loop(window):
    torch.manual_seed(0)
    B, T, N, C, D = 2, 2, 16, 3, 5
    tokens, text = torch.randn(B, T, N, C), torch.randn(B, D)
    W = torch.randn(window * window * C, D)  # order-sensitive pooler: a linear map over the flattened window

    def pooler(x):  # (M, w*w, C) -> (M, D)
        return x.flatten(1) @ W

    got = relevance_map(tokens, text, pooler, window=window, chunk=20)  # chunk forces several pooler calls
    assert got.shape == (B, T, N)
    torch.testing.assert_close(got, _relevance_loop(tokens, text, W, window), rtol=1e-5, atol=1e-5)


def test_window_centre_is_the_token():
    frames = torch.randn(3, 25, 4)  # (F, N, C)
    win = window_tokens(frames, 5)  # (F*N, 25, C)
    torch.testing.assert_close(win[:, 12], frames.reshape(-1, 4))


@pytest.mark.parametrize("window", [1, 3, 5])
def test_window_attend_is_attention_over_window_tokens(window):
    """window_attend = a softmax over each window_tokens window of the logits, weighting its values
    (replicate borders: a repeated edge token counts as often as it appears), per head."""
    from vidmask.tokens import window_attend

    torch.manual_seed(0)
    Fr, N, h, d = 3, 25, 2, 4
    logits = torch.randn(Fr, N, h) * 3  # (F, N, h)
    logits[0, 0] = 80.0  # a dominant edge token: a shift by one frame-wide maximum would underflow its neighbours
    values = torch.randn(Fr, N, h, d)  # (F, N, h, d)
    lw = window_tokens(logits, window)  # (F*N, w*w, h)
    vw = window_tokens(values.reshape(Fr, N, h * d), window).reshape(Fr * N, window * window, h, d)
    ref = torch.einsum("mwh,mwhd->mhd", lw.softmax(1), vw).reshape(Fr, N, h, d)  # (F, N, h, d)
    torch.testing.assert_close(window_attend(logits, values, window), ref, rtol=1e-5, atol=1e-6)
    assert window_attend(logits, values.bfloat16(), window).dtype == torch.bfloat16
    with pytest.raises(ValueError):
        window_attend(logits, values, 2)


@pytest.mark.parametrize("N,window", [(15, 3), (65, 3), (16, 2), (16, 0)])
def test_relevance_map_rejects_bad_shapes(N, window):
    with pytest.raises(ValueError):
        relevance_map(torch.randn(1, 1, N, 3), torch.randn(1, 3), lambda x: x.mean(1), window=window)


# ---- relevance decoder and loss -------------------------------------------


def _relevance_loss_ref(pred, target, keep):
    num, den = 0.0, 0
    for b in range(target.shape[0]):
        t = target[b].flatten()
        t = (t - t.mean()) / (t.std(unbiased=False) + 1e-6)
        for l, kept in enumerate(keep[b].flatten().tolist()):
            if not kept:
                num += float((pred[b, l] - t[l]) ** 2)
                den += 1
    return num / den


def test_relevance_loss_matches_reference_and_ignores_kept():
    torch.manual_seed(1)
    B, T, N = 2, 3, 16
    pred, target, keep = torch.randn(B, T * N), torch.rand(B, T, N) * 0.1 + 0.2, _keep(B, T, N, 4)
    loss = relevance_loss(pred, target, keep)["relevance_loss"]
    assert loss.item() == pytest.approx(_relevance_loss_ref(pred, target, keep), rel=1e-5)
    changed = pred.clone()
    changed[keep.reshape(B, -1)] += 100.0  # predictions at kept positions do not matter
    torch.testing.assert_close(relevance_loss(changed, target, keep)["relevance_loss"], loss)
    # the target's per-clip offset and scale do not matter either (standardised)
    torch.testing.assert_close(relevance_loss(pred, 3 * target + 1, keep)["relevance_loss"], loss, rtol=1e-4, atol=1e-5)


def test_scatter_kept_inverts_gather():
    B, T, N, C = 2, 2, 9, 4
    keep = _keep(B, T, N, 3)
    ids = keep_to_ids(keep)  # (B, K)
    x = torch.randn(B, T * N, C)
    filler = torch.full((B, T * N, C), -7.0)
    full = scatter_kept(gather_tokens(x, ids), ids, filler)  # (B, L, C)
    flat = keep.reshape(B, -1)
    torch.testing.assert_close(full[flat], x[flat])
    assert bool((full[~flat] == -7.0).all())


def test_relevance_decoder_forward_backward():
    torch.manual_seed(0)
    B, T, N, C = 2, 4, 16, 24
    keep = _keep(B, T, N, 4)
    ids = keep_to_ids(keep)
    kept = torch.randn(B, ids.shape[1], C, requires_grad=True)
    dec = RelevanceDecoder(C, dim=32, depth=1, heads=2, frames=8, grid=8)  # tables resampled to T=4, 4x4
    pred = dec(kept, ids, T, N)  # (B, L)
    assert pred.shape == (B, T * N)
    loss = relevance_loss(pred, torch.rand(B, T, N), keep)["relevance_loss"]
    loss.backward()
    assert torch.isfinite(loss) and kept.grad is not None and dec.mask_token.grad.abs().sum() > 0


# ---- UMT alignment --------------------------------------------------------


def test_align_loss_matches_loop():
    torch.manual_seed(2)
    B, T, N, C, D, k = 2, 2, 9, 6, 5, 2
    keep = _keep(B, T, N, 3)
    ids = keep_to_ids(keep)  # (B, K)
    K = ids.shape[1]
    feats = [torch.randn(B, K, C) for _ in range(k)]
    teacher = torch.randn(B, T, N, D)
    heads = AlignHead(C, D, layers=k)
    got = align_loss(feats, teacher, ids, heads)["align_loss"]
    total = 0.0
    for i in range(k):
        pred = heads.heads[i](feats[i]).detach()  # (B, K, D)
        for b in range(B):
            for j in range(K):
                l = int(ids[b, j])
                tgt = teacher[b, l // N, l % N]  # the teacher token at the same position
                total += float(2 - 2 * F.cosine_similarity(pred[b, j], tgt, dim=0))
    assert got.item() == pytest.approx(total / (k * B * K), rel=1e-5)


def test_align_head_mlp_and_layer_count():
    heads = AlignHead(8, 4, layers=2, hidden=16)
    out = heads([torch.randn(1, 3, 8), torch.randn(1, 3, 8)])
    assert [o.shape for o in out] == [(1, 3, 4), (1, 3, 4)]
    with pytest.raises(ValueError):
        heads([torch.randn(1, 3, 8)])


# ---- stm-guided: vidmask's STM decoder (the official one: tests/test_stm.py) ----------------------------------------------------------


def test_stm_guided_loss_matches_reference_and_positions():
    torch.manual_seed(3)
    B, T, N, D = 2, 2, 9, 5
    keep = _keep(B, T, N, 2)
    pred, teacher = torch.randn(B, T * N, D), torch.randn(B, T, N, D)
    got = stm_guided_loss(pred, teacher, keep)["stm-guided_loss"]
    ref_m, ref_all, n_m = 0.0, 0.0, 0
    for b in range(B):
        for l in range(T * N):
            v = float(2 - 2 * F.cosine_similarity(pred[b, l], teacher[b, l // N, l % N], dim=0))
            ref_all += v
            if not keep[b, l // N, l % N]:
                ref_m += v
                n_m += 1
    assert got.item() == pytest.approx(ref_m / n_m, rel=1e-5)
    assert stm_guided_loss(pred, teacher, keep, "all")["stm-guided_loss"].item() == pytest.approx(
        ref_all / (B * T * N), rel=1e-5)
    changed = pred.clone()
    changed[keep.reshape(B, -1)] = torch.randn_like(changed[keep.reshape(B, -1)])
    torch.testing.assert_close(stm_guided_loss(changed, teacher, keep)["stm-guided_loss"], got)


def test_stm_guided_decoder_fills_masked_with_text():
    torch.manual_seed(0)
    B, T, N, C, E, D = 2, 2, 16, 12, 10, 6
    keep = _keep(B, T, N, 4)
    ids = keep_to_ids(keep)
    kept = torch.randn(B, ids.shape[1], C)
    text = torch.randn(B, E, requires_grad=True)
    dec = StmGuidedDecoder(C, E, D, dim=16, depth=1, heads=2, frames=T, grid=4)
    pred = dec(kept, ids, text, T, N)  # (B, L, D)
    assert pred.shape == (B, T * N, D)
    stm_guided_loss(pred, torch.randn(B, T, N, D), keep)["stm-guided_loss"].backward()
    assert text.grad is not None and text.grad.abs().sum() > 0  # the caption reaches the masked slots
    with torch.no_grad():  # a different caption changes the prediction
        assert not torch.allclose(dec(kept, ids, text + 1.0, T, N), pred)


@pytest.mark.parametrize("window", [1, 3])
def test_teacher_pool_windows_is_pool_of_windows(window):
    """lit-effnet's per-token-once fast path gives the pooler's value on every window."""
    from vidmask.teachers import build_teacher

    torch.manual_seed(0)
    teacher = build_teacher("lit-effnet", token_dim=32, embed_dim=16, heads=2, text_init="random")
    frames = torch.randn(3, 16, 32)  # (F, N, D)
    slow = teacher.pool(window_tokens(frames, window))  # (F*N, E)
    torch.testing.assert_close(teacher.pool_windows(frames, window), slow, rtol=1e-5, atol=1e-6)
    tokens, text = frames.reshape(1, 3, 16, 32), torch.randn(1, 16)
    torch.testing.assert_close(
        relevance_map(tokens, text, teacher.pool, window, chunk=20, pool_windows=teacher.pool_windows),
        relevance_map(tokens, text, teacher.pool, window, chunk=20), rtol=1e-5, atol=1e-6)


# ---- ClusterSTM's masked-feature reconstruction (recon) -------------------

def test_token_cosine_loss_matches_a_loop():
    from vidmask.objectives.token_loss import token_cosine_loss

    B, T, N, D = 2, 3, 4, 5
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(B, T * N, D, generator=g), torch.randn(B, T, N, D, generator=g)
    keep = _keep(B, T, N, 1)
    for positions in ("masked", "all"):
        terms = []
        for b in range(B):
            for t in range(T):
                for n in range(N):
                    if positions == "all" or not keep[b, t, n]:
                        terms.append(2 - 2 * F.cosine_similarity(pred[b, t * N + n], target[b, t, n], dim=0))
        ref = torch.stack(terms).mean()
        torch.testing.assert_close(token_cosine_loss(pred, target, keep, positions), ref, rtol=1e-5, atol=1e-6)


def test_recon_scores_masked_tokens_from_kept_ones():
    from types import SimpleNamespace

    from vidmask.objectives.recon import Recon, ReconConfig

    B, T, g, C, D = 2, 2, 4, 8, 6
    N = g * g
    env = SimpleNamespace(model=SimpleNamespace(cfg=SimpleNamespace(dim=C)), teacher=SimpleNamespace(token_dim=D),
                          frames=T, grid=g)
    torch.manual_seed(0)
    recon = Recon(ReconConfig(weight=1.0), env)
    keep = _keep(B, T, N, 5)
    ids = keep_to_ids(keep)  # (B, K)
    feats = torch.randn(B, ids.shape[1], C, requires_grad=True)
    target = torch.randn(B, T, N, D)

    def loss(tokens):
        ctx = SimpleNamespace(feats=feats, masking=SimpleNamespace(ids_keep=ids, keep=keep), frames=T, tokens=N,
                              teacher_out=SimpleNamespace(tokens=tokens), shared=lambda key, compute: compute())
        return recon(ctx)["recon_loss"]

    base = loss(target)
    changed_kept = target.clone()
    changed_kept[keep] = torch.randn(int(keep.sum()), D)  # what the encoder saw: not a target
    torch.testing.assert_close(loss(changed_kept), base)
    changed_masked = target.clone()
    changed_masked[~keep] = torch.randn(int((~keep).sum()), D)
    assert not torch.allclose(loss(changed_masked), base)
    base.backward()
    assert feats.grad is not None and feats.grad.abs().sum() > 0  # the kept features feed the prediction


# ---- time-order negatives (reverse) ----------------------------------------

def test_time_order_ids_hold_the_same_patches():
    from vidmask.models.video_vit import patchify
    from vidmask.objectives.reverse import Reverse, ReverseConfig, reorder_frames, time_order_ids

    B, T, g = 2, 4, 3
    N = g * g
    video = torch.randn(B, T, 3, 3 * g, 3 * g)
    keep = _keep(B, T, N, 4)
    ids = keep_to_ids(keep)  # (B, K)
    for order_name in ("reverse", "shuffle"):
        order = Reverse(ReverseConfig(order=order_name), None).frame_order(B, T, torch.Generator().manual_seed(1),
                                                                            "cpu")
        assert not (order == torch.arange(T)).all(1).any()  # never the original order
        new_ids, columns = time_order_ids(ids, N, order)
        moved = gather_tokens(patchify(reorder_frames(video, order), 3).flatten(1, 2), new_ids)  # (B, K, P)
        original = gather_tokens(patchify(video, 3).flatten(1, 2), ids)  # (B, K, P)
        assert torch.equal(moved, original.gather(1, columns.unsqueeze(-1).expand_as(original)))
        assert (new_ids[:, 1:] > new_ids[:, :-1]).all()


def test_reverse_objective_against_an_explicit_softmax():
    from types import SimpleNamespace

    from vidmask.objectives.reverse import Reverse, ReverseConfig

    B, E = 3, 4
    g = torch.Generator().manual_seed(0)
    t = F.normalize(torch.randn(B, E, generator=g), dim=-1)
    v = F.normalize(torch.randn(B, E, generator=g), dim=-1)
    neg = F.normalize(torch.randn(B, E, generator=g), dim=-1)
    scale = torch.tensor(10.0)

    class Visual:  # an encoder whose output for the reordered clip is `neg`
        def embed_kept(self, video, ids):
            return torch.zeros(B, 1, 1)

        def forward_features(self, x, ids, weight):
            return SimpleNamespace(tokens=None)

    model = SimpleNamespace(visual=Visual(), project_video=lambda tokens: neg, temperature_scale=lambda: scale)
    ctx = SimpleNamespace(video=torch.zeros(B, 2, 3, 4, 4), model=model, frames=2, tokens=1, generator=None,
                          video_ids=torch.zeros(B, 1, dtype=torch.long), video_weight=None,  # the video-text set
                          text_feat=t, video_feat=v)
    w = 2.0
    got = Reverse(ReverseConfig(negative_weight=w), None)(ctx)
    ref = 0.0
    for i in range(B):
        logits = [float(scale * t[i] @ v[j]) for j in range(B)] + [float(scale * t[i] @ neg[i]) + math.log(w)]
        ref += -logits[i] + math.log(sum(math.exp(x) for x in logits))
    assert got["reverse_loss"].item() == pytest.approx(ref / B, rel=1e-5)
