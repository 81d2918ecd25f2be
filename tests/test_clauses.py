"""loss.clauses: clause-to-token late interaction, against an explicit loop, and in a pretraining step."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vidmask.config import ConfigError, LossConfig, ModelConfig, TextConfig
from vidmask.masking import build_masker
from vidmask.models.video_text import VideoTextModel
from vidmask.objectives.base import ObjectiveEnv
from vidmask.objectives.clauses import ClauseContrast, ClausesConfig, clause_scores, split_clauses
from vidmask.tasks.pretrain import PretrainTask


def test_split_clauses():
    cap = ("on a striped background, a red plus sign comes in from the bottom, a little cyan cross bounces "
           "and a small white semicircle stays put")
    assert split_clauses(cap) == ["on a striped background", "a red plus sign comes in from the bottom",
                                  "a little cyan cross bounces", "a small white semicircle stays put"]
    assert split_clauses("a dot moves left while a box grows") == ["a dot moves left", "a box grows"]
    assert split_clauses("spins") == ["spins"]  # no clause of two words: the caption itself
    assert split_clauses("a red box, up, and a dot falls") == ["a red box", "a dot falls"]
    assert split_clauses("sand and stone") == ["sand and stone"]  # pieces of one word are no clauses


def test_scores_match_a_loop():
    torch.manual_seed(0)
    M, B, K, E = 7, 3, 5, 4
    clauses = F.normalize(torch.randn(M, E), dim=-1)
    tokens = F.normalize(torch.randn(B, K, E), dim=-1)
    owner = torch.tensor([0, 0, 1, 2, 2, 2, 1])
    got = clause_scores(clauses, owner, tokens, 3)
    for a in range(3):
        mine = [m for m in range(M) if owner[m] == a]
        for v in range(B):
            best = [max(float(clauses[m] @ tokens[v, k]) for k in range(K)) for m in mine]
            assert got[a, v].item() == pytest.approx(sum(best) / len(best), abs=1e-6)


def test_binding_scores_the_right_clip_higher():
    """Two clips with the same objects and the same motions, bound the other way round: their pooled
    features are equal, their clause scores are not."""
    red, blue, left, grows = torch.eye(4)  # colour and motion directions
    unit = lambda *v: F.normalize(sum(v), dim=-1)  # noqa: E731
    clips = torch.stack([torch.stack([unit(red, left), unit(blue, grows)]),  # red moves left, blue grows
                         torch.stack([unit(red, grows), unit(blue, left)])])  # red grows, blue moves left
    torch.testing.assert_close(clips[0].mean(0), clips[1].mean(0))  # a pooled feature cannot tell them apart
    caption = torch.stack([unit(red, left), unit(blue, grows)])  # the clauses of clip 0's caption
    s = clause_scores(caption, torch.tensor([0, 0]), clips, 1)  # (1, 2)
    assert s[0, 0].item() == pytest.approx(1.0) and s[0, 1].item() == pytest.approx(0.5)


def _model():
    torch.manual_seed(0)
    cfg = ModelConfig(dim=32, depth=1, heads=2, embed_dim=16, text=TextConfig(init="random"))
    return VideoTextModel(cfg, num_frames=2, img_size=32)


def test_loss_is_the_symmetric_infonce_of_the_scores():
    model = _model()
    captions = ["a red circle moves left and a blue square grows", "a cyan star spins, a dot falls"]

    class Ctx:
        pass

    ctx = Ctx()
    ctx.model, ctx.captions, ctx.pair_ids = model, captions, None
    ctx.video_tokens = torch.randn(2, 6, 32)  # (B, K, C)
    out = ClauseContrast(ClausesConfig(weight=1.0), ObjectiveEnv(model=model, teacher=None, frames=2, grid=2))(ctx)
    pieces = [split_clauses(c) for c in captions]
    emb = F.normalize(model.vision_proj(ctx.video_tokens), dim=-1)
    s = model.temperature_scale() * torch.stack([
        torch.stack([torch.stack([(model.encode_text([c])[0] @ emb[v].T).max() for c in p]).mean()
                     for v in range(2)]) for p in pieces])  # (2, 2)
    t = torch.arange(2)
    expected = (F.cross_entropy(s, t) + F.cross_entropy(s.T, t)) / 2
    torch.testing.assert_close(out["clauses_loss"], expected, rtol=1e-5, atol=1e-5)
    assert out["clauses_per_caption"].item() == 2.0


def test_pretraining_step_with_clauses_reaches_the_encoder():
    torch.manual_seed(0)
    model = _model()
    task = PretrainTask(model, build_masker("random", ratio=0.5), LossConfig(vtc=1.0, clauses=1.0), frames=2, grid=2)
    captions = ["a red circle moves left and a blue square grows", "a blue square stays still", "a cyan star grows"]
    losses, _ = task({"video": torch.randn(3, 2, 3, 32, 32), "caption": captions}, torch.Generator().manual_seed(1))
    assert set(losses) == {"vtc_loss", "clauses_loss"} and math.isfinite(losses["clauses_loss"].item())
    losses["clauses_loss"].backward()
    assert model.visual.patch_embed.weight.grad.abs().sum() > 0 and model.vision_proj.weight.grad.abs().sum() > 0


def test_config_refuses_min_words_below_one():
    with pytest.raises(ConfigError, match="loss.clauses.min_words"):
        ClausesConfig(weight=1.0, min_words=0)


def _ctx(model, captions, seed=0):
    class Ctx:
        pass

    ctx = Ctx()
    ctx.model, ctx.captions, ctx.pair_ids = model, captions, None
    torch.manual_seed(seed)
    ctx.video_tokens = torch.randn(len(captions), 6, 32)  # (B, K, C)
    ctx.generator = torch.Generator().manual_seed(5)
    return ctx


def test_swap_scores_each_clause_against_its_turned_copy_on_its_own_clip():
    """loss.clauses.swap: a clause with a word of the lexicon against itself with that word turned, each by its
    best token of its own clip; clauses without such a word take no part."""
    model = _model()
    captions = ["a red circle moves left and a blue square spins", "a cyan star grows"]
    ctx = _ctx(model, captions)
    env = ObjectiveEnv(model=model, teacher=None, frames=2, grid=2)
    plain = ClauseContrast(ClausesConfig(weight=1.0), env)(ctx)
    out = ClauseContrast(ClausesConfig(weight=1.0, swap=0.5), env)(ctx)
    torch.testing.assert_close(out["clauses_loss"], plain["clauses_loss"])  # the contrast itself unchanged
    assert "clauses_swap_loss" not in plain
    emb = F.normalize(model.vision_proj(ctx.video_tokens), dim=-1)  # (2, 6, E)

    def best(text, clip):
        return (model.encode_text([text])[0] @ emb[clip].T).max()

    # "a blue square spins" has no word to turn; the other two clauses have one each
    margins = torch.stack([best("a red circle moves left", 0) - best("a red circle moves right", 0),
                           best("a cyan star grows", 1) - best("a cyan star shrinks", 1)])
    expected = 0.5 * F.softplus(-model.temperature_scale() * margins).mean()
    torch.testing.assert_close(out["clauses_swap_loss"], expected, rtol=1e-5, atol=1e-5)
    assert out["clauses_swap_acc"].item() == pytest.approx(50.0 * float((margins > 0).sum()))


def test_swap_without_a_word_to_turn_is_a_zero_that_keeps_the_graph():
    model = _model()
    ctx = _ctx(model, ["a red circle spins", "a dot stays still"])
    out = ClauseContrast(ClausesConfig(weight=1.0, swap=1.0), ObjectiveEnv(model=model, teacher=None, frames=2,
                                                                           grid=2))(ctx)
    assert out["clauses_swap_loss"].item() == 0.0 and out["clauses_swap_loss"].requires_grad


@pytest.mark.parametrize("bad", [{"swap": -1.0}, {"swap": float("nan")}, {"pairs": ["left"]}])
def test_config_refuses_a_bad_swap_naming_the_key(bad):
    with pytest.raises(ConfigError, match="loss.clauses." + next(iter(bad))):
        ClausesConfig(weight=1.0, **bad)


def test_chunked_similarity_is_the_scores():
    torch.manual_seed(1)
    clauses = F.normalize(torch.randn(9, 4), dim=-1)
    tokens = F.normalize(torch.randn(5, 3, 4), dim=-1)
    owner = torch.tensor([0, 0, 1, 2, 2, 2, 3, 3, 3])
    from vidmask.objectives.clauses import clause_similarity

    for chunk in (1, 4, 256):
        torch.testing.assert_close(clause_similarity(clauses, owner, tokens, 4, chunk), clause_scores(
            clauses, owner, tokens, 4))


def test_retrieval_scored_by_clauses(tiny_set, monkeypatch):
    """finetune.similarity=clauses: each caption's clauses against every clip's tokens in the joint space."""
    import vidmask.tasks.retrieval as retrieval
    from vidmask.config import load_config
    from vidmask.data import load_annotations
    from vidmask.train.wiring import build_model

    from test_train import TINY

    cfg = load_config(None, [*TINY, f"data.corpus={tiny_set}", "finetune.similarity=clauses"])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    seen = {}
    report = retrieval.score_report

    def capture(sim, *args):
        seen["sim"] = sim  # (Nt, Nv)
        return report(sim, *args)

    monkeypatch.setattr(retrieval, "score_report", capture)
    res = retrieval.evaluate_retrieval(model, tiny_set / "test.json", cfg, "cpu")
    assert res["similarity"] == "clauses"
    items = load_annotations(tiny_set / "test.json", unique=True, nonempty=True)
    with torch.no_grad():
        emb = torch.cat([F.normalize(model.vision_proj(model.video_tokens(b["video"])), dim=-1)
                         for b in retrieval.config_loader(items, cfg, "cpu")])  # (Nv, K, E)
        for t, caption in [(0, items[0].captions[0]), (5, items[5].captions[0])]:
            clauses = model.encode_text(split_clauses(caption))  # (m, E)
            want = torch.einsum("me,vke->mvk", clauses, emb).amax(-1).mean(0)  # (Nv,)
            torch.testing.assert_close(seen["sim"][t], want, rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError, match="finetune.similarity=clauses"):
        load_config(None, ["finetune.task=retrieval", "finetune.method=mascot", "finetune.similarity=clauses"])
