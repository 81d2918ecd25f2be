"""model.normal_flow: a patch embedding of the per-pixel normal flow (brightness constancy along the gradient)."""

from __future__ import annotations

import pytest
import torch

from vidmask.config import LossConfig, ModelConfig, TextConfig, load_config
from vidmask.masking import build_masker
from vidmask.models import VideoTextModel, VideoViT
from vidmask.models.video_vit import central_difference, frame_differences, normal_flow
from vidmask.tasks import PretrainTask


def moving_blob(dx: float, dy: float, frames: int = 5, size: int = 32, colour=(0.8, -0.3, 0.1)) -> torch.Tensor:
    """A Gaussian blob (sigma 3 px) on a grey background moving (dx, dy) pixels a frame: [1,T,3,S,S]."""
    ys, xs = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64),
                            indexing="ij")  # (S, S) each
    out = []
    for t in range(frames):
        cx, cy = 12 + dx * t, 12 + dy * t
        blob = torch.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * 3.0 ** 2))  # (S, S)
        out.append(torch.stack([c * blob for c in colour]))  # (3, S, S)
    return torch.stack(out).unsqueeze(0)  # (1, T, 3, S, S)


def edge_mean(video: torch.Tensor, eps: float = 1e-9) -> torch.Tensor:
    """(u, v) averaged over the middle frame's pixels weighted by the gradient energy: [2]."""
    flow = normal_flow(video, eps)[0, 2]  # (2, S, S)
    g = (central_difference(video, -1) ** 2 + central_difference(video, -2) ** 2).sum(2)[0, 2]  # (S, S)
    return (flow * g).sum((1, 2)) / g.sum()  # (2,)


def test_central_difference_is_the_frame_differences_on_dim_1():
    x = torch.randn(2, 5, 3, 4, 6)
    torch.testing.assert_close(central_difference(x, 1), frame_differences(x))
    row = torch.tensor([0.0, 1.0, 4.0, 9.0]).view(1, 1, 4)  # x_i = i^2 along the last dim
    assert central_difference(row, -1).flatten().tolist() == [1.0, 2.0, 4.0, 5.0]


@pytest.mark.parametrize("dx,dy", [(1.0, 0.0), (-1.0, 0.0), (0.0, 1.0), (0.0, -1.0), (0.7, -0.7)])
def test_a_moving_blob_gives_its_velocity_along_the_gradient(dx, dy):
    u, v = edge_mean(moving_blob(dx, dy)).tolist()
    # a round blob: every direction is some edge's normal, so the energy-weighted mean is about half the velocity
    assert u == pytest.approx(dx / 2, abs=0.08) and v == pytest.approx(dy / 2, abs=0.08)
    u_eps, v_eps = edge_mean(moving_blob(dx, dy), eps=1e-2).tolist()  # eps shrinks weak edges' flow, keeps its sign
    assert abs(u_eps) <= abs(u) + 1e-9 and abs(v_eps) <= abs(v) + 1e-9 and u_eps * dx >= 0 and v_eps * dy >= 0


def test_the_signs_do_not_depend_on_the_colours():
    bright = moving_blob(1.0, 0.0, colour=(0.8, 0.5, 0.2))
    dark = moving_blob(1.0, 0.0, colour=(-0.9, -0.6, -0.4))  # darker than the background: differences flip sign
    assert (frame_differences(bright) * frame_differences(dark)).sum() < 0
    assert edge_mean(bright)[0] > 0.4 and edge_mean(dark)[0] > 0.4
    video = torch.randn(2, 4, 3, 16, 16)
    torch.testing.assert_close(normal_flow(-video), normal_flow(video))  # contrast inverted: the same flow


def test_reversal_negates_and_mirroring_negates_u():
    video = torch.randn(2, 5, 3, 8, 8)
    torch.testing.assert_close(normal_flow(video.flip(1)), -normal_flow(video).flip(1))
    sign = torch.tensor([-1.0, 1.0]).view(1, 1, 2, 1, 1)  # (1, 1, 2, 1, 1): u turns round, v does not
    torch.testing.assert_close(normal_flow(video.flip(-1)), normal_flow(video).flip(-1) * sign)
    still = torch.randn(1, 1, 3, 8, 8).expand(1, 4, 3, 8, 8)
    assert normal_flow(still).abs().max() == 0


def _vit(tubelet: int = 1, **kw):
    torch.manual_seed(0)
    return VideoViT(img_size=32, patch=16, frames=4, dim=24, depth=2, heads=2, tubelet=tubelet, normal_flow=True, **kw)


def test_a_still_clip_embeds_as_without_the_stream():
    still = torch.randn(2, 1, 3, 32, 32).expand(2, 4, 3, 32, 32)
    with_flow = _vit()
    plain = VideoViT(img_size=32, patch=16, frames=4, dim=24, depth=2, heads=2)
    plain.load_state_dict({k: v for k, v in with_flow.state_dict().items() if not k.startswith("flow_embed")})
    torch.testing.assert_close(with_flow.embed(still), plain.embed(still))


def test_off_by_default_and_checkpoint_names_unchanged():
    assert load_config(None, []).model.normal_flow is False
    names = set(VideoViT(img_size=32, patch=16, frames=4, dim=24, depth=2, heads=2).state_dict())
    assert {"flow_embed.weight"} == set(_vit().state_dict()) - names
    assert tuple(_vit().flow_embed.weight.shape) == (24, 2, 16, 16)


def test_pretraining_step_reaches_the_flow_embedding():
    torch.manual_seed(0)
    cfg = ModelConfig(dim=32, depth=2, heads=2, embed_dim=16, text=TextConfig(init="random"), normal_flow=True)
    model = VideoTextModel(cfg, num_frames=4, img_size=32)
    task = PretrainTask(model, build_masker("random", ratio=0.5), LossConfig(vtc=1.0), frames=4, grid=2)
    batch = {"video": torch.randn(3, 4, 3, 32, 32), "caption": ["a red circle moves left", "a blue square", "x"]}
    losses, _ = task(batch, torch.Generator().manual_seed(1))
    sum(losses.values()).backward()
    grad = model.visual.flow_embed.weight.grad
    assert grad is not None and grad.abs().sum() > 0
