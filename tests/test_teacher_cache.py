"""The teacher cache: per-frame teacher features looked up per batch give what the teacher computes."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import torch

from vidmask.data import VideoTextDataset, collate_video_text, load_annotations
from vidmask.teachers import build_teacher
from vidmask.teachers.cache import TeacherCache, cache_key, cached_or_built

from test_train import TINY, vidmask


@pytest.fixture(scope="module")
def clip_teacher(tiny_clip_dir):
    return build_teacher("hf-clip", path=str(tiny_clip_dir))


def batch_of(items, size, seed=3, n=6):
    ds = VideoTextDataset(items, num_frames=4, size=size, train=True, seed=seed)
    return collate_video_text([ds[i] for i in range(n)])


@pytest.mark.parametrize("name", ["hf-clip", "lit-effnet"])
def test_cached_features_give_the_teachers_output(name, tiny_set, tiny_clip_dir):
    torch.manual_seed(0)
    teacher = build_teacher(name, **({"path": str(tiny_clip_dir)} if name == "hf-clip" else {}))
    items = load_annotations(tiny_set / "train.json")
    cache = TeacherCache.build(teacher, items, size=64, batch_frames=20)  # batches cut across videos
    assert len(cache) == len(items) and int(cache.counts.sum()) == 8 * len(items)
    batch = batch_of(items, 64)  # random frames of each clip ("rand" sampling)
    assert batch["frame_ids"].shape == (6, 4) and len(set(batch["frame_ids"].flatten().tolist())) > 4
    for grid in (4, 8):  # the teacher's own grid and a resampled one
        live = teacher(batch["video"], grid=grid)
        cached = teacher.from_frames(cache.lookup(batch["index"], batch["frame_ids"]), grid)
        for field in ("tokens", "attn", "video"):
            torch.testing.assert_close(getattr(cached, field), getattr(live, field), rtol=1e-4, atol=1e-5)


def test_save_load_and_what_the_key_covers(tiny_set, tmp_path, clip_teacher, tiny_clip_dir):
    items = load_annotations(tiny_set / "train.json")
    cache = TeacherCache.build(clip_teacher, items[:3], size=64)
    back = TeacherCache.load(cache.save(tmp_path / "c.safetensors"))
    assert back.meta["frames"] == 24 and torch.equal(back.counts, cache.counts)
    for k in cache.fields:
        assert torch.equal(back.fields[k], cache.fields[k])
    assert not list(tmp_path.glob("*.tmp*"))  # written under a temporary name, then renamed
    key = cache_key("hf-clip", tiny_clip_dir, items, 64)
    assert key == cache_key("hf-clip", tiny_clip_dir, items, 64)
    assert key != cache_key("hf-clip", tiny_clip_dir, items, 32)  # frame size
    assert key != cache_key("hf-clip", tiny_clip_dir, items[:-1], 64)  # video list
    from vidmask.data import video as video_reader

    with pytest.MonkeyPatch.context() as m:
        m.setattr(video_reader, "READER_VERSION", video_reader.READER_VERSION + 1)
        assert key != cache_key("hf-clip", tiny_clip_dir, items, 64)  # the reader decodes differently
    other = tmp_path / "clip2"
    shutil.copytree(tiny_clip_dir, other)
    assert key == cache_key("hf-clip", other, items, 64)  # same bytes, other folder
    (other / "config.json").write_text((other / "config.json").read_text() + " ")
    assert key != cache_key("hf-clip", other, items, 64)  # the teacher's files changed
    with pytest.raises(ValueError, match="not a vidmask teacher cache"):
        from safetensors.torch import save_file

        save_file({"x": torch.zeros(1)}, str(tmp_path / "junk.safetensors"))
        TeacherCache.load(tmp_path / "junk.safetensors")


def test_unreadable_video_is_skipped_and_never_served(tiny_set, tmp_path, clip_teacher):
    data = tmp_path / "data"
    shutil.copytree(tiny_set, data)
    items = load_annotations(data / "train.json")
    Path(items[1].path).write_bytes(b"not a video")
    cache = TeacherCache.build(clip_teacher, items[:3], size=64)
    assert cache.counts.tolist() == [8, 0, 8]
    with pytest.raises(KeyError, match="video 1"):
        cache.lookup(torch.tensor([0, 1]), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(IndexError):
        cache.lookup(torch.tensor([3]), torch.zeros(1, 4, dtype=torch.long))
    # frame ids past a video's end (a decoder that ran short) give its last frame
    last = cache.lookup(torch.tensor([2]), torch.full((1, 1), 99)).tokens
    assert torch.equal(last[0, 0], cache.fields["tokens"][15])


def test_cached_or_built_builds_once(tiny_set, tmp_path, clip_teacher, tiny_clip_dir):
    items = load_annotations(tiny_set / "train.json")[:2]
    with pytest.raises(FileNotFoundError, match="was not built"):
        cached_or_built(tmp_path, clip_teacher, tiny_clip_dir, items, 64, build=False)
    cached_or_built(tmp_path, clip_teacher, tiny_clip_dir, items, 64)
    (path,) = tmp_path.glob("hf-clip-64px-*.safetensors")
    stamp = path.stat().st_mtime_ns
    cached_or_built(tmp_path, clip_teacher, tiny_clip_dir, items, 64)
    assert path.stat().st_mtime_ns == stamp  # reused, not rebuilt


def first_losses(run: Path) -> dict[str, float]:
    with (run / "metrics.csv").open() as f:
        row = next(r for r in csv.DictReader(f) if r.get("align_loss"))
    return {k: float(v) for k, v in row.items() if k.endswith("_loss") and v}


def test_pretraining_with_the_cache_matches_the_live_teacher(tiny_set, tiny_clip_dir, tmp_path):
    common = [f"data.corpus={tiny_set}", *TINY, "data.size=64", "data.test_anno=", "train.steps=2",
              "teacher.name=hf-clip", f"teacher.path={tiny_clip_dir}", "mask.strategy=umt", "mask.ratio=0.5",
              "loss.align=1.0", "loss.relevance=1.0"]
    vidmask("pretrain", *common, f"run_dir={tmp_path / 'live'}")
    vidmask("pretrain", *common, f"teacher.cache={tmp_path / 'cache'}", f"run_dir={tmp_path / 'cached'}")
    assert len(list((tmp_path / "cache").glob("hf-clip-64px-*.safetensors"))) == 1
    live, cached = first_losses(tmp_path / "live"), first_losses(tmp_path / "cached")
    assert set(live) == set(cached) >= {"vtc_loss", "align_loss", "relevance_loss"}
    for k in live:
        assert cached[k] == pytest.approx(live[k], rel=1e-4, abs=1e-5), k
    p = vidmask("pretrain", *common, f"teacher.cache={tmp_path / 'cache'}", "data.hflip_p=0.5", check=False)
    assert p.returncode != 0 and "teacher.cache" in p.stderr and "data.hflip_p" in p.stderr


def test_teacher_cache_command_prebuilds_what_pretraining_reads(tiny_set, tiny_clip_dir, tmp_path):
    args = [f"data.corpus={tiny_set}", *TINY, "data.size=64", "teacher.name=hf-clip", f"teacher.path={tiny_clip_dir}",
            f"teacher.cache={tmp_path / 'cache'}", "loss.align=1.0"]
    p = vidmask("teacher", "cache", *args)
    assert "16 videos, 128 frames" in p.stdout
    (path,) = (tmp_path / "cache").glob("*.safetensors")
    stamp = path.stat().st_mtime_ns
    vidmask("pretrain", *args, "data.test_anno=", "train.steps=1", f"run_dir={tmp_path / 'run'}")
    assert path.stat().st_mtime_ns == stamp  # pretraining found it and did not rebuild it
    p = vidmask("teacher", "cache", f"data.corpus={tiny_set}", check=False)
    assert p.returncode == 2 and "teacher.cache" in p.stderr


def test_two_processes_build_the_cache_once_and_both_read_it(tiny_set, tiny_clip_dir, tmp_path):
    """Under torchrun rank 0 builds the cache while rank 1 waits at a barrier, then both train from it."""
    import json
    import os
    import subprocess
    import sys

    from test_train import free_port

    run, cache = tmp_path / "ddp", tmp_path / "cache"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", "-m", "vidmask", "pretrain", f"data.corpus={tiny_set}", *TINY,
           "data.size=64", "data.test_anno=", "train.steps=2", "train.device=cpu", f"run_dir={run}",
           "teacher.name=hf-clip", f"teacher.path={tiny_clip_dir}", f"teacher.cache={cache}",
           "mask.strategy=umt", "mask.ratio=0.5", "loss.align=1.0"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stdout + p.stderr
    assert json.loads((run / "run.json").read_text())["world_size"] == 2
    assert len(list(cache.glob("*.safetensors"))) == 1 and not list(cache.glob("*.tmp*"))
    assert "align_loss" in first_losses(run)
