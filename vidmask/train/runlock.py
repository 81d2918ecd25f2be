"""One trainer per run folder: an advisory lock held for the whole run.

Two trainers writing one folder interleave their checkpoints, metrics and
logs, and a ``--resume`` of either continues from the other's state: a
second ``vidmask pretrain run_dir=X`` started while the first still sets up
(a bench restarted, a job submitted twice) looks like a fresh run to both.
Rank 0 takes an exclusive ``flock`` on ``RUN/.lock`` and keeps it until the
run returns; the kernel drops it when the process dies, even by SIGKILL, so
a killed run never leaves a stale lock behind and ``--resume`` works at
once. The file also names its holder (host, pid, start time) for the error
a second trainer gets. ``flock`` is local to a machine on some network file
systems; there it guards against the common case (the same machine) only.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

LOCK_NAME = ".lock"


class RunLock:
    """The held lock of one run folder; :meth:`release` (or the process's end) frees it."""

    def __init__(self, path: Path, fd: int):
        self.path, self._fd = path, fd

    def release(self) -> None:
        if self._fd >= 0:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = -1


def acquire(run_dir: Path) -> tuple[RunLock | None, str]:
    """(the lock, "") when this process now holds ``run_dir``'s lock, else (None, why: who holds it)."""
    path = Path(run_dir) / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = _read_holder(fd)
        os.close(fd)
        return None, (f"run folder {run_dir} is in use by another vidmask process ({holder}): wait for it to "
                      "finish (or stop it; SIGTERM saves a checkpoint), or pick another run_dir")
    me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(me).encode(), 0)
    return RunLock(path, fd), ""


def _read_holder(fd: int) -> str:
    try:
        who = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        return f"pid {who['pid']} on {who['host']}, started {who['started']}"
    except (OSError, ValueError, KeyError):
        return "holder unknown"
