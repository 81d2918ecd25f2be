"""Time reversal as an augmentation (vidmask.data.reversal, data.reverse_p): the caption of the clip
played backwards, and the sample draw that plays it backwards."""

import pytest
import torch

from vidmask.config import ConfigError, load_config
from vidmask.corpus.captions import MOTION_WORDS, SIDE_WORDS
from vidmask.data.dataset import draw_sample
from vidmask.data.reversal import reverse_caption, reversible
from vidmask.data.transforms import VideoTransform

# what each of the corpus's motions looks like played backwards
BACKWARDS = {"left": "right", "right": "left", "up": "down", "down": "up", "grow": "shrink", "shrink": "grow",
             "enter": "leave", "leave": "enter", "rotate": "rotate", "still": "still", "bounce": "bounce"}
# correct reverses that the corpus's phrase lists happen not to use
ALSO = {"contracts", "becomes bigger", "goes out toward {side}"}


def phrases(motion: str, side: str) -> set[str]:
    return {p.format(side=side) for p in (*MOTION_WORDS[motion], *ALSO)}


@pytest.mark.parametrize("motion", sorted(MOTION_WORDS))
def test_every_corpus_motion_phrase_turns_into_its_reverse(motion):
    for phrase in MOTION_WORDS[motion]:
        for side in SIDE_WORDS.values() if "{side}" in phrase else [""]:
            text = phrase.format(side=side)
            got = reverse_caption(f"a big red star {text} on a striped background")
            # the object's size and the background are not motions: kept
            assert got.startswith("a big red star ") and got.endswith(" on a striped background"), got
            assert got[len("a big red star "):-len(" on a striped background")] in phrases(BACKWARDS[motion], side)


@pytest.mark.parametrize("caption, expected", [
    ("a red ball moves left and a blue star enters from the top",
     "a red ball moves right and a blue star leaves toward the top"),
    ("Goes Left", "Goes Right"),
    ("a box slides to the left while a ball on the left grows",  # a place is kept
     "a box slides to the right while a ball on the left shrinks"),
    ("a white box bounces up and down", "a white box bounces up and down"),  # symmetric
    ("he left the room", "he left the room"),  # "left" the verb
    ("a cross exits toward the right", "a cross enters from the right"),
    ("a disc spins clockwise and travels leftward", "a disc spins counterclockwise and travels rightward"),
    ("the arrow moves into view from the bottom", "the arrow moves out of view toward the bottom"),
    ("a door opens before the car starts", "a door closes after the car stops"),
    ("a ball rises, a triangle sinks", "a ball sinks, a triangle rises"),
])
def test_reverse_caption_examples(caption, expected):
    assert reverse_caption(caption) == expected


def test_two_way_reversal_is_its_own_inverse():
    for motion, options in MOTION_WORDS.items():
        for phrase in options:
            text = f"a small cyan box {phrase.format(side='the left')}"
            back = reverse_caption(reverse_caption(text))
            # one-way entries ("exits" -> "enters", "gets tinier" -> "gets bigger") come back as a synonym
            assert back == text or back in {f"a small cyan box {p.format(side='the left')}" for p in options}, back


def test_actions_without_a_reverse_keep_the_clip_forward():
    assert not reversible("a man eats an apple and moves left")
    assert reversible("a ball moves left")
    t = VideoTransform(size=8, train=True, reverse_p=1.0)
    assert not t.draw_reverse("a woman pours water", torch.Generator().manual_seed(0))
    assert t.draw_reverse("a ball grows", torch.Generator().manual_seed(0))


def clip(T=6, S=8):
    """Frame t filled with level 10 t + column index: order and left/right are both visible."""
    col = torch.arange(S).view(1, 1, S, 1)  # (1, 1, S, 1)
    return (10 * torch.arange(T).view(T, 1, 1, 1) + col).expand(T, S, S, 3).to(torch.uint8).contiguous()


def draw(transform, caption, seed):
    frames = clip()
    return draw_sample([caption], lambda g: (frames, list(range(frames.shape[0]))), transform,
                       torch.Generator().manual_seed(seed), train=True)[:3]


def test_a_reversed_sample_plays_backwards_with_its_frame_ids_and_caption():
    video, caption, ids = draw(VideoTransform(size=8, train=True, reverse_p=1.0), "a ball moves left", 0)
    assert caption == "a ball moves right"
    assert ids.tolist() == [5, 4, 3, 2, 1, 0]
    assert video[:, 0, 0, 0].tolist() == [50, 40, 30, 20, 10, 0]  # (T,) frame levels, last frame first


def test_reversal_draws_after_crop_and_flip_so_they_are_unchanged():
    """Turning reversal on changes no earlier draw: the same seeds give the same crops and flips,
    played forward or backward."""
    base = VideoTransform(size=8, train=True, hflip_p=0.5, random_crop_scale=(0.5, 1.0))
    rev = VideoTransform(size=8, train=True, hflip_p=0.5, random_crop_scale=(0.5, 1.0), reverse_p=0.5)
    reversed_seen = forward_seen = 0
    for seed in range(40):
        v0, c0, i0 = draw(base, "a ball moves up", seed)
        v1, c1, i1 = draw(rev, "a ball moves up", seed)
        if i1[0] > i1[-1]:
            reversed_seen += 1
            assert torch.equal(v1, v0.flip(0)) and c1 == "a ball moves down" and torch.equal(i1, i0.flip(0))
        else:
            forward_seen += 1
            assert torch.equal(v1, v0) and c1 == c0 and torch.equal(i1, i0)
    assert reversed_seen > 5 and forward_seen > 5  # about half each


def test_evaluation_never_reverses():
    t = VideoTransform(size=8, train=False, reverse_p=1.0)
    video, caption, ids, _ = draw_sample(["a ball moves left"], lambda g: (clip(), list(range(6))), t, None,
                                         train=False)
    assert caption == "a ball moves left" and ids.tolist() == list(range(6))


def test_config_rejects_a_probability_outside_0_1():
    with pytest.raises(ConfigError, match="data.reverse_p"):
        load_config(None, ["data.reverse_p=1.5"])
    assert load_config(None, ["data.reverse_p=0.5"]).data.reverse_p == 0.5
