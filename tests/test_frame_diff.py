"""model.frame_diff: a second patch embedding of the frame differences (TSN / TDN's RGB-difference stream)."""

from __future__ import annotations

import pytest
import torch

from vidmask.config import LossConfig, ModelConfig, TextConfig, load_config
from vidmask.masking import build_masker
from vidmask.models import VideoTextModel, VideoViT
from vidmask.models.video_vit import frame_differences
from vidmask.tasks import PretrainTask


def _vit(tubelet: int = 1, **kw):
    torch.manual_seed(0)
    return VideoViT(img_size=32, patch=16, frames=4, dim=24, depth=2, heads=2, tubelet=tubelet, frame_diff=True, **kw)


def test_frame_differences_central_inside_one_sided_at_the_ends():
    video = torch.tensor([0.0, 1.0, 4.0, 9.0]).view(1, 4, 1)  # x_t = t^2
    assert frame_differences(video).flatten().tolist() == [1.0, 2.0, 4.0, 5.0]
    assert frame_differences(torch.ones(2, 1, 3)).abs().sum() == 0  # one frame: nothing moves


def test_reversal_negates_the_differences_frame_for_frame():
    video = torch.randn(2, 5, 3, 8, 8)
    torch.testing.assert_close(frame_differences(video.flip(1)), -frame_differences(video).flip(1))


def test_a_still_clip_embeds_as_without_the_stream():
    still = torch.randn(2, 1, 3, 32, 32).expand(2, 4, 3, 32, 32)  # the same frame four times
    with_diff = _vit()
    plain = VideoViT(img_size=32, patch=16, frames=4, dim=24, depth=2, heads=2)
    plain.load_state_dict({k: v for k, v in with_diff.state_dict().items() if not k.startswith("diff_embed")})
    torch.testing.assert_close(with_diff.embed(still), plain.embed(still))


def test_a_token_sees_its_neighbours_frames_through_the_differences():
    vit = _vit()
    video = torch.randn(1, 4, 3, 32, 32)
    changed = video.clone()
    changed[:, 2] += 1.0  # frame 2 only
    moved = (vit.embed(changed) - vit.embed(video)).abs().sum(-1)  # (B, T, N)
    assert (moved[0, 1:] > 0).all() and (moved[0, 0] == 0).all()  # tokens of frames 1 and 3 see frame 2 too


@pytest.mark.parametrize("tubelet,normal_flow", [(1, False), (2, False), (1, True), (2, True)])
def test_embed_kept_equals_gathered_embed(tubelet, normal_flow):
    """The kept-token path equals the conv path, for each motion stream (model.normal_flow as well)."""
    vit = _vit(tubelet, normal_flow=normal_flow)
    video = torch.randn(2, 4, 3, 32, 32)
    frames = 4 // tubelet
    out = build_masker("random", ratio=0.5)(torch.zeros(2, frames, 4, 1), generator=torch.Generator().manual_seed(0))
    full = vit.embed(video).flatten(1, 2)  # (B, L, C): the conv path
    gathered = torch.stack([full[b, out.ids_keep[b]] for b in range(2)])  # (B, K, C)
    torch.testing.assert_close(vit.embed_kept(video, out.ids_keep), gathered, atol=1e-5, rtol=1e-5)


def test_off_by_default_and_checkpoint_names_unchanged():
    assert load_config(None, []).model.frame_diff is False
    names = set(VideoViT(img_size=32, patch=16, frames=4, dim=24, depth=2, heads=2).state_dict())
    assert not any(n.startswith("diff_embed") for n in names)
    assert {"diff_embed.weight"} == set(_vit().state_dict()) - names


def test_pretraining_step_reaches_the_difference_embedding():
    torch.manual_seed(0)
    cfg = ModelConfig(dim=32, depth=2, heads=2, embed_dim=16, text=TextConfig(init="random"), frame_diff=True)
    model = VideoTextModel(cfg, num_frames=4, img_size=32)
    task = PretrainTask(model, build_masker("random", ratio=0.5), LossConfig(vtc=1.0, reverse=1.0), frames=4, grid=2)
    batch = {"video": torch.randn(3, 4, 3, 32, 32), "caption": ["a red circle moves left", "a blue square", "x"]}
    losses, _ = task(batch, torch.Generator().manual_seed(1))
    sum(losses.values()).backward()
    grad = model.visual.diff_embed.weight.grad
    assert grad is not None and grad.abs().sum() > 0
