"""Annotation files as memory-mapped columns: no Python object per entry.

:func:`load_annotations` turns a JSON list into one :class:`VideoText` per
entry, about 1 KB each: 10 GB per rank for WebVid-10M, and DataLoader
workers forked from it copy the pages they touch, because reading an object
writes its reference count. An :class:`AnnoStore` keeps the same entries as
flat byte buffers plus int64 offsets in ``.npy`` files opened with
``np.load(mmap_mode="r")``: every process maps the same page cache, nothing
is copied on fork, and ``store[i]`` builds entry i's :class:`VideoText` only
when it is asked for. A WebVid-like entry takes 138 bytes on disk, and at
most that resident (bench/results/anno_scale.md).

NumPy only, not Arrow (the format HF datasets use for the same purpose):
pyarrow is no dependency of vidmask, would be its largest one, and four
string columns need nothing of it but an offsets array.

Layout of a store folder (``ANNO.index/`` beside the annotation file, by
default)::

    header.json             version, entry and caption counts, the source file's fingerprint, media root
    path.bytes.npy          uint8: each entry's media path as written in the file, UTF-8, concatenated
    path.offsets.npy        int64 (N+1,): entry i's path is path.bytes[off[i]:off[i+1]]
    caption.bytes.npy       uint8: every caption of every entry, in order, concatenated
    caption.offsets.npy     int64 (C+1,): caption j is caption.bytes[off[j]:off[j+1]]
    entry_captions.npy      int64 (N+1,): entry i's captions are captions [ec[i], ec[i+1])
    caption_video.npy       int64 (C,): the entry of each caption (the ``text_to_video`` of retrieval)
    is_image.npy            bool (N,)
    meta.bytes.npy          uint8: each entry's other keys as compact JSON ("" for none)
    meta.offsets.npy        int64 (N+1,)

Paths are kept as written and joined with the media root when read, as
:func:`load_annotations` joins them, so one store serves any ``root``.

    build_store("train.json", "train.json.index")   # one pass over the JSON
    store = load_store("train.json")                # cached beside it, rebuilt when the JSON changes
    store[i] -> VideoText; store.captions(i); len(store); for item in store: ...
"""

from __future__ import annotations

import hashlib
import json
import logging
import operator
import os
import re
import shutil
import tempfile
from array import array
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from vidmask.data.annotations import AnnotationError, VideoText, _fail, _parse_entry, load_annotations

log = logging.getLogger(__name__)

STORE_VERSION = 1  # bump when the layout changes: an older store is rebuilt, never misread
HEADER = "header.json"
ENDS = 1 << 20  # the fingerprint hashes the source's first and last MiB
CHUNK = 1 << 24  # characters of JSON text decoded at a time while building
_WS = re.compile(r"[ \t\n\r]*")  # JSON whitespace


# --- building -------------------------------------------------------------------------


class _Unwritable(OSError):
    """The store's folder cannot be created where it was asked for (read-only media)."""


class _Malformed(Exception):
    """The streaming reader met text that is not a JSON list of values."""


def fingerprint(path: Path) -> dict:
    """What decides whether a store still matches its annotation file: size, mtime and a hash of
    both ends. Hashing the whole file (0.8 GB for WebVid-10M) would cost every rank seconds at start."""
    st = path.stat()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read(ENDS))
        if st.st_size > ENDS:
            f.seek(max(ENDS, st.st_size - ENDS))
            h.update(f.read(ENDS))
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256_ends": h.hexdigest()}


def _entries(path: Path) -> Iterator[object]:
    """The values of a top-level JSON list, decoded one at a time from chunks of the file, so the
    whole list never exists in memory. Raises :class:`_Malformed` on anything else."""
    decode = json.JSONDecoder().raw_decode
    with open(path, encoding="utf-8-sig") as f:  # -sig: skip a byte-order mark, as load_annotations does
        buf, pos, eof = "", 0, False

        def more() -> bool:
            nonlocal buf, pos, eof
            if eof:
                return False
            chunk = f.read(CHUNK)
            eof = not chunk
            buf, pos = buf[pos:] + chunk, 0
            return not eof

        def skip() -> str:
            """The next non-blank character ("" at the end of the file)."""
            nonlocal pos
            while True:
                pos = _WS.match(buf, pos).end()
                if pos < len(buf) or not more():
                    return buf[pos : pos + 1]

        if skip() != "[":
            raise _Malformed
        pos += 1
        if skip() == "]":
            pos += 1
        else:
            while True:
                skip()
                while True:
                    try:
                        value, pos = decode(buf, pos)
                        break
                    except json.JSONDecodeError:
                        if not more():  # not a value cut by the chunk's end: bad JSON
                            raise _Malformed from None
                yield value
                c = skip()
                pos += 1
                if c == "]":
                    break
                if c != ",":
                    raise _Malformed
        if skip():
            raise _Malformed  # text after the list


def _save(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, array)
        _sync(f)


def _sync(f) -> None:
    """On disk before the folder is renamed into place: a crash must not leave a store whose header
    is there and whose columns are not (and clean pages do not show as a process's own memory)."""
    f.flush()
    os.fsync(f.fileno())


def _utf8(s: str) -> bytes:
    return s.encode("utf-8", "surrogatepass")  # JSON may hold a lone surrogate ("\ud800"); keep it


class _Column:
    """One variable-length column being written: bytes streamed to a file, offsets kept in memory
    (8 bytes per row)."""

    def __init__(self, folder: Path, name: str):
        self.folder, self.name = folder, name
        self.raw = open(folder / f"{name}.raw", "wb")
        self.offsets = array("q", [0])
        self.size = 0

    def add(self, data: bytes) -> None:
        self.raw.write(data)
        self.size += len(data)
        self.offsets.append(self.size)

    def finish(self) -> None:
        self.raw.close()
        raw = self.folder / f"{self.name}.raw"
        _save(self.folder / f"{self.name}.offsets.npy", np.frombuffer(self.offsets, np.int64))  # (rows+1,)
        with open(self.folder / f"{self.name}.bytes.npy", "wb") as out, open(raw, "rb") as src:
            np.lib.format.write_array_header_1_0(out, {"descr": "|u1", "fortran_order": False, "shape": (self.size,)})
            shutil.copyfileobj(src, out, 1 << 22)
            _sync(out)
        raw.unlink()


def _write_columns(anno: Path, folder: Path) -> dict:
    """Every entry of ``anno`` into the columns in ``folder``; the header's counts."""
    paths, captions, metas = _Column(folder, "path"), _Column(folder, "caption"), _Column(folder, "meta")
    entry_captions = array("q", [0])
    is_image = bytearray()
    missing_caption, first_missing = 0, None
    i = -1
    try:
        for i, entry in enumerate(_entries(anno)):
            rel = entry.get("video") if type(entry) is dict and len(entry) == 2 else None
            cap = entry.get("caption") if rel is not None else None
            if type(rel) is str and rel and type(cap) is str:
                # the common case (WebVid: video + one caption), checked here, not by _parse_entry
                paths.add(_utf8(rel))
                captions.add(_utf8(cap))
                metas.add(b"")
                is_image.append(0)
            else:
                # everything else is checked as load_annotations checks it, with its error messages
                item = _parse_entry(entry, i, anno, Path(), require_caption=False)
                if "caption" not in entry:
                    missing_caption += 1
                    first_missing = i if first_missing is None else first_missing
                paths.add(_utf8(entry["image" if item.is_image else "video"]))
                for c in item.captions:
                    captions.add(_utf8(c))
                metas.add(_utf8(json.dumps(item.meta, ensure_ascii=False, separators=(",", ":"))) if item.meta else b"")
                is_image.append(item.is_image)
            entry_captions.append(len(captions.offsets) - 1)
    except (_Malformed, UnicodeDecodeError, AnnotationError) as e:
        # a bad file: the whole-file reader names its first fault (a syntax error after a bad entry
        # included) in its own words; reading it all costs memory, but only on the way to an error
        load_annotations(anno, require_caption=False)
        if isinstance(e, AnnotationError):
            raise
        raise _fail(anno, "not a JSON list of entries", "Fix the file; it must be a JSON list of entries") from None
    for col in (paths, captions, metas):
        col.finish()
    ec = np.frombuffer(entry_captions, np.int64)  # (N+1,)
    _save(folder / "entry_captions.npy", ec)
    _save(folder / "caption_video.npy", np.repeat(np.arange(len(ec) - 1, dtype=np.int64), np.diff(ec)))  # (C,)
    _save(folder / "is_image.npy", np.frombuffer(is_image, np.bool_))  # (N,)
    return {"entries": i + 1, "captions": int(ec[-1]),
            "missing_caption": {"count": missing_caption, "first": first_missing}}


def build_store(anno_path: str | Path, out: str | Path, root: str | Path | None = None,
                *, source: dict | None = None) -> AnnoStore:
    """Write the store of annotation file ``anno_path`` to folder ``out`` and open it.

    One pass over the JSON, an entry at a time: the memory used is the columns' offsets (about 33
    bytes per entry), not a Python object per entry. Entries are checked as :func:`load_annotations`
    checks them, with its messages (:class:`AnnotationError`); entries without a caption are kept
    and counted, and refused when the store is loaded with ``require_caption=True``. ``root``
    (default: the annotation file's folder) is recorded as the media root :meth:`AnnoStore.open`
    uses when given none. The folder appears whole or not at all (built aside, then renamed), so
    processes building the same store at once do not read a half-written one.
    """
    anno, out = Path(anno_path), Path(out)
    if not anno.is_file():
        raise _fail(anno, "annotation file not found", "Check the path")
    if out.exists() and not (out / HEADER).is_file() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is no annotation store: give a new or empty folder")
    source = source or fingerprint(anno)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as e:
        raise _Unwritable(e.errno, f"cannot write beside {out}: {e.strerror or e}") from e
    try:
        counts = _write_columns(anno, work)
        header = {"format": "vidmask annotation store", "version": STORE_VERSION, **counts,
                  "source": {"path": str(anno.absolute()), **source},
                  "root": str(Path(root if root is not None else anno.parent).absolute())}
        with open(work / HEADER, "w") as f:
            f.write(json.dumps(header, indent=2))
            _sync(f)
        _install(work, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return AnnoStore.open(out, root)


def _install(work: Path, out: Path) -> None:
    """Put the finished folder ``work`` at ``out``, replacing an older store there. A store already
    open elsewhere keeps working: its mapped files live until it closes them."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
        try:
            out.rename(old / "store")
        except FileNotFoundError:
            pass  # another process replaced it meanwhile
    try:
        work.rename(out)
    except OSError:
        if not (out / HEADER).is_file():  # not another process's store installed meanwhile
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# --- reading --------------------------------------------------------------------------


def _mapped(folder: Path, name: str) -> np.ndarray:
    # a plain ndarray view of the np.memmap: slicing it skips memmap's per-slice bookkeeping
    return np.load(folder / f"{name}.npy", mmap_mode="r").view(np.ndarray)


class _Texts(Sequence):
    """Every caption of a store as one lazy sequence of strings (``texts`` of retrieval)."""

    def __init__(self, store: AnnoStore):
        self._store = store

    def __len__(self) -> int:
        return len(self._store._cap_off) - 1

    def __getitem__(self, j):
        if isinstance(j, slice):
            return [self[k] for k in range(*j.indices(len(self)))]
        n, j = len(self), operator.index(j)
        if not -n <= j < n:
            raise IndexError(f"caption {j} of {n}")
        return self._store._text(self._store._cap_bytes, self._store._cap_off, j % n)


class AnnoStore(Sequence):
    """The entries of an annotation file, read from memory-mapped columns.

    ``store[i]`` is the :class:`VideoText` :func:`load_annotations` returns for entry i (a slice
    gives a list of them), built on access; nothing per entry is held in Python. Pickling keeps
    only the folder and root, so a spawned DataLoader worker maps the same files again.
    """

    def __init__(self, folder: Path, root: Path, header: dict):
        self.folder, self.root, self.header = folder, root, header
        self._path_bytes, self._path_off = _mapped(folder, "path.bytes"), _mapped(folder, "path.offsets")
        self._cap_bytes, self._cap_off = _mapped(folder, "caption.bytes"), _mapped(folder, "caption.offsets")
        self._meta_bytes, self._meta_off = _mapped(folder, "meta.bytes"), _mapped(folder, "meta.offsets")
        self._entry_caps = _mapped(folder, "entry_captions")  # (N+1,)
        self._is_image = _mapped(folder, "is_image")  # (N,)
        self.text_to_video = _mapped(folder, "caption_video")  # (C,) int64, the entry of each caption
        self.texts = _Texts(self)  # (C,) every caption, lazily
        self._n = len(self._is_image)

    @classmethod
    def open(cls, path: str | Path, root: str | Path | None = None) -> AnnoStore:
        """The store in folder ``path``; media paths are joined with ``root`` (default: the root
        recorded when it was built)."""
        folder = Path(path)
        header = read_header(folder)
        if header is None:
            raise AnnotationError(f"{folder}: not a vidmask annotation store of version {STORE_VERSION}. "
                                  "Build it with `vidmask anno index`")
        return cls(folder, Path(root) if root is not None else Path(header["root"]), header)

    def __reduce__(self):
        return AnnoStore.open, (self.folder, self.root)

    def __len__(self) -> int:
        return self._n

    def _index(self, i) -> int:
        i = operator.index(i)
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError(f"entry {i} of an annotation store of {self._n}")
        return i

    def _text(self, data: np.ndarray, offsets: np.ndarray, i: int) -> str:
        a, b = offsets[i : i + 2].tolist()
        return data[a:b].tobytes().decode("utf-8", "surrogatepass")

    def rel_path(self, i: int) -> str:
        """Entry i's media path as written in the annotation file."""
        return self._text(self._path_bytes, self._path_off, self._index(i))

    def captions(self, i: int) -> list[str]:
        """Entry i's captions."""
        i = self._index(i)
        c0, c1 = self._entry_caps[i : i + 2].tolist()
        offs = self._cap_off[c0 : c1 + 1].tolist()  # (c+1,)
        blob = self._cap_bytes[offs[0] : offs[-1]].tobytes()
        return [blob[a - offs[0] : b - offs[0]].decode("utf-8", "surrogatepass") for a, b in zip(offs, offs[1:])]

    def meta(self, i: int) -> dict:
        """Entry i's other keys (question, answer, ...)."""
        text = self._text(self._meta_bytes, self._meta_off, self._index(i))
        return json.loads(text) if text else {}

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(self._n))]
        i = self._index(i)
        return VideoText(path=self.root / self.rel_path(i), captions=self.captions(i),
                         is_image=bool(self._is_image[i]), meta=self.meta(i))

    def __iter__(self) -> Iterator[VideoText]:
        for i in range(self._n):
            yield self[i]

    @property
    def nbytes(self) -> int:
        """Size of the store's files on disk."""
        return sum(f.stat().st_size for f in self.folder.iterdir())

    def __repr__(self) -> str:
        return f"AnnoStore({str(self.folder)!r}, {self._n} entries, root={str(self.root)!r})"


def read_header(folder: Path) -> dict | None:
    """The header of the store in ``folder``, or None when there is none of this version."""
    try:
        header = json.loads((Path(folder) / HEADER).read_text())
    except (OSError, ValueError):
        return None
    return header if isinstance(header, dict) and header.get("version") == STORE_VERSION else None


# --- the cached store of an annotation file ----------------------------------------------


def cache_dir(anno: Path) -> Path:
    """Where the store of ``anno`` goes when its own folder is read-only."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "vidmask" / "anno" / hashlib.sha256(str(anno.resolve()).encode()).hexdigest()[:16]


def _current(folder: Path, source: dict) -> bool:
    header = read_header(folder)
    return header is not None and {k: header["source"].get(k) for k in source} == source


def load_store(
    anno_path: str | Path, root: str | Path | None = None, *, require_caption: bool = True,
    unique: bool = False, nonempty: bool = False,
) -> AnnoStore:
    """:func:`load_annotations`, as a store: the same items, the same errors, memory-mapped.

    The store lives beside the annotation file (``ANNO.index/``), built on first use and rebuilt
    when the file's size, mtime or ends changed. Where that folder cannot be written (read-only
    media) it goes to ``$XDG_CACHE_HOME/vidmask/anno/<hash>/`` (default ``~/.cache``), with a log
    line. ``root``, ``require_caption``, ``unique`` and ``nonempty`` mean what they mean there.
    """
    anno = Path(anno_path)
    root = anno.parent if root is None else Path(root)
    if not anno.is_file():
        raise _fail(anno, "annotation file not found", "Check the path in the config")
    source = fingerprint(anno)
    beside, cached = anno.with_name(anno.name + ".index"), cache_dir(anno)
    folder = next((f for f in (beside, cached) if _current(f, source)), None)
    if folder is None:
        try:
            build_store(anno, beside, source=source)
            folder = beside
        except _Unwritable as e:
            log.info("%s; building its annotation index in %s instead", e, cached)
            build_store(anno, cached, source=source)
            folder = cached
    store = AnnoStore.open(folder, root)
    _check(store, anno, require_caption, unique, nonempty)
    return store


def _check(store: AnnoStore, anno: Path, require_caption: bool, unique: bool, nonempty: bool) -> None:
    """load_annotations' file-level checks, with its messages."""
    first = store.header["missing_caption"]["first"]
    if require_caption and first is not None:
        entry = {"image" if store[first].is_image else "video": store.rel_path(first), **store.meta(first)}
        _parse_entry(entry, first, anno, store.root, require_caption=True)  # raises, naming the entry's keys
    if nonempty and not len(store):
        raise _fail(anno, "holds no entries", "Evaluation needs at least one; check the file is the right one")
    if unique:  # evaluation files: small enough for a dict of every entry
        seen: dict[tuple, int] = {}
        for i, it in enumerate(store):
            j = seen.setdefault((it.path, it.is_image, tuple(it.captions), json.dumps(it.meta, sort_keys=True)), i)
            if j != i:
                raise _fail(anno, f"entries {j} and {i} are the same ({store.rel_path(i)!r}, same captions)",
                            "Remove one: evaluation would count it twice")
