"""Fusion encoder, video-text matching, masked language modelling and re-ranking,
each against a slow obvious reference on tiny tensors."""

import pytest
import torch
import torch.nn.functional as F

from vidmask.metrics.retrieval import ranks_t2v, retrieval_metrics
from vidmask.models.fusion import FusionEncoder
from vidmask.models.text import load_bert
from vidmask.objectives.mlm import IGNORE, MlmHead, mask_tokens, mlm_loss
from vidmask.objectives.vtm import VtmHead, sample_hard_negatives, vtm_loss, vtm_scores
from vidmask.tasks.rerank import rerank, top_k_candidates, vtm_score_fn

W, C = 16, 8  # text width, video width


@pytest.fixture(scope="module")
def tokenizer():
    tok, _ = load_bert("random", 1)
    return tok


def tiny(B=4, S=6, K=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    fusion = FusionEncoder(W, C, depth=2, heads=2)
    states = torch.randn(B, S, W, generator=g)
    mask = torch.ones(B, S, dtype=torch.long)
    for b in range(B):
        mask[b, S - b % 3 :] = 0  # 0, 1 or 2 padding tokens
    video = torch.randn(B, K, C, generator=g)
    return fusion, states, mask, video


# ---------------------------------------------------------------- fusion

def test_fusion_shape_and_padding_is_invisible():
    torch.manual_seed(0)
    fusion, states, mask, video = tiny()
    out = fusion(states, mask, video)
    assert out.shape == states.shape
    # what sits in padded slots, and how much padding there is, changes nothing at real tokens
    noisy = torch.where(mask.bool()[..., None], states, torch.randn_like(states) * 10)
    out2 = fusion(noisy, mask, video)
    longer = fusion(torch.cat([states, torch.randn(4, 3, W)], 1), torch.cat([mask, torch.zeros(4, 3).long()], 1), video)
    real = mask.bool()
    assert torch.allclose(out[real], out2[real], atol=1e-5)
    assert torch.allclose(out[real], longer[:, :6][real], atol=1e-5)


def test_fusion_video_mask_equals_dropping_tokens():
    torch.manual_seed(0)
    fusion, states, mask, video = tiny(B=2)
    vmask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 0, 0]])
    masked = fusion(states, mask, video, vmask)
    dropped = fusion(states, mask, video[:, :3])
    assert torch.allclose(masked, dropped, atol=1e-5)
    # and the video matters at all
    assert not torch.allclose(fusion(states, mask, video), fusion(states, mask, -video), atol=1e-3)


def test_fusion_video_index_equals_gathered_clips():
    # rows that share a clip read its keys and values computed once: same outputs and gradients
    # as giving every row its own copy of the clip
    torch.manual_seed(0)
    fusion, states, mask, video = tiny(B=6)
    clips = video[:3].clone().requires_grad_(True)  # (3, K, C)
    index = torch.tensor([0, 2, 2, 1, 0, 2])
    vmask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]])
    got = fusion(states, mask, clips, vmask, video_index=index)
    (got ** 2).sum().backward()
    grads = [p.grad.clone() for p in fusion.parameters()]
    fusion.zero_grad()
    clips_ref = video[:3].clone().requires_grad_(True)
    ref = fusion(states, mask, clips_ref[index], vmask[index])
    (ref ** 2).sum().backward()
    assert torch.allclose(got, ref, atol=1e-5)
    assert torch.allclose(clips.grad, clips_ref.grad, atol=1e-4)
    assert all(torch.allclose(a, p.grad, atol=1e-4) for a, p in zip(grads, fusion.parameters()))
    with pytest.raises(ValueError, match="video_index"):
        fusion(states, mask, clips, video_index=index[:4])


# ---------------------------------------------------------------- VTM

def test_hard_negatives_never_positive_and_follow_softmax():
    sim = torch.tensor([[5.0, 2.0, 1.0, 0.0], [0.5, 4.0, 1.5, -1.0], [1.0, 1.0, 3.0, 1.0], [0.0, 2.0, 0.0, 6.0]])
    g = torch.Generator().manual_seed(0)
    n = 3000
    counts_v = torch.zeros(4, 4)
    counts_t = torch.zeros(4, 4)
    for _ in range(n):
        nv, nt = sample_hard_negatives(sim, g)
        counts_v[torch.arange(4), nv] += 1
        counts_t[torch.arange(4), nt] += 1
    assert counts_v.diagonal().sum() == 0 and counts_t.diagonal().sum() == 0
    # slow reference: softmax over the non-positives only, written out row by row
    for i in range(4):
        others = [j for j in range(4) if j != i]
        pv = torch.softmax(sim[i, others], 0)
        pt = torch.softmax(sim[others, i], 0)
        assert torch.allclose(counts_v[i, others] / n, pv, atol=0.035)
        assert torch.allclose(counts_t[i, others] / n, pt, atol=0.035)


def test_vtm_objective_draws_hard_negatives_at_the_contrastive_temperature(monkeypatch):
    """A batch with one clear hardest negative per caption (cosine 0.8 against 0.0 for the rest): drawn
    from the temperature-scaled logits it is picked far more often than uniform (1/7), where the raw
    cosines (no temperature) would pick it barely above uniform."""
    import vidmask.objectives.vtm as vtm
    from types import SimpleNamespace

    B, E = 8, 16
    v = torch.eye(B, E)  # (B, E) orthogonal unit videos
    hardest = torch.roll(torch.arange(B), 1)  # caption i's hardest negative: video i-1
    t = torch.nn.functional.normalize(v + 1.333 * v[hardest], dim=-1)  # cos(t_i, v_i) = 0.6, cos(t_i, v_{i-1}) = 0.8
    drawn = []

    def capture(fusion, head, states, mask, feats, sim, generator=None, pair_ids=None):
        drawn.append(sample_hard_negatives(sim, generator)[0])
        return {"vtm_loss": torch.zeros(())}

    monkeypatch.setattr(vtm, "vtm_loss", capture)
    model = SimpleNamespace(temperature_scale=lambda: torch.tensor(1 / 0.07),
                            text=SimpleNamespace(token_states=lambda c, i, m: (None, None)))
    ctx = SimpleNamespace(model=model, text_feat=t, video_feat=v, captions=[""] * B, video_tokens=None, fusion=None,
                          pair_ids=None,
                          tokenized=lambda: {"input_ids": None, "attention_mask": None})
    objective = vtm.Vtm.__new__(vtm.Vtm)
    torch.nn.Module.__init__(objective)
    objective.head = None
    for seed in range(200):
        ctx.generator = torch.Generator().manual_seed(seed)
        objective.forward(ctx)
    hit = (torch.stack(drawn) == hardest).float().mean().item()
    raw = torch.stack([sample_hard_negatives(t @ v.T, torch.Generator().manual_seed(s))[0] for s in range(200)])
    raw_hit = (raw == hardest).float().mean().item()
    assert hit > 0.9 and raw_hit < 0.35, (hit, raw_hit)  # uniform over the 7 negatives would be 0.14


def test_hard_negatives_respect_pair_ids():
    sim = torch.randn(6, 6)
    pair_ids = torch.tensor([0, 0, 1, 1, 2, 2])  # two captions per video
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        nv, nt = sample_hard_negatives(sim, g, pair_ids)
        assert (pair_ids[nv] != pair_ids).all() and (pair_ids[nt] != pair_ids).all()

def test_a_batch_without_negatives_trains_on_its_matches_without_a_host_read():
    """One video's captions only: no pair has a negative. No error (that would need a host read per step,
    and one rank's error would stop it alone): the loss is the match rows' cross-entropy."""
    torch.manual_seed(0)
    fusion, states, mask, video = tiny()
    head = VtmHead(W)
    same = torch.zeros(4, dtype=torch.long)  # (B,): every caption of one video
    got = vtm_loss(fusion, head, states, mask, video, torch.randn(4, 4), torch.Generator().manual_seed(0), same)
    logits = head(fusion(states, mask, video)[:, 0])  # (B, 2): the aligned pairs
    assert torch.allclose(got["vtm_loss"], F.cross_entropy(logits, torch.ones(4, dtype=torch.long)), atol=1e-5)
    one = vtm_loss(fusion, head, states[:1], mask[:1], video[:1], torch.randn(1, 1), torch.Generator())["vtm_loss"]
    assert torch.isfinite(one)


def test_vtm_loss_matches_pairwise_reference():
    torch.manual_seed(0)
    fusion, states, mask, video = tiny()
    head = VtmHead(W)
    sim = torch.randn(4, 4)
    got = vtm_loss(fusion, head, states, mask, video, sim, torch.Generator().manual_seed(3))["vtm_loss"]
    nv, nt = sample_hard_negatives(sim, torch.Generator().manual_seed(3))  # the same draws
    terms = []
    for i in range(4):
        # one pair at a time, through the fusion with batch size 1
        for t, v, label in ((i, i, 1), (i, int(nv[i]), 0), (int(nt[i]), i, 0)):
            logits = head(fusion(states[t : t + 1], mask[t : t + 1], video[v : v + 1])[:, 0])
            terms.append(-torch.log_softmax(logits[0], 0)[label])
    assert torch.allclose(got, torch.stack(terms).mean(), atol=1e-5)
    got.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in fusion.parameters())


def test_vtm_scores_are_log_odds():
    fusion, states, mask, video = tiny()
    head = VtmHead(W)
    s = vtm_scores(fusion, head, states, mask, video)
    logits = head(fusion(states, mask, video)[:, 0])
    assert s.shape == (4,)
    assert torch.allclose(torch.sigmoid(s), torch.softmax(logits, 1)[:, 1], atol=1e-6)


# ---------------------------------------------------------------- MLM

def batch_ids(tokenizer, n=64):
    words = "a red circle moves left while the blue square turns slowly around two stars".split()
    caps = [" ".join(words[i % 5 : i % 5 + 3 + i % 9]) for i in range(n)]
    b = tokenizer(caps, padding=True, return_tensors="pt")
    return b["input_ids"], b["attention_mask"]


def test_mask_tokens_rule(tokenizer):
    ids, att = batch_ids(tokenizer, 256)
    masked, labels = mask_tokens(ids, att, tokenizer, prob=0.5, generator=torch.Generator().manual_seed(0))
    special = torch.isin(ids, torch.tensor(tokenizer.all_special_ids))
    chosen = labels != IGNORE
    assert not (chosen & special).any() and not (chosen & (att == 0)).any()
    assert (labels[chosen] == ids[chosen]).all()
    assert (masked[~chosen] == ids[~chosen]).all()  # unchosen tokens untouched
    eligible = (att == 1) & ~special
    rate = chosen.sum() / eligible.sum()
    assert abs(float(rate) - 0.5) < 0.04
    is_mask = masked[chosen] == tokenizer.mask_token_id
    kept = masked[chosen] == ids[chosen]
    assert abs(float(is_mask.float().mean()) - 0.8) < 0.05
    assert abs(float(kept.float().mean()) - 0.1) < 0.04  # (a random draw equal to the token is rare)
    # deterministic under a seed
    again, _ = mask_tokens(ids, att, tokenizer, prob=0.5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(masked, again)
    none, lab0 = mask_tokens(ids, att, tokenizer, prob=0.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(none, ids) and (lab0 == IGNORE).all()


@pytest.mark.parametrize("dense", [False, True])  # picked positions (CPU), every position (accelerators)
def test_mlm_loss_is_cross_entropy_on_masked_positions(dense):
    torch.manual_seed(0)
    fusion, states, mask, video = tiny()
    V = 50
    head = MlmHead(W, V)
    labels = torch.full((4, 6), IGNORE)
    labels[0, 1], labels[1, 2], labels[3, 0] = 7, 3, 49
    got = mlm_loss(fusion, head, states, mask, video, labels, dense=dense)["mlm_loss"]
    logits = head(fusion(states, mask, video))  # every position, then pick by hand
    ref = (F.cross_entropy(logits[0, 1], torch.tensor(7)) + F.cross_entropy(logits[1, 2], torch.tensor(3))
           + F.cross_entropy(logits[3, 0], torch.tensor(49))) / 3
    assert torch.allclose(got, ref, atol=1e-5)
    # nothing masked: zero, finite, still differentiable
    zero = mlm_loss(fusion, head, states, mask, video, torch.full((4, 6), IGNORE), dense=dense)["mlm_loss"]
    assert float(zero.detach()) == 0.0
    zero.backward()


def test_mlm_head_ties_to_word_embeddings():
    emb = torch.nn.Embedding(30, W)
    head = MlmHead(W, 30, tie_to=emb)
    assert head.decoder.weight is emb.weight
    with pytest.raises(ValueError):
        MlmHead(W, 31, tie_to=emb)


# ---------------------------------------------------------------- re-ranking

def test_rerank_keeps_truths_inside_top_k_and_order_below():
    g = torch.Generator().manual_seed(0)
    Nt, Nv, k = 40, 25, 5
    sim = torch.randn(Nt, Nv, generator=g)
    truth = torch.randint(Nv, (Nt,), generator=g)
    rand_scores = torch.randn(Nt, Nv, generator=g)
    calls = []

    def score_fn(t, v):
        calls.append(len(t))
        return rand_scores[torch.tensor(t), torch.tensor(v)]

    out = rerank(sim, score_fn, k=k, batch_size=7)
    assert max(calls) <= 7 and sum(calls) == Nt * k
    before, after = ranks_t2v(sim, truth), ranks_t2v(out, truth)
    inside = before <= k
    assert (after[inside] <= k).all()  # never loses a truth it had in the top-k
    assert torch.equal(after[~inside], before[~inside])  # the rest keep their rank
    top = top_k_candidates(sim, k)
    for i in range(Nt):
        order = torch.argsort(out[i], descending=True)
        assert set(order[:k].tolist()) == set(top[i].tolist())
        # within the top-k: the score_fn's order; below: the similarity's
        assert torch.equal(order[:k], top[i][torch.argsort(rand_scores[i, top[i]], descending=True)])
        assert torch.equal(order[k:], torch.argsort(sim[i], descending=True)[k:])


def test_rerank_with_an_oracle_gives_the_top_k_recall():
    g = torch.Generator().manual_seed(1)
    Nt, Nv, k = 60, 30, 4
    sim = torch.randn(Nt, Nv, generator=g)
    truth = torch.arange(Nt) % Nv
    oracle = lambda t, v: (torch.tensor(v) == truth[torch.tensor(t)]).float()  # noqa: E731
    out = rerank(sim, oracle, k=k)
    share_in_top_k = 100.0 * float((ranks_t2v(sim, truth) <= k).float().mean())
    assert retrieval_metrics(out, truth)["t2v"]["R@1"] == pytest.approx(share_in_top_k)
    assert rerank(sim, oracle, k=Nv).shape == (Nt, Nv)  # k = all candidates works too


def test_rerank_with_the_vtm_head():
    torch.manual_seed(0)
    fusion, states, mask, video = tiny(B=4)
    head = VtmHead(W)
    sim = torch.randn(4, 4)
    out = rerank(sim, vtm_score_fn(fusion, head, states, mask, video), k=2)
    ref = vtm_scores(fusion, head, states[[0, 0]], mask[[0, 0]], video[top_k_candidates(sim, 2)[0]])
    top = top_k_candidates(sim, 2)[0]
    assert torch.allclose((out[0, top[0]] - out[0, top[1]]).float(), (ref[0] - ref[1]).detach(), atol=1e-5)


def test_shared_clip_broadcast_equals_repeated_clip():
    """One clip against many texts (re-ranking) gives the same scores as the clip repeated per row."""
    from vidmask.objectives.vtm import VtmHead, vtm_scores
    from vidmask.tasks.rerank import vtm_score_fn

    torch.manual_seed(0)
    fusion, head = FusionEncoder(16, 8, depth=2, heads=2).eval(), VtmHead(16)
    text, mask = torch.randn(5, 4, 16), torch.ones(5, 4, dtype=torch.long)
    video = torch.randn(3, 6, 8)
    shared = vtm_scores(fusion, head, text, mask, video[1:2])
    repeated = vtm_scores(fusion, head, text, mask, video[1:2].expand(5, -1, -1).contiguous())
    assert torch.allclose(shared, repeated, atol=1e-5)
    score = vtm_score_fn(fusion, head, text, mask, video)
    t_idx, v_idx = [0, 1, 2, 3, 4, 0], [2, 0, 2, 1, 0, 1]
    grouped = score(t_idx, v_idx)
    one_by_one = torch.stack([vtm_scores(fusion, head, text[[t]], mask[[t]], video[[v]])[0] for t, v in zip(t_idx, v_idx)])
    assert torch.allclose(grouped, one_by_one, atol=1e-5)


def test_vtc_logits_stay_float32_under_autocast():
    from vidmask.objectives import vtc_loss

    g = torch.Generator().manual_seed(0)
    v = torch.nn.functional.normalize(torch.randn(16, 32, generator=g), dim=-1)
    t = torch.nn.functional.normalize(torch.randn(16, 32, generator=g), dim=-1)
    scale = torch.tensor(100.0)
    ref = vtc_loss(v, t, scale)["vtc_loss"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = vtc_loss(v, t, scale)["vtc_loss"]
    assert got.dtype == torch.float32 and torch.equal(got, ref)


def test_mlm_on_a_tower_without_a_mask_token_is_a_config_error():
    from types import SimpleNamespace

    from vidmask.config import ConfigError
    from vidmask.objectives.base import ObjectiveEnv
    from vidmask.objectives.mlm import Mlm, MlmConfig

    # a CLIP text tower: its BPE tokenizer has no mask token
    text = SimpleNamespace(tokenizer=SimpleNamespace(mask_token_id=None), cfg=SimpleNamespace(init="/clips/vit-b-32"))
    with pytest.raises(ConfigError, match="loss.mlm=0"):
        Mlm(MlmConfig(weight=1.0), ObjectiveEnv(model=SimpleNamespace(text=text), teacher=None, frames=2, grid=2))
