"""Checkpoints under faults: a full disk while writing, a damaged file, a pointer to nothing."""

from __future__ import annotations

import errno

import pytest
import torch

from vidmask.train import checkpoint as ckpt


def module(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Linear(4, 3)


def save(ckpt_dir, step: int, seed: int):
    m = module(seed)
    opt = torch.optim.AdamW(m.parameters())
    return ckpt.save_checkpoint(ckpt_dir, step, m, ckpt.trainer_state(step, opt)), m


def test_disk_full_during_a_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    d = tmp_path / "checkpoints"
    save(d, 1, seed=1)

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt, "save_file", full_disk)
    with pytest.raises(ckpt.CheckpointWriteError, match=r"step 2 .*No space left on device.*step_000001\) is intact"):
        save(d, 2, seed=2)
    monkeypatch.undo()
    assert not (d / "step_000002.tmp").exists() and not (d / "step_000002").exists()
    m = module(99)
    path, state = ckpt.load_latest(d, m)
    assert path.name == "step_000001" and state["step"] == 1
    assert torch.equal(m.weight, module(1).weight)


def test_a_truncated_file_falls_back_to_the_checkpoint_before(tmp_path):
    d = tmp_path / "checkpoints"
    save(d, 1, seed=1)
    save(d, 2, seed=2)
    for damaged in ("state.pt", "model.safetensors"):
        f = d / "step_000002" / damaged
        good = f.read_bytes()
        f.write_bytes(good[: len(good) // 2])  # a complete-looking folder holding half a file
        m = module(99)
        path, state = ckpt.load_latest(d, m)
        assert path.name == "step_000001" and state["step"] == 1, damaged
        assert torch.equal(m.weight, module(1).weight)
        f.write_bytes(good)


def test_latest_naming_a_missing_checkpoint(tmp_path):
    d = tmp_path / "checkpoints"
    save(d, 1, seed=1)
    (d / "latest").write_text("step_000007\n")  # e.g. the folder was removed by hand
    assert ckpt.latest_checkpoint(d).name == "step_000001"  # the newest complete one, with a warning
    (d / "step_000001" / "state.pt").unlink()
    with pytest.raises(FileNotFoundError, match="delete the folder .*checkpoints to start the run over"):
        ckpt.latest_checkpoint(d)


def test_every_loaded_file_is_data(tmp_path):
    """state.pt loads with weights_only=True: a pickle that would run code is refused."""
    d = tmp_path / "checkpoints"
    path, _ = save(d, 1, seed=1)

    class Payload:
        def __reduce__(self):
            return (print, ("this would have run",))

    torch.save({"step": 1, "evil": Payload()}, path / "state.pt")
    with pytest.raises(Exception, match="[Ww]eights only load failed|Unsupported global"):
        ckpt.load_state(path)
