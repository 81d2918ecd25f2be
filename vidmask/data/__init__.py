"""Video-text data: annotation files, video decoding, transforms, the dataset.

Public API::

    load_annotations(path, root=None) -> list[VideoText]
    load_store(path, root=None) -> AnnoStore (the same items, memory-mapped; cached beside the file)
    build_store(path, out, root=None) -> AnnoStore
    flatten_captions(items) -> (texts, text_to_video)
    sample_indices(n, T, mode, generator) -> list[int]
    decode_frames(path, T, mode="middle", generator=None) -> uint8[T,H,W,3]
    decode_sampled(path, T, mode="middle", generator=None) -> (uint8[T,H,W,3], frame indices)
    decode_all_frames(path) -> uint8[n,H,W,3]
    VideoTransform(size, train, ...).pixels(frames, caption, generator) -> (uint8[T,3,S,S], caption)
        (called: the clip normalised on the host, float[T,3,S,S])
    normalize_video(uint8[...,3,H,W], mean=CLIP_MEAN, std=CLIP_STD) -> float32[...,3,H,W]
    swap_left_right(caption) -> str
    VideoTextDataset(items, num_frames, size, train, seed=0, ...)
    collate_video_text(batch) -> {"video" uint8[B,T,3,S,S], "caption", "index", "frame_ids", "mirrored", "path", "bad"}
    to_device(batch, device, mean, std) -> the batch on the device, its video normalised there (float32)
    loader_options(device, num_workers, prefetch_factor) -> DataLoader keywords (pin_memory on CUDA)
    eval_loader(items, T, S, num_workers, device=) -> evaluation batches on the device, normalised
    BadSampleTracker(max_share, min_samples).update(num_good, bad)
    write_shards(items, out, shard_bytes=, resize_short=) -> index (WebDataset tar shards + shards.json)
    open_shards(spec, index=None) -> ShardSet; ShardStream(shards, num_frames, size, batch_size=, rank=, world=, ...)
    public_formats.convert(fmt, src, split=, ids=, mapping=, ext=) -> annotation entries
        (MSR-VTT, MSRVTT-QA, MSVD, DiDeMo, ActivityNet Captions as released)
"""

from vidmask.data.anno_store import AnnoStore, build_store, load_store
from vidmask.data.annotations import AnnotationError, VideoText, flatten_captions, load_annotations
from vidmask.data.dataset import (
    BadSampleTracker,
    FrameCache,
    TooManyBadSamples,
    VideoTextDataset,
    collate_video_text,
    draw_sample,
    eval_loader,
    sample_generator,
)
from vidmask.data.shards import ShardError, ShardSet, ShardStream, open_shards, write_shards
from vidmask.data.transfer import loader_options, to_device
from vidmask.data.transforms import CLIP_MEAN, CLIP_STD, VideoTransform, normalize_video, swap_left_right
from vidmask.data.video import (
    MemoryMedia,
    VideoError,
    count_frames,
    decode_all_frames,
    decode_frames,
    decode_sampled,
    load_image,
    sample_indices,
)

__all__ = [
    "AnnoStore",
    "AnnotationError",
    "BadSampleTracker",
    "CLIP_MEAN",
    "CLIP_STD",
    "FrameCache",
    "MemoryMedia",
    "ShardError",
    "ShardSet",
    "ShardStream",
    "TooManyBadSamples",
    "VideoError",
    "VideoText",
    "VideoTextDataset",
    "VideoTransform",
    "build_store",
    "collate_video_text",
    "count_frames",
    "decode_all_frames",
    "decode_frames",
    "decode_sampled",
    "draw_sample",
    "eval_loader",
    "flatten_captions",
    "load_annotations",
    "load_image",
    "loader_options",
    "load_store",
    "normalize_video",
    "open_shards",
    "sample_generator",
    "sample_indices",
    "swap_left_right",
    "to_device",
    "write_shards",
]
