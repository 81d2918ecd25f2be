"""model.pool=segments: order-aware video features that start as the mean-pooled ones."""

import pytest
import torch

from vidmask.config import Config, ConfigError, ModelConfig, TextConfig
from vidmask.models import VideoTextModel
from vidmask.models.pooling import segment_means, segment_offsets


def tiny_cfg(**kw):
    return ModelConfig(dim=32, depth=2, heads=2, embed_dim=16, text=TextConfig(init="random"), **kw)


def test_segment_means_are_consecutive_runs():
    tokens = torch.arange(7, dtype=torch.float32).reshape(1, 7, 1).expand(2, 7, 3)  # (B, K, C)
    means = segment_means(tokens, 2)  # runs of 4 and 3 tokens
    assert means.shape == (2, 2, 3)
    assert torch.allclose(means[:, 0], torch.full((2, 3), 1.5)) and torch.allclose(means[:, 1], torch.full((2, 3), 5.0))
    offsets = segment_offsets(tokens, 2)  # (B, S*C)
    assert offsets.shape == (2, 6)
    assert torch.allclose(offsets[:, :3], torch.full((2, 3), -1.5)) and torch.allclose(offsets[:, 3:], torch.full((2, 3), 2.0))
    with pytest.raises(ValueError, match="pool_segments"):
        segment_means(tokens[:, :1], 2)


def test_segments_start_as_mean_and_then_tell_time_order():
    torch.manual_seed(0)
    mean = VideoTextModel(tiny_cfg(), num_frames=4, img_size=32)
    seg = VideoTextModel(tiny_cfg(pool="segments", pool_segments=2), num_frames=4, img_size=32)
    seg.load_state_dict(mean.state_dict(), strict=False)  # everything but the order head, which starts at zero
    feats = torch.randn(3, 8, 32)  # (B, K, C) in time order
    backwards = feats.flip(1)  # the same tokens, last frames first
    assert torch.allclose(seg.project_video(feats), mean.project_video(feats), atol=1e-6)
    assert torch.allclose(mean.project_video(feats), mean.project_video(backwards), atol=1e-6)  # a mean is blind
    seg.project_video(feats).sum().backward()
    assert seg.order_proj.weight.grad is not None and seg.order_proj.weight.grad.abs().sum() > 0
    with torch.no_grad():
        seg.order_proj.weight.normal_(0, 0.1)
    assert not torch.allclose(seg.project_video(feats), seg.project_video(backwards), atol=1e-4)
    assert mean.order_proj is None and "order_proj.weight" not in mean.state_dict()


def test_pool_config_is_checked():
    with pytest.raises(ConfigError, match="model.pool must"):
        tiny_cfg(pool="max")
    with pytest.raises(ConfigError, match="model.pool_segments"):
        tiny_cfg(pool="segments", pool_segments=1)
    cfg = Config()
    cfg.model.pool = "segments"
    cfg.finetune.method = "mascot"
    with pytest.raises(ConfigError, match="model.pool=segments"):
        cfg.__post_init__()


def test_mascot_finetunes_a_run_pooled_by_segments(tiny_set, tmp_path):
    """MASCOT pools frame tokens its own way: from a run trained with model.pool=segments it keeps
    model.pool=mean, says so, and loads every weight but the order head (which it has no place for)."""
    from test_train import TINY, vidmask

    from vidmask.config import load_config
    from vidmask.train import checkpoint as ckpt
    from vidmask.train.wiring import build_model, init_model, resolve_init

    pre = tmp_path / "pre"
    vidmask("pretrain", f"data.corpus={tiny_set}", *TINY, "model.pool=segments", "model.pool_segments=2",
            "train.steps=1", f"run_dir={pre}")
    cfg = load_config("configs/finetune/mascot.yaml", [f"finetune.init={pre}", f"data.corpus={tiny_set}", *TINY])
    changes = resolve_init(cfg)
    assert cfg.model.pool == "mean" and cfg.model.dim == 32
    assert any(c.startswith("model.pool: kept mean") for c in changes)
    model = init_model(cfg, "cpu")
    saved = ckpt.read_weights(pre)
    assert "model.order_proj.weight" in saved
    for k, v in model.state_dict().items():  # every weight the model has comes from the run
        assert torch.equal(v, saved[f"model.{k}"]), k
    plain = load_config(pre / "config.yaml", ["finetune.task=retrieval"])  # any other fine-tune keeps the head
    assert build_model(plain).order_proj is not None
    with pytest.raises(ValueError, match="order_proj"):  # and a model without one still refuses it
        ckpt.load_model_weights(build_model(cfg), pre)
