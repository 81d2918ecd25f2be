"""The temporal probe: the linear probe itself against known answers, and `vidmask probe` end to end."""

from __future__ import annotations

import json

import pytest
import torch

from vidmask.metrics.probe import probe_accuracy


def test_probe_finds_a_linearly_coded_attribute_and_not_noise():
    g = torch.Generator().manual_seed(0)
    K, n, D = 4, 200, 16
    y = torch.arange(2 * n) % K  # (2n,) balanced labels
    centres = 3.0 * torch.randn(K, D, generator=g)  # (K, D)
    x = centres[y] + torch.randn(2 * n, D, generator=g)  # (2n, D) separable by construction
    assert probe_accuracy(x[:n], y[:n], x[n:], y[n:], K) > 95.0
    noise = torch.randn(2 * n, D, generator=g)  # carries nothing about y
    assert abs(probe_accuracy(noise[:n], y[:n], noise[n:], y[n:], K) - 100.0 / K) < 12.0
    # only the direction the labels live in matters: one informative coordinate among many noisy ones
    x1 = torch.randn(2 * n, D, generator=g)
    x1[:, 3] = y.double().float() * 2.0
    assert probe_accuracy(x1[:n], y[:n], x1[n:], y[n:], K) > 95.0


@pytest.mark.slow
def test_probe_command_on_a_small_corpus(tmp_path):
    from vidmask.cli import main
    from vidmask.corpus import make_corpus

    corpus = make_corpus(tmp_path / "corpus", videos=40, frames=4, size=64, workers=1, seed=3)
    run = tmp_path / "run"
    assert main(["pretrain", f"data.corpus={corpus}", "data.size=64", "data.num_frames=4", "data.num_workers=0",
                 "model.text.init=random", "model.dim=32", "model.depth=2", "model.heads=2", "model.embed_dim=16",
                 "train.batch_size=4", "train.steps=2", "data.test_anno=", f"run_dir={run}"]) == 0
    assert main(["probe", "--run", str(run)]) == 0
    res = json.loads((run / "probe.json").read_text())
    for feature in ("joint", "mean_token"):
        assert set(res[feature]) == {"motion", "colour", "shape"}
        assert all(0.0 <= v <= 100.0 for v in res[feature].values())
    assert res["chance"]["motion"] > 0 and res["train_clips"] > 0 and res["test_clips"] > 0
    assert any(p.name.startswith("events") for p in (run / "tb").iterdir())
    (run / "probe.json").unlink()
    assert main(["eval", "probe", "--run", str(run), "--max-train", "3"]) == 0  # the same command under eval
    assert json.loads((run / "probe.json").read_text())["train_clips"] == min(3, res["train_clips"])
