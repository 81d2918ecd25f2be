"""Run a test's worker on a few gloo processes on this machine (tests only).

    out = run_ranks(worker, *args)   # worker(rank, world, *args, out) on 2 processes; out: what they wrote

Each process joins a gloo group on a free local port, runs ``worker``, waits at a barrier for the
others, leaves the group and ends with ``os._exit(0)``. The last step skips the interpreter's
teardown: there, gloo's background threads have once aborted a rank that had finished its work
("terminate called without an active exception", SIGABRT), failing a test whose results were
all written. A worker that raises still fails the test with its traceback.
"""

from __future__ import annotations

import os
import socket
import sys

import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, worker, args: tuple, out, barrier: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    worker(rank, world, *args, out)
    if barrier:
        dist.barrier()
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # everything is written to `out` (the manager's dict answers each write): skip the teardown


def run_ranks(worker, *args, world: int = 2, barrier: bool = True) -> dict:
    """``worker(rank, world, *args, out)`` on ``world`` spawned processes in one gloo group; returns ``out``, the
    dict the workers wrote into, as a plain dict. ``worker`` must be a module-level function (it is pickled).
    ``barrier=False``: each rank ends as soon as its worker returns, without waiting for the others or leaving
    the group (for a test where one rank gives up on another)."""
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_rank, args=(world, free_port(), worker, args, out, barrier), nprocs=world, join=True)
        return dict(out)
