"""bench/gpu_check.py runs end to end at toy scale on the CPU (on a GPU it is the same script at full scale)."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def cpu_precision() -> str:
    """bf16 where this CPU multiplies it in hardware, else fp32: on an AVX2-only CPU oneDNN emulates
    bf16, and the lit-effnet teacher's depthwise convolutions under bf16 autocast take minutes there
    (measured on one: 142 s for one clip, against about 2 s for four in float32), which made this file
    half of the suite's 27 minutes."""
    from vidmask.train.engine import cpu_half_is_native

    return "bf16" if cpu_half_is_native("bf16") else "fp32"


@pytest.mark.slow
def test_gpu_check_runs_on_cpu_tiny(tmp_path, monkeypatch):
    gpu_check = load("gpu_check")
    recipes = ["clusterstm", "umt"]  # the masker with the most work and the hf-clip recipe (switched to lit-effnet)
    real = gpu_check.bf16_vs_fp32

    def umt_fails(path, *args):  # one failing row must not lose the others, nor the sections after it
        if path.stem == "umt":
            raise RuntimeError("a planted failure")
        return real(path, *args)

    monkeypatch.setattr(gpu_check, "bf16_vs_fp32", umt_fails)
    out = gpu_check.main(["--device", "cpu", "--tiny", "--steps", "1", "--recipes", *recipes,
                          "--precision", cpu_precision(), "--out", str(tmp_path / "gpu.md")])
    text = out.read_text()
    assert f"timed steps in {cpu_precision()}" in text
    assert text.count("`clusterstm`") == 2  # a timing row and a precision row
    assert "host reads / step (where)" in text
    assert "bench/gpu_check.py" in text  # counted with their sites: on CPU the reference AdamW reads its steps
    assert text.count("`umt`") == 2  # its timing row, and its precision failure named
    assert "- FAILED `umt`: RuntimeError: a planted failure" in text
    assert "| yes |" in text.split("clusterstm masks")[1].split("##")[0]  # CPU masks equal (here trivially)
    smoke = text.split("## CLI smoke run")[1]
    assert "| yes (largest relative difference" in smoke  # the smoke run resumed to the same losses
    assert "still running" not in text


@functools.cache
def load(name: str):
    """A bench script as a module (bench/ is not a package), loaded once per session."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("recipe", ["random", "clusterstm", "stm"])
def test_a_training_step_reads_nothing_back_on_the_accelerator_path(recipe, monkeypatch):
    """Forward and backward of a base recipe (vtc, vtm and mlm, or the teacher terms) with what an
    accelerator takes (mlm's dense projection, the masks' batched paths): no read from the device."""
    import sys

    import torch

    import vidmask.objectives.mlm as mlm
    from vidmask.train.engine import autocast_ctx

    sys.path.insert(0, str(ROOT / "bench"))  # gpu_check imports its neighbours
    gpu_check, masking = load("gpu_check"), load("masking")
    monkeypatch.setattr(mlm, "mlm_loss", functools.partial(mlm.mlm_loss, dense=True))
    precision = cpu_precision()  # the syncs counted do not depend on it; bf16 where it is not emulated
    cfg = gpu_check.recipe_config(ROOT / "configs" / "recipes" / "base" / f"{recipe}.yaml", True, precision)
    task, _, batch = gpu_check.build(cfg, torch.device("cpu"))
    if hasattr(task.masker, "impl"):
        task.masker.impl = "batched"  # the ClusterSTM family's accelerator path
    with masking.OpLog() as log:
        with autocast_ctx(torch.device("cpu"), precision):
            losses, _ = task(batch, torch.Generator().manual_seed(0))
        sum(losses.values()).backward()
    assert log.syncs == 0, log.syncs
