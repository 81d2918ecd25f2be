"""Tubelet embedding (model.tubelet): a token sees k frames of its patch; every path agrees on the layout."""

from __future__ import annotations

import pytest
import torch

from vidmask.config import ConfigError, ModelConfig, TextConfig, load_config
from vidmask.masking import build_masker
from vidmask.models import VideoTextModel, VideoViT
from vidmask.objectives.reverse import reorder_frames, time_order_ids, tubelet_frame_order
from vidmask.tasks import PretrainTask
from vidmask.teachers.base import TeacherOut, tubelet_mean


def _vit(**kw):
    torch.manual_seed(0)
    return VideoViT(img_size=32, patch=16, frames=4, dim=24, depth=2, heads=2, tubelet=2, **kw)


def test_tokens_span_k_frames_and_see_both():
    vit = _vit()
    video = torch.randn(2, 4, 3, 32, 32)
    tokens = vit.embed(video)  # (B, T/k, N, C)
    assert tokens.shape == (2, 2, 4, 24) and vit.frames == 2
    changed = video.clone()
    changed[:, 1] += 1.0  # the second frame of the first tubelet
    diff = (vit.embed(changed) - tokens).abs().sum(-1)  # (B, T/k, N)
    assert (diff[:, 0] > 0).all() and (diff[:, 1] == 0).all()  # token time 0 sees frames 0-1 only


def test_embed_kept_equals_gathered_embed_with_tubelets():
    vit = _vit()
    video = torch.randn(2, 4, 3, 32, 32)
    out = build_masker("random", ratio=0.5)(torch.zeros(2, 2, 4, 1), generator=torch.Generator().manual_seed(0))
    full = vit.embed(video).flatten(1, 2)  # (B, L, C): the Conv3d path
    gathered = torch.stack([full[b, out.ids_keep[b]] for b in range(2)])
    torch.testing.assert_close(vit.embed_kept(video, out.ids_keep), gathered, atol=1e-5, rtol=1e-5)
    assert vit.patchify(video).shape == (2, 2, 4, 2 * 16 * 16 * 3)  # the masker's layout is the token layout


def test_grad_checkpointing_same_output_with_tubelets():
    a, b = _vit(), _vit(grad_checkpointing=True)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 4, 3, 32, 32)
    torch.testing.assert_close(a(x), b(x))


def test_frames_must_split_into_tubelets():
    with pytest.raises(ConfigError, match="model.tubelet"):
        load_config(None, ["data.num_frames=5", "model.tubelet=2"])
    with pytest.raises(ValueError, match="tubelets of 2"):
        _vit().embed(torch.randn(1, 3, 3, 32, 32))


def test_teacher_output_averaged_per_tubelet():
    g = torch.Generator().manual_seed(0)
    attn = torch.rand(2, 4, 9, generator=g)
    attn = attn / attn.sum(-1, keepdim=True)
    out = TeacherOut(tokens=torch.randn(2, 4, 9, 5, generator=g), attn=attn, video=torch.randn(2, 3, generator=g),
                     layers=[torch.randn(2, 4, 9, 5, generator=g)])
    pooled = tubelet_mean(out, 2)
    torch.testing.assert_close(pooled.tokens[:, 1], out.tokens[:, 2:4].mean(1))
    torch.testing.assert_close(pooled.attn.sum(-1), torch.ones(2, 2))
    assert pooled.layers[0].shape == (2, 2, 9, 5) and pooled.video is out.video
    assert tubelet_mean(out, 1) is out


def test_reversed_tubelets_hold_their_frames_backwards():
    video = torch.arange(6, dtype=torch.float32).view(1, 6, 1, 1, 1).expand(1, 6, 3, 16, 16).clone()  # frame t = t
    order = torch.tensor([[2, 1, 0]])  # token time reversed (3 tubelets of 2 frames)
    frames = tubelet_frame_order(order, 2, reverse=True)
    assert frames.tolist() == [[5, 4, 3, 2, 1, 0]]
    ids = torch.tensor([[0, 1]])  # the first tubelet (token time 0) at both... N = 1 here: tubelets 0 and 1
    moved, _ = time_order_ids(ids, 1, order)
    assert moved.tolist() == [[1, 2]]  # tubelet 1 stays in the middle, tubelet 0 goes last
    from vidmask.models.video_vit import patchify

    rev = patchify(reorder_frames(video, frames), 16, 2)  # (1, 3, 1, 2*16*16*3)
    first = rev[0, 2, 0].view(2, -1)[:, 0]  # the tubelet now last: original frames 0-1, played 1 then 0
    assert first.tolist() == [1.0, 0.0]
    shuffled = tubelet_frame_order(torch.tensor([[1, 2, 0]]), 2, reverse=False)
    assert shuffled.tolist() == [[2, 3, 4, 5, 0, 1]]  # whole tubelets moved, their frames in order


def test_pretraining_with_tubelets_and_time_reversal_runs():
    torch.manual_seed(0)
    cfg = ModelConfig(dim=32, depth=2, heads=2, embed_dim=16, text=TextConfig(init="random"), tubelet=2)
    model = VideoTextModel(cfg, num_frames=4, img_size=32)
    from vidmask.config import LossConfig

    loss = LossConfig(vtc=1.0, reverse=1.0)
    task = PretrainTask(model, build_masker("tube", ratio=0.5), loss, frames=2, grid=2)
    batch = {"video": torch.randn(3, 4, 3, 32, 32), "caption": ["a red circle moves left", "a blue square", "x"]}
    losses, report = task(batch, torch.Generator().manual_seed(1))
    assert set(losses) == {"vtc_loss", "reverse_loss"} and report["kept_tokens"] == 2 * 2
    sum(losses.values()).backward()
    assert model.visual.patch_embed.weight.grad.shape == (32, 3, 2, 16, 16)


def test_mascot_with_tubelets_erases_every_frame_of_a_masked_tubelet():
    from vidmask.tasks.mascot import MascotTask

    cfg = load_config(None, ["finetune.task=retrieval", "finetune.method=mascot", "model.text.init=random",
                             "model.dim=32", "model.depth=1", "model.heads=2", "model.embed_dim=16", "data.size=32",
                             "data.num_frames=4", "model.tubelet=2", "finetune.mascot.temporal_heads=2"])
    from vidmask.train.wiring import build_model

    task = MascotTask(build_model(cfg), cfg.finetune.mascot, 2, cfg.model.text.max_len)
    losses, _ = task({"video": torch.randn(2, 4, 3, 32, 32), "caption": ["a b", "c d"]},
                     torch.Generator().manual_seed(0))
    assert all(torch.isfinite(v) for v in losses.values())


@pytest.mark.parametrize("recipe", ["clusterstm", "umt"])
def test_teacher_recipes_train_with_tubelets(recipe, tiny_set, tmp_path):
    """The teacher's per-frame tokens and attention reach the masker and the objectives per tubelet."""
    import json

    from test_train import TINY, vidmask

    run = tmp_path / recipe
    vidmask("pretrain", "--config", f"configs/recipes/{recipe}.yaml", f"data.corpus={tiny_set}", *TINY,
            "model.tubelet=2", "teacher.path=", "teacher.cache=", "train.steps=2", f"run_dir={run}")
    assert json.loads((run / "eval_retrieval.json").read_text())["t2v"]["R@1"] >= 0
