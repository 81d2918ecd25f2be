"""The uint8 pipeline: clips leave the workers as bytes and are normalised on the device.

What a consumer sees must be what the fp32 pipeline gave it: the old transform (float crop and
resize, flip, normalise in the worker) is kept here as the reference, and the same samples
(same seed, same draws) are compared through both, from loose files and from tar shards.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from test_shards import shard_dir, stream_of  # noqa: F401 (shard_dir is a fixture)
from vidmask.config import load_config
from vidmask.data import CLIP_MEAN, CLIP_STD, VideoTextDataset, collate_video_text, eval_loader, load_annotations
from vidmask.data import dataset as dataset_module
from vidmask.data.transfer import loader_options, to_device
from vidmask.data.transforms import (
    VideoTransform,
    center_square_box,
    normalize_video,
    random_resized_crop_box,
    swap_left_right,
)
from vidmask.train import run as runner
from vidmask.train.distributed import DistInfo

# a resized pixel is rounded to the nearest level: half a level, in normalised units, at most
HALF_LEVEL = 0.5 / 255 / min(CLIP_STD)


def fp32_pixels(t: VideoTransform):
    """The transform as it was before the uint8 pipeline (float all the way, normalised in the
    worker), with the same draws from the generator, in the same order."""

    def pixels(frames, caption=None, generator=None):  # VideoTransform.pixels_mirrored's contract
        _, H, W, _ = frames.shape
        if t.train and t.random_crop_scale is not None:
            box = random_resized_crop_box(H, W, t.random_crop_scale, t.random_crop_ratio, generator)
        else:
            box = center_square_box(H, W)
        top, left, h, w = box
        x = frames[:, top : top + h, left : left + w].permute(0, 3, 1, 2).float().div_(255.0)  # (T, 3, h, w)
        if (h, w) != (t.size, t.size):
            x = F.interpolate(x, size=(t.size, t.size), mode="bilinear", antialias=True, align_corners=False)
        mirrored = t.train and t.hflip_p > 0 and float(torch.rand((), generator=generator)) < t.hflip_p
        if mirrored:
            x = x.flip(-1)
            caption = None if caption is None else swap_left_right(caption)
        m = torch.tensor(t.mean).view(1, 3, 1, 1)
        s = torch.tensor(t.std).view(1, 3, 1, 1)
        return (x - m) / s, caption, mirrored  # (T, 3, S, S)

    return pixels


def both_ways(ds, samples):
    """(batch normalised on the 'device' from uint8, the same samples through the fp32 transform)."""
    new = to_device(collate_video_text(samples()), "cpu", ds.transform.mean, ds.transform.std)
    ds.transform.pixels_mirrored = fp32_pixels(ds.transform)  # the instance's transform goes back to the old one
    try:
        old = collate_video_text(samples())
    finally:
        del ds.transform.pixels_mirrored
    return new, old


def assert_same_video(new, old, resized: bool):
    assert new["video"].dtype == torch.float32 and new["caption"] == old["caption"]
    assert torch.equal(new["index"], old["index"]) and torch.equal(new["frame_ids"], old["frame_ids"])
    # unresized: the same float ops on the same bytes; resized: the nearest level of the float resize
    atol = HALF_LEVEL + 1e-6 if resized else 1e-6
    torch.testing.assert_close(new["video"], old["video"], rtol=0, atol=atol)
    if resized:
        assert not torch.equal(new["video"], old["video"])  # the test did resize


@pytest.mark.parametrize("size, crop, flip, train", [
    (32, None, 0.0, False),  # the evaluation transform, no resize (the tiny clips are 32 px)
    (32, None, 1.0, True),  # flipped
    (48, (0.5, 1.0), 0.5, True),  # random crops resized up, random flips
    (16, None, 0.0, False),  # resized down
])
def test_loose_files_uint8_normalised_on_device_equal_fp32(tiny_set, size, crop, flip, train):
    items = load_annotations(tiny_set / "train.json")
    ds = VideoTextDataset(items, num_frames=4, size=size, train=train, seed=5, random_crop_scale=crop, hflip_p=flip)
    ds.set_epoch(2)
    assert ds[0]["video"].dtype == torch.uint8
    new, old = both_ways(ds, lambda: [ds[i] for i in range(6)])
    assert_same_video(new, old, resized=size != 32 or crop is not None)


@pytest.mark.parametrize("size", [32, 48])
def test_shards_uint8_normalised_on_device_equal_fp32(shard_dir, size):  # noqa: F811
    stream = stream_of(shard_dir, hflip_p=0.5)
    if size != 32:
        stream.transform = VideoTransform(size=size, train=True, hflip_p=0.5)
    new, old = both_ways(stream, lambda: [s for s, _ in zip(stream, range(6))])
    assert_same_video(new, old, resized=size != 32)


def test_eval_loader_gives_normalised_float_on_the_device(tiny_set):
    items = load_annotations(tiny_set / "test.json")
    ds = VideoTextDataset(items, num_frames=4, size=48, train=False)
    ds.transform.pixels_mirrored = fp32_pixels(ds.transform)
    old = collate_video_text([ds[i] for i in range(5)])
    batch = next(eval_loader(items[:5], 4, 48, batch_size=5, device="cpu"))
    assert batch["video"].dtype == torch.float32 and batch["caption"] == old["caption"]
    torch.testing.assert_close(batch["video"], old["video"], rtol=0, atol=HALF_LEVEL + 1e-6)


def test_normalize_video_batches_clips_and_refuses_a_normalised_video():
    g = torch.Generator().manual_seed(0)
    video = torch.randint(0, 256, (2, 3, 3, 4, 5), dtype=torch.uint8, generator=g)  # (B, T, 3, H, W)
    out = normalize_video(video)
    ref = (video.float() / 255 - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1)
    assert out.dtype == torch.float32 and out.shape == video.shape
    torch.testing.assert_close(out, ref)
    assert torch.equal(normalize_video(video[0]), out[0])  # a clip [T,3,H,W] alike
    with pytest.raises(ValueError, match="normalised already"):
        normalize_video(out)  # twice would be silently wrong
    with pytest.raises(ValueError, match=r"\[\.\.\., 3, H, W\]"):
        normalize_video(video.permute(0, 1, 3, 4, 2))  # channels last


def test_to_device_moves_tensors_and_normalises_only_the_video():
    batch = {"video": torch.full((2, 1, 3, 2, 2), 255, dtype=torch.uint8), "index": torch.tensor([4, 7]),
             "caption": ["a", "b"], "bad": [("x.mp4", "empty file")]}
    out = to_device(batch, "cpu", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert torch.equal(out["video"], torch.full((2, 1, 3, 2, 2), 2.0))  # (1 - 0.5) / 0.25
    assert torch.equal(out["index"], batch["index"]) and out["caption"] == ["a", "b"] and out["bad"] == batch["bad"]
    assert batch["video"].dtype == torch.uint8  # the loader's batch is left as it was


def test_loader_options_pin_memory_on_cuda_only():
    assert loader_options("cuda", 4, 3) == {"num_workers": 4, "pin_memory": True, "prefetch_factor": 3}
    assert loader_options(torch.device("cuda", 1), 0, 5) == {"num_workers": 0, "pin_memory": True}  # torch
    # refuses prefetch_factor without workers
    assert loader_options("cpu", 2) == {"num_workers": 2, "pin_memory": False, "prefetch_factor": 2}
    with pytest.raises(ValueError, match="prefetch_factor"):
        loader_options("cpu", 2, 0)


class _Captured(Exception):
    pass


@pytest.fixture
def captured_loader(monkeypatch):
    """The keywords of the next DataLoader the trainer or the evaluation builds (none is started)."""
    seen: dict = {}

    def fake(*args, **kwargs):
        seen.update(kwargs)
        raise _Captured

    monkeypatch.setattr(runner, "DataLoader", fake)
    monkeypatch.setattr(dataset_module, "DataLoader", fake)
    return seen


@pytest.mark.parametrize("device, pinned", [("cuda", True), ("cpu", False)])
def test_training_loaders_pin_memory_on_cuda(tiny_set, shard_dir, captured_loader, device, pinned):  # noqa: F811
    cfg = load_config(None, [f"data.corpus={tiny_set}", "data.num_workers=2", "data.prefetch_factor=3",
                             "train.batch_size=2", "train.steps=4"])
    info = DistInfo(device=torch.device(device))  # a device string: no GPU needed to build the loader
    ds = VideoTextDataset(load_annotations(tiny_set / "train.json"), 4, 32, train=True)
    for dataset in (ds, stream_of(shard_dir, num_workers=2)):
        captured_loader.clear()
        with pytest.raises(_Captured):
            next(runner.batch_stream(dataset, cfg, info, 0))
        assert captured_loader["pin_memory"] is pinned
        assert captured_loader["num_workers"] == 2 and captured_loader["prefetch_factor"] == 3
    captured_loader.clear()
    with pytest.raises(_Captured):
        next(eval_loader(ds.items, 4, 32, num_workers=1, device=device))
    assert captured_loader["pin_memory"] is pinned and captured_loader["num_workers"] == 1

