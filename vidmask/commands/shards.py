"""`vidmask shards make`: an annotation file's clips and captions as WebDataset tar shards."""

from __future__ import annotations

import argparse
import re

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
          "kib": 2**10, "mib": 2**20, "gib": 2**30}


def parse_size(text: str) -> int:
    """``1GB`` -> 10**9, ``512MiB`` -> 2**29, ``1.5G``, ``100000`` (bytes)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 1GB, 500MB, 512MiB)")
    size = int(float(m.group(1)) * _UNITS[m.group(2).lower()])
    if size < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a shard size must be at least 1 byte")
    return size


def add_parser(sub) -> None:
    p = sub.add_parser("shards", help="write training clips as WebDataset tar shards (for web-scale corpora)",
                       description="Tar shards hold the clips' bytes, captions and metadata in the webdataset "
                       "layout; training reads them with data.shards=DIR/{000000..000123}.tar.")
    jobs = p.add_subparsers(dest="job", metavar="JOB", required=True)
    m = jobs.add_parser(
        "make", help="write an annotation file's clips and captions as tar shards",
        description="Write ANNO's clips as tar shards DIR/000000.tar, 000001.tar, ... (members KEY.mp4 and "
        "KEY.json with the captions and the source path) and their index DIR/shards.json (each shard's name "
        "and sample count). Videos and images whose short side is longer than --resize-short are re-encoded "
        "(H.264, upright, no audio; JPEG) to it; smaller ones and --resize-short 0 keep their bytes. Entries "
        "with an empty caption or an unreadable file are left out and counted.",
        epilog="then: vidmask pretrain data.shards='DIR/{000000..000123}.tar' ...",
    )
    m.add_argument("anno", metavar="ANNO", help="a vidmask (UMT/VINDLU) annotation JSON file")
    m.add_argument("--out", required=True, metavar="DIR", help="an empty or new folder for the shards")
    m.add_argument("--video-root", help="folder the entries' paths are relative to (default: ANNO's folder)")
    m.add_argument("--shard-size", type=parse_size, default=parse_size("1GB"),
                   help="bytes per shard: a shard is closed once it holds this much (default 1GB)")
    m.add_argument("--resize-short", type=int, default=256, metavar="PX",
                   help="re-encode media to this short side, never scaling up; at least the training "
                   "data.size (default 256; 0 copies the files' bytes as they are)")
    m.add_argument("--shuffle", type=int, metavar="SEED",
                   help="write the entries in a random order seeded by SEED (default: the file's order)")
    m.add_argument("--workers", type=int, default=1, help="encoding processes (default 1)")
    m.set_defaults(func=run_make)


def run_make(args: argparse.Namespace) -> int:
    from pathlib import Path

    from vidmask.config import ConfigError
    from vidmask.data import load_store
    from vidmask.data.shards import write_shards

    if args.resize_short < 0 or args.workers < 1:
        raise ConfigError("--resize-short must be >= 0 and --workers >= 1")
    items = load_store(args.anno, root=args.video_root)  # memory-mapped: millions of entries are fine
    try:
        index = write_shards(items, args.out, shard_bytes=args.shard_size, resize_short=args.resize_short,
                             workers=args.workers, shuffle_seed=args.shuffle, source=str(Path(args.anno).resolve()),
                             progress=True)
    except FileExistsError as e:
        raise ConfigError(f"--out: {e}") from None
    last = index["shards"][-1]["name"][: -len(".tar")]
    pattern = Path(args.out) / ("{000000.." + last + "}.tar")
    print(f"{index['samples']} samples in {len(index['shards'])} shards in {args.out} "
          f"({index['skipped']} entries left out); train with data.shards='{pattern}'")
    return 0
