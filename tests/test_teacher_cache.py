"""The teacher cache: per-frame teacher features looked up per batch give what the teacher computes.

Stored in float16, so cached outputs match the live teacher to float16 rounding (RTOL, ATOL)."""

from __future__ import annotations

import csv
import math
import shutil
from pathlib import Path

import pytest
import torch

from helpers.gloo import run_ranks
from vidmask.data import VideoTextDataset, collate_video_text, load_annotations
from vidmask.data.transfer import to_device
from vidmask.teachers import build_teacher
from vidmask.teachers.base import FrameFeatures, mirror_frames, mirror_grid
from vidmask.teachers.cache import TeacherCache, cache_key, cached_or_built

from test_train import TINY, vidmask

# float16 keeps 11 significant bits: a stored value is off by up to 2**-11 of itself
RTOL, ATOL = 2e-3, 2e-3


@pytest.fixture(scope="module")
def clip_teacher(tiny_clip_dir):
    return build_teacher("hf-clip", path=str(tiny_clip_dir))


def batch_of(items, size, seed=3, n=6):
    """A training batch as the teacher sees it: uint8 clips normalised (on the CPU here)."""
    ds = VideoTextDataset(items, num_frames=4, size=size, train=True, seed=seed)
    return to_device(collate_video_text([ds[i] for i in range(n)]), "cpu")


@pytest.mark.parametrize("name", ["hf-clip", "lit-effnet"])
def test_cached_features_give_the_teachers_output(name, tiny_set, tiny_clip_dir, tmp_path):
    torch.manual_seed(0)
    teacher = build_teacher(name, **({"path": str(tiny_clip_dir)} if name == "hf-clip" else {}))
    items = load_annotations(tiny_set / "train.json")
    cache = TeacherCache.build(teacher, items, size=64, folder=tmp_path, batch_frames=20)  # batches cut across videos
    assert len(cache) == len(items) and int(cache.counts.sum()) == 8 * len(items)
    batch = batch_of(items, 64)  # random frames of each clip ("rand" sampling)
    assert batch["frame_ids"].shape == (6, 4) and len(set(batch["frame_ids"].flatten().tolist())) > 4
    for grid in (4, 8):  # the teacher's own grid and a resampled one
        live = teacher(batch["video"], grid=grid)
        cached = teacher.from_frames(cache.lookup(batch["index"], batch["frame_ids"]), grid)
        for field in ("tokens", "attn", "video"):
            torch.testing.assert_close(getattr(cached, field), getattr(live, field), rtol=RTOL, atol=ATOL)
    assert cached.tokens.dtype == torch.float32  # stored in float16, served in float32


def test_files_are_float16_memory_mapped_and_what_the_key_covers(tiny_set, tmp_path, clip_teacher, tiny_clip_dir):
    import numpy as np

    items = load_annotations(tiny_set / "train.json")
    cache = TeacherCache.build(clip_teacher, items[:3], size=64, folder=tmp_path / "c")
    back = TeacherCache.load(tmp_path / "c")
    assert back.meta["frames"] == 24 and torch.equal(back.counts, cache.counts)
    (tokens,) = [part["tokens"] for part in back.parts]
    assert isinstance(tokens, np.memmap) and tokens.dtype == np.float16  # mapped, not read into memory
    n, D = tokens.shape[1:]
    assert (tmp_path / "c" / "part-0-3.tokens.f16").stat().st_size == 24 * n * D * 2  # 2 bytes a value
    index, frames = torch.tensor([2, 0]), torch.tensor([[0, 7], [3, 3]])
    for k, v in cache.lookup(index, frames).fields().items():
        assert torch.equal(v, getattr(back.lookup(index, frames), k))
    assert not list((tmp_path / "c").glob("*.tmp*"))  # written under temporary names, then renamed
    key = cache_key("hf-clip", tiny_clip_dir, items, 64)
    assert key == cache_key("hf-clip", tiny_clip_dir, items, 64)
    assert key != cache_key("hf-clip", tiny_clip_dir, items, 32)  # frame size
    assert key != cache_key("hf-clip", tiny_clip_dir, items[:-1], 64)  # video list
    assert key != cache_key("hf-clip", tiny_clip_dir, items, 64, grid_frames=4)  # frame grid
    from vidmask.data import video as video_reader
    from vidmask.teachers import cache as cache_module

    with pytest.MonkeyPatch.context() as m:
        m.setattr(video_reader, "READER_VERSION", video_reader.READER_VERSION + 1)
        assert key != cache_key("hf-clip", tiny_clip_dir, items, 64)  # the reader decodes differently
        m.undo()
        m.setattr(cache_module, "FORMAT", cache_module.FORMAT + 1)
        assert key != cache_key("hf-clip", tiny_clip_dir, items, 64)  # stored differently: rebuilt
    other = tmp_path / "clip2"
    shutil.copytree(tiny_clip_dir, other)
    assert key == cache_key("hf-clip", other, items, 64)  # same bytes, other folder
    (other / "config.json").write_text((other / "config.json").read_text() + " ")
    assert key != cache_key("hf-clip", other, items, 64)  # the teacher's files changed
    with pytest.raises(FileNotFoundError, match="was not finished"):
        TeacherCache.load(tmp_path / "nothing")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "index.json").write_text('{"format": 1}')
    with pytest.raises(ValueError, match="not a vidmask teacher cache of format 2"):
        TeacherCache.load(tmp_path / "old")


def test_unreadable_video_is_skipped_and_never_served(tiny_set, tmp_path, clip_teacher):
    data = tmp_path / "data"
    shutil.copytree(tiny_set, data)
    items = load_annotations(data / "train.json")
    Path(items[1].path).write_bytes(b"not a video")
    cache = TeacherCache.build(clip_teacher, items[:3], size=64, folder=tmp_path / "c")
    assert cache.counts.tolist() == [8, 0, 8]
    with pytest.raises(KeyError, match="video 1"):
        cache.lookup(torch.tensor([0, 1]), torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(IndexError):
        cache.lookup(torch.tensor([3]), torch.zeros(1, 4, dtype=torch.long))
    # frame ids past a video's end (a decoder that ran short) give its last frame
    last = cache.lookup(torch.tensor([2]), torch.full((1, 1), 99)).tokens
    assert torch.equal(last, cache.lookup(torch.tensor([2]), torch.full((1, 1), 7)).tokens)
    assert cache.rows(torch.tensor([2]), torch.full((1, 1), 99)).item() == 15


def test_the_nearest_grid_frame_is_at_most_half_a_segment_away():
    from vidmask.data.video import sample_indices
    from vidmask.teachers.cache import nearest_slot

    for n in [1, 3, 7, 8, 9, 31, 100, 450, 1001]:
        for G in [1, 4, 8, 32]:
            grid = torch.tensor([sample_indices(n, G, "middle")])  # (1, G)
            frames = torch.arange(n).unsqueeze(0)  # (1, n) every frame a training clip can ask for
            got = grid[0, nearest_slot(grid, frames)[0]]  # (n,)
            off = (got - frames[0]).abs()
            assert int(off.max()) <= -(-n // G) // 2, (n, G)  # floor(ceil(n/G)/2), the documented bound
            assert torch.equal(off, (grid[0].unsqueeze(0) - frames[0].unsqueeze(1)).abs().min(1).values)
            if n <= G:
                assert int(off.max()) == 0  # a short video keeps every frame


def test_a_frame_grid_serves_the_nearest_grid_frame(tiny_set, tmp_path, clip_teacher):
    items = load_annotations(tiny_set / "train.json")[:2]
    every = TeacherCache.build(clip_teacher, items, size=64, folder=tmp_path / "every")
    grid = TeacherCache.build(clip_teacher, items, size=64, folder=tmp_path / "grid", grid_frames=4)
    assert grid.counts.tolist() == [4, 4] and grid.grid_of(torch.arange(2)).tolist() == [[0, 2, 4, 6]] * 2
    assert grid.nbytes * 2 == every.nbytes
    asked = torch.tensor([[0, 1, 4, 7], [1, 3, 5, 6]])
    served = torch.tensor([[0, 0, 4, 6], [0, 2, 4, 6]])  # nearest grid frame, ties to the earlier
    index = torch.tensor([0, 1])
    for k, v in grid.lookup(index, asked).fields().items():
        torch.testing.assert_close(v, getattr(every.lookup(index, served), k), rtol=0, atol=0)


def test_a_build_above_the_cap_is_refused_with_its_projected_size(tiny_set, tmp_path, clip_teacher, tiny_clip_dir):
    from vidmask.config import ConfigError
    from vidmask.teachers.cache import field_shapes, projected_bytes

    items = load_annotations(tiny_set / "train.json")
    shapes = field_shapes(clip_teacher, 64)
    total, how = projected_bytes(shapes, items)
    per_frame = sum(torch.Size(s).numel() for s in shapes.values())
    assert total == 16 * 8 * per_frame * 2 and "16 videos x ~8 frames" in how  # 16 clips of 8 frames, float16
    assert projected_bytes(shapes, items, grid_frames=4)[0] == 16 * 4 * per_frame * 2
    with pytest.raises(ConfigError) as e:
        cached_or_built(tmp_path, clip_teacher, tiny_clip_dir, items, 64, max_gb=total / 2.5e9)
    msg = str(e.value)
    assert f"{total / 1e9:.1f} GB" in msg and "teacher.cache_max_gb" in msg and "16 videos" in msg
    assert "teacher.cache_frames_per_video=3" in msg  # a grid that fits: 3 of the 8 frames, 16 videos
    assert not list(tmp_path.iterdir())  # refused before building


def test_cached_or_built_builds_once(tiny_set, tmp_path, clip_teacher, tiny_clip_dir):
    items = load_annotations(tiny_set / "train.json")[:2]
    cached_or_built(tmp_path, clip_teacher, tiny_clip_dir, items, 64)
    (path,) = tmp_path.glob("hf-clip-64px-*/index.json")
    stamp = path.stat().st_mtime_ns
    cached_or_built(tmp_path, clip_teacher, tiny_clip_dir, items, 64)
    assert path.stat().st_mtime_ns == stamp  # reused, not rebuilt
    cached_or_built(tmp_path, clip_teacher, tiny_clip_dir, items, 64, grid_frames=4)
    assert len(list(tmp_path.glob("hf-clip-64px-4f-*/index.json"))) == 1  # a grid is another cache


def _build_rank(rank, world, folder, clip_dir, items_file, out):
    """One gloo rank of a sharded build: which frames it encoded, and its lookups of every video."""
    import torch.distributed as dist

    teacher = build_teacher("hf-clip", path=clip_dir)
    encoded = []
    encode = teacher.encode_frames
    teacher.encode_frames = lambda video, **kw: encoded.append(video.shape[1]) or encode(video, **kw)
    items = load_annotations(items_file)
    cache = cached_or_built(folder, teacher, clip_dir, items, 64, rank=rank, world=world, barrier=dist.barrier,
                            batch_frames=8)
    index = torch.arange(len(items))
    out[rank] = (sum(encoded), cache.lookup(index, torch.arange(8).expand(len(items), 8)).fields())


def test_two_gloo_ranks_build_the_cache_each_its_share(tiny_set, tmp_path, tiny_clip_dir):
    """Rank r encodes its contiguous half of the videos into its part; both read the whole cache, which
    equals the cache one process builds."""
    import json

    items = load_annotations(tiny_set / "train.json")
    out = run_ranks(_build_rank, tmp_path / "two", str(tiny_clip_dir), tiny_set / "train.json")
    (folder,) = (tmp_path / "two").iterdir()
    index = json.loads((folder / "index.json").read_text())
    assert [(p["first"], p["videos"], p["rows"]) for p in index["parts"]] == [(0, 8, 64), (8, 8, 64)]
    # each rank encoded the 8 frames of its 8 videos, no more, and one blank frame (the projected size's shapes)
    assert out[0][0] == out[1][0] == 8 * 8 + 1
    one = TeacherCache.build(build_teacher("hf-clip", path=str(tiny_clip_dir)), items, 64, folder=tmp_path / "one")
    want = one.lookup(torch.arange(16), torch.arange(8).expand(16, 8)).fields()
    for rank in (0, 1):
        assert set(out[rank][1]) == set(want)
        for k, v in want.items():  # the same frames through the same teacher, rounded to float16 alike
            torch.testing.assert_close(out[rank][1][k], v, rtol=RTOL, atol=ATOL)


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
    assert len(list((tmp_path / "cache").glob("hf-clip-64px-*/index.json"))) == 1
    live, cached = first_losses(tmp_path / "live"), first_losses(tmp_path / "cached")
    assert set(live) == set(cached) >= {"vtc_loss", "align_loss", "relevance_loss"}
    for k in live:
        assert cached[k] == pytest.approx(live[k], rel=RTOL, abs=ATOL), k  # float16 features
    p = vidmask("pretrain", *common, f"teacher.cache={tmp_path / 'cache'}", "data.hflip_p=0.5", check=False)
    assert p.returncode != 0 and "teacher.cache" in p.stderr and "data.hflip_p" in p.stderr
    assert "teacher.cache_mirror" in p.stderr  # and it names the way to have both
    vidmask("pretrain", *common, f"teacher.cache={tmp_path / 'cache'}", "data.hflip_p=0.5", "teacher.cache_mirror=true",
            f"run_dir={tmp_path / 'mirrored'}")
    assert all(math.isfinite(v) for v in first_losses(tmp_path / "mirrored").values())


def test_pretraining_with_hf_clip_in_bf16(tiny_set, tiny_clip_dir, tmp_path):
    """train.precision=bf16 holds hf-clip's weights in bfloat16 (autocast_weights): a run with every teacher
    term trains, live and from a cache named for those weights."""
    common = [f"data.corpus={tiny_set}", *TINY, "data.size=64", "data.test_anno=", "train.steps=2",
              "teacher.name=hf-clip", f"teacher.path={tiny_clip_dir}", "mask.strategy=umt", "mask.ratio=0.5",
              "loss.align=1.0", "loss.relevance=1.0", "train.precision=bf16"]
    vidmask("pretrain", *common, f"run_dir={tmp_path / 'live'}")
    vidmask("pretrain", *common, f"teacher.cache={tmp_path / 'cache'}", f"run_dir={tmp_path / 'cached'}")
    for run in ("live", "cached"):
        losses = first_losses(tmp_path / run)
        assert set(losses) >= {"align_loss", "relevance_loss"} and all(math.isfinite(v) for v in losses.values())


def test_mirror_grid_matches_a_loop():
    B, T, g, D = 2, 3, 4, 5
    x = torch.randn(B, T, g * g, D)  # row-major grid, column fastest
    want = torch.empty_like(x)
    for r in range(g):
        for c in range(g):
            want[:, :, r * g + c] = x[:, :, r * g + (g - 1 - c)]
    assert torch.equal(mirror_grid(x, 2), want)
    assert torch.equal(mirror_grid(mirror_grid(x, 2), 2), x)
    with pytest.raises(ValueError, match="not a square grid"):
        mirror_grid(torch.randn(1, 1, 12, 2), 2)


def test_mirror_frames_flips_the_chosen_clips_only():
    B, T, n = 3, 2, 9
    feats = FrameFeatures(tokens=torch.randn(B, T, n, 4), attn=torch.rand(B, T, n), cls=torch.randn(B, T, 6),
                          earlier=torch.randn(B, T, 2, n, 4), patch_embeds=torch.randn(B, T, n, 7))
    which = torch.tensor([True, False, True])
    out = mirror_frames(feats, which)
    for name, dim in (("tokens", 2), ("attn", 2), ("earlier", 3), ("patch_embeds", 2)):
        x, y = getattr(feats, name), getattr(out, name)
        assert torch.equal(y[1], x[1]), name  # not flipped
        assert torch.equal(y[which], mirror_grid(x, dim)[which]), name
    assert torch.equal(out.cls, feats.cls)  # a frame's global feature is kept


def test_the_dataset_says_which_clips_it_flipped(tiny_set):
    items = load_annotations(tiny_set / "train.json")
    plain = VideoTextDataset(items, num_frames=4, size=32, train=True, seed=5)
    flips = VideoTextDataset(items, num_frames=4, size=32, train=True, seed=5, hflip_p=0.5)
    seen = []
    for i in range(len(items)):
        a, b = plain[i], flips[i]  # the flip is drawn last: the same frames, flipped or not
        seen.append(b["mirrored"])
        assert torch.equal(b["video"], a["video"].flip(-1) if b["mirrored"] else a["video"])
        assert not a["mirrored"]
    assert 0 < sum(seen) < len(seen)
    batch = collate_video_text([flips[i] for i in range(len(items))])
    assert batch["mirrored"].dtype == torch.bool and batch["mirrored"].tolist() == seen


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_teacher_cache_command_prebuilds_what_pretraining_reads(tiny_set, tiny_clip_dir, tmp_path, precision):
    """Under bf16 hf-clip holds bf16 weights, which name its cache: the command must build that cache too."""
    args = [f"data.corpus={tiny_set}", *TINY, "data.size=64", "teacher.name=hf-clip", f"teacher.path={tiny_clip_dir}",
            f"teacher.cache={tmp_path / 'cache'}", "loss.align=1.0", f"train.precision={precision}"]
    p = vidmask("teacher", "cache", *args)
    assert "16 videos, 128 frames" in p.stdout
    (path,) = (tmp_path / "cache").glob("*/index.json")
    stamp = path.stat().st_mtime_ns
    vidmask("pretrain", *args, "data.test_anno=", "train.steps=1", f"run_dir={tmp_path / 'run'}")
    assert path.stat().st_mtime_ns == stamp  # pretraining found it and did not rebuild it
    assert list((tmp_path / "cache").glob("*/index.json")) == [path]  # nor built another under another key
    p = vidmask("teacher", "cache", f"data.corpus={tiny_set}", check=False)
    assert p.returncode == 2 and "teacher.cache" in p.stderr


def test_two_processes_build_the_cache_once_and_both_read_it(tiny_set, tiny_clip_dir, tmp_path):
    """Under torchrun each rank builds its share of the cache, they wait at a barrier, then both train from it."""
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
    (folder,) = cache.iterdir()
    assert len(list(folder.glob("part-*.json"))) == 2 and not list(folder.glob("*.tmp*"))
    assert "align_loss" in first_losses(run)


def test_the_cache_keys_are_checked_when_the_config_is_read():
    from vidmask.config import ConfigError, load_config

    cfg = load_config(None, ["teacher.cache_frames_per_video=16", "data.num_frames=8", "teacher.cache_max_gb=0"])
    assert cfg.teacher.cache_frames_per_video == 16 and cfg.teacher.cache_max_gb == 0
    assert load_config().teacher.cache_frames_per_video == 0 and load_config().teacher.cache_max_gb == 50
    with pytest.raises(ConfigError, match="teacher.cache_frames_per_video=4 is below data.num_frames=8"):
        load_config(None, ["teacher.cache_frames_per_video=4", "data.num_frames=8"])
    with pytest.raises(ConfigError, match="teacher.cache_max_gb must be >= 0"):
        load_config(None, ["teacher.cache_max_gb=-1"])
