"""`motion-topk` and `model.eval_tokens=motion`: each frame's most-changing tokens, in training and at evaluation."""

from __future__ import annotations

import pytest
import torch

from vidmask.config import ConfigError, ModelConfig, TextConfig
from vidmask.masking import build_masker, keep_to_ids
from vidmask.masking.motion import motion_energy, motion_ids
from vidmask.models.video_text import VideoTextModel


def energy_loop(patches: torch.Tensor) -> torch.Tensor:
    """The definition, one token at a time: mean over the existing neighbours t-1, t+1 of mean((p_t - p_s)^2)."""
    B, T, N, _ = patches.shape
    out = torch.zeros(B, T, N)
    for b in range(B):
        for t in range(T):
            for n in range(N):
                near = [s for s in (t - 1, t + 1) if 0 <= s < T]
                out[b, t, n] = sum(((patches[b, t, n] - patches[b, s, n]) ** 2).mean() for s in near) / len(near)
    return out


def test_energy_matches_a_loop():
    g = torch.Generator().manual_seed(0)
    patches = torch.randn(2, 5, 6, 12, generator=g)
    assert torch.allclose(motion_energy(patches), energy_loop(patches), atol=1e-6)


def test_energy_of_one_frame_is_zero():
    assert torch.equal(motion_energy(torch.randn(2, 1, 4, 3)), torch.zeros(2, 1, 4))


def moving_square(frames: int = 4, size: int = 64, patch: int = 16) -> tuple[torch.Tensor, list[set[int]]]:
    """A bright square one patch wide stepping one patch right per frame over a static random texture:
    video [1,T,3,S,S] and, per frame, the grid cells whose pixels change against a neighbour."""
    g = torch.Generator().manual_seed(1)
    background = torch.rand(3, size, size, generator=g) * 0.5  # textured, static
    video = background.expand(frames, 3, size, size).clone()  # (T, 3, S, S)
    grid = size // patch
    row = 1
    for t in range(frames):
        video[t, :, row * patch:(row + 1) * patch, t * patch:(t + 1) * patch] = 1.0
    cells = [{row * grid + c for c in (t - 1, t, t + 1) if 0 <= c < grid and c < frames} for t in range(frames)]
    return video.unsqueeze(0), cells


def test_keeps_the_moving_object_not_the_texture():
    from vidmask.models.video_vit import patchify

    video, cells = moving_square()
    patches = patchify(video, 16)  # (1, T, N, P)
    out = build_masker("motion-topk", ratio=0.875)(patches)  # 2 of 16 tokens per frame
    for t, changing in enumerate(cells):
        kept = set(out.keep[0, t].nonzero().flatten().tolist())
        assert kept <= changing, (t, kept, changing)  # only cells where the square is or was
    assert torch.equal(out.ids_keep, keep_to_ids(out.keep))


def test_deterministic_and_ties_to_the_lowest_index():
    static = torch.ones(1, 3, 8, 4)  # nothing moves: every energy 0
    out = build_masker("motion-topk", ratio=0.75)(static)
    assert out.keep[0, :, :2].all() and not out.keep[0, :, 2:].any()


def tiny(eval_tokens: str = "all", ratio: float = 0.75) -> VideoTextModel:
    torch.manual_seed(0)
    cfg = ModelConfig(dim=32, depth=2, heads=2, embed_dim=16, text=TextConfig(init="random"),
                      eval_tokens=eval_tokens, eval_ratio=ratio)
    return VideoTextModel(cfg, num_frames=4, img_size=64)


def test_eval_tokens_motion_encodes_the_selected_tokens_at_evaluation_only():
    video, _ = moving_square()
    model = tiny("motion", 0.75)
    model.eval()
    with torch.no_grad():
        got = model.video_tokens(video)  # (1, K, C)
        ids = motion_ids(model.visual.patchify(video), 0.75)  # (1, K)
        want = model.video_tokens(video, ids)
        assert got.shape == (1, 4 * 4, 32)  # 4 of 16 tokens in each of 4 frames
        assert torch.allclose(got, want)
        everything = tiny("all").eval().video_tokens(video)
        assert everything.shape == (1, 4 * 16, 32)
    model.train()  # training: the masker's ids decide; none given = every token
    assert model.video_tokens(video).shape == (1, 4 * 16, 32)


@pytest.mark.parametrize("key,value", [("eval_tokens", "moving"), ("eval_ratio", 1.0), ("eval_ratio", -0.1)])
def test_bad_eval_selection_is_a_config_error(key, value):
    with pytest.raises(ConfigError, match=f"model.{key}"):
        ModelConfig(**{key: value})
