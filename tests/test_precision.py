"""float32_math: autocast and TF32 off inside the block, both restored after it (also after an error)."""

import pytest
import torch

from vidmask.objectives import vtc_loss
from vidmask.precision import float32_math


@pytest.mark.parametrize("tf32", [True, False])
def test_float32_math_turns_autocast_and_tf32_off_and_restores_them(tf32):
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        a = torch.randn(4, 8)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert (a @ a.T).dtype == torch.bfloat16
            with float32_math("cpu"):
                assert not torch.backends.cuda.matmul.allow_tf32
                assert (a @ a.T).dtype == torch.float32
            assert torch.backends.cuda.matmul.allow_tf32 == tf32 and (a @ a.T).dtype == torch.bfloat16
            with pytest.raises(ValueError), float32_math("cpu"):
                raise ValueError("inside")
            assert torch.backends.cuda.matmul.allow_tf32 == tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def test_vtc_logits_are_float32_under_bf16_autocast():
    """The loss under bf16 autocast equals the float32 loss of the same (bf16-rounded) features."""
    torch.manual_seed(0)
    v = torch.nn.functional.normalize(torch.randn(16, 32), dim=-1).bfloat16().float()
    t = torch.nn.functional.normalize(torch.randn(16, 32), dim=-1).bfloat16().float()
    scale = torch.tensor(100.0)
    want = vtc_loss(v, t, scale)["vtc_loss"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = vtc_loss(v, t, scale)["vtc_loss"]
    assert got.dtype == torch.float32 and torch.equal(got, want)



@pytest.mark.parametrize("native", [True, False])
def test_a_half_precision_the_cpu_lacks_is_warned_of(native, monkeypatch, caplog):
    import logging

    from vidmask.config import Config
    from vidmask.train import engine, run

    assert isinstance(engine.cpu_half_is_native("bf16"), bool) and isinstance(engine.cpu_half_is_native("fp16"), bool)
    asked = []
    monkeypatch.setattr(run, "cpu_half_is_native", lambda p: asked.append(p) or native)
    cfg = Config()
    for precision in ("bf16", "fp16", "fp32"):
        cfg.train.precision = precision
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=run.log.name):
            run.speed_settings(cfg, torch.nn.Linear(2, 2), torch.device("cpu"))
        warned = "set train.precision=fp32" in caplog.text and f"train.precision={precision}" in caplog.text
        assert warned == (precision != "fp32" and not native), (precision, caplog.text)
    assert asked == ["bf16", "fp16"]  # nothing to ask for fp32
