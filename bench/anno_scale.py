"""Annotation memory at scale: the JSON list of VideoText against the memory-mapped AnnoStore.

    python bench/anno_scale.py [--sizes 10000 1000000 10000000] [--json-max 1000000]

Writes WebVid-like annotation files (``{"video": "000123/000123456.mp4", "caption": <9-15 words>}``)
in a temporary folder and builds each one's store. Then, in a fresh process per file and reader
(as a training rank is): opens it (``load_store`` / ``load_annotations``), reads 1000 random
entries, forks 4 workers (as a DataLoader does) that read 1000 random entries each, and reads every
process's memory from /proc: VmRSS, its anonymous and file-backed (the page cache of the mapped
store, shared by every process on the machine) parts, Private_Dirty (pages the process wrote: its
copies-on-write and its own allocations) and PSS. Writes bench/results/anno_scale.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import table, write

MB = 1 << 20
JSON_LIMIT = 8e9  # bytes a JSON list may take in one process here


def webvid_like(path: Path, n: int) -> None:
    """n entries; captions drawn from 65,536 sentences of 9-15 pseudo-words (WebVid averages 12 words)."""
    r = random.Random(0)
    vocab = ["".join(r.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(r.randint(2, 9))) for _ in range(3000)]
    pool = [" ".join(r.choice(vocab) for _ in range(r.randint(9, 15))) for _ in range(1 << 16)]
    with open(path, "w") as f:
        f.write("[")
        for start in range(0, n, 100_000):
            f.write(",\n".join(f'{{"video": "{i // 1000:06d}/{i:09d}.mp4", "caption": "{pool[(i * 40503) & 0xFFFF]}"}}'
                               for i in range(start, min(n, start + 100_000))))
            f.write(",\n" if start + 100_000 < n else "]\n")


def memory() -> dict[str, int]:
    """This process's memory in bytes, from /proc/self/status, smaps_rollup and smaps (read line by
    line, in that order, so reading them does not grow what is read first)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) * 1024
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key == "Private_Dirty":  # not USS: a worker's Private_Clean holds store pages only it maps yet
                out["written"] = int(value.split()[0]) * 1024
            elif key == "Pss":
                out["PSS"] = int(value.split()[0]) * 1024
    out["store"] = 0  # resident pages of the store's mapped files
    path = ""
    with open("/proc/self/smaps") as f:
        for line in f:
            fields = line.split()
            if "-" in fields[0]:  # a mapping's first line: address range, ..., file
                path = fields[5] if len(fields) > 5 else ""
            elif fields[0] == "Rss:" and ".index/" in path:
                out["store"] += int(fields[1]) * 1024
    return out


def read_random(items, reads: int, seed: int) -> int:
    r = random.Random(seed)
    return sum(len(items[r.randrange(len(items))].captions) for _ in range(reads))


def measure(reader: str, anno: Path, workers: int, reads: int) -> dict:
    """One rank: open ``anno`` with ``reader``, read, fork workers that read; memory of each process."""
    from vidmask.data import load_annotations, load_store  # imports torch, as a training process has

    base = memory()
    t0 = time.perf_counter()
    items = load_store(anno) if reader == "store" else load_annotations(anno)
    ready = time.perf_counter() - t0
    read_random(items, reads, seed=0)
    main = memory()
    pipes = []
    for w in range(workers):
        r, wr = os.pipe()
        if os.fork() == 0:  # a DataLoader worker: forked after the items exist, reads its share
            os.close(r)
            read_random(items, reads, seed=1 + w)
            os.write(wr, json.dumps(memory()).encode())
            os._exit(0)
        os.close(wr)
        pipes.append(r)
    found = []
    for r in pipes:
        with os.fdopen(r) as f:
            found.append(json.loads(f.read()))
    for _ in pipes:
        os.wait()
    return {"entries": len(items), "ready_s": ready, "base": base, "main": main, "workers": found}


def run_measure(reader: str, anno: Path, workers: int, reads: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--measure", reader, str(anno), "--workers", str(workers),
                          "--reads", str(reads)], check=True, capture_output=True, text=True).stdout
    return json.loads(out.splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000, 10_000_000])
    ap.add_argument("--json-max", type=int, default=1_000_000, help="largest file also read as a JSON list")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--reads", type=int, default=1000)
    ap.add_argument("--measure", nargs=2, metavar=("READER", "ANNO"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure[0], Path(args.measure[1]), args.workers, args.reads)))
        return
    from vidmask.data import build_store

    rows, notes = [], []
    json_per_entry = 1000  # bytes per entry of the JSON list, until one is measured
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            anno = Path(tmp) / f"webvid_{n}.json"
            t0 = time.perf_counter()
            webvid_like(anno, n)
            made = time.perf_counter() - t0
            t0 = time.perf_counter()
            store = build_store(anno, anno.with_name(anno.name + ".index"))  # where load_store finds it
            built = time.perf_counter() - t0
            disk = store.nbytes
            print(f"{n} entries: JSON {anno.stat().st_size / MB:.0f} MB written in {made:.1f} s, store "
                  f"{disk / MB:.0f} MB built in {built:.1f} s", file=sys.stderr)
            del store
            for reader in ("json", "store"):
                if reader == "json" and (n > args.json_max or n * json_per_entry > JSON_LIMIT):
                    notes.append(f"The JSON list of {n:,} entries is not loaded: at the {json_per_entry:.0f} bytes "
                                 f"per entry measured above it takes ~{n * json_per_entry / 1e9:.0f} GB per rank "
                                 f"(more while parsing), over the {JSON_LIMIT / 1e9:.0f} GB this bench allows itself.")
                    continue
                m = run_measure(reader, anno, args.workers, args.reads)
                added = m["main"]["VmRSS"] - m["base"]["VmRSS"]
                if reader == "json":
                    json_per_entry = added / n
                ws = m["workers"]
                rows.append([
                    f"{n:,}", "JSON list (`load_annotations`)" if reader == "json" else "store (`load_store`)",
                    f"{built:.1f}" if reader == "store" else "-", f"{m['ready_s']:.2f}",
                    f"{disk / n:.0f}" if reader == "store" else f"{anno.stat().st_size / n:.0f} (JSON)",
                    f"{added / MB:.1f}", f"{(m['main']['RssAnon'] - m['base']['RssAnon']) / MB:.1f}",
                    f"{m['main']['store'] / MB:.1f}", f"{added / n:.0f}",
                    f"{sum(w['written'] for w in ws) / len(ws) / MB:.1f}",
                    f"{sum(w['VmRSS'] for w in ws) / len(ws) / MB:.0f} "
                    f"({sum(w['store'] for w in ws) / len(ws) / MB:.0f})",
                    f"{(m['main']['PSS'] + sum(w['PSS'] for w in ws)) / MB:.0f}",
                ])
                print(rows[-1], file=sys.stderr)
    body = (f"WebVid-like synthetic annotation files (one caption of 9-15 words per video); each file read by "
            f"one process (after `import vidmask.data`, so torch is loaded) that reads {args.reads} random entries, "
            f"then forks {args.workers} workers (as a DataLoader does) that read {args.reads} random entries each. "
            "*Added* is VmRSS after opening and reading minus before: *anon* is memory of this process alone, "
            "*store* the pages of the memory-mapped store it maps: page cache, shared by every process that maps it and held "
            "once per machine whatever the number of ranks and workers (at most the store's size on disk; the "
            "kernel maps whole folios of it, so 1000 random reads map much of a store). A worker's *written* "
            "memory is its Private_Dirty: its copies-on-write of the parent's pages and its own allocations. "
            "*Worker RSS* is the mean VmRSS of the 4 workers, in brackets its store pages. *PSS, all 5* sums the "
            "proportional set sizes of the process and its workers: what they cost the machine together "
            "(torch included). Store sizes are on disk, the JSON's for comparison. Target: at most 150 bytes per "
            "entry resident per process, and worker memory flat from 10k to 10M entries.\n\n"
            + table(["entries", "reader", "build s", "open s", "bytes / entry on disk", "added MB", "anon MB",
                     "store MB", "added B / entry", "worker written MB", "worker RSS MB", "PSS, all 5 MB"], rows)
            + ("\n\n" + "\n".join(notes) if notes else ""))
    write("anno_scale.md", "Annotation memory at scale", body)


if __name__ == "__main__":
    main()
