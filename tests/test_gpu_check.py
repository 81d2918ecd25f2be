"""bench/gpu_check.py runs end to end at toy scale on the CPU (on a GPU it is the same script at full scale)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_runs_on_cpu_tiny(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "bench" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    recipes = ["clusterstm", "umt"]  # the masker with the most work and the hf-clip recipe (switched to lit-effnet)
    out = gpu_check.main(["--device", "cpu", "--tiny", "--steps", "1", "--recipes", *recipes,
                          "--out", str(tmp_path / "gpu.md")])
    text = out.read_text()
    for name in recipes:
        assert text.count(f"`{name}`") == 2, name  # a timing row and a precision row
    assert "| yes |" in text.split("clusterstm masks")[1].split("##")[0]  # CPU masks equal (here trivially)
    assert text.rstrip().endswith("| yes |")  # the smoke run resumed to the same losses
