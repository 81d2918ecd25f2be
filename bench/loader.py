"""Loader throughput: clips/s of 8-frame training clips from the motion-shapes corpus.

    python bench/loader.py [--corpus DIR] [--clips 512]

Makes a 300-video corpus in a temporary folder when --corpus is not given.
Measures the DataLoader with 0, 1 and 2 workers, with and without the
in-memory frame cache, then the same clips written as tar shards
(`vidmask shards make --resize-short 0`: the same bytes) against the loose
files, as training reads each (`ShardStream` / `VideoTextDataset`), with 0
and 2 workers (`--shards-only`: that section alone, replaced in the file).
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
from vidmask.data import VideoTextDataset, collate_video_text, load_annotations
from vidmask.data.shards import ShardStream, open_shards, write_shards


def loader_clips_per_s(loader, clips: int) -> float:
    """clips/s of a loader over about ``clips`` clips, the first batch (worker start-up) not timed."""
    seen, t0 = 0, None
    for i, b in enumerate(loader):
        if i == 0:
            t0 = time.perf_counter()  # skip worker start-up
            continue
        seen += b["video"].shape[0]
        if seen >= clips:
            break
    return seen / (time.perf_counter() - t0)


def clips_per_s(ds, workers: int, clips: int, batch: int = 32) -> float:
    loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, collate_fn=collate_video_text)
    return loader_clips_per_s(loader, clips)


def shard_clips_per_s(shards, workers: int, clips: int, frames: int, size: int, batch: int = 32) -> float:
    """clips/s of the training stream from tar shards (one rank), timed as `clips_per_s`."""
    stream = ShardStream(shards, frames, size, batch_size=batch, num_workers=workers, buffer=256)
    loader = DataLoader(stream, batch_size=batch, num_workers=workers, collate_fn=collate_video_text)
    return loader_clips_per_s(loader, clips)


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
    load_after = os.getloadavg()[0]
    shared = (f" (above {os.cpu_count()}: other jobs shared the cores; compare the rows with each other, not "
              "with another run)" if max(load_before, load_after) > (os.cpu_count() or 1) else "")
    return (f"## Tar shards against loose files\n\n{machine()}\n\n"
            f"The same {len(items)} clips as {len(index['shards'])} tar shards (`write_shards(..., resize_short=0)`: "
            f"the files' bytes, written in {made:.1f} s), read as training reads them (`ShardStream`, one rank, "
            "shuffle buffer 256), against the loose files (`VideoTextDataset`, shuffled), both from the page "
            f"cache; {args.clips} clips timed after the first batch, the two alternated {args.repeats} times "
            f"(median; every run listed). One-minute load average {load_before:.1f} before and {load_after:.1f} "
            f"after{shared}.\n\n"
            + table(["source", "workers", "clips / s", "runs"], rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--corpus", type=Path)
    ap.add_argument("--clips", type=int, default=512)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3, help="runs of each shards-against-loose-files pair")
    ap.add_argument("--shards-only", action="store_true",
                    help="measure only the tar-shard section and replace it in bench/results/loader.md")
    args = ap.parse_args()
    tmp = None
    corpus = args.corpus
    if corpus is None:
        from vidmask.corpus import make_corpus

        tmp = tempfile.TemporaryDirectory()
        corpus = make_corpus(Path(tmp.name) / "corpus", videos=300, workers=2)
    items = load_annotations(Path(corpus) / "train.json")
    if args.shards_only:
        path = RESULTS / "loader.md"
        above = path.read_text().split("\n## Tar shards")[0].rstrip() if path.is_file() else "# Loader throughput"
        path.write_text(f"{above}\n\n{shard_section(items, args)}\n")
        print(path.read_text())
    else:
        rows = []
        for cache in (False, True):
            ds = VideoTextDataset(items, args.frames, args.size, train=True, cache_frames=cache)
            for workers in (0, 1, 2):
                rows.append(["yes" if cache else "no", workers, f"{clips_per_s(ds, workers, args.clips):.0f}"])
        body = (f"{len(items)} training clips of the motion-shapes corpus (16 frames of 128 px, H.264); "
                f"{args.frames} frames sampled per clip (`rand`), resized to {args.size} px and normalised; "
                f"batches of 32; {args.clips} clips timed after the first batch.\n\n"
                + table(["frame cache", "workers", "clips / s"], rows) + "\n\n" + shard_section(items, args))
        write("loader.md", "Loader throughput", body)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
