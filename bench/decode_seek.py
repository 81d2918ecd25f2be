"""Sampling T frames from a long video: decoding in order against seeking to key frames.

    python bench/decode_seek.py [--reps 5]

Writes generated H.264 videos of dataset-like lengths and sizes to a
temporary folder (x264 ``veryfast`` with its default key-frame placement: at
most 250 frames apart, more at scene cuts), then times
``vidmask.data.video.decode_sampled`` for T = 8 and 16 random frames (one per
segment, as in training), once with seeking switched off
(``SEEK_MIN_FRAMES`` above every length) and once as shipped. Both return
the same frames (tests/test_data.py checks it); the table gives the median
over ``--reps`` draws and the speed-up. One process, one decoding thread,
as in a DataLoader worker. Writes bench/results/decode_seek.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch

from _common import table, write

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from vidmask.data import video as video_module  # noqa: E402

VIDEOS = [  # (label, seconds, width, height, container); 30 fps
    ("MSR-VTT-like clip", 15, 320, 240, "mp4"),
    ("ActivityNet-like video", 180, 320, 240, "mp4"),
    ("ActivityNet-like video, 360p", 120, 640, 360, "mp4"),
    ("ActivityNet-like video, mkv (no frame count stored)", 180, 320, 240, "mkv"),
]


def make_video(path: Path, seconds: int, w: int, h: int) -> Path:
    """A drifting view over a smooth random texture: compresses like camera footage, not like noise."""
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, (h // 8 + 40, w // 8 + 40, 3)).astype(np.uint8)  # (h', w', 3)
    texture = texture.repeat(8, 0).repeat(8, 1)  # (8h', 8w', 3) blocky, smooth within blocks
    container = av.open(str(path), "w")
    stream = container.add_stream("libx264", rate=30, options={"preset": "veryfast"})
    stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
    for i in range(30 * seconds):
        y, x = (i // 2) % 300, i % 300
        frame = texture[y : y + h, x : x + w]  # (h, w, 3)
        for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path


def median_seconds(path: Path, T: int, reps: int, seek: bool) -> float:
    video_module.SEEK_MIN_FRAMES = 256 if seek else 1 << 30
    times = []
    for seed in range(reps):
        t0 = time.perf_counter()
        video_module.decode_sampled(path, T, "rand", torch.Generator().manual_seed(seed))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, seconds, w, h, suffix in VIDEOS:
            path = make_video(Path(tmp) / f"{seconds}s_{w}x{h}.{suffix}", seconds, w, h)
            with av.open(str(path)) as c:
                index = video_module.packet_index(c)
            assert index is not None, f"{path}: no trustworthy packet index"
            gop = len(index.pts) / len(index.key_pts)
            for T in (8, 16):
                in_order = median_seconds(path, T, args.reps, seek=False)
                seeking = median_seconds(path, T, args.reps, seek=True)
                rows.append([label, f"{seconds} s, {w}x{h}, {len(index.pts)} frames", f"{gop:.0f}", T,
                             f"{1000 * in_order:.0f}", f"{1000 * seeking:.0f}", f"{in_order / seeking:.1f}x"])
    head = ["video", "length, size", "frames per key frame", "T", "in order (ms)", "seeking (ms)", "speed-up"]
    body = ("Time to read T random frames (one per segment, training mode) from one video, median of "
            f"{args.reps} draws; one process, one decoding thread. Both paths return identical frames.\n\n"
            + table(head, rows))
    write("decode_seek.md", "Decoding T frames of a long video: in order vs seeking", body)


if __name__ == "__main__":
    main()
