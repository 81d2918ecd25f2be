"""Every job under two gloo processes, and every rank taking the same decision at the same step.

`tests/helpers/ddp_worker.py` runs the real CLI under torchrun and makes one
rank misbehave on purpose (its clock ahead, only unreadable samples, an
error). Each case must end the same way on both ranks, with the message, long
before the collective timeout (`train.dist_timeout_min`, 30 minutes here):
the subprocess limit of a few minutes is what would catch a rank left waiting.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from test_train import TINY, free_port

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "helpers" / "ddp_worker.py"


def torchrun(fault: str, rank: int, *args: str, nproc: int = 2) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", str(WORKER), fault, str(rank), *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def errors(stderr: str) -> list[str]:
    """Each rank's one-line CLI error. The ranks write to one pipe, so a progress bar, or the other rank's
    message before its newline, may share a line with it: each message runs to the next one or a newline."""
    return re.findall(r"vidmask pretrain: (.*?)(?=vidmask pretrain: |\n|$)", stderr)


def steps_logged(run: Path) -> list[int]:
    with (run / "metrics.csv").open() as f:
        return [int(r["step"]) for r in csv.DictReader(f) if r.get("loss")]


@pytest.mark.slow
@pytest.mark.parametrize("task,result", [("retrieval", "eval_retrieval.json"), ("qa", "eval_qa.json"),
                                         ("caption", "eval_caption.json")])
def test_finetune_task_under_two_processes(task, result, tiny_set, tmp_path):
    run = tmp_path / task
    test = "test.json" if task == "retrieval" else f"test_{task}.json"
    p = torchrun("none", 0, "finetune", task, f"data.corpus={tiny_set}", *TINY, f"data.test_anno={test}",
                 "train.batch_size=2", "train.steps=4", "train.device=cpu", f"run_dir={run}")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Expected to have finished reduction" not in p.stderr
    assert json.loads((run / "run.json").read_text())["world_size"] == 2
    assert (run / result).is_file() and steps_logged(run)[-1] == 4
    # the two ranks each evaluated half of the clips: one process evaluating all of them agrees
    out = tmp_path / "one.json"
    one = subprocess.run([sys.executable, "-m", "vidmask", "eval", task, "--run", str(run), "--json", str(out)],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert one.returncode == 0, one.stderr
    shared, alone = json.loads((run / result).read_text()), json.loads(out.read_text())
    for key in ("t2v", "v2t", "acc", "CIDEr", "samples"):
        if key in alone:
            assert shared[key] == alone[key], key


@pytest.mark.slow
def test_mascot_under_two_processes(tiny_set, tmp_path):
    """MASCOT's WTI contrast gathers token sets from both ranks; the run and its evaluation agree with one process."""
    run = tmp_path / "mascot"
    p = torchrun("none", 0, "finetune", "retrieval", "--config", "configs/finetune/mascot.yaml",
                 f"data.corpus={tiny_set}", *TINY, "data.test_anno=test.json", "finetune.mascot.temporal_heads=2",
                 "train.batch_size=2", "train.steps=3", "train.device=cpu", f"run_dir={run}")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Expected to have finished reduction" not in p.stderr  # every parameter received a gradient
    assert steps_logged(run)[-1] == 3
    out = tmp_path / "one.json"
    one = subprocess.run([sys.executable, "-m", "vidmask", "eval", "retrieval", "--run", str(run), "--json", str(out)],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert one.returncode == 0, one.stderr
    assert json.loads((run / "eval_retrieval.json").read_text())["t2v"] == json.loads(out.read_text())["t2v"]


@pytest.mark.slow
def test_time_limit_is_rank_zeros_clock(tiny_set, tmp_path):
    common = [f"data.corpus={tiny_set}", *TINY, "data.test_anno=", "train.batch_size=2", "train.steps=6",
              "train.device=cpu", "train.time_limit_min=30", "train.ckpt_every=100"]
    # rank 1's clock is a day ahead: rank 0's clock decides, the run completes on both ranks
    ahead1 = tmp_path / "ahead1"
    p = torchrun("clock", 1, "pretrain", *common, f"run_dir={ahead1}")
    assert p.returncode == 0, p.stdout + p.stderr
    assert steps_logged(ahead1)[-1] == 6
    # rank 0's clock is past the limit: both ranks stop at the first step boundary, with a checkpoint
    ahead0 = tmp_path / "ahead0"
    p = torchrun("clock", 0, "pretrain", *common, f"run_dir={ahead0}")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "by train.time_limit_min" in (ahead0 / "log.txt").read_text()
    assert (ahead0 / "checkpoints" / "latest").read_text().strip() == "step_000001"


@pytest.mark.slow
def test_one_rank_with_only_bad_samples(tiny_set, tmp_path):
    common = [f"data.corpus={tiny_set}", *TINY, "data.test_anno=", "train.batch_size=2", "train.device=cpu",
              "train.ckpt_every=100"]
    # the share is judged on both ranks' samples: 50 % > 5 %, and both stop at the same step with the message
    p = torchrun("bad", 1, "pretrain", *common, "train.steps=60", f"run_dir={tmp_path / 'capped'}")
    assert p.returncode != 0
    lines = errors(p.stderr)
    assert len(lines) == 2 and all("data.max_bad_share" in ln for ln in lines), p.stderr
    # the same verdict from the same counts: both ranks name the same totals
    assert lines[0].split("(")[0] == lines[1].split("(")[0] == "50 of 100 training samples were unreadable "
    # allowed: every step has a rank with nothing to learn from, so every rank skips it together
    ok = tmp_path / "ok"
    p = torchrun("bad", 1, "pretrain", *common, "train.steps=4", "data.max_bad_share=0.9", f"run_dir={ok}")
    assert p.returncode == 0, p.stdout + p.stderr
    assert (ok / "checkpoints" / "latest").read_text().strip() == "step_000004"


@pytest.mark.slow
def test_one_rank_raising_stops_both(tiny_set, tmp_path):
    p = torchrun("raise", 1, "pretrain", f"data.corpus={tiny_set}", *TINY, "data.test_anno=", "train.batch_size=2",
                 "train.steps=8", "train.device=cpu", f"run_dir={tmp_path / 'r'}")
    assert p.returncode != 0
    lines = errors(p.stderr)
    assert len(lines) == 2, p.stderr
    for line in lines:
        assert "step 2: rank 1 of 2: ValueError: simulated failure while preparing the batch" in line


@pytest.mark.slow
def test_two_nodes_through_c10d_rendezvous(tiny_set, tmp_path):
    """Two 'machines' of one process each, joined by the c10d rendezvous on loopback (no fixed address
    in any file: the endpoint is an argument, as in the README's multi-node launch)."""
    run, port = tmp_path / "nodes", free_port()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
           "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=vidmask-test",
           "-m", "vidmask", "pretrain", f"data.corpus={tiny_set}", *TINY, "data.test_anno=", "train.steps=2",
           "train.device=cpu", f"run_dir={run}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    nodes = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
             for _ in range(2)]
    outs = [n.communicate(timeout=300) for n in nodes]
    assert all(n.returncode == 0 for n in nodes), outs
    assert json.loads((run / "run.json").read_text())["world_size"] == 2


def test_every_trainable_parameter_gets_a_gradient(tiny_set):
    """What DDP needs without find_unused_parameters, for every recipe and task, in one process."""
    from test_recipes_unchanged import RECIPES
    from test_registries import TINY as TASK_TINY
    from vidmask.config import load_config
    from vidmask.data import VideoTextDataset, collate_video_text
    from vidmask.data.transfer import to_device
    from vidmask.tasks import list_tasks, task_info
    from vidmask.train.run import make_job

    from vidmask.masking import masker_class
    from vidmask.train.distributed import DistInfo
    from vidmask.train.run import fit_text_head

    def recipe(path):
        over = [f"data.corpus={tiny_set}", *TASK_TINY, "data.test_anno=", "teacher.path=", "teacher.cache="]
        cfg = load_config(path, over)
        if masker_class(cfg.mask.strategy).needs_grid:  # stm pools its patch grid twice by 2: side >= 4
            cfg = load_config(path, [*over, "data.size=64"])
        return cfg

    configs = [(p.stem, recipe(p)) for p in RECIPES]
    for name in list_tasks(finetune=True):
        files = task_info(name).files
        test = "test.json" if name == "retrieval" else files[1]
        configs.append((name, load_config(None, [f"data.corpus={tiny_set}", *TASK_TINY, f"finetune.task={name}",
                                                 f"data.train_anno={files[0]}", f"data.test_anno={test}"])))
    for name, cfg in configs:
        torch.manual_seed(0)
        job = make_job(cfg, torch.device("cpu"))
        fit_text_head(job, cfg, DistInfo())  # model.proj_head=whitened: fitted before training starts
        ds = VideoTextDataset(job.items[:4], cfg.data.num_frames, cfg.data.size, train=True)
        batch = job.prepare(to_device(collate_video_text([ds[i] for i in range(4)]), "cpu"))  # uint8 -> float
        losses, _ = job.task(batch, torch.Generator().manual_seed(0))
        sum(losses.values()).backward()
        missing = [n for n, p in job.task.named_parameters() if p.requires_grad and p.grad is None]
        assert not missing, (name, missing)
