"""The training loop: batches in, optimizer steps out. Wiring lives in `run.py`.

With several processes every decision that ends or skips a step is taken by
all ranks together, at the same step: before each step the ranks exchange one
small vector (:func:`vidmask.train.distributed.agree`) saying how many good
and bad samples each holds, whether its batch preparation failed, whether it
was asked to stop (SIGTERM) and, from rank 0's clock alone, whether the time
limit has passed. So an all-bad batch on one rank skips the step everywhere,
the bad-sample share is judged on the samples of all ranks, an error on one
rank stops every rank with its message, and no rank waits in a collective
that another will never enter.

A non-finite gradient norm (identical on all ranks after DDP's all-reduce)
stops the run. On a CPU it is checked every step, before the update is
applied (reading it costs nothing there). On an accelerator the step does not
wait for the host: the first step with a non-finite norm is recorded on the
device and read at the next logging step or checkpoint, whichever comes
first; a checkpoint is never written after such a step, so the last good
checkpoint the message names predates it. Loss and report values likewise
stay tensors until a logging step.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor, nn
from tqdm import tqdm

from vidmask.data.transfer import to_device
from vidmask.data.transforms import CLIP_MEAN, CLIP_STD
from vidmask.objectives.vtc import known_rank_sizes
from vidmask.train.distributed import StepAgreement, agree
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
    stop_at: int = 0  # the last step this part of the schedule runs (train.stop_at); 0 = total_steps
    params: list = field(default_factory=list)  # parameters to clip
    # what the batches' uint8 clips are normalised with on the device (the dataset's transform.mean / std)
    video_mean: tuple[float, ...] = CLIP_MEAN
    video_std: tuple[float, ...] = CLIP_STD
    check_every_step: bool = True  # read the gradient norm each step (CPU); False: at logging steps and checkpoints


class RunStopped(RuntimeError):
    """The run stopped on purpose (an error on some rank, a non-finite loss); the message says why."""


class LoopHooks(Protocol):
    """What the loop calls back into (`vidmask.train.run.Hooks`)."""

    def on_log(self, step: int, row: dict) -> None: ...
    def on_checkpoint(self, step: int) -> None: ...
    def on_eval(self, step: int) -> None: ...
    def prepare(self, batch: dict) -> None: ...  # task fields of a batch; may raise on bad input
    def count_samples(self, good: int, bad: int, local_bad: list) -> None: ...  # may raise TooManyBadSamples
    def stop_requested(self) -> bool: ...  # a SIGTERM arrived on this rank
    def last_checkpoint(self) -> str: ...  # for messages


def cpu_bf16_is_native() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX-512 BF16 or AMX, through oneDNN), where
    bf16 autocast trains faster than float32 (1.2-1.25x for the tiny model here); elsewhere it is
    emulated and far slower (a 256 x 256 matmul 50x, a 2048 x 2048 one 200x float32's time on an
    AVX2-only EPYC, 2026-11-29)."""
    return cpu_half_is_native("bf16")


def cpu_half_is_native(precision: str) -> bool:
    """Whether this CPU multiplies train.precision's half type ("bf16" / "fp16") in hardware
    (AVX-512 BF16 or AMX; AVX-512 FP16 or AMX-FP16, through oneDNN)."""
    probe = {"bf16": "_is_mkldnn_bf16_supported", "fp16": "_is_mkldnn_fp16_supported"}[precision]
    try:
        return bool(getattr(torch.ops.mkldnn, probe)())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The dtype train.precision runs the step in under autocast; None for fp32 (no autocast)."""
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast_ctx(device: torch.device, precision: str):
    dtype = autocast_dtype(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _agree_on_batch(batch: dict, hooks: LoopHooks, out_of_time: bool) -> StepAgreement:
    """Prepare the batch locally, then agree with the other ranks on what this step does."""
    failure = ""
    try:
        hooks.prepare(batch)
    except Exception as e:  # any rank's failure becomes every rank's stop, with its message
        failure = f"{type(e).__name__}: {e}"
    return agree(good=int(batch["video"].shape[0]), bad=len(batch["bad"]), failure=failure,
                 stop=hooks.stop_requested(), out_of_time=out_of_time)


def _nonfinite_message(step: int, loss: float, grad_norm: float, last_checkpoint: str) -> str:
    return (f"step {step}: the loss or its gradient is not finite (loss {loss:.4g}, gradient norm {grad_norm:.4g}). "
            f"Lower train.lr or check the data; the last good checkpoint is {last_checkpoint}")


def _update(task, optimizer, scaler, inputs, spec, step, rank, device, last_checkpoint: str):
    """One forward, backward and optimizer step; returns (loss, named losses, report, grad_norm, lr)."""
    lr = lr_at(step, spec.total_steps, spec.peak_lr, spec.min_lr, spec.warmup)
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)  # a task's new modules may learn faster (param_groups)
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
    if scaler is None and spec.check_every_step and not math.isfinite(float(grad_norm)):
        # every rank holds the same all-reduced gradients, so every rank stops here, before the update
        raise RunStopped(_nonfinite_message(step, float(loss.detach()), float(grad_norm), last_checkpoint)
                         + "; the update was not applied")
    if scaler is not None:
        scaler.step(optimizer)  # fp16: a non-finite gradient skips the step and lowers the scale
        scaler.update()
    elif not spec.check_every_step:
        step_unless_nonfinite(optimizer, grad_norm)  # named at the next logging step (train: check_finite)
    else:
        optimizer.step()
    return loss, losses, report, grad_norm, lr


def step_unless_nonfinite(optimizer: torch.optim.Optimizer, grad_norm: Tensor) -> None:
    """``optimizer.step()``, skipped on the device when ``grad_norm`` is not finite: no host read.

    A fused Adam(W) (the GPU's) takes a ``found_inf`` flag, as fp16's GradScaler gives it: where it
    is 1 the kernel leaves the weights and moments as they are and takes its step count back. Other
    optimizers step as they are (their non-finite updates are still caught at the next logging step,
    and no checkpoint is written after them). Without the skip, NaN weights would reach the next
    step, whose forward can fail first with an unrelated error (``torch.multinomial`` in vtm's
    hard-negative sampling), instead of the message that names the step and the last good checkpoint.
    """
    if not optimizer.defaults.get("fused"):
        optimizer.step()
        return
    optimizer.found_inf = (~torch.isfinite(grad_norm)).to(torch.float32)  # () 1.0 = skip this update
    try:
        optimizer.step()
    finally:
        del optimizer.found_inf


def train(task: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None, batches,
          start_step: int, spec: LoopSpec, device: torch.device, rank: int, hooks: LoopHooks,
          show_progress: bool) -> int:
    """Run optimizer steps until `spec.total_steps` (or `spec.stop_at`), the time limit or a stop request;
    return the last step.

    batches: iterable of (step, batch dict) starting at start_step."""
    task.train()
    t_start = time.time()
    t_window, clips_window = time.time(), 0
    bar = tqdm(total=spec.total_steps, initial=start_step, disable=not show_progress, dynamic_ncols=True,
               desc="train")
    step = saved = start_step  # saved: the step of the newest checkpoint
    first_bad = torch.full((), -1, dtype=torch.long, device=device)  # the first step with a non-finite norm
    last = min(spec.stop_at or spec.total_steps, spec.total_steps)  # a step count: every rank stops there
    if spec.stop_at and start_step >= last:  # resumed at or past train.stop_at: nothing to train
        bar.close()
        return start_step

    def check_finite() -> None:  # reads the device-side record: only at logging steps and checkpoints
        if scaler is None and not spec.check_every_step and int(first_bad) >= 0:
            raise RunStopped(_nonfinite_message(int(first_bad), float("nan"), float("nan"), hooks.last_checkpoint()))

    for step, batch in batches:
        out_of_time = spec.time_limit_s > 0 and time.time() - t_start > spec.time_limit_s
        verdict = _agree_on_batch(batch, hooks, out_of_time)
        if verdict.failure:
            raise RunStopped(f"step {step}: {verdict.failure}")
        if verdict.stop or verdict.out_of_time:
            if step > saved:  # the work since the last checkpoint is kept (not written twice)
                check_finite()
                hooks.on_checkpoint(step)
            break
        hooks.count_samples(verdict.good, verdict.bad, batch["bad"])  # the same totals, the same verdict, everywhere
        updated = not verdict.empty_ranks  # a rank with nothing to learn from: every rank passes the step
        if updated:
            # tensors to the device (asynchronous from pinned memory), the uint8 clips normalised there to
            # float32; strings (captions, questions, paths) stay as they are
            inputs = to_device(batch, device, spec.video_mean, spec.video_std)
            with known_rank_sizes(verdict.sizes):  # the contrastive gathers read no count back
                loss, losses, report, grad_norm, lr = _update(task, optimizer, scaler, inputs, spec, step, rank,
                                                              device, hooks.last_checkpoint())
            if not spec.check_every_step:  # recorded on the device, no host read
                bad = ~torch.isfinite(grad_norm) & (first_bad < 0)
                first_bad = torch.where(bad, torch.full_like(first_bad, step), first_bad)
            clips_window += inputs["video"].shape[0]
        step += 1
        bar.update(1)
        if updated and (step % spec.log_every == 0 or step == last):
            check_finite()
            dt = max(time.time() - t_window, 1e-9)
            row = {"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in losses.items()},
                   **{k: float(v) for k, v in report.items()},  # report values were tensors until now
                   "lr": lr, "grad_norm": float(grad_norm), "clips_per_s": clips_window / dt}
            bar.set_postfix(loss=f"{float(loss.detach()):.3f}", clips_s=f"{clips_window / dt:.1f}")
            hooks.on_log(step, row)
            t_window, clips_window = time.time(), 0
        if spec.eval_every and step % spec.eval_every == 0 and step < spec.total_steps:
            hooks.on_eval(step)
            task.train()
        if step % spec.ckpt_every == 0 or step == last:
            check_finite()  # never a checkpoint of weights a non-finite update touched
            hooks.on_checkpoint(step)
            saved = step
        if step >= last:
            break
    bar.close()
    return step
