"""Loader throughput: clips/s of 8-frame training clips from the motion-shapes corpus.

    python bench/loader.py [--corpus DIR] [--clips 512]

Makes a 300-video corpus in a temporary folder when --corpus is not given.
Measures the DataLoader with 0, 1 and 2 workers, with and without the
in-memory frame cache. Writes bench/results/loader.md.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from torch.utils.data import DataLoader

from _common import table, write
from vidmask.data import VideoTextDataset, collate_video_text, load_annotations


def clips_per_s(ds, workers: int, clips: int, batch: int = 32) -> float:
    loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, collate_fn=collate_video_text)
    seen, t0 = 0, None
    for i, b in enumerate(loader):
        if i == 0:
            t0 = time.perf_counter()  # skip worker start-up
            continue
        seen += b["video"].shape[0]
        if seen >= clips:
            break
    return seen / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--corpus", type=Path)
    ap.add_argument("--clips", type=int, default=512)
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--size", type=int, default=128)
    args = ap.parse_args()
    tmp = None
    corpus = args.corpus
    if corpus is None:
        from vidmask.corpus import make_corpus

        tmp = tempfile.TemporaryDirectory()
        corpus = make_corpus(Path(tmp.name) / "corpus", videos=300, workers=2)
    items = load_annotations(Path(corpus) / "train.json")
    rows = []
    for cache in (False, True):
        ds = VideoTextDataset(items, args.frames, args.size, train=True, cache_frames=cache)
        for workers in (0, 1, 2):
            rows.append(["yes" if cache else "no", workers, f"{clips_per_s(ds, workers, args.clips):.0f}"])
    body = (f"{len(items)} training clips of the motion-shapes corpus (16 frames of 128 px, H.264); "
            f"{args.frames} frames sampled per clip (`rand`), resized to {args.size} px and normalised; "
            f"batches of 32; {args.clips} clips timed after the first batch.\n\n"
            + table(["frame cache", "workers", "clips / s"], rows))
    write("loader.md", "Loader throughput", body)
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
