"""The arrow-of-time objective: a time-blind encoder cannot beat chance; the gradient reaches the encoder."""

from __future__ import annotations

import math

import torch

from vidmask.config import LossConfig, ModelConfig, TextConfig
from vidmask.masking import build_masker
from vidmask.models import VideoTextModel
from vidmask.tasks import PretrainTask


def _task(tubelet=1):
    torch.manual_seed(0)
    cfg = ModelConfig(dim=32, depth=2, heads=2, embed_dim=16, text=TextConfig(init="random"), tubelet=tubelet)
    model = VideoTextModel(cfg, num_frames=4, img_size=32)
    return PretrainTask(model, build_masker("random", ratio=0.5), LossConfig(vtc=1.0, arrow=1.0),
                        frames=4 // tubelet, grid=2)


def _batch():
    return {"video": torch.randn(4, 4, 3, 32, 32, generator=torch.Generator().manual_seed(1)),
            "caption": ["a", "b", "c", "d"]}


def test_a_time_blind_encoder_is_at_chance():
    task = _task()
    with torch.no_grad():
        task.model.visual.pos_time.zero_()  # nothing tells the encoder when a token was
    losses, report = task(_batch(), torch.Generator().manual_seed(0))
    # the reversed clip holds the same patches at the same (now time-free) positions: the same feature
    assert float(report["arrow_acc"]) == 50.0
    assert float(losses["arrow_loss"].detach()) >= math.log(2) - 1e-6


def test_arrow_trains_the_encoder_with_tubelets():
    task = _task(tubelet=2)
    losses, report = task(_batch(), torch.Generator().manual_seed(0))
    assert set(losses) == {"vtc_loss", "arrow_loss"} and torch.isfinite(losses["arrow_loss"])
    task.zero_grad()
    losses["arrow_loss"].backward()
    assert task.model.visual.pos_time.grad.abs().sum() > 0  # time positions are what it must learn to use
    assert task.model.visual.patch_embed.weight.grad.abs().sum() > 0
    assert task.model.text_proj[0].weight.grad is None  # the text side plays no part
