"""WebDataset tar shards: writing, the split across ranks and workers, exact resume, bad members,
missing shards, pipe: URLs, and pretraining from shards through the real CLI with a stop and --resume."""

from __future__ import annotations

import io
import json
import shutil
import signal
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from test_train import TINY
from vidmask.cli import main
from vidmask.config import ConfigError, load_config
from vidmask.data import BadSampleTracker, VideoTextDataset, collate_video_text, load_annotations
from vidmask.data import shards
from vidmask.data.shards import (
    ShardError,
    ShardStream,
    expand_urls,
    open_shards,
    resumed_worker,
    shuffle_order,
    unit_pieces,
    write_shards,
)
from vidmask.data.video import MemoryMedia, decode_sampled
from vidmask.train import checkpoint as ckpt
from vidmask.train import run as runner


@pytest.fixture(scope="module")
def shard_dir(tiny_set, tmp_path_factory) -> Path:
    """The 16 tiny clips as 6 shards of 3, 3, 3, 3, 3 and 1 samples, bytes copied."""
    out = tmp_path_factory.mktemp("shards") / "sh"
    index = write_shards(load_annotations(tiny_set / "train.json"), out, shard_bytes=9000, resize_short=0)
    assert [s["samples"] for s in index["shards"]] == [3, 3, 3, 3, 3, 1]
    return out


def spec(folder: Path) -> str:
    return f"{folder}/{{000000..000005}}.tar"


def stream_of(folder: Path, **kw) -> ShardStream:
    args = dict(batch_size=2, seed=7, rank=0, world=1, num_workers=0, buffer=4)
    args.update(kw)
    return ShardStream(open_shards(spec(folder)), 4, 32, **args)


def epoch_batches(stream: ShardStream, step: int = 0) -> list[dict]:
    """The rank's batches from `step` to the end of its epoch, as the trainer's loader yields them."""
    stream.set_position(step)
    loader = DataLoader(stream, batch_size=stream.batch_size, num_workers=stream.workers if stream.workers > 1 else 0,
                        collate_fn=collate_video_text)
    return list(loader)


def epoch_indices(stream: ShardStream, step: int = 0) -> list[list[int]]:
    """The sample ids of :func:`epoch_batches`."""
    return [b["index"].tolist() for b in epoch_batches(stream, step)]


# ---------------------------------------------------------------- the plan

def test_urls_from_braces_globs_and_lists(shard_dir):
    assert expand_urls("d/{000..002}.tar") == ["d/000.tar", "d/001.tar", "d/002.tar"]
    assert expand_urls("{a,b}/{8..10}.tar") == ["a/8.tar", "a/9.tar", "a/10.tar", "b/8.tar", "b/9.tar", "b/10.tar"]
    assert expand_urls(["x.tar", "pipe:cat y/{0..1}.tar"]) == ["x.tar", "pipe:cat y/0.tar", "pipe:cat y/1.tar"]
    assert expand_urls(f"{shard_dir}/*.tar") == expand_urls(spec(shard_dir))
    with pytest.raises(ValueError, match="named twice"):
        expand_urls(["a.tar", "a.tar"])
    with pytest.raises(FileNotFoundError, match="no shard matches"):
        expand_urls(f"{shard_dir}/nothing*.tar")


def test_shuffle_order_is_a_permutation_within_the_buffer():
    order = shuffle_order(100, 8, (1, 2, 3))
    assert sorted(order.tolist()) == list(range(100)) and order.tolist() != list(range(100))
    assert all(order[t] < t + 8 for t in range(100))  # never ahead of what 8 slots can hold
    assert np.array_equal(order, shuffle_order(100, 8, (1, 2, 3)))
    assert shuffle_order(5, 1, (0,)).tolist() == [0, 1, 2, 3, 4]


def test_units_cover_every_sample_once_with_equal_loads():
    counts = np.array([5, 1, 7, 3, 0, 4], np.int64)
    order = np.array([2, 0, 5, 1, 4, 3])
    for units in (1, 3, 4, 7):
        seen, loads = [], []
        for u in range(units):
            pieces = unit_pieces(counts, order, u, units)
            loads.append(sum(b - a for _, a, b in pieces))
            seen += [(s, m) for s, a, b in pieces for m in range(a, b)]
        assert sorted(seen) == [(s, m) for s in range(6) for m in range(counts[s])]
        assert max(loads) - min(loads) <= 1


def test_resumed_workers_continue_the_round_robin():
    workers, per_worker = 3, 4
    full = [(j % workers, j // workers) for j in range(workers * per_worker)]  # (worker, its batch) of batch j
    for b in range(len(full)):
        plans = [resumed_worker(b, workers, w) for w in range(workers)]
        queues = [[(o, i) for i in range(first, per_worker)] for o, first in plans]
        out = []  # the DataLoader's round robin over the new workers, skipping finished ones
        while any(queues):
            out += [q.pop(0) for q in queues if q]
        assert out == full[b:], b


# ---------------------------------------------------------------- reading

def test_every_sample_once_per_epoch_across_two_ranks_and_two_workers(shard_dir, tiny_set):
    """16 samples, 2 ranks x 2 workers, batches of 2: each epoch sees every sample exactly once,
    in another order, and a sample is what the loose-file dataset gives for the same id."""
    orders = []
    for epoch in (0, 1):
        ids = []
        for rank in (0, 1):
            stream = stream_of(shard_dir, rank=rank, world=2, num_workers=2)
            assert stream.steps_per_epoch == 4
            ids += [i for b in epoch_indices(stream, epoch * stream.steps_per_epoch) for i in b]
        assert sorted(ids) == list(range(16)), epoch
        orders.append(ids)
    assert orders[0] != orders[1]
    loose = VideoTextDataset(load_annotations(tiny_set / "train.json"), 4, 32, train=True, seed=7)
    stream = stream_of(shard_dir)
    for s, _ in zip(stream, range(3)):
        ref = loose[s["index"]]
        assert torch.equal(s["video"], ref["video"]) and s["caption"] == ref["caption"]
        assert torch.equal(s["frame_ids"], ref["frame_ids"])
        # the shard sample names its source video: one video id from either path (vtc / vtm positives)
        assert s["video_key"] == ref["path"]
        assert torch.equal(collate_video_text([s])["video_id"], collate_video_text([ref])["video_id"])


@pytest.mark.parametrize("step", [3, 5, 11])
def test_exact_resume_from_the_middle_of_a_shard(shard_dir, step):
    """Two workers, batches of 2, 8 steps per epoch: resumed at `step` (mid-shard, mid-epoch, on
    either worker), the rank sees exactly the batches of an uninterrupted run from there on."""
    stream = stream_of(shard_dir, num_workers=2)
    spe = stream.steps_per_epoch
    assert spe == 8
    full = epoch_indices(stream, 0) + epoch_indices(stream, spe)
    assert len(full) == 2 * spe
    epoch, batch = divmod(step, spe)
    resumed = epoch_indices(stream_of(shard_dir, num_workers=2), step)
    assert resumed == full[step: (epoch + 1) * spe]
    assert stream.position(step)["epoch"] == epoch and stream.position(step)["batch"] == batch


def test_resume_never_decodes_the_skipped_samples(shard_dir, monkeypatch):
    calls = []

    def counting(source, *args, **kwargs):
        calls.append(source.name)
        return decode_sampled(source, *args, **kwargs)

    monkeypatch.setattr(shards, "decode_sampled", counting)
    stream = stream_of(shard_dir)  # one unit: 8 steps of 2
    full = epoch_indices(stream, 0)
    calls.clear()
    assert epoch_indices(stream, 5) == full[5:]
    assert len(calls) == 3 * 2  # the 3 remaining batches only


def rewrite_shard(path: Path, change) -> None:
    """Rewrite a shard's members through `change(name, data) -> data | None` (None drops it)."""
    with tarfile.open(path) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            data = change(name, data)
            if data is not None:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_bad_members_and_a_truncated_shard_are_skipped_and_counted(shard_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(shard_dir, bad)
    # shard 1 (ids 3-5): a corrupt video, an unreadable json, a sample without its video
    rewrite_shard(bad / "000001.tar", lambda name, data: (
        b"not a video" if name == "000000003.mp4" else b"{oops" if name == "000000004.json"
        else None if name == "000000005.mp4" else data))
    # shard 3 (ids 9-11) cut inside its second sample's video: that one and the next are lost
    with tarfile.open(bad / "000003.tar") as tar:
        cut = tar.getmember("000000010.mp4").offset_data + 100
    (bad / "000003.tar").write_bytes((bad / "000003.tar").read_bytes()[:cut])
    stream = ShardStream(open_shards(spec(bad)), 4, 32, batch_size=1, seed=0, buffer=1)
    batches = [collate_video_text([s]) for s in stream]
    tracker = BadSampleTracker(max_share=0.5, min_samples=100)
    for b in batches:
        tracker.update(len(b["caption"]), b["bad"])
    assert len(batches) == 16 and tracker.seen == 16 and tracker.bad == 5
    reasons = {path.rsplit("/", 1)[-1]: why for path, why in tracker.bad_files.items()}
    assert set(reasons) == {"000001.tar:000000003", "000001.tar:000000004", "000001.tar:000000005",
                            "000003.tar:000000010", "000003.tar:#2"}
    assert "not a readable video" in reasons["000001.tar:000000003"]
    assert "caption" in reasons["000001.tar:000000004"] and "no media member" in reasons["000001.tar:000000005"]
    assert "truncated" in reasons["000003.tar:000000010"] and "truncated" in reasons["000003.tar:#2"]


def test_a_missing_shard_is_named(shard_dir, tmp_path):
    gone = tmp_path / "gone"
    shutil.copytree(shard_dir, gone)
    stream = ShardStream(open_shards(spec(gone)), 4, 32, batch_size=2, num_workers=2, buffer=4)
    (gone / "000002.tar").unlink()
    with pytest.raises(FileNotFoundError, match=r"shard .*000002\.tar not found"):
        open_shards(spec(gone))
    cfg = load_config(None, [f"data.shards={spec(gone)}"])
    from vidmask.train.wiring import training_items

    with pytest.raises(ConfigError, match=r"data\.shards: shard .*000002\.tar not found"):
        training_items(cfg)
    with pytest.raises(ConfigError, match=r"data\.shards: shard .*000009\.tar is not listed in the index"):
        training_items(load_config(None, [f"data.shards={gone}/000009.tar"]))
    # gone after the start: the worker reading it ends its stream with a batch naming the shard
    errors = [b["error"] for b in epoch_batches(stream) if "error" in b]
    assert len(errors) == 1 and errors[0].startswith("shard ") and errors[0].endswith("000002.tar not found")
    # in training, that batch's preparation fails: every rank stops at that step with the message
    cfg = load_config(None, ["train.batch_size=2", "data.num_workers=2", "train.steps=20"])
    steps = list(runner.shard_batch_stream(stream, cfg, runner.DistInfo(), 0))
    step, last = steps[-1]
    assert step == len(steps) - 1 and "000002.tar not found" in last["error"]
    with pytest.raises(ShardError, match="000002.tar not found"):
        runner.Hooks.prepare(None, last)


def test_pipe_urls_read_the_same_samples(shard_dir):
    urls = [f"pipe:cat {p}" for p in sorted(shard_dir.glob("*.tar"))]
    piped = ShardStream(open_shards(urls, str(shard_dir / "shards.json")), 4, 32, batch_size=2, seed=7, buffer=4)
    local = stream_of(shard_dir)
    assert epoch_indices(piped) == epoch_indices(local)
    assert epoch_indices(piped, 5) == epoch_indices(local, 5)  # resumed: a pipe's skipped bytes are read through
    a, b = next(iter(piped)), next(iter(local))
    assert torch.equal(a["video"], b["video"])
    with pytest.raises(ValueError, match="need their index named"):
        open_shards(urls)
    broken = ShardStream(open_shards([f"pipe:cat {shard_dir}/missing/000000.tar"], str(shard_dir / "shards.json")),
                         4, 32, batch_size=1, buffer=1)
    fatal = next(iter(broken))
    assert fatal["fatal"].startswith("shard pipe:cat ")
    assert "000000.tar: the command exited with status 1" in fatal["fatal"]
    with pytest.raises(ShardError, match=r"000000\.tar: the command exited with status 1"):
        next(shards.read_samples(f"pipe:cat {shard_dir}/missing/000000.tar", 0, 1, np.ones(1, bool)))


# ---------------------------------------------------------------- writing

def test_make_resizes_copies_and_leaves_out_bad_entries(tiny_set, tmp_path):
    entries = json.loads((tiny_set / "train.json").read_text())[:3]
    entries.append({"video": "videos/nowhere.mp4", "caption": "a missing file"})
    entries.append({"video": entries[0]["video"], "caption": ""})
    anno = tmp_path / "train.json"
    anno.write_text(json.dumps(entries))
    for short in (0, 16):
        out = tmp_path / f"s{short}"
        assert main(["shards", "make", str(anno), "--out", str(out), "--video-root", str(tiny_set),
                     "--resize-short", str(short), "--shard-size", "1MB"]) == 0
        index = json.loads((out / "shards.json").read_text())
        assert index["samples"] == 3 and index["skipped"] == 2 and len(index["shards"]) == 1
        with tarfile.open(out / "000000.tar") as tar:
            assert tar.getnames()[:2] == ["000000000.mp4", "000000000.json"]
            video = tar.extractfile("000000001.mp4").read()
            meta = json.loads(tar.extractfile("000000001.json").read())
        assert meta["caption"] == entries[1]["caption"] and meta["source"].endswith(entries[1]["video"])
        if short == 0:
            assert video == (tiny_set / entries[1]["video"]).read_bytes()
        else:
            frames, _ = decode_sampled(MemoryMedia("x.mp4", video), 8)
            assert frames.shape[1:3] == (16, 16)
    assert main(["shards", "make", str(anno), "--out", str(tmp_path / "s0"), "--video-root", str(tiny_set)]) == 2


def test_make_can_shuffle_the_entries(tiny_set, tmp_path):
    items = load_annotations(tiny_set / "train.json")
    write_shards(items, tmp_path / "s", shard_bytes=10**6, resize_short=0, shuffle_seed=1)
    with tarfile.open(tmp_path / "s" / "000000.tar") as tar:
        sources = [json.loads(tar.extractfile(m).read())["source"] for m in tar.getmembers()
                   if m.name.endswith(".json")]
    assert sorted(sources) == sorted(str(it.path) for it in items) and sources != [str(it.path) for it in items]


# ---------------------------------------------------------------- training from shards

def pretrain_from_shards(shard_dir: Path, run: Path, monkeypatch, stop_at: int = 0, resume: bool = False):
    """The real CLI in this process; returns the batches (sample ids) of each step it trained."""
    seen: dict[int, list[int]] = {}
    prepare, count = runner.Hooks.prepare, runner.Hooks.count_samples

    def recording(self, batch):
        prepare(self, batch)
        seen[self.trainer.start_step + len(seen)] = batch["index"].tolist()

    def counting(self, good, bad, local_bad):
        count(self, good, bad, local_bad)
        if stop_at and self.trainer.start_step + len(seen) == stop_at:
            self.stop.handle(signal.SIGTERM, None)  # what a scheduler's SIGTERM does

    monkeypatch.setattr(runner.Hooks, "prepare", recording)
    monkeypatch.setattr(runner.Hooks, "count_samples", counting)
    args = (["--resume", str(run)] if resume else
            [f"data.corpus={shard_dir}", *TINY, f"data.shards={spec(shard_dir)}", "data.num_workers=2",
             "data.shuffle_buffer=3", "data.test_anno=", "train.steps=7", f"run_dir={run}"])
    assert main(["pretrain", *args]) == 0
    return seen


def test_pretraining_from_shards_stops_and_resumes_exactly(shard_dir, tmp_path, monkeypatch, capsys):
    """2 workers, batches of 4: 4 steps per epoch. A stop at step 3 (mid-epoch, mid-shard) and --resume
    give the batches, the losses and the final weights of an uninterrupted run."""
    full = pretrain_from_shards(shard_dir, tmp_path / "full", monkeypatch)
    assert sorted(full) == list(range(7))
    assert sorted(i for s in range(4) for i in full[s]) == list(range(16))  # epoch 0: every sample once
    run = tmp_path / "stopped"
    first = pretrain_from_shards(shard_dir, run, monkeypatch, stop_at=3)
    assert sorted(first) == [0, 1, 2, 3]  # step 3's batch was drawn, then the stop came before its update
    state = ckpt.load_state(ckpt.latest_checkpoint(run / "checkpoints"))
    assert state["step"] == 3 and state["data"]["epoch"] == 0 and state["data"]["batch"] == 3
    assert state["data"]["samples"] == 12 and state["data"]["workers"] == 2
    rest = pretrain_from_shards(shard_dir, run, monkeypatch, resume=True)
    assert rest == {s: full[s] for s in range(3, 7)}
    a, b = runner_losses(tmp_path / "full"), runner_losses(run)
    assert sorted(a) == sorted(b)
    for s in a:
        assert b[s] == pytest.approx(a[s], rel=1e-5, abs=1e-6), s
    wa, wb = ckpt.read_weights(tmp_path / "full"), ckpt.read_weights(run)
    for k in wa:
        torch.testing.assert_close(wb[k], wa[k], rtol=1e-5, atol=1e-6)
    # another worker count would read another stream from step 3 on: refused, naming the key
    capsys.readouterr()
    assert main(["pretrain", "--resume", str(run), "data.num_workers=1", "train.steps=8"]) == 2
    assert "data.num_workers: 2 then, 1 now" in capsys.readouterr().err


def runner_losses(run: Path) -> dict[int, float]:
    from test_train import losses

    return losses(run)


def test_relative_shard_patterns_are_rebased_like_other_paths(shard_dir, tmp_path, monkeypatch):
    """A run's config keeps data.shards as given; read from another folder (--resume), a relative pattern
    that names no file there is found where the run was started (run.json `cwd`), as data.corpus is."""
    from vidmask.config import rebase_paths

    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    shutil.copytree(shard_dir, project / "sh")
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(None, ["data.shards=sh/{000000..000005}.tar", "data.shards_index=sh/shards.json"])
    assert sorted(rebase_paths(cfg, project)) == ["data.shards", "data.shards_index"]
    assert cfg.data.shards == f"{project}/sh/{{000000..000005}}.tar"
    assert cfg.data.shards_index == str(project / "sh" / "shards.json")
    assert len(open_shards(cfg.data.shards, cfg.data.shards_index)) == 16
    cfg = load_config(None, ["data.shards=[sh/*.tar, 'pipe:cat sh/000000.tar', /nowhere/x.tar, 'no/{0..1}.tar']"])
    assert rebase_paths(cfg, project) == ["data.shards"]
    # a glob is rebased; a pipe: command runs where it is; absolute and unknown paths stay as written
    assert cfg.data.shards == [f"{project}/sh/*.tar", "pipe:cat sh/000000.tar", "/nowhere/x.tar", "no/{0..1}.tar"]
    (elsewhere / "sh").mkdir()
    shutil.copy(shard_dir / "000000.tar", elsewhere / "sh")
    cfg = load_config(None, ["data.shards=sh/{000000..000005}.tar"])
    assert rebase_paths(cfg, project) == [] and cfg.data.shards == "sh/{000000..000005}.tar"  # found here: kept


def test_a_run_from_relative_shards_resumes_from_another_folder(shard_dir, tmp_path):
    from test_train import losses, vidmask

    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    shutil.copytree(shard_dir, project / "sh")
    elsewhere.mkdir()
    vidmask("pretrain", *TINY, "data.shards=sh/{000000..000005}.tar", "data.shards_index=sh/shards.json",
            "data.test_anno=", "train.steps=2", "run_dir=runs/r", cwd=project)
    run = project / "runs" / "r"
    vidmask("pretrain", "--resume", str(run), "train.steps=3", cwd=elsewhere)
    assert sorted(losses(run)) == [1, 2, 3]
