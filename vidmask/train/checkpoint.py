"""Checkpoints that never leave a half-written state behind.

Layout of ``RUN/checkpoints``::

    step_000200/model.safetensors   weights (safetensors)
    step_000200/state.pt            optimizer, grad scaler, RNG states, step (tensors
                                    and plain containers only: loads with weights_only=True)
    latest                          the name of the newest complete checkpoint

A checkpoint is written into ``step_XXXXXX.tmp`` and renamed when complete;
``latest`` is then replaced atomically. A crash at any point leaves the
previous checkpoint intact and ``latest`` pointing at it.

Weight names follow the task's modules. ``model.safetensors`` records the
naming in its metadata (``vidmask_format``); a file written under an earlier
naming is renamed on load (:data:`RENAMES`), so old runs keep evaluating,
fine-tuning and resuming.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

log = logging.getLogger("vidmask")


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def model_state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    # contiguous CPU copies: safetensors refuses shared or strided storage
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}


# Weight naming of vidmask checkpoints. 1: heads as task attributes (`vtm_head.*`), a learnable
# masker saved twice (`masker.*`, `masker_module.*`), fine-tuning tasks wrapped (`qa.*`, `cap.*`).
# 2: objectives under `objectives.<name>.*`, each module once, tasks unwrapped.
# 3: `stm` is STM's official decoder; the objective vidmask called `stm` before is `stm-guided`.
FORMAT = 3
RENAMES = {  # format 1 prefix -> format 2 prefix ("" drops nothing but the prefix; None drops the key)
    "masker_module.": None,
    "vtm_head.": "objectives.vtm.head.",
    "mlm_head.": "objectives.mlm.head.",
    "align_head.": "objectives.align.head.",
    "relevance_decoder.": "objectives.relevance.decoder.",
    "stm_decoder.": "objectives.stm.decoder.",
    "qa.": "",
    "cap.": "",
}
# format 2 prefix -> format 3 prefix: an `stm` run before format 3 trained vidmask's own variant (its
# masker keeps its `masker.*` names; the run's config.yaml is migrated by vidmask.config.migrate_legacy)
RENAMES_3 = {"objectives.stm.": "objectives.stm-guided."}


def _rename(weights: dict[str, torch.Tensor], renames: dict[str, str | None]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in weights.items():
        for old, new in renames.items():
            if key.startswith(old):
                if new is not None:
                    out[new + key[len(old):]] = value
                break
        else:
            out[key] = value
    return out


def upgrade_names(weights: dict[str, torch.Tensor], fmt: int) -> dict[str, torch.Tensor]:
    """Weights saved under naming ``fmt`` -> today's names (see :data:`RENAMES`, :data:`RENAMES_3`)."""
    if fmt < 2:
        weights = _rename(weights, RENAMES)
    if fmt < 3:
        weights = _rename(weights, RENAMES_3)
    return weights


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The weights of a run, checkpoint or .safetensors file, under today's names."""
    from safetensors import safe_open

    file = resolve_weights(path)
    with safe_open(str(file), "pt") as f:
        fmt = int((f.metadata() or {}).get("vidmask_format", 1))
    if fmt > FORMAT:
        raise ValueError(f"{file} was written by a newer vidmask (weight format {fmt}, this one reads up to "
                         f"{FORMAT}); upgrade vidmask to load it")
    return upgrade_names(load_file(str(file)), fmt)


def checkpoint_name(step: int) -> str:
    """The folder name of step ``step``'s checkpoint: step_000200."""
    return f"step_{step:06d}"


def save_checkpoint(ckpt_dir: Path, step: int, model: torch.nn.Module, state: dict, keep: int = 2) -> Path:
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    name = checkpoint_name(step)
    final = ckpt_dir / name
    tmp = ckpt_dir / (name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        save_file(model_state(model), str(tmp / "model.safetensors"),
                  metadata={"step": str(step), "vidmask_format": str(FORMAT)})
        torch.save(state, tmp / "state.pt")
    except Exception as e:  # OSError, or safetensors' own error type on a full disk
        shutil.rmtree(tmp, ignore_errors=True)
        kept = latest_checkpoint_name(ckpt_dir)
        raise CheckpointWriteError(
            f"could not write the checkpoint of step {step} in {ckpt_dir} ({type(e).__name__}: {e}); "
            + (f"the previous checkpoint ({kept}) is intact and `--resume` continues from it. " if kept else
               "there is no earlier checkpoint. ")
            + "Free disk space (or point run_dir at a larger disk) and resume") from e
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _atomic_write_text(ckpt_dir / "latest", name + "\n")
    # prune old complete checkpoints, newest `keep` stay
    done = sorted(p for p in ckpt_dir.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp"))
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (a full disk, a lost mount); the previous one is intact."""


def latest_checkpoint_name(ckpt_dir: Path) -> str:
    pointer = Path(ckpt_dir) / "latest"
    return pointer.read_text().strip() if pointer.is_file() else ""


def _complete(path: Path) -> bool:
    return (path / "model.safetensors").is_file() and (path / "state.pt").is_file()


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    """The checkpoint ``latest`` names (None without one). When it is missing or incomplete, the
    newest complete one is used instead, with a warning; an error only when none is complete."""
    ckpt_dir = Path(ckpt_dir)
    pointer = ckpt_dir / "latest"
    if not pointer.is_file():
        return None
    path = ckpt_dir / pointer.read_text().strip()
    if _complete(path):
        return path
    others = complete_checkpoints(ckpt_dir)
    if not others:
        raise FileNotFoundError(f"{pointer} names {path.name}, which is incomplete, and no other complete checkpoint "
                                f"is in {ckpt_dir}; delete the folder {ckpt_dir} to start the run over")
    log.warning("%s names %s, which is incomplete; using %s", pointer, path.name, others[-1].name)
    return others[-1]


def complete_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Complete checkpoints in ``ckpt_dir``, oldest first."""
    return sorted(p for p in Path(ckpt_dir).glob("step_*") if p.is_dir() and not p.name.endswith(".tmp")
                  and _complete(p))


def load_latest(ckpt_dir: Path, model: torch.nn.Module) -> tuple[Path, dict]:
    """Load the newest checkpoint that reads whole into ``model``: (its folder, its state.pt).

    A damaged file (truncated weights or state) in the newest one falls back to the one kept
    before it, with a warning naming what was wrong; an error when none can be read."""
    latest = latest_checkpoint(ckpt_dir)
    if latest is None:
        raise FileNotFoundError(f"--resume: no checkpoint in {ckpt_dir}")
    candidates = [latest] + [p for p in reversed(complete_checkpoints(ckpt_dir)) if p != latest]
    problems = []
    for path in candidates:
        try:
            state = load_state(path)
            load_weights(model, path)
            if problems:
                log.warning("resuming from %s instead: %s", path.name, "; ".join(problems))
            return path, state
        except Exception as e:  # a truncated or damaged file: try the checkpoint kept before it
            problems.append(f"{path.name} is unreadable ({type(e).__name__}: {str(e)[:200]})")
    raise FileNotFoundError(f"--resume: no readable checkpoint in {ckpt_dir}: " + "; ".join(problems))


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
    """Load a checkpoint's weights into ``model``; with ``strict``, a mismatch is an error naming
    the missing and unexpected weights. Returns them (empty when everything matched)."""
    weights = read_weights(path)
    result = model.load_state_dict(weights, strict=False)
    bad = list(result.missing_keys) + list(result.unexpected_keys)
    if strict and bad:
        raise _does_not_fit(path, result, " (was it trained with another config?)")
    return bad


def _does_not_fit(path: str | Path, result, why: str) -> ValueError:
    """The error of weights that do not fit a model: their file, the missing and unexpected names, ``why``."""
    return ValueError(f"{resolve_weights(path)} does not fit this model: missing {_few(result.missing_keys)}; "
                      f"unexpected {_few(result.unexpected_keys)}{why}")


def _few(keys: list[str], n: int = 4) -> str:
    if not keys:
        return "nothing"
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def load_model_weights(model: torch.nn.Module, path: str | Path, prefix: str = "model.",
                       leave: tuple[str, ...] = ()) -> None:
    """Load only the dual encoder (keys under `prefix`) from a task checkpoint: what
    evaluation and fine-tuning need, without the pretraining heads or the teacher. Keys starting
    with one of `leave` (after the prefix) are not loaded: a part the new model has no place for
    on purpose; any other key that does not fit is an error."""
    weights = read_weights(path)
    sub = {k[len(prefix):]: v for k, v in weights.items()
           if k.startswith(prefix) and not k[len(prefix):].startswith(leave)}
    if not sub:
        raise ValueError(f"{path}: no weights under {prefix!r}; is it a vidmask checkpoint?")
    result = model.load_state_dict(sub, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise _does_not_fit(path, result, ". It was trained with other model.* settings: pass its run folder "
                            "(whose config.yaml the training commands read the model from) or set the model keys "
                            "of the config.yaml it was trained with")


def load_state(ckpt: Path) -> dict:
    return torch.load(Path(ckpt) / "state.pt", map_location="cpu", weights_only=True)


# ---------------------------------------------------------------- trainer state (state.pt)

def rng_state() -> dict:
    """This process's random state: the CPU generator and, on a GPU, its own device's generator."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()  # the current device only: resumable on other GPU counts
    return state


def rng_states_of_all_ranks() -> list[dict]:
    """Every rank's :func:`rng_state`, in rank order (a collective: every rank calls it)."""
    import torch.distributed as dist

    mine = rng_state()
    if not (dist.is_available() and dist.is_initialized()):
        return [mine]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, mine)
    return out


def trainer_state(step: int, optimizer: torch.optim.Optimizer, scaler=None, bad_samples=None,
                  rng_ranks: list[dict] | None = None, world_size: int = 1, data: dict | None = None) -> dict:
    """What ``state.pt`` holds besides the weights: the step, the optimiser (and fp16 grad scaler),
    each rank's random state, the world size, the bad-sample count and, from a stream whose order
    depends on more than the step (tar shards), its position (``data``: plain numbers and strings).
    Tensors and plain containers only (it loads with ``weights_only=True``)."""
    rng_ranks = rng_ranks or [rng_state()]
    state = {"step": step, "optimizer": optimizer.state_dict(), "rng_cpu": rng_ranks[0]["cpu"],
             "rng_ranks": rng_ranks, "world_size": world_size}
    if bad_samples is not None:
        state["bad_samples"] = bad_samples.state_dict()
    if scaler is not None:
        state["scaler"] = scaler.state_dict()
    if data is not None:
        state["data"] = dict(data)
    return state


def restore_trainer_state(state: dict, optimizer: torch.optim.Optimizer, scaler=None, bad_samples=None,
                          rank: int = 0) -> int:
    """The inverse of :func:`trainer_state` for process ``rank``: restores everything it saved,
    this rank's own random state included; returns the step."""
    optimizer.load_state_dict(state["optimizer"])
    if scaler is not None and "scaler" in state:
        scaler.load_state_dict(state["scaler"])
    ranks = state.get("rng_ranks") or [{"cpu": state["rng_cpu"]}]  # a checkpoint from before: rank 0's state
    mine = ranks[rank] if rank < len(ranks) else ranks[0]
    torch.set_rng_state(mine["cpu"])
    if "cuda" in mine and torch.cuda.is_available():
        torch.cuda.set_rng_state(mine["cuda"])
    if bad_samples is not None:
        bad_samples.load_state_dict(state.get("bad_samples", {}))
    return int(state["step"])
