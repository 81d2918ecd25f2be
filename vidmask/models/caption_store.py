"""A frozen text tower's caption features, computed once, stored in float16, looked up by a hash of the caption.

A frozen text tower (``model.text.trainable_layers=0``, the default) gives a
caption the same features every time. Without a store, training encodes the
distinct captions into a bounded in-memory LRU before step 1, every run
(:mod:`vidmask.models.caption_cache`; about 10 minutes for 20k videos on a
CPU, and a fraction of WebVid's 10M captions at most). A store
(``model.text.feature_store``) is built once, by every rank its share, and
read from memory-mapped files by every later run:

    store = cached_or_built(folder, text.store_identity(), text.encode_frozen, text.width, captions)
    feats, found = store.lookup(captions)       # float32[B,W], bool[B] (a miss: zeros)
    feats = stored_features(store, captions, encode_misses)  # misses encoded on the fly

**Keys, not an index.** A caption's key is the 128-bit blake2b digest of its
UTF-8 text, kept as two uint64 columns: ``keys.u64`` (the first 64 bits,
ascending) and ``checks.u64`` (the other 64). Row i of the features is the
caption of ``keys[i]``, so a lookup is ``np.searchsorted`` on the mapped key
column (24 probes at 10M) and a comparison of both words: no caption list, no
dict, nothing per caption in memory, and it serves captions that have no
global position (tar shards). At 10M captions the keys take 160 MB and the
features (MiniLM, W=384) 7.7 GB, on disk and mapped, not loaded.

**Duplicates and collisions.** Captions are deduplicated before the build by
their 128-bit digest: equal digests are the same text (a false merge has
probability about n^2 / 2^129, 1e-25 at 10M). Two different texts whose
first 64 bits agree (probability about n^2 / 2^65: 3e-6 at 10M, once in
300,000 builds) are both left out of the store (:func:`store_plan` counts
them in ``collisions``) and encoded on the fly when asked for, so no
caption is ever served another's features. A caption outside the store
that shares a stored caption's first 64 bits fails the check word and is a
miss: a wrong hit needs all 128 bits to agree. The check column costs 8
bytes a caption (1 % of MiniLM's 768 bytes of features); a 64-bit key alone
would make such a wrong hit possible (probability about m x n / 2^64 for m
outside captions: 5e-6 for 10M against 10M), silently.

**Bound to the tower.** :meth:`TextEncoder.store_identity
<vidmask.models.text.TextEncoder.store_identity>` digests what the features
depend on: the weights (their bytes, so a randomly initialised or fine-tuned
tower is told apart from the packaged one), the tokenizer, the BERT config,
``max_len`` and the pooling. Not ``init`` (its path): the same bytes in
another folder are the same features, as for the teacher cache's key. The
store's folder inside ``model.text.feature_store`` is named by a hash of that
identity, the caption set and :data:`FORMAT` (:func:`store_key`), so another
tower or another annotation file gets its own store, built on first use;
:class:`CaptionStore` opened on a folder directly refuses one whose
``index.json`` records another identity (a :class:`ConfigError` saying how
they differ), and a folder with no ``index.json`` (a build that did not
finish) is never read.

**Files**, the layout of :mod:`vidmask.data.parts`: per rank a part of its
contiguous share of the rows in key order, ``part-lo-hi.f16`` (raw
little-endian float16, [rows, W]) and ``part-lo-hi.json`` written last; rank 0
writes ``keys.u64``, ``checks.u64`` and ``index.json`` last. Each part is
encoded in windows of :data:`WINDOW` captions sorted by length (a batch pads
to its longest caption), each window appended to the file at once, so a
rank's memory does not grow with its share.

**Across ranks.** Every rank hashes every caption (1.4 to 1.7 us a caption
read from an annotation store: some 15 s at 10M, also when the store exists,
since the caption set names it) and sorts the digests into the same plan
(:func:`store_plan`), so no collective is needed to agree on the rows; rank r
encodes rows ``share(R, r, W)`` only, all wait at the trainer's barrier
(bounded by ``train.dist_timeout_min``), rank 0 writes the index.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from itertools import islice
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from vidmask.config import ConfigError
from vidmask.data.parts import (INDEX, build_in_parts, finished_part, gather_parts, mapped_rows, part_name,
                                read_parts, write_json)

log = logging.getLogger(__name__)

FORMAT = 1  # bump when what is stored changes
WINDOW = 16384  # captions encoded per length-sorted window (W float16 values each held until written)
KEY_BYTES = 16  # keys.u64 + checks.u64 per caption


def caption_hashes(captions: Iterable[str], chunk: int = 1 << 16) -> np.ndarray:
    """The 128-bit blake2b digest of each caption's UTF-8 text -> uint64[n,2] (key, check), ``chunk`` at a time."""
    it, out = iter(captions), []
    while block := list(islice(it, chunk)):
        digests = b"".join(hashlib.blake2b(c.encode("utf-8", "surrogatepass"), digest_size=16).digest()
                           for c in block)
        out.append(np.frombuffer(digests, "<u8").reshape(-1, 2))  # (b, 2)
    return np.concatenate(out).astype(np.uint64) if out else np.zeros((0, 2), np.uint64)  # (n, 2)


def store_plan(hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The rows of a store of the captions of ``hashes`` uint64[n,2] (:func:`caption_hashes`, in list order).

    Returns ``keys`` uint64[R] ascending, ``checks`` uint64[R], ``source`` int64[R] (the list position
    of the first occurrence of row r's caption) and the number of distinct captions left out because
    another shares their key (a 64-bit collision). Duplicates (equal digests) become one row.
    """
    order = np.lexsort((hashes[:, 1], hashes[:, 0]))  # (n,) by key, then check; stable: first occurrence first
    h = hashes[order]  # (n, 2)
    first = np.ones(len(h), bool)  # (n,)
    first[1:] = (h[1:] != h[:-1]).any(1)
    distinct, source = h[first], order[first]  # (D, 2), (D,)
    shared = distinct[1:, 0] == distinct[:-1, 0]  # (D-1,) a key held by two distinct captions
    clash = np.zeros(len(distinct), bool)  # (D,)
    clash[1:] |= shared
    clash[:-1] |= shared
    keep = ~clash
    return distinct[keep, 0], distinct[keep, 1], source[keep].astype(np.int64), int(clash.sum())


def _without_init(tower: dict) -> dict:
    return {k: v for k, v in tower.items() if k != "init"}  # the path is no part of what features depend on


def store_key(tower: dict, keys: np.ndarray, checks: np.ndarray) -> str:
    """A short hex name for the store of these caption rows (:func:`store_plan`) through this tower."""
    h = hashlib.sha256(json.dumps({"format": FORMAT, "tower": _without_init(tower)}, sort_keys=True).encode())
    h.update(np.ascontiguousarray(keys, "<u8").tobytes())
    h.update(np.ascontiguousarray(checks, "<u8").tobytes())
    return h.hexdigest()[:16]


def store_folder(folder: str | Path, tower: dict, key: str) -> Path:
    """Where the store of this key lives inside ``folder`` (model.text.feature_store)."""
    init = str(tower.get("init", "text"))
    label = init if init in ("minilm", "random") else Path(init).name or "text"
    return Path(folder) / f"{label}-{key}"


def projected_bytes(rows: int, width: int) -> int:
    """Bytes of a store of ``rows`` captions of ``width`` float16 values (features plus keys)."""
    return rows * (width * 2 + KEY_BYTES)


# ---- building -----------------------------------------------------------------


def build_part(encode: Callable[[list[str]], Tensor], captions: Sequence[str], source: np.ndarray, lo: int, hi: int,
               folder: str | Path, width: int, batch_size: int = 256, progress: bool = False,
               desc: str = "caption store", position: int = 0) -> dict | None:
    """Encode rows ``[lo, hi)`` (row r: ``captions[source[r]]``) into ``folder/part-lo-hi.f16``; return the
    part's JSON (None for an empty share). ``encode(list of b str) -> float[b,W]`` is the frozen tower.
    A part whose JSON exists (an interrupted build got that far) is returned as it is."""
    from tqdm import tqdm

    if hi == lo:
        return None
    folder = Path(folder)
    done = finished_part(folder, lo, hi)
    if done is not None:
        return done
    folder.mkdir(parents=True, exist_ok=True)
    name = part_name(lo, hi)
    final = folder / f"{name}.f16"
    tmp = final.with_name(f"{final.name}.tmp{os.getpid()}")
    bar = tqdm(total=hi - lo, desc=desc, disable=not progress, dynamic_ncols=True, position=position, unit="caption")
    with tmp.open("wb") as out:
        for start in range(lo, hi, WINDOW):
            texts = [captions[int(j)] for j in source[start : min(start + WINDOW, hi)]]  # w captions, row order
            by_length = np.argsort([len(t) for t in texts], kind="stable")  # (w,) a batch pads to its longest
            window = np.empty((len(texts), width), "<f2")  # (w, W)
            for s in range(0, len(texts), batch_size):
                at = by_length[s : s + batch_size]  # (b,)
                feats = encode([texts[i] for i in at]).detach().float().cpu()  # (b, W)
                half = feats.half()  # (b, W)
                if not bool(torch.isfinite(half).all()):
                    raise ValueError(f"caption store: the text tower's features exceed float16's range (largest "
                                     f"{float(feats.abs().max()):.4g}); set model.text.feature_store=''")
                window[at] = half.numpy()
                bar.update(len(at))
            out.write(window.tobytes())
    bar.close()
    tmp.replace(final)
    part = {"format": FORMAT, "name": name, "first": lo, "rows": hi - lo, "width": width}
    write_json(folder / f"{name}.json", part)  # the JSON last: a part with one is complete
    return part


def write_index(folder: str | Path, keys: np.ndarray, checks: np.ndarray, world: int, meta: dict) -> dict:
    """Join the parts of a ``world``-rank build of rows ``keys`` into ``folder``: the key columns, then
    ``index.json`` (last)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    parts = [{"name": p["name"], "first": p["first"], "rows": p["rows"]}
             for p in read_parts(folder, len(keys), world, "caption store")]
    for name, column in (("keys.u64", keys), ("checks.u64", checks)):
        tmp = folder / f"{name}.tmp"
        np.ascontiguousarray(column, "<u8").tofile(tmp)
        tmp.replace(folder / name)
    index = {**meta, "format": FORMAT, "captions": len(keys), "parts": parts}
    write_json(folder / INDEX, index, indent=1)
    return index


# ---- reading ------------------------------------------------------------------


class CaptionStore:
    """Frozen caption features by caption, read from a store folder (memory-mapped; nothing per caption held).

    ``tower``: the identity of the tower that will read it (:meth:`TextEncoder.store_identity`); a
    store built by another is refused. None: not checked.
    """

    def __init__(self, folder: str | Path, tower: dict | None = None):
        folder = Path(folder)
        if not (folder / INDEX).is_file():
            raise FileNotFoundError(f"caption store {folder} does not exist or was not finished (no {INDEX})")
        self.folder = folder
        self.meta = index = json.loads((folder / INDEX).read_text())
        if index.get("format") != FORMAT or "parts" not in index:
            raise ValueError(f"{folder} is not a vidmask caption store of format {FORMAT} "
                             "(written by vidmask.models.caption_store); delete it and it is built again")
        if tower is not None and _without_init(index["tower"]) != _without_init(tower):
            differ = ", ".join(k for k in sorted(set(index["tower"]) | set(tower))
                               if k != "init" and index["tower"].get(k) != tower.get(k))
            raise ConfigError(f"model.text.feature_store: {folder} holds the caption features of another text "
                              f"tower (built by init={index['tower'].get('init')!r}; this tower is "
                              f"init={tower.get('init')!r}; they differ in {differ}): point "
                              "model.text.feature_store at the folder that holds the stores (each tower gets its "
                              "own there), or delete this one")
        self.width = int(index["width"])
        rows = int(index["captions"])
        self.keys = mapped_rows(folder / "keys.u64", "<u8", rows, (), folder)  # (R,) ascending
        self.checks = mapped_rows(folder / "checks.u64", "<u8", rows, (), folder)  # (R,)
        self.parts = [mapped_rows(folder / f"{p['name']}.f16", "<f2", p["rows"], (self.width,), folder)
                      for p in index["parts"]]  # each (R_p, W)
        self.part_rows = [p["first"] for p in index["parts"]]

    @classmethod
    def load(cls, folder: str | Path, tower: dict | None = None) -> "CaptionStore":
        return cls(folder, tower)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def nbytes(self) -> int:
        """Bytes of the features and keys (on disk; mapped, not held, in memory)."""
        return sum(a.nbytes for a in self.parts) + self.keys.nbytes + self.checks.nbytes

    def rows(self, captions: Sequence[str]) -> np.ndarray:
        """The row of each caption, -1 where it is not stored -> int64[B]."""
        h = caption_hashes(captions)  # (B, 2)
        if not len(self):
            return np.full(len(h), -1, np.int64)
        at = np.searchsorted(self.keys, h[:, 0]).clip(max=len(self) - 1)  # (B,)
        hit = (self.keys[at] == h[:, 0]) & (self.checks[at] == h[:, 1])  # (B,) both 64-bit words agree
        return np.where(hit, at, -1).astype(np.int64)  # (B,)

    def lookup(self, captions: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Features float32[B,W] (zeros where missing) and whether each caption was stored, bool[B]."""
        rows = self.rows(captions)  # (B,)
        found = rows >= 0  # (B,)
        feats = np.zeros((len(rows), self.width), np.float32)  # (B, W)
        if found.any():
            feats[found] = gather_parts(self.parts, self.part_rows, rows[found])  # (B_hit, W) float16 -> float32
        return torch.from_numpy(feats), torch.from_numpy(found)


def stored_features(store: CaptionStore, captions: list[str], encode: Callable[[list[str]], Tensor]) -> Tensor:
    """Features float32[B,W] (CPU) of ``captions``: the stored ones, and the misses from ``encode(list of
    b str) -> [b,W]`` (the tower's bounded LRU, :func:`~vidmask.models.caption_cache.cached_features`)."""
    feats, found = store.lookup(captions)  # (B, W), (B,)
    if not bool(found.all()):
        missing = [c for c, f in zip(captions, found.tolist()) if not f]
        feats[~found] = encode(missing).detach().float().cpu()  # (B_miss, W)
    return feats


def cached_or_built(folder: str | Path, tower: dict, encode: Callable[[list[str]], Tensor], width: int,
                    captions: Sequence[str], rank: int = 0, world: int = 1,
                    barrier: Callable[[], None] | None = None, progress: bool = False,
                    batch_size: int = 256) -> CaptionStore:
    """The store of ``captions`` (every caption of the training annotations, duplicates and all) through
    the tower of identity ``tower`` in ``folder``, built first if missing.

    Run by every one of ``world`` ranks (``rank`` this one's; ``barrier`` makes them wait for each other,
    None: one process). Each rank hashes every caption and plans the same rows (:func:`store_plan`); a
    build logs its projected size, each rank encodes its share with ``encode`` (the frozen tower,
    ``list of b str -> float[b,W]``), rank 0 writes the index, and every rank opens the store.
    """
    keys, checks, source, collisions = store_plan(caption_hashes(captions))  # (R,) each
    path = store_folder(folder, tower, store_key(tower, keys, checks))
    if not (path / INDEX).is_file():
        if rank == 0:
            log.info("building the caption store %s: %d distinct captions (of %d), %.2f GB projected (%d x "
                     "(%d float16 values + %d bytes of keys)), %d rank(s)", path, len(keys), len(captions),
                     projected_bytes(len(keys), width) / 1e9, len(keys), width, KEY_BYTES, world)
            if collisions:
                log.warning("caption store: %d captions share a 64-bit key with another and stay out of the store "
                            "(they are encoded when asked for)", collisions)
        build_in_parts(
            len(keys), rank, world, barrier,
            lambda lo, hi: build_part(encode, captions, source, lo, hi, path, width, batch_size=batch_size,
                                      progress=progress, desc=f"caption store, rank {rank}/{world}", position=rank),
            lambda: write_index(path, keys, checks, world, {"tower": tower, "width": width,
                                                            "collisions": collisions}))
    store = CaptionStore.load(path, tower)
    if rank == 0:
        log.info("caption store %s: %d captions, %.0f MB (float16, memory-mapped)", path, len(store),
                 store.nbytes / 1e6)
    return store
