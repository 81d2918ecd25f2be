"""A store built in parts across ranks: the folder layout of the teacher cache and the caption feature store.

A store folder holds rows (a teacher's frames, a text tower's captions) split
into W contiguous shares, one per rank (:func:`share`). Rank r writes the part
of its share ``[lo, hi)``: every file under a temporary name, renamed when
complete, and the part's JSON (``part-lo-hi.json``) last, so a part with a
JSON is complete and a build that was interrupted reuses it. When every
rank's part is written, rank 0 joins them into ``index.json`` (:data:`INDEX`,
written last: its presence means the store is complete, and a folder without
one is never read) and every rank opens the store (:func:`build_in_parts`).

Readers map each part's raw little-endian files where they are with
``numpy.memmap`` (:func:`mapped_rows`; no merge: a merge of a 1 TB cache would
copy it once more) and gather rows across parts without concatenating them
(:func:`gather_parts`). The ranks of a node map the same files and share the
page cache.

    lo, hi = share(rows, rank, world)
    build_in_parts(rows, rank, world, barrier, build_part=..., write_index=...)
    parts = read_parts(folder, rows, world, "teacher cache")   # each part's JSON, in order
    x = gather_parts([mapped_rows(...) for ...], first_rows, at)  # rows `at` of the parts laid end to end
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

INDEX = "index.json"


def share(rows: int, rank: int, world: int) -> tuple[int, int]:
    """Rank ``rank``'s contiguous share ``[lo, hi)`` of ``rows`` rows split over ``world`` ranks."""
    return rank * rows // world, (rank + 1) * rows // world


def part_name(lo: int, hi: int) -> str:
    """The file stem of the part of rows ``[lo, hi)``."""
    return f"part-{lo}-{hi}"


def write_json(path: str | Path, value, indent: int | None = None) -> None:
    """Write ``value`` as JSON under a temporary name, then rename: a reader sees the whole file or none."""
    path = Path(path)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(value, indent=indent))
    os.replace(tmp, path)


def finished_part(folder: str | Path, lo: int, hi: int) -> dict | None:
    """The JSON of the part of rows ``[lo, hi)`` in ``folder`` when that part is complete, else None."""
    done = Path(folder) / f"{part_name(lo, hi)}.json"
    return json.loads(done.read_text()) if done.is_file() else None


def read_parts(folder: str | Path, rows: int, world: int, what: str, unit: str = "rows") -> list[dict]:
    """The JSON of every non-empty part of a ``world``-rank build of ``rows`` rows in ``folder``, in order;
    a FileNotFoundError naming the rank whose part is missing (``what``: the store, for the message;
    ``unit``: what a share counts)."""
    parts = []
    for r in range(world):
        lo, hi = share(rows, r, world)
        if hi == lo:
            continue
        part = finished_part(folder, lo, hi)
        if part is None:
            raise FileNotFoundError(f"{what} {folder}: rank {r}'s part {part_name(lo, hi)}.json ({unit} {lo}-{hi}) "
                                    "was not written; its build failed (see that rank's log)")
        parts.append(part)
    return parts


def build_in_parts(rows: int, rank: int, world: int, barrier: Callable[[], None] | None,
                   build_part: Callable[[int, int], object], write_index: Callable[[], object]) -> None:
    """Run by every one of ``world`` ranks: ``build_part(lo, hi)`` of this rank's share of ``rows``, a wait
    for every rank at ``barrier`` (the trainer's, bounded by ``train.dist_timeout_min``; None: one
    process), ``write_index()`` on rank 0, and a wait for it."""
    wait = barrier or (lambda: None)
    build_part(*share(rows, rank, world))
    wait()  # every part written
    if rank == 0:
        write_index()
    wait()  # the index written


def mapped_rows(path: str | Path, dtype: str, rows: int, shape: Sequence[int], what: str) -> np.ndarray:
    """A part's raw file of ``rows`` rows of ``shape`` values of ``dtype`` (e.g. ``"<f2"``), memory-mapped
    read-only; a ValueError when its size is not that (``what``: the store's folder, for the message)."""
    path = Path(path)
    expected = rows * math.prod(shape) * np.dtype(dtype).itemsize
    if path.stat().st_size != expected:
        raise ValueError(f"{path} has {path.stat().st_size} bytes, expected {expected}: delete {what} and it "
                         "is built again")
    if not rows:
        return np.zeros((0, *shape), dtype)  # numpy cannot map an empty file
    # mode "c": copy-on-write pages, never written, so all readers share the page cache
    return np.memmap(path, dtype=dtype, mode="c", shape=(rows, *shape))


def gather_parts(arrays: Sequence[np.ndarray], starts: Sequence[int], at: np.ndarray) -> np.ndarray:
    """Rows ``at`` int[R] of the concatenation of ``arrays`` (array p's first row being row ``starts[p]``)
    -> [R, ...], copying only those rows out of each (memory-mapped) array; no concatenation is made."""
    part = np.searchsorted(starts, at, side="right") - 1  # (R,) an empty array is never chosen
    out = np.empty((at.size, *arrays[0].shape[1:]), arrays[0].dtype)  # (R, ...)
    for p in np.unique(part):
        sel = np.nonzero(part == p)[0]  # (R_p,)
        out[sel] = arrays[p][at[sel] - starts[p]]  # (R_p, ...)
    return out
