"""The runner under faults: a loss that becomes NaN, a resume with another world size, a failed start."""

from __future__ import annotations

import dataclasses

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


def test_on_an_accelerator_the_finite_check_waits_for_a_logging_step(tiny_set, tmp_path, monkeypatch, capsys):
    """Without a host read per step (the GPU setting), the first non-finite step is recorded on the device,
    named at the next logging step, and no checkpoint is written after it."""
    import vidmask.train.run as run_module

    nan_from_third_step(monkeypatch)
    spec = run_module._loop_spec
    monkeypatch.setattr(run_module, "_loop_spec", lambda *a: dataclasses.replace(spec(*a), check_every_step=False))
    run = tmp_path / "gpu-like"
    code = main(["pretrain", f"data.corpus={tiny_set}", *TINY, "data.test_anno=", "train.steps=6",
                 "train.log_every=4", "train.ckpt_every=1", f"run_dir={run}"])
    err = capsys.readouterr().err
    assert code == 2 and "step 2: the loss or its gradient is not finite" in err, err
    assert (run / "checkpoints" / "latest").read_text().strip() == "step_000002"


def test_speed_settings(monkeypatch):
    from vidmask.config import load_config
    from vidmask.train.run import speed_settings
    from vidmask.train.wiring import build_model

    compiled = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: compiled.append(self))
    cfg = load_config(None, ["model.text.init=random", "model.dim=32", "model.depth=1", "model.heads=2",
                             "train.compile=true"])
    model = build_model(cfg)
    names = [n for n, _ in model.named_parameters()]
    speed_settings(cfg, model, torch.device("cpu"))
    assert compiled == [model.visual] and [n for n, _ in model.named_parameters()] == names
