"""The locked, whitened text head (model.proj_head=whitened): the whitening against numpy, its fit
shared across ranks, the buffers a checkpoint carries, the config errors, a pretraining run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from test_train import TINY, vidmask
from vidmask.config import ConfigError, ModelConfig, TextConfig, load_config
from vidmask.models.whiten import (WhitenedHead, caption_moments, fit_whitening, pca_whitening, share_moments,
                                   spread)


def correlated(n: int = 800, width: int = 10, seed: int = 0) -> torch.Tensor:
    """float[n,W]: features with very unequal variances and an offset (an anisotropic sentence space)."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.randn(width, width, generator=g, dtype=torch.float64)  # (W, W)
    scales = torch.logspace(1, -2, width, dtype=torch.float64)  # (W,)
    return (torch.randn(n, width, generator=g, dtype=torch.float64) * scales) @ basis + 3.0  # (n, W)


def test_whitening_against_numpy():
    x = correlated()  # (n, W)
    total, outer = caption_moments(x)
    mean, proj = pca_whitening(total, outer, len(x), dim=6, eps=1e-12)
    assert torch.allclose(mean.double(), x.mean(0), atol=1e-5)
    z = (x.float() - mean) @ proj  # (n, 6)
    assert torch.allclose(torch.cov(z.T.double()), torch.eye(6, dtype=torch.float64), atol=1e-3)
    # the kept directions are numpy's top 6 eigenvectors of the covariance (up to sign)
    values, vectors = np.linalg.eigh(np.cov(x.numpy().T))
    top = vectors[:, ::-1][:, :6]  # (W, 6)
    unit = proj.double().numpy() / np.linalg.norm(proj.double().numpy(), axis=0)  # (W, 6)
    assert np.allclose(np.abs(np.sum(top * unit, axis=0)), 1.0, atol=1e-4)


def test_eps_damps_the_weak_directions_only():
    x = correlated()
    total, outer = caption_moments(x)
    eps = 1e-3
    _, proj = pca_whitening(total, outer, len(x), dim=10, eps=eps)
    var = torch.cov(((x - x.mean(0)) @ proj.double()).T).diagonal()  # (10,)
    values = torch.linalg.eigvalsh(torch.cov(x.T)).flip(0)  # (10,) descending
    assert torch.allclose(var, values / (values + eps * values[0]), atol=1e-3)


def test_same_moments_same_head():
    x = correlated()
    total, outer = caption_moments(x)
    a = pca_whitening(total, outer, len(x), 5, 1e-3)[1]
    b = pca_whitening(total.clone(), outer.clone(), len(x), 5, 1e-3)[1]
    assert torch.equal(a, b)  # the sign convention leaves nothing to chance
    assert (a.gather(0, a.abs().argmax(0).unsqueeze(0)) > 0).all()


def test_ranks_shares_add_up_to_one_ranks_fit():
    captions = [f"caption {i}" for i in range(37)]
    table = correlated(37, 8, seed=1).float()  # (37, 8): one feature per caption
    encode = lambda caps: table[[int(c.split()[1]) for c in caps]]  # noqa: E731
    picks = spread(len(captions), 30)
    assert len(picks) == 30 and picks == sorted(set(picks))
    whole = share_moments(encode, captions, picks, 8, batch_size=7)
    parts = [share_moments(encode, captions, picks, 8, rank=r, world=3, batch_size=4) for r in range(3)]
    assert torch.allclose(sum(p[0] for p in parts), whole[0]) and torch.allclose(sum(p[1] for p in parts), whole[1])
    one, three = WhitenedHead(8, 4), WhitenedHead(8, 4)
    fit_whitening(one, encode, captions, 30, 1e-3)
    # the three ranks' all-reduce, played by summing every rank's share
    sums = iter([sum(p[0] for p in parts), sum(p[1] for p in parts)])
    fit_whitening(three, encode, captions, 30, 1e-3, rank=1, world=3, all_reduce=lambda t: next(sums))
    assert torch.allclose(one.projection, three.projection, atol=1e-5) and int(three.captions) == 30


def test_unfitted_head_refuses_and_the_state_carries_the_fit():
    head = WhitenedHead(8, 4)
    assert list(head.parameters()) == []  # nothing trained on the text side
    with pytest.raises(RuntimeError, match="never fitted"):
        head(torch.randn(2, 8))
    x = correlated(100, 8).float()
    fit_whitening(head, lambda caps: x[[int(c) for c in caps]], [str(i) for i in range(100)], 1000, 1e-3)
    again = WhitenedHead(8, 4)
    again.load_state_dict(head.state_dict())
    assert torch.equal(again(x[:5]), head(x[:5])) and int(again.captions) == 100


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="model.text.trainable_layers"):
        ModelConfig(proj_head="whitened", text=TextConfig(trainable_layers=1))
    with pytest.raises(ConfigError, match="model.proj_head"):
        load_config(None, ["model.proj_head=white"])
    with pytest.raises(ConfigError, match="model.embed_dim=65"):
        WhitenedHead(64, 65)


def test_pretraining_fits_the_head_and_the_checkpoint_carries_it(tiny_set, tmp_path):
    run = tmp_path / "run"
    p = vidmask("pretrain", f"data.corpus={tiny_set}", *TINY, "train.steps=2", "model.proj_head=whitened",
                f"run_dir={run}")
    assert "whitened text head fitted on" in (run / "log.txt").read_text(), p.stderr
    weights = load_file(str(next((run / "checkpoints").glob("step_*/model.safetensors"))))
    assert int(weights["model.text_proj.captions"]) >= 2 and weights["model.text_proj.projection"].abs().sum() > 0
    # an evaluation from the checkpoint uses the fitted head (an unfitted one would refuse)
    vidmask("eval", "retrieval", "--run", str(run))


@pytest.mark.slow
def test_two_ranks_fit_the_head_one_rank_fits(tiny_set, tmp_path):
    from test_ddp import torchrun

    common = [f"data.corpus={tiny_set}", *TINY, "data.test_anno=", "train.batch_size=2", "train.steps=1",
              "train.device=cpu", "model.proj_head=whitened"]
    p = torchrun("none", 0, "pretrain", *common, f"run_dir={tmp_path / 'two'}")
    assert p.returncode == 0, p.stdout + p.stderr
    vidmask("pretrain", *common, f"run_dir={tmp_path / 'one'}")
    fits = [load_file(str(next((tmp_path / run / "checkpoints").glob("step_*/model.safetensors"))))
            for run in ("one", "two")]
    for key in ("model.text_proj.mean", "model.text_proj.projection", "model.text_proj.captions"):
        assert torch.allclose(fits[0][key].double(), fits[1][key].double(), atol=1e-5), key
