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


def test_cpu_slowdown_is_measured_and_a_slow_half_precision_is_warned_of(monkeypatch, caplog):
    import logging
    import math

    from vidmask.config import Config
    from vidmask.precision import cpu_matmul_slowdown
    from vidmask.train import run

    ratio = cpu_matmul_slowdown(torch.bfloat16, size=32, repeats=1)
    assert math.isfinite(ratio) and ratio > 0
    cfg = Config()
    cfg.train.precision = "bf16"
    asked = []
    for measured, warned in ((run.SLOW_CPU_AUTOCAST * 10, True), (1.0, False)):
        monkeypatch.setattr(run, "cpu_matmul_slowdown", lambda dtype, m=measured: asked.append(dtype) or m)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger=run.log.name):
            run.speed_settings(cfg, torch.nn.Linear(2, 2), torch.device("cpu"))
        assert ("set train.precision=fp32" in caplog.text) == warned, caplog.text
    assert asked == [torch.bfloat16, torch.bfloat16]
    cfg.train.precision = "fp32"  # nothing measured for fp32
    run.speed_settings(cfg, torch.nn.Linear(2, 2), torch.device("cpu"))
    assert len(asked) == 2
