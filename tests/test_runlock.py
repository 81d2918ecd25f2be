"""One trainer per run folder (vidmask.train.runlock): a second one is refused, naming the holder; a fresh
start over a run's checkpoints is refused, naming --resume; a killed holder leaves no stale lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from test_train import KILL_COMMON, vidmask

from vidmask.train import runlock


def test_a_held_folder_refuses_a_second_holder_until_released(tmp_path):
    first, why = runlock.acquire(tmp_path)
    assert first is not None and why == ""
    second, why = runlock.acquire(tmp_path)  # flock: a second open file is refused, even in one process
    assert second is None and f"pid {os.getpid()}" in why and str(tmp_path) in why
    first.release()
    again, why = runlock.acquire(tmp_path)
    assert again is not None and why == ""
    again.release()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    code = ("import sys, time; from vidmask.train import runlock; lock, _ = runlock.acquire(sys.argv[1]); "
            "print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    assert runlock.acquire(tmp_path)[0] is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    lock, why = runlock.acquire(tmp_path)
    assert lock is not None, why
    lock.release()


def test_training_refuses_a_folder_in_use(tiny_set, tmp_path):
    run = tmp_path / "busy"
    run.mkdir()
    held, _ = runlock.acquire(run)
    p = vidmask("pretrain", f"data.corpus={tiny_set}", *KILL_COMMON, "train.steps=2", f"run_dir={run}",
                check=False)
    held.release()
    assert p.returncode == 2 and "is in use by another vidmask process" in p.stderr, p.stderr
    assert not (run / "checkpoints").exists()  # nothing written beside the holder


def test_a_fresh_start_over_a_runs_checkpoints_is_refused(tiny_set, tmp_path):
    run = tmp_path / "done"
    vidmask("pretrain", f"data.corpus={tiny_set}", *KILL_COMMON, "train.steps=2", f"run_dir={run}")
    before = (run / "metrics.csv").read_text()
    p = vidmask("pretrain", f"data.corpus={tiny_set}", *KILL_COMMON, "train.steps=4", f"run_dir={run}",
                check=False)
    assert p.returncode == 2 and f"--resume {run}" in p.stderr, p.stderr
    assert (run / "metrics.csv").read_text() == before  # the run is untouched
    vidmask("pretrain", "--resume", str(run), "train.steps=4")  # and continues with --resume
