"""Checkpoints that never leave a half-written state behind.

Layout of ``RUN/checkpoints``::

    step_000200/model.safetensors   weights (safetensors)
    step_000200/state.pt            optimizer, grad scaler, RNG states, step (tensors
                                    and plain containers only: loads with weights_only=True)
    latest                          the name of the newest complete checkpoint

A checkpoint is written into ``step_XXXXXX.tmp`` and renamed when complete;
``latest`` is then replaced atomically. A crash at any point leaves the
previous checkpoint intact and ``latest`` pointing at it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def model_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    # contiguous CPU copies: safetensors refuses shared or strided storage
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}


def save_checkpoint(ckpt_dir: Path, step: int, model: torch.nn.Module, state: dict, keep: int = 2) -> Path:
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:06d}"
    final = ckpt_dir / name
    tmp = ckpt_dir / (name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(model_state(model), str(tmp / "model.safetensors"), metadata={"step": str(step)})
    torch.save(state, tmp / "state.pt")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _atomic_write_text(ckpt_dir / "latest", name + "\n")
    # prune old complete checkpoints, newest `keep` stay
    done = sorted(p for p in ckpt_dir.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp"))
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    pointer = Path(ckpt_dir) / "latest"
    if not pointer.is_file():
        return None
    path = Path(ckpt_dir) / pointer.read_text().strip()
    if not (path / "model.safetensors").is_file() or not (path / "state.pt").is_file():
        raise FileNotFoundError(f"{pointer} names {path.name}, which is incomplete; delete {pointer} to start over")
    return path


def resolve_weights(path: str | Path) -> Path:
    """A run folder, a checkpoint folder or a .safetensors file -> the weights file."""
    p = Path(path)
    if p.is_file():
        return p
    if (p / "model.safetensors").is_file():
        return p / "model.safetensors"
    ck = latest_checkpoint(p / "checkpoints") if (p / "checkpoints").is_dir() else None
    if ck is None:
        raise FileNotFoundError(f"{p}: no checkpoint found (expected RUN/checkpoints/latest or model.safetensors)")
    return ck / "model.safetensors"


def load_weights(model: torch.nn.Module, path: str | Path, strict: bool = True) -> list[str]:
    weights = load_file(str(resolve_weights(path)))
    result = model.load_state_dict(weights, strict=strict)
    return list(result.missing_keys) + list(result.unexpected_keys)


def load_model_weights(model: torch.nn.Module, path: str | Path, prefix: str = "model.") -> None:
    """Load only the dual encoder (keys under `prefix`) from a task checkpoint: what
    evaluation and fine-tuning need, without the pretraining heads or the teacher."""
    weights = load_file(str(resolve_weights(path)))
    sub = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
    if not sub:
        raise ValueError(f"{path}: no weights under {prefix!r}; is it a vidmask checkpoint?")
    model.load_state_dict(sub, strict=True)


def load_state(ckpt: Path) -> dict:
    return torch.load(Path(ckpt) / "state.pt", map_location="cpu", weights_only=True)
