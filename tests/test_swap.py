"""The swap objective: each caption with one motion word turned into its opposite, a negative of its clip."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vidmask.config import ConfigError, LossConfig, ModelConfig, TextConfig, load_config
from vidmask.masking import build_masker
from vidmask.models import VideoTextModel
from vidmask.objectives.swap import COLOURS, DEFAULT_PAIRS, swap_candidates, swap_table, swap_word, swap_words
from vidmask.tasks import PretrainTask


def test_table_both_ways_and_one_way():
    table = swap_table(["left:right", "falls>rises"])
    assert table == {"left": "right", "right": "left", "falls": "rises"}
    full = swap_table(DEFAULT_PAIRS)
    assert full["grows"] == "shrinks" and full["shrinks"] == "grows" and full["exits"] == "enters"


@pytest.mark.parametrize("bad", ["left", "left:right:up", "left:", "le ft:right"])
def test_malformed_pairs_refused_naming_the_key(bad):
    with pytest.raises(ConfigError, match="loss.swap.pairs"):
        load_config(None, [f"loss.swap.pairs=[{bad!r}]"])


def test_a_word_with_two_counterparts_refused():
    with pytest.raises(ValueError, match="two counterparts"):
        swap_table(["left:right", "left:up"])


def test_one_word_swapped_case_kept():
    table = swap_table(DEFAULT_PAIRS)
    caption = "Left of centre, a red circle moves left and a blue square grows"
    assert [m.group() for m in swap_candidates(caption, table)] == ["Left", "left", "grows"]
    assert swap_word(caption, table, 0.0) == "Right of centre, a red circle moves left and a blue square grows"
    assert swap_word(caption, table, 0.5) == "Left of centre, a red circle moves right and a blue square grows"
    assert swap_word(caption, table, 0.99) == "Left of centre, a red circle moves left and a blue square shrinks"
    assert swap_word("a green star stays still", table, 0.3) is None
    assert swap_word("the leftover uptake", table, 0.0) is None  # whole words only


def test_several_words_each_swapped_once_from_the_drawn_one_cyclically():
    table = swap_table(DEFAULT_PAIRS)
    caption = "a red circle moves left, a blue square grows and a green star sinks"
    left, grows, sinks = ("a red circle moves right, a blue square grows and a green star sinks",
                          "a red circle moves left, a blue square shrinks and a green star sinks",
                          "a red circle moves left, a blue square grows and a green star rises")
    assert swap_words(caption, table, 0.5, 1) == [grows] == [swap_word(caption, table, 0.5)]
    assert swap_words(caption, table, 0.5, 2) == [grows, sinks]
    assert swap_words(caption, table, 0.9, 2) == [sinks, left]  # from the drawn word on, wrapping round
    assert swap_words(caption, table, 0.0, 0) == [left, grows, sinks] == swap_words(caption, table, 0.0, 7)
    assert swap_words("a green star stays still", table, 0.3, 0) == []


def test_a_group_word_turns_into_each_other_member_by_the_rest_of_the_draw():
    table = swap_table(["left:right"], ["red|green|blue"])
    assert table["red"] == ("green", "blue") and table["blue"] == ("red", "green") and table["left"] == "right"
    caption = "a red circle moves left"  # candidates: red (draws in [0, 0.5)), left ([0.5, 1))
    assert swap_words(caption, table, 0.1, 1) == ["a green circle moves left"]
    assert swap_words(caption, table, 0.3, 1) == ["a blue circle moves left"]
    assert swap_words(caption, table, 0.6, 1) == ["a red circle moves right"]
    assert swap_words(caption, table, 0.6, 2) == ["a red circle moves right", "a green circle moves left"]  # within 0.2
    assert swap_word("Red star", table, 0.0) == "Green star"  # capitalised as the original
    colours = swap_table((), [COLOURS])
    turned = {swap_word("a grey cat", colours, u / 1000) for u in range(1000)}
    assert turned == {f"a {c} cat" for c in COLOURS.split("|") if c != "grey"}  # every other colour, never itself


@pytest.mark.parametrize("bad", [["red"], ["red|red"], ["red|gr een"], ["left|up"], ["red|blue", "blue|green"]])
def test_malformed_or_overlapping_groups_refused_naming_the_key(bad):
    with pytest.raises(ConfigError, match="loss.swap.groups"):
        load_config(None, [f"loss.swap.groups={bad!r}"])


@pytest.mark.parametrize("bad", ["-1", "1.5", "true"])
def test_a_count_that_is_not_a_whole_number_is_refused_naming_the_key(bad):
    with pytest.raises(ConfigError, match="loss.swap.count"):
        load_config(None, [f"loss.swap.count={bad}"])


class _Ctx:
    """Only what the swap objective reads of a StepContext."""

    def __init__(self, model, captions, pair_ids=None, seed=0):
        torch.manual_seed(seed)
        self.model, self.captions, self.pair_ids = model, captions, pair_ids
        self.video_feat = F.normalize(torch.randn(len(captions), 16), dim=-1)  # (B, E)
        self.text_feat = model.encode_text(captions)  # (B, E)
        self.generator = torch.Generator().manual_seed(0)


def _swap(model, **cfg):
    from vidmask.objectives.base import ObjectiveEnv
    from vidmask.objectives.swap import Swap, SwapConfig

    return Swap(SwapConfig(weight=1.0, **cfg), ObjectiveEnv(model=model, teacher=None, frames=2, grid=2))


def _model():
    torch.manual_seed(0)
    cfg = ModelConfig(dim=32, depth=1, heads=2, embed_dim=16, text=TextConfig(init="random"))
    return VideoTextModel(cfg, num_frames=2, img_size=32)


def _task(**loss):
    torch.manual_seed(0)
    cfg = ModelConfig(dim=32, depth=1, heads=2, embed_dim=16, text=TextConfig(init="random"))
    model = VideoTextModel(cfg, num_frames=2, img_size=32)
    return PretrainTask(model, build_masker("random", ratio=0.5), LossConfig(**loss), frames=2, grid=2), model


def test_pretraining_step_with_swap_reaches_the_text_head():
    task, model = _task(vtc=1.0, swap=1.0)
    captions = ["a red circle moves left", "a blue square stays still", "a cyan star grows"]
    losses, report = task({"video": torch.randn(3, 2, 3, 32, 32), "caption": captions},
                          torch.Generator().manual_seed(1))
    assert set(losses) == {"vtc_loss", "swap_loss"}
    assert report["swap_share"].item() == pytest.approx(200.0 / 3)  # two captions hold a swappable word
    assert math.isfinite(losses["swap_loss"].item()) and 0.0 <= report["swap_acc"].item() <= 100.0
    losses["swap_loss"].backward()
    assert model.text_proj[0].weight.grad.abs().sum() > 0 and model.visual.patch_embed.weight.grad.abs().sum() > 0


def test_swapped_caption_is_one_extra_candidate_of_its_own_clip():
    model = _model()
    ctx = _Ctx(model, ["a red circle moves left", "a blue square stays still"])
    video_feat, text_feat = ctx.video_feat, ctx.text_feat
    out = _swap(model)(ctx)
    s = model.temperature_scale()
    neg = s * video_feat[0] @ model.encode_text(["a red circle moves right"])[0]
    logits = s * video_feat @ text_feat.T  # (2, 2)
    expected = (torch.logsumexp(torch.cat([logits[0], neg.view(1)]), 0) - logits[0, 0]
                + torch.logsumexp(logits[1], 0) - logits[1, 1]) / 2
    torch.testing.assert_close(out["swap_loss"], expected)
    assert out["swap_share"].item() == 50.0
    assert out["swap_acc"].item() == (100.0 if logits[0, 0] > neg else 0.0)


def test_same_video_captions_are_not_negatives():
    model = _model()
    ctx = _Ctx(model, ["a dot stays still", "a dot does not move"], pair_ids=torch.tensor([7, 7]))
    out = _swap(model)(ctx)
    assert out["swap_loss"].item() == pytest.approx(0.0, abs=1e-6)  # each row's only candidate is its own
    assert out["swap_share"].item() == 0.0


def test_swap_accuracy_ignores_the_negative_weight():
    model = _model()
    accs = [_swap(model, negative_weight=w)(_Ctx(model, ["a red circle moves left", "a blue square moves up"]))
            ["swap_acc"].item() for w in (1.0, 1e6)]
    assert accs[0] == accs[1]


def test_word_drawn_on_the_host_from_the_steps_seed():
    """The swapped word is a pure function of the step generator's seed, drawn from a CPU generator of that
    seed: the step's generator (on the GPU in training) is neither read nor advanced."""
    from vidmask.objectives.swap import host_generator

    g = torch.Generator().manual_seed(1234)
    state = g.get_state()
    host = host_generator(g)
    assert host.device.type == "cpu" and host is not g
    fresh = torch.Generator().manual_seed(1234)
    torch.testing.assert_close(torch.rand(5, generator=host), torch.rand(5, generator=fresh))
    assert torch.equal(g.get_state(), state)
    assert host_generator(None) is None

    model = _model()
    captions = ["a red circle moves left and a blue square moves up", "a cyan star grows"]
    ctx = _Ctx(model, captions)
    state = ctx.generator.get_state()
    first = _swap(model)(ctx)["swap_loss"]
    assert torch.equal(ctx.generator.get_state(), state)  # the step's generator untouched
    torch.testing.assert_close(_swap(model)(ctx)["swap_loss"], first)  # the same seed, the same swapped words


def test_count_gives_each_clip_one_extra_candidate_per_swapped_word():
    """count=2: a caption with two swappable words has both swaps as negatives of its clip, one with one word
    has one, and the accuracy counts every swapped caption."""
    model = _model()
    captions = ["a red circle moves left and a blue square grows", "a cyan star sinks", "a dot stays still"]
    ctx = _Ctx(model, captions)
    out = _swap(model, count=2)(ctx)
    s = model.temperature_scale()
    v = ctx.video_feat  # (3, E)
    logits = s * v @ ctx.text_feat.T  # (3, 3)
    negs = [model.encode_text(["a red circle moves right and a blue square grows",
                               "a red circle moves left and a blue square shrinks"]),
            model.encode_text(["a cyan star rises"])]
    extra = [s * negs[0] @ v[0], s * negs[1] @ v[1]]  # (2,), (1,)
    rows = [torch.cat([logits[0], extra[0]]), torch.cat([logits[1], extra[1]]), logits[2]]
    expected = sum(torch.logsumexp(r, 0) - logits[i, i] for i, r in enumerate(rows)) / 3
    torch.testing.assert_close(out["swap_loss"], expected)
    assert out["swap_share"].item() == pytest.approx(200.0 / 3)
    wins = [(logits[0, 0] > e).item() for e in extra[0]] + [(logits[1, 1] > extra[1][0]).item()]
    assert out["swap_acc"].item() == pytest.approx(100.0 * sum(wins) / 3)
    # count=1 is the one-negative loss, whichever word was drawn
    one = _swap(model, count=1)(ctx)["swap_loss"]
    assert one.item() != pytest.approx(out["swap_loss"].item())
