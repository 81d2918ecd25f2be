"""Process-group set-up and teardown for `torchrun` (NCCL on GPU, gloo on CPU)."""

from __future__ import annotations

import datetime
import gc
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from vidmask.config import ConfigError


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def pick_device(name: str, local_rank: int) -> torch.device:
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("train.device=cuda but no CUDA device is available; use train.device=cpu or auto")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


# Long waits (one rank building a cache) go through a gloo group under NCCL (wait_for_ranks): NCCL's
# watchdog aborts the process when a collective times out, before Python sees an error to explain.
_WAIT_GROUP = None


def init_distributed(device_name: str = "auto", timeout_min: float = 30.0) -> DistInfo:
    """Join the process group torchrun describes in the environment, if any; collectives that wait
    longer than ``timeout_min`` (train.dist_timeout_min) fail instead of hanging."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name, local_rank)
    global _WAIT_GROUP
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        timeout = datetime.timedelta(minutes=timeout_min)
        dist.init_process_group(backend=backend, timeout=timeout)
        if backend == "nccl":  # every rank creates it, at the same point: new_group is collective
            _WAIT_GROUP = dist.new_group(backend="gloo", timeout=timeout)
    return DistInfo(rank=rank, world=world, local_rank=local_rank, device=device)


@dataclass
class StepAgreement:
    """What all ranks decided together about one step."""

    good: int  # readable samples on all ranks
    bad: int  # unreadable samples on all ranks
    empty_ranks: int  # ranks whose batch has no readable sample (then every rank skips the step)
    failure: str  # the message of the lowest rank whose batch preparation raised, or ""
    stop: bool  # some rank was asked to stop (SIGTERM)
    out_of_time: bool  # rank 0's clock passed train.time_limit_min
    sizes: list[int] | None = None  # each rank's readable samples, in rank order (None: one process)


def agree(good: int, bad: int, failure: str, stop: bool, out_of_time: bool) -> StepAgreement:
    """One all-gather of six integers per rank per step (none with a single process): every rank gets
    the same verdict, and every rank's count of readable samples (``sizes``: what the contrastive
    losses' gathers need, so they read nothing more). Only rank 0's ``out_of_time`` counts, so
    ranks whose clocks differ agree."""
    if not (dist.is_available() and dist.is_initialized()):
        return StepAgreement(good, bad, int(good == 0), failure, stop, out_of_time)
    rank, world = dist.get_rank(), dist.get_world_size()
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    mine = [good, bad, int(good == 0), int(bool(failure)), int(stop), int(out_of_time and rank == 0)]
    t = torch.tensor(mine, dtype=torch.int64, device=device)  # (6,)
    every = torch.empty(world * len(mine), dtype=torch.int64, device=device)  # (world*6,): gloo wants it flat
    dist.all_gather_into_tensor(every, t)
    rows = every.view(world, len(mine)).tolist()  # (world, 6): the one host read of the agreement
    total = [sum(col) for col in zip(*rows)]
    message = ""
    if total[3]:  # someone failed: every rank learns the lowest failing rank's message
        messages = [None] * world
        dist.all_gather_object(messages, failure)
        first = next(r for r, m in enumerate(messages) if m)
        message = f"rank {first} of {world}: {messages[first]}"
    return StepAgreement(total[0], total[1], total[2], message, bool(total[4]), bool(total[5]),
                         sizes=[r[0] for r in rows])


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_gather_rows(mine: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Every rank's rows float[b_r,...] (``sizes[r]`` = b_r, known to all) -> all of them in rank order
    float[sum b_r,...] on the CPU of every rank: one all-gather of equal, zero-padded blocks."""
    if not (dist.is_available() and dist.is_initialized()):
        return mine
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    block = torch.zeros(max(sizes), *mine.shape[1:], dtype=mine.dtype, device=device)  # (b_max, ...)
    block[: mine.shape[0]] = mine
    blocks = [torch.empty_like(block) for _ in sizes]
    dist.all_gather(blocks, block)
    return torch.cat([b[:n] for b, n in zip(blocks, sizes)]).cpu()  # (sum b_r, ...)


def wait_for_ranks(what: str, timeout_min: float) -> None:
    """A barrier that, when some rank has not arrived within the process group's time-out
    (train.dist_timeout_min), fails saying what was waited for and which key to raise."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        if dist.get_backend(_WAIT_GROUP) == "gloo":  # gloo: the default group on CPU, the side group under NCCL
            # names the ranks that did not arrive (on rank 0), and raises instead of aborting
            dist.monitored_barrier(group=_WAIT_GROUP, timeout=datetime.timedelta(minutes=timeout_min))
        else:
            dist.barrier()
    except RuntimeError as e:  # time-outs (DistBackendError is a RuntimeError)
        raise RuntimeError(f"rank {dist.get_rank()} waited for the other ranks to finish {what} and gave up "
                           f"(train.dist_timeout_min={timeout_min:g}): another rank failed (see its log) or needs "
                           f"longer; raise train.dist_timeout_min ({e})") from e


def teardown(clean: bool = True) -> None:
    """A clean exit: collect what the run released, barrier, destroy the group.

    On a CPU machine gloo can abort at interpreter exit while tensors that
    took part in collectives are still alive, so the caller lets the model and
    optimiser go out of scope first and this collects them.
    """
    global _WAIT_GROUP
    gc.collect()
    if dist.is_available() and dist.is_initialized():
        if clean:
            dist.barrier()
        dist.destroy_process_group()  # every group, the wait group with it
    _WAIT_GROUP = None


def all_reduce_mean(value: float, info: DistInfo) -> float:
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=info.device if info.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return float(t.item()) / info.world
