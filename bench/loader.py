"""Loader throughput: clips/s of 8-frame training clips from the motion-shapes corpus.

    python bench/loader.py [--corpus DIR] [--clips 512]

Makes a 300-video corpus in a temporary folder when --corpus is not given.
Measures the DataLoader with 0, 1 and 2 workers, with and without the
in-memory frame cache, then the same clips written as tar shards
(`vidmask shards make --resize-short 0`: the same bytes) against the loose
files, as training reads each (`ShardStream` / `VideoTextDataset`), with 0
and 2 workers, then the batch format: uint8 clips normalised after the loader
(`to_device`, on the CPU here) against float32 clips normalised in the
workers (the pipeline before), with the bytes of each batch's video
(`--only shards` / `--only uint8`: that section alone, replaced in the file).
Writes bench/results/loader.md.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from statistics import median

from torch.utils.data import DataLoader

from _common import RESULTS, machine, table, write
from vidmask.data import VideoTextDataset, collate_video_text, load_annotations, normalize_video, to_device
from vidmask.data.shards import ShardStream, open_shards, write_shards

SECTIONS = {"shards": "## Tar shards against loose files", "uint8": "## uint8 clips against float32 clips"}


def loader_clips_per_s(loader, clips: int, consume=None) -> float:
    """clips/s of a loader over about ``clips`` clips, the first batch (worker start-up) not timed;
    ``consume(batch)``, when given, runs on every batch inside the timing (what the step does first)."""
    seen, t0 = 0, None
    for i, b in enumerate(loader):
        if consume is not None:
            consume(b)
        if i == 0:
            t0 = time.perf_counter()  # skip worker start-up
            continue
        seen += b["video"].shape[0]
        if seen >= clips:
            break
    return seen / (time.perf_counter() - t0)


def clips_per_s(ds, workers: int, clips: int, batch: int = 32, consume=None) -> float:
    loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, collate_fn=collate_video_text)
    return loader_clips_per_s(loader, clips, consume)


def shard_stream(shards, workers: int, frames: int, size: int, batch: int = 32) -> ShardStream:
    return ShardStream(shards, frames, size, batch_size=batch, num_workers=workers, buffer=256)


def stream_clips_per_s(stream: ShardStream, workers: int, clips: int, consume=None) -> float:
    """clips/s of the training stream from tar shards (one rank, built for ``workers``), timed as `clips_per_s`."""
    loader = DataLoader(stream, batch_size=stream.batch_size, num_workers=workers, collate_fn=collate_video_text)
    return loader_clips_per_s(loader, clips, consume)


def shard_clips_per_s(shards, workers: int, clips: int, frames: int, size: int, batch: int = 32) -> float:
    return stream_clips_per_s(shard_stream(shards, workers, frames, size, batch), workers, clips)


def load_note(before: float, after: float) -> str:
    shared = (f" (above {os.cpu_count()}: other jobs shared the cores; compare the rows with each other, not "
              "with another run)" if max(before, after) > (os.cpu_count() or 1) else "")
    return f"One-minute load average {before:.1f} before and {after:.1f} after{shared}."


def fp32_in_workers(transform):
    """The transform as the workers ran it before the uint8 pipeline: the clip normalised there (float32)."""
    pixels = transform.pixels

    def normalised(frames, caption=None, generator=None):
        video, caption = pixels(frames, caption, generator)  # (T, 3, S, S) uint8
        return normalize_video(video, transform.mean, transform.std), caption  # (T, 3, S, S) float32

    return normalised


def source_clips_per_s(source, workers: int, clips: int, consume=None) -> float:
    """`clips_per_s` of loose files, `stream_clips_per_s` of a shard stream (built for ``workers``)."""
    if isinstance(source, ShardStream):
        return stream_clips_per_s(source, workers, clips, consume)
    return clips_per_s(source, workers, clips, consume=consume)


def to_step(fmt: str, nbytes: dict):
    """What the step does first with a batch of ``fmt``, recording the ``nbytes`` of its video as it leaves
    the loader (what is pinned and copied to the device): float32 is only moved, uint8 is normalised too."""
    def consume(batch: dict) -> None:
        nbytes[fmt] = batch["video"].nbytes
        if fmt == "uint8":
            to_device(batch, "cpu")
        else:
            batch["video"].to("cpu", non_blocking=True)

    return consume


def transfer_section(items, args) -> str:
    """uint8 batches normalised after the loader against float32 batches normalised in the workers:
    clips/s (loose files and tar shards, alternated, median of repeats) and bytes per batch."""
    load_before = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        write_shards(items, Path(folder) / "shards", shard_bytes=4 * 10**6, resize_short=0)
        shards = open_shards(f"{folder}/shards/*.tar")
        for workers in (0, 2):
            sources = {"loose files": VideoTextDataset(items, args.frames, args.size, train=True),
                       "tar shards": shard_stream(shards, workers, args.frames, args.size)}
            for name, source in sources.items():
                runs: dict[str, list[float]] = {"float32": [], "uint8": []}
                nbytes = {}
                for _ in range(args.repeats):  # alternated, so a neighbour's load hits both alike
                    for fmt in runs:
                        if fmt == "float32":
                            source.transform.pixels = fp32_in_workers(source.transform)
                        runs[fmt].append(source_clips_per_s(source, workers, args.clips, to_step(fmt, nbytes)))
                        if fmt == "float32":
                            del source.transform.pixels  # back to the uint8 clips
                for fmt in runs:
                    rows.append([name, workers, fmt, f"{median(runs[fmt]):.0f}",
                                 " ".join(f"{r:.0f}" for r in runs[fmt]), f"{nbytes[fmt] / 1e6:.1f}"])
    B, T, S = 64, 8, 224
    return (f"{SECTIONS['uint8']}\n\n{machine()}\n\n"
            f"The same {len(items)} clips ({args.frames} frames of {args.size} px, batches of 32), from loose files "
            "and as tar shards (`resize_short=0`), each two ways: **float32**, normalised in the loader workers "
            "(the pipeline before: `VideoTransform.pixels`, then `normalize_video` in the worker), and **uint8**, "
            "the workers' clips normalised after the loader (`to_device`, as the step does; on the CPU here, so "
            "its cost is in the timing, where on a GPU it runs on the device). "
            f"{args.clips} clips timed after the first batch, the two alternated {args.repeats} times (median; "
            f"every run listed). {load_note(load_before, os.getloadavg()[0])} "
            "MB per batch: the measured `nbytes` of one batch's `video`, what the loader pins and copies to the "
            f"device (at B={B}, {T} frames of {S} px: {B * T * 3 * S * S / 1e6:.0f} MB as uint8, "
            f"{4 * B * T * 3 * S * S / 1e6:.0f} MB as float32). No GPU here: the pinned copy itself is not timed."
            "\n\n" + table(["source", "workers", "batch", "clips / s", "runs", "MB per batch"], rows))


def replace_section(text: str, section: str) -> str:
    """``text`` with the ``## `` section of ``section``'s title replaced by it (appended when absent)."""
    title = section.split("\n", 1)[0]
    head, *rest = text.rstrip().split("\n## ")
    rest = ["## " + c for c in rest]
    rest = [section if c.split("\n", 1)[0] == title else c for c in rest]
    if title not in (c.split("\n", 1)[0] for c in rest):
        rest.append(section)
    return "\n\n".join(c.strip() for c in [head, *rest]) + "\n"


def shard_section(items, args) -> str:
    """The shards-against-loose-files section: the same clips both ways, alternated, median of repeats."""
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as folder:
        t0 = time.perf_counter()
        index = write_shards(items, Path(folder) / "shards", shard_bytes=4 * 10**6, resize_short=0)
        made = time.perf_counter() - t0
        shards = open_shards(f"{folder}/shards/*.tar")
        loose_ds = VideoTextDataset(items, args.frames, args.size, train=True)
        rows = []
        for workers in (0, 2):
            loose, tarred = [], []
            for _ in range(args.repeats):  # alternated, so a neighbour's load hits both alike
                loose.append(clips_per_s(loose_ds, workers, args.clips))
                tarred.append(shard_clips_per_s(shards, workers, args.clips, args.frames, args.size))
            for name, runs in (("loose files", loose), ("tar shards", tarred)):
                rows.append([name, workers, f"{median(runs):.0f}", " ".join(f"{r:.0f}" for r in runs)])
    return (f"{SECTIONS['shards']}\n\n{machine()}\n\n"
            f"The same {len(items)} clips as {len(index['shards'])} tar shards (`write_shards(..., resize_short=0)`: "
            f"the files' bytes, written in {made:.1f} s), read as training reads them (`ShardStream`, one rank, "
            "shuffle buffer 256), against the loose files (`VideoTextDataset`, shuffled), both from the page "
            f"cache; {args.clips} clips timed after the first batch, the two alternated {args.repeats} times "
            f"(median; every run listed). {load_note(load_before, os.getloadavg()[0])}\n\n"
            + table(["source", "workers", "clips / s", "runs"], rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--corpus", type=Path)
    ap.add_argument("--clips", type=int, default=512)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3, help="runs of each shards-against-loose-files pair")
    ap.add_argument("--only", choices=sorted(SECTIONS),
                    help="measure only that section (tar shards, or the batch format) and replace it in "
                         "bench/results/loader.md")
    args = ap.parse_args()
    tmp = None
    corpus = args.corpus
    if corpus is None:
        from vidmask.corpus import make_corpus

        tmp = tempfile.TemporaryDirectory()
        corpus = make_corpus(Path(tmp.name) / "corpus", videos=300, workers=2)
    items = load_annotations(Path(corpus) / "train.json")
    if args.only:
        path = RESULTS / "loader.md"
        text = path.read_text() if path.is_file() else "# Loader throughput\n"
        measured = (shard_section if args.only == "shards" else transfer_section)(items, args)
        path.write_text(replace_section(text, measured))
        print(path.read_text())
    else:
        rows = []
        for cache in (False, True):
            ds = VideoTextDataset(items, args.frames, args.size, train=True, cache_frames=cache)
            for workers in (0, 1, 2):
                rows.append(["yes" if cache else "no", workers, f"{clips_per_s(ds, workers, args.clips):.0f}"])
        body = (f"{len(items)} training clips of the motion-shapes corpus (16 frames of 128 px, H.264); "
                f"{args.frames} frames sampled per clip (`rand`), resized to {args.size} px, as uint8 clips "
                f"(normalised on the device in training); batches of 32; {args.clips} clips timed after the first "
                "batch.\n\n"
                + table(["frame cache", "workers", "clips / s"], rows) + "\n\n" + shard_section(items, args)
                + "\n\n" + transfer_section(items, args))
        write("loader.md", "Loader throughput", body)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
