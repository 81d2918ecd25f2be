"""The training loop: batches in, optimizer steps out. Wiring lives in `pretrain.py`."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn
from tqdm import tqdm

from vidmask.train.schedule import lr_at, step_generator


@dataclass
class LoopSpec:
    total_steps: int
    peak_lr: float
    min_lr: float
    warmup: int
    grad_clip: float
    seed: int
    precision: str
    log_every: int
    ckpt_every: int
    eval_every: int
    time_limit_s: float = 0.0
    params: list = field(default_factory=list)  # parameters to clip


def autocast_ctx(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def train(
    task: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    batches,  # iterable of (step, batch dict) starting at start_step
    start_step: int,
    spec: LoopSpec,
    device: torch.device,
    rank: int,
    on_log: Callable[[int, dict], None],
    on_checkpoint: Callable[[int], None],
    on_eval: Callable[[int], None],
    on_batch: Callable[[dict], None],
    show_progress: bool,
) -> int:
    """Run optimizer steps until `spec.total_steps` (or the time limit); return the last step."""
    task.train()
    t_start = time.time()
    t_window, clips_window = time.time(), 0
    bar = tqdm(total=spec.total_steps, initial=start_step, disable=not show_progress, dynamic_ncols=True, desc="pretrain")
    step = start_step
    for step, batch in batches:
        on_batch(batch)  # counts bad samples, may stop the run
        if batch["video"].shape[0] == 0:
            if torch.distributed.is_initialized():
                # the other ranks are already inside this step's collectives
                raise RuntimeError(f"step {step}: every sample of this rank's batch was unreadable (see the log)")
            step += 1  # nothing to learn from: the step passes without an update
            bar.update(1)
            continue
        lr = lr_at(step, spec.total_steps, spec.peak_lr, spec.min_lr, spec.warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr
        # tensors to the device; strings (captions, questions, paths) stay as they are
        inputs = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
        gen = step_generator(spec.seed, step, rank, device)
        with autocast_ctx(device, spec.precision):
            losses, report = task(inputs, gen)
        loss = sum(v for k, v in losses.items() if k.endswith("_loss"))
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(spec.params, spec.grad_clip if spec.grad_clip > 0 else float("inf"))
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        step += 1
        clips_window += inputs["video"].shape[0]
        bar.update(1)
        if step % spec.log_every == 0 or step == spec.total_steps:
            dt = max(time.time() - t_window, 1e-9)
            row = {"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in losses.items()}, **report,
                   "lr": lr, "grad_norm": float(grad_norm), "clips_per_s": clips_window / dt}
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}", clips_s=f"{clips_window / dt:.1f}")
            on_log(step, row)
            t_window, clips_window = time.time(), 0
        if spec.eval_every and step % spec.eval_every == 0 and step < spec.total_steps:
            on_eval(step)
            task.train()
        out_of_time = spec.time_limit_s > 0 and time.time() - t_start > spec.time_limit_s
        if step % spec.ckpt_every == 0 or step == spec.total_steps or out_of_time:
            on_checkpoint(step)
        if out_of_time or step >= spec.total_steps:
            break
    bar.close()
    return step
