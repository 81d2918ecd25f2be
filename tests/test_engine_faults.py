"""The runner under faults: a loss that becomes NaN, a resume with another world size, a failed start."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from test_train import TINY
from vidmask.cli import main
from vidmask.train import checkpoint as ckpt


def nan_from_third_step(monkeypatch) -> None:
    """The contrastive loss turns NaN from its third call on (the update of step index 2)."""
    import vidmask.objectives.vtc as vtc

    real, calls = vtc.vtc_loss, [0]

    def exploding(*args, **kwargs):
        calls[0] += 1
        out = real(*args, **kwargs)
        return {"vtc_loss": out["vtc_loss"] * float("nan")} if calls[0] >= 3 else out

    monkeypatch.setattr(vtc, "vtc_loss", exploding)


def test_non_finite_loss_stops_naming_the_step_and_checkpoint(tiny_set, tmp_path, monkeypatch, capsys):
    nan_from_third_step(monkeypatch)
    run = tmp_path / "nan"
    code = main(["pretrain", f"data.corpus={tiny_set}", *TINY, "data.test_anno=", "train.steps=6",
                 "train.ckpt_every=1", f"run_dir={run}"])
    err = capsys.readouterr().err
    assert code == 2
    assert "step 2: the loss or its gradient is not finite" in err
    assert f"the last good checkpoint is {run / 'checkpoints' / 'step_000002'}" in err
    # the update was not applied: the weights on disk are the last good ones
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_000002"


def test_resume_with_another_world_size_is_refused(tiny_set, tmp_path, capsys):
    run = tmp_path / "r"
    assert main(["pretrain", f"data.corpus={tiny_set}", *TINY, "data.test_anno=", "train.steps=2",
                 f"run_dir={run}"]) == 0
    latest = ckpt.latest_checkpoint(run / "checkpoints")
    state = ckpt.load_state(latest)
    state["world_size"] = 4  # as if trained with 4 processes
    torch.save(state, latest / "state.pt")
    capsys.readouterr()
    assert main(["pretrain", "--resume", str(run), "train.steps=4"]) == 2
    err = capsys.readouterr().err
    assert "trained with 4 processes and is resumed with 1" in err


def test_a_failed_start_leaves_no_run_folder(tiny_set, tmp_path, capsys):
    run = tmp_path / "never"
    code = main(["pretrain", f"data.corpus={tiny_set}", *TINY, "data.train_anno=missing.json", f"run_dir={run}"])
    assert code == 2 and "missing.json" in capsys.readouterr().err
    assert not run.exists()


def test_evaluation_with_workers_names_a_bad_file_in_one_line(tiny_set, tmp_path, capsys):
    import shutil

    data = tmp_path / "set"
    shutil.copytree(tiny_set, data)
    (data / "videos" / "blue_up.mp4").write_bytes(b"not a video")
    run = tmp_path / "r"
    assert main(["pretrain", f"data.corpus={tiny_set}", *TINY, "data.test_anno=", "train.steps=1",
                 "data.num_workers=2", f"run_dir={run}"]) == 0
    capsys.readouterr()
    assert main(["eval", "retrieval", "--run", str(run), "--anno", str(data / "test.json")]) == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("vidmask eval:")]
    assert len(lines) == 1 and "blue_up.mp4" in lines[0], err
    assert "Traceback" not in err and "DataLoader worker" not in err, err


@pytest.mark.parametrize("fused", [False, True])
def test_on_an_accelerator_the_finite_check_waits_for_a_logging_step(tiny_set, tmp_path, monkeypatch, capsys, fused):
    """Without a host read per step (the GPU setting), the first non-finite step is recorded on the device,
    named at the next logging step, and no checkpoint is written after it; the GPU's fused AdamW also
    skips the non-finite updates themselves (step_unless_nonfinite)."""
    import vidmask.train.run as run_module

    nan_from_third_step(monkeypatch)
    if fused:
        adamw = torch.optim.AdamW
        monkeypatch.setattr(torch.optim, "AdamW", lambda *a, **k: adamw(*a, **{**k, "fused": True}))
    spec = run_module._loop_spec
    monkeypatch.setattr(run_module, "_loop_spec", lambda *a: dataclasses.replace(spec(*a), check_every_step=False))
    run = tmp_path / "gpu-like"
    code = main(["pretrain", f"data.corpus={tiny_set}", *TINY, "data.test_anno=", "train.steps=6",
                 "train.log_every=4", "train.ckpt_every=1", f"run_dir={run}"])
    err = capsys.readouterr().err
    assert code == 2 and "step 2: the loss or its gradient is not finite" in err, err
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_000002"


def test_speed_settings(monkeypatch):
    """train.compile compiles what training runs: every block of the video encoder, called from
    forward_features (a compiled encoder __call__ would never run). Dynamo's eager backend: the graph
    capture without code generation."""
    from vidmask.config import load_config
    from vidmask.train.run import speed_settings
    from vidmask.train.wiring import build_model

    real, calls = torch.compile, []

    def counted_compile(fn, *args, **kwargs):
        compiled = real(fn, backend="eager")

        def call(*a, **k):
            calls.append(fn)
            return compiled(*a, **k)

        return call

    monkeypatch.setattr(torch, "compile", counted_compile)
    cfg = load_config(None, ["model.text.init=random", "model.dim=32", "model.depth=2", "model.heads=2",
                             "train.compile=true"])
    model = build_model(cfg)
    names = [n for n, _ in model.named_parameters()]
    x = torch.randn(2, 2, 4, 32)  # (B, T, N, C): embedded tokens
    with torch.no_grad():
        want = model.visual.forward_features(x).tokens  # (B, T*N, C), before compiling
        speed_settings(cfg, model, torch.device("cpu"))
        got = model.visual.forward_features(x).tokens  # (B, T*N, C)
    assert [n for n, _ in model.named_parameters()] == names
    assert len(calls) == 2  # each of the 2 blocks ran through its compiled call
    assert torch.allclose(got, want, atol=1e-6)


def test_a_fused_optimizer_skips_a_non_finite_update_without_a_host_read():
    """The GPU setting (fused AdamW, no check per step): a non-finite gradient leaves the weights, the
    moments and the step count as they were; a finite one steps exactly as optimizer.step()."""
    from vidmask.train.engine import step_unless_nonfinite

    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(5))
    q = torch.nn.Parameter(p.detach().clone())
    fused = torch.optim.AdamW([p], lr=0.1, weight_decay=0.05, fused=True)
    plain = torch.optim.AdamW([q], lr=0.1, weight_decay=0.05, fused=True)
    for grad in (torch.randn(5), torch.tensor([1.0, float("nan"), 0.0, 1.0, 2.0]), torch.randn(5)):
        before = p.detach().clone(), {k: v.clone() for k, v in fused.state[p].items()}
        p.grad, q.grad = grad.clone(), grad.clone()
        norm = torch.nn.utils.clip_grad_norm_([p], float("inf"))
        step_unless_nonfinite(fused, norm)
        assert not hasattr(fused, "found_inf")
        if torch.isfinite(grad).all():
            plain.step()
            assert torch.equal(p, q)
        else:  # skipped: nothing moved, also not by weight decay
            assert torch.equal(p.detach(), before[0])
            assert all(torch.equal(fused.state[p][k], v) for k, v in before[1].items())
    assert int(fused.state[p]["step"]) == 2 and int(plain.state[q]["step"]) == 2
