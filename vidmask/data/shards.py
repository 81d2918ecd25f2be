"""WebDataset tar shards: written from an annotation file, read back as a resumable training stream.

**Layout** (the ``webdataset`` package's): a sample is consecutive tar members that share a
key, ``000000123.mp4`` (the media bytes: any container FFmpeg reads, or an image) and
``000000123.json`` (``{"caption": [...], "source": "videos/x.mp4"}``); a ``.txt`` member is read
as the one caption of shards other tools wrote. ``shards.json`` beside the shards lists each
shard's name and sample count, so the steps of an epoch are known before any shard is opened,
and are the same on every rank. A sample's id is its number in that index (shard offset +
position), which seeds its random choices as an item's index does for loose files.

**Who reads what.** A *unit* is one DataLoader worker of one rank: U = world x workers units,
unit u = rank x workers + worker. Everything below is a pure function of the seed, the epoch,
the index's counts, the rank, the world size and the number of workers:

1. the shard list is permuted by (seed, epoch) (:func:`epoch_shard_order`); its N samples, laid
   end to end in that order, are cut into U contiguous ranges of N // U or N // U + 1 samples
   (:func:`unit_pieces`), so the units' loads differ by one sample whatever the shard sizes; a
   unit reads whole shards plus at most a partial one at each end, stepping over the members
   before its range (from a local file by their headers alone);
2. a shuffle buffer of ``buffer`` samples seeded by (seed, epoch, u) mixes the range; the order
   it emits is computed from the counts alone (:func:`shuffle_order`);
3. every unit emits m = (N // U) // batch_size batches (:func:`batches_per_unit`): each rank takes
   m x workers steps per epoch, the DataLoader taking one batch from each worker in turn. **The
   remainder is dropped**: fewer than batch_size + 1 samples per unit and epoch, mostly the last
   ones of its range, another random set each epoch.

**Exact resume.** Step s is batch b = s mod steps_per_epoch of epoch s div steps_per_epoch.
Resuming there, worker w of the new DataLoader plays worker (b + w) mod workers of the
interrupted one from its batch (b + w) div workers (:func:`resumed_worker`), so the round robin
goes on with the batch the interrupted run would have taken next; a unit re-reads its range but
keeps none of the samples it already emitted: it steps over their tar members (reading their
bytes only from a ``pipe:`` stream) and never decodes their video, which is the expensive part.
The checkpoint records the position (:meth:`ShardStream.position`); the trainer refuses a resume
that would put the step elsewhere (other shards, workers or batch size).

**Bad samples**: a member that does not decode, a missing or unreadable caption, a sample with
no media member, the rest of a truncated shard, fewer samples than the index says: bad-sample
markers, skipped and counted by the trainer as for loose files. A shard that cannot be opened (a
missing file, a ``pipe:`` command that fails) raises :class:`ShardError` naming it; the stream
(:class:`ShardStream`) ends there with a *fatal* marker instead, which collates into a batch with
an ``error`` (an error raised in a DataLoader worker would come back as a multi-line traceback,
and leave the other workers to a slow shutdown).

**URLs**: local paths, or ``pipe:COMMAND`` whose standard output is the tar
(``pipe:curl -sfL https://host/000001.tar``, ``pipe:aws s3 cp s3://bucket/000001.tar -``).
"""

from __future__ import annotations

import glob
import hashlib
import io
import json
import logging
import os
import re
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from vidmask.data.annotations import VideoText
from vidmask.data.dataset import draw_sample, sample_generator
from vidmask.data.transforms import CLIP_MEAN, CLIP_STD, VideoTransform
from vidmask.data.video import MemoryMedia, VideoError, decode_sampled, is_image_path, iter_frames, scaled_size

log = logging.getLogger(__name__)

INDEX_NAME = "shards.json"
INDEX_FORMAT = "vidmask-shards"
CAPTION_SUFFIXES = ("json", "txt")  # every other member of a sample is its media


class ShardError(RuntimeError):
    """A shard that cannot be opened or streamed; the message names it."""


# ---------------------------------------------------------------- URLs

_BRACE = re.compile(r"\{([^{}]*)\}")


def expand_braces(pattern: str) -> list[str]:
    """``a/{000..002}.tar`` -> a/000.tar, a/001.tar, a/002.tar (zero padding as the first bound is
    written); ``{x,y}`` lists alternatives; several braces multiply, left to right."""
    m = _BRACE.search(pattern)
    if m is None:
        return [pattern]
    body, head, tail = m.group(1), pattern[: m.start()], pattern[m.end():]
    r = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if r:
        lo, hi = int(r.group(1)), int(r.group(2))
        if hi < lo:
            raise ValueError(f"{pattern!r}: the range {{{body}}} runs backwards")
        width = len(r.group(1))
        options = [f"{i:0{width}d}" for i in range(lo, hi + 1)]
    elif "," in body:
        options = body.split(",")
    else:
        raise ValueError(f"{pattern!r}: {{{body}}} is neither a range {{000..009}} nor a list {{a,b}}")
    return [head + opt + rest for opt in options for rest in expand_braces(tail)]


def expand_urls(spec: str | Sequence[str]) -> list[str]:
    """Shard URLs from a pattern, a glob or a list of them, in the order given.

    Braces expand first (:func:`expand_braces`); a local pattern with ``*``, ``?`` or ``[`` is then
    a glob (sorted); ``pipe:`` URLs are never globbed."""
    specs = [spec] if isinstance(spec, str) else list(spec)
    urls: list[str] = []
    for s in specs:
        for url in expand_braces(s.strip()):
            if not url.startswith("pipe:") and any(c in url for c in "*?["):
                found = sorted(glob.glob(url))
                if not found:
                    raise FileNotFoundError(f"no shard matches {url!r}")
                urls.extend(found)
            else:
                urls.append(url)
    if not urls:
        raise ValueError("no shards given")
    seen: set[str] = set()
    twice = [u for u in urls if u in seen or seen.add(u)]
    if twice:
        raise ValueError(f"shard {twice[0]!r} is named twice")
    return urls


def is_pipe(url: str) -> bool:
    return url.startswith("pipe:")


def names_local_file(pattern: str) -> bool:
    """Whether a local shard pattern (a brace range, a glob or a path) names at least one existing file
    from the working folder; False for a ``pipe:`` URL or a malformed pattern."""
    try:
        urls = expand_braces(pattern.strip())
    except ValueError:
        return False
    return not is_pipe(pattern) and any(
        glob.glob(u) if any(c in u for c in "*?[") else os.path.isfile(u) for u in urls)


def shard_name(url: str) -> str:
    """The name a shard has in the index: a local file's name, or the last ``*.tar`` word of a
    ``pipe:`` command (``pipe:aws s3 cp s3://b/x/000001.tar -`` -> ``000001.tar``)."""
    if not is_pipe(url):
        return Path(url).name
    words = [w.split("?")[0].rstrip("'\"") for w in url[5:].split() if ".tar" in w]
    if not words:
        raise ValueError(f"{url!r}: no word of the command names a .tar file, so its entry in the index "
                         "is unknown; name the shard in the command")
    return words[-1].rsplit("/", 1)[-1]


class _Stream:
    """A shard's bytes: a local file (seekable), or the standard output of a ``pipe:`` command."""

    def __init__(self, url: str):
        self.url = url
        self.proc: subprocess.Popen | None = None
        if not is_pipe(url):
            try:
                self.file = open(url, "rb")
            except FileNotFoundError:
                raise ShardError(f"shard {url} not found") from None
            except OSError as e:
                raise ShardError(f"shard {url} cannot be opened ({e})") from None
            return
        self.err = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(url[5:], shell=True, stdout=subprocess.PIPE, stderr=self.err)
        self.file = self.proc.stdout

    @property
    def seekable(self) -> bool:
        return self.proc is None

    def failure(self) -> str | None:
        """Once the tar has ended: why a pipe: command failed (its status and the end of its
        standard error), or None."""
        if self.proc is None:
            return None
        while self.file.read(1 << 16):
            pass  # the rest (tar padding) lets the command finish writing
        rc = self.proc.wait()
        if rc == 0:
            return None
        self.err.seek(0)
        tail = self.err.read().decode(errors="replace").strip()[-300:]
        return f"shard {self.url}: the command exited with status {rc}" + (f": {tail}" if tail else "")

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()  # reading stopped before the end: not a failure
        self.file.close()
        if self.proc is not None:
            self.proc.wait()
            self.err.close()


# ---------------------------------------------------------------- the index

@dataclass(frozen=True)
class ShardSet:
    """The shards a run reads, with their sample counts from the index: columns, no per-sample objects."""

    urls: tuple[str, ...]  # in the order given (a run permutes them per epoch)
    counts: np.ndarray  # int64[S] samples per shard
    first_ids: np.ndarray  # int64[S] id of each shard's first sample (its offset in the index)
    resize_short: int = 0  # short side the shards were re-encoded to (0: the source files' bytes)
    index: str = ""  # where the counts came from

    def __len__(self) -> int:
        return int(self.counts.sum())

    @property
    def fingerprint(self) -> str:
        """Names, counts and ids of the shards: what a resume must find unchanged."""
        text = json.dumps([[shard_name(u), int(c), int(f)] for u, c, f in zip(self.urls, self.counts, self.first_ids)])
        return hashlib.sha1(text.encode()).hexdigest()[:16]


def read_index(url: str) -> dict:
    """A ``shards.json`` (a local file, or a ``pipe:`` command that prints it), checked."""
    try:
        if is_pipe(url):
            proc = subprocess.run(url[5:], shell=True, capture_output=True, timeout=600)
            if proc.returncode:
                raise ShardError(f"shard index {url}: the command exited with status {proc.returncode} "
                                 f"({proc.stderr.decode(errors='replace').strip()[-300:]})")
            text = proc.stdout.decode()
        else:
            text = Path(url).read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"shard index {url} not found (`vidmask shards make` writes it beside the "
                                "shards)") from None
    try:
        index = json.loads(text)
        ok = index.get("format") == INDEX_FORMAT and all(
            isinstance(s["name"], str) and isinstance(s["samples"], int) and s["samples"] >= 0
            for s in index["shards"])
    except (ValueError, AttributeError, KeyError, TypeError):
        ok = False
    if not ok:
        raise ShardError(f"{url} is not a shard index written by `vidmask shards make` "
                         f'({{"format": "{INDEX_FORMAT}", "shards": [{{"name", "samples"}}, ...]}})')
    return index


def default_index(urls: Sequence[str]) -> str:
    """``shards.json`` beside the first (local) shard."""
    if is_pipe(urls[0]):
        raise ValueError("pipe: shards need their index named (a local copy of the shards' shards.json, or "
                         "a pipe: command that prints it)")
    return str(Path(urls[0]).parent / INDEX_NAME)


def open_shards(spec: str | Sequence[str], index: str | None = None) -> ShardSet:
    """The shards ``spec`` names (:func:`expand_urls`) with their counts from ``index`` (default:
    :func:`default_index`). Every local shard must exist and every shard must be in the index."""
    urls = expand_urls(spec)
    index_url = index or default_index(urls)
    header = read_index(index_url)
    entries = header["shards"]
    where: dict[str, tuple[int, int]] = {}
    offset = 0
    for e in entries:
        where[e["name"]] = (e["samples"], offset)
        offset += e["samples"]
    counts, firsts = [], []
    for url in urls:
        name = shard_name(url)
        if name not in where:
            raise ShardError(f"shard {url} is not listed in the index {index_url}; rebuild the shards with "
                             "`vidmask shards make` or name their index")
        if not is_pipe(url) and not os.path.isfile(url):
            raise FileNotFoundError(f"shard {url} not found (listed in {index_url})")
        counts.append(where[name][0])
        firsts.append(where[name][1])
    resize = header.get("resize_short", 0)
    return ShardSet(tuple(urls), np.asarray(counts, np.int64), np.asarray(firsts, np.int64),
                    resize_short=resize if isinstance(resize, int) else 0, index=index_url)


# ---------------------------------------------------------------- the plan (pure functions)

def epoch_shard_order(num_shards: int, seed: int, epoch: int) -> np.ndarray:
    """int64[S]: the order of the shards in ``epoch``, the same on every rank."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, epoch, 0x5AD]))
    return rng.permutation(num_shards).astype(np.int64)


def unit_pieces(counts: np.ndarray, order: np.ndarray, unit: int, units: int) -> list[tuple[int, int, int]]:
    """Unit ``unit`` of ``units``'s range of the samples laid end to end in ``order``, as
    ``(shard, first, stop)`` pieces: members first..stop-1 of that shard, in reading order."""
    sizes = counts[order]  # (S,) in this epoch's order
    ends = np.cumsum(sizes)  # (S,)
    total = int(ends[-1]) if len(ends) else 0
    lo, hi = unit * total // units, (unit + 1) * total // units
    pieces = []
    j = int(np.searchsorted(ends, lo, side="right"))  # the shard holding sample lo
    while lo < hi:
        start = int(ends[j] - sizes[j])
        stop = min(hi, int(ends[j]))
        if stop > lo:
            pieces.append((int(order[j]), lo - start, stop - start))
        lo = stop
        j += 1
    return pieces


def batches_per_unit(total: int, units: int, batch_size: int) -> int:
    """Batches each unit emits per epoch: its smallest possible range, in whole batches."""
    return (total // units) // batch_size


def shuffle_order(n: int, buffer: int, seed_words: Sequence[int]) -> np.ndarray:
    """int64[n]: the order in which a shuffle buffer of ``buffer`` slots emits positions 0..n-1
    read in order (webdataset's ``shuffle``: fill the buffer, then emit a random slot and read
    the next). Position ``order[t]`` is read before emission t, and at most ``buffer``
    read positions wait at any time. ``buffer`` <= 1 keeps the reading order."""
    if buffer <= 1 or n <= 1:
        return np.arange(n, dtype=np.int64)
    u = np.random.default_rng(np.random.SeedSequence(list(seed_words))).random(n)  # (n,) one draw per emission
    order = np.empty(n, np.int64)
    held: list[int] = []
    nxt = 0
    for t in range(n):
        while nxt < n and len(held) < buffer:
            held.append(nxt)
            nxt += 1
        j = int(u[t] * len(held))
        held[j], held[-1] = held[-1], held[j]
        order[t] = held.pop()
    return order


def resumed_worker(batch: int, workers: int, worker: int) -> tuple[int, int]:
    """(the worker of the uninterrupted epoch, its first batch) that DataLoader worker ``worker``
    plays when the epoch resumes at the rank's batch ``batch``: the rank's batch j comes from
    worker j mod workers (the DataLoader's round robin), its (j div workers)-th batch."""
    return (batch + worker) % workers, (batch + worker) // workers


# ---------------------------------------------------------------- reading

def split_key(member: str) -> tuple[str, str]:
    """``dir/000123.mp4`` -> (``dir/000123``, ``mp4``): the key runs to the first dot of the file name."""
    folder, _, base = member.rpartition("/")
    stem, _, suffix = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), suffix.lower()


def read_samples(url: str, first: int, stop: int, keep: np.ndarray) -> Iterator[tuple[int, str, dict | str | None]]:
    """Samples first..stop-1 of one shard, in order: ``(position, key, members)``.

    members: ``{suffix: bytes}`` where ``keep[position - first]``; None where not (those bytes are
    never read from a local file); a str saying why the sample is unreadable (a truncated or
    corrupt shard, fewer samples than the index says). A shard that cannot be opened raises
    :class:`ShardError`."""
    if stop <= first:
        return
    pos, key, members, reason = -1, None, None, ""
    stream = _Stream(url)
    try:
        try:
            tar = tarfile.open(fileobj=stream.file, mode="r:" if stream.seekable else "r|")
            while True:
                info = tar.next()
                if info is None:
                    break
                if not info.isfile():
                    continue
                k, suffix = split_key(info.name)
                if k != key:
                    if first <= pos:
                        yield pos, key, members
                    pos, key = pos + 1, k
                    if pos >= stop:
                        return  # the stream's process is stopped, not waited for
                    members = {} if first <= pos and keep[pos - first] else None
                if members is not None:
                    members[suffix] = tar.extractfile(info).read()
        except (tarfile.TarError, OSError, EOFError) as e:
            failure = stream.failure()  # a pipe whose command failed part-way: the shard is missing
            if failure:
                raise ShardError(failure) from None
            reason = f"shard {url} is truncated or corrupt after {max(pos, 0)} samples ({type(e).__name__}: {e})"
            if first <= pos < stop:
                yield pos, key, reason
        else:
            failure = stream.failure()
            if failure:
                raise ShardError(failure)
            if first <= pos < stop:
                yield pos, key, members
    finally:
        stream.close()
    for p in range(max(pos + 1, first), stop):
        yield p, "", reason or f"shard {url} ends after {pos + 1} samples (truncated?); its index lists more"


def unit_samples(shards: ShardSet, epoch: int, unit: int, units: int, *, seed: int, buffer: int, skip: int,
                 count: int) -> Iterator[tuple[int, str, dict | str]]:
    """Emissions skip..count-1 of a unit in ``epoch``: ``(sample id, name, members or why unreadable)``.

    The emissions before ``skip`` are the samples an interrupted run already consumed: their
    members are stepped over, never kept or decoded."""
    order = epoch_shard_order(len(shards.urls), seed, epoch)
    pieces = unit_pieces(shards.counts, order, unit, units)
    n = sum(stop - first for _, first, stop in pieces)
    if count > n:
        raise ValueError(f"unit {unit} holds {n} samples, fewer than the {count} asked for")
    emit = shuffle_order(n, buffer, (seed, epoch, unit, 1))[:count]  # (count,) positions in the unit's range
    keep = np.zeros(n, bool)  # (n,)
    keep[emit[skip:]] = True

    def reading() -> Iterator[tuple[int, tuple[int, str, dict | str]]]:
        base = 0
        for s, first, stop in pieces:
            url = shards.urls[s]
            label = shard_name(url) if is_pipe(url) else url
            for pos, key, members in read_samples(url, first, stop, keep[base: base + stop - first]):
                p = base + pos - first
                if keep[p]:
                    yield p, (int(shards.first_ids[s]) + pos, f"{label}:{key or f'#{pos}'}", members)
            base += stop - first

    reader = reading()
    held: dict[int, tuple[int, str, dict | str]] = {}  # at most `buffer` samples read, not yet emitted
    try:
        for t in range(skip, count):
            q = int(emit[t])
            while q not in held:
                p, sample = next(reader)
                held[p] = sample
            yield held.pop(q)
    finally:
        reader.close()


def caption_list(members: dict) -> list[str]:
    """A sample's captions from its ``json`` (``caption``: str | [str]) or ``txt`` member; ValueError if none."""
    if "json" in members:
        meta = json.loads(members["json"].decode("utf-8"))
        caps = meta.get("caption", meta.get("captions")) if isinstance(meta, dict) else None
        if isinstance(caps, str):
            caps = [caps]
        if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
            raise ValueError("its json member has no caption (a string or a list of strings)")
        return caps
    if "txt" in members:
        return [members["txt"].decode("utf-8")]
    raise ValueError(f"no caption member (.json or .txt; members: {', '.join(sorted(members)) or 'none'})")


def source_of(members: dict) -> str | None:
    """The original video a shard sample was cut from, when its json member names it (``source``
    from `vidmask shards make`, ``url`` from video2dataset), else None: its ``video_id`` key."""
    if "json" not in members:
        return None
    try:
        meta = json.loads(members["json"].decode("utf-8"))
    except (ValueError, UnicodeDecodeError):
        return None
    src = meta.get("source") or meta.get("url") if isinstance(meta, dict) else None
    return src if isinstance(src, str) and src else None


def decode_sample(sample_id: int, name: str, members: dict | str, *, epoch: int, seed: int, num_frames: int,
                  transform: VideoTransform) -> dict:
    """A shard sample as :class:`VideoTextDataset` gives an item (the same draws from the same
    generator), or a bad-sample marker ``{"bad": True, "path", "error", "index"}``."""
    def bad(reason: str) -> dict:
        return {"bad": True, "path": name, "error": reason, "index": sample_id}

    if isinstance(members, str):
        return bad(members)
    media = [s for s in members if s not in CAPTION_SUFFIXES]
    if not media:
        return bad(f"no media member (members: {', '.join(sorted(members)) or 'none'})")
    try:
        captions = caption_list(members)
    except (ValueError, UnicodeDecodeError) as e:
        return bad(f"unreadable caption: {e}")
    if not captions or not all(c.strip() for c in captions):
        return bad("empty caption")
    source = MemoryMedia(f"{name}.{media[0]}", members[media[0]])
    g = sample_generator(seed, epoch, sample_id)
    try:
        video, caption, frame_ids, mirrored = draw_sample(
            captions, lambda gen: decode_sampled(source, num_frames, "rand", gen), transform, g,
            train=True)  # (T, 3, S, S), (T,)
    except VideoError as e:
        return bad(e.reason)
    # video_key: which video, so that two samples of one source are one video to vtc / vtm (collate's video_id)
    return {"video": video, "caption": caption, "index": sample_id, "path": source.name, "frame_ids": frame_ids,
            "mirrored": mirrored, "video_key": source_of(members) or source.name}


class ShardStream(IterableDataset):
    """One rank's training samples from tar shards, for a DataLoader with ``batch_size`` and
    ``num_workers`` as given here (see the module docstring for the order and the resume).

    Call :meth:`set_position` with the step before building each epoch's DataLoader (its workers
    copy the stream when they start: keep ``persistent_workers=False``); the loader then yields
    the rest of that epoch's batches, :attr:`steps_per_epoch` - batch of them.
    """

    def __init__(self, shards: ShardSet, num_frames: int, size: int, *, batch_size: int, seed: int = 0,
                 rank: int = 0, world: int = 1, num_workers: int = 0, buffer: int = 256, hflip_p: float = 0.0,
                 reverse_p: float = 0.0,
                 random_crop_scale: tuple[float, float] | None = None, mean: tuple[float, float, float] = CLIP_MEAN,
                 std: tuple[float, float, float] = CLIP_STD):
        """shards: from :func:`open_shards`. num_workers: the DataLoader's (0 = the main process, one unit).
        buffer: samples each unit holds to shuffle within (memory: that many encoded clips)."""
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in [0, {world})")
        self.shards = shards
        self.num_frames = num_frames
        self.batch_size = batch_size
        self.seed = seed
        self.rank, self.world = rank, world
        self.workers = max(1, num_workers)
        self.buffer = buffer
        self.transform = VideoTransform(size=size, train=True, random_crop_scale=random_crop_scale, hflip_p=hflip_p,
                                        reverse_p=reverse_p, mean=mean, std=std)
        self.per_unit = batches_per_unit(len(shards), world * self.workers, batch_size)
        if self.per_unit < 1:
            raise ValueError(f"{len(shards)} samples cannot give each of {world} processes x {self.workers} workers "
                             f"one batch of {batch_size}")
        self.epoch, self.batch = 0, 0

    @property
    def steps_per_epoch(self) -> int:
        return self.per_unit * self.workers

    def set_position(self, step: int) -> tuple[int, int]:
        """Start at global step ``step``: returns (epoch, batch within it)."""
        self.epoch, self.batch = divmod(step, self.steps_per_epoch)
        return self.epoch, self.batch

    def position(self, step: int) -> dict:
        """Where step ``step`` is in the stream, and what fixes the stream (for the checkpoint)."""
        epoch, batch = divmod(step, self.steps_per_epoch)
        return {"source": "shards", "epoch": epoch, "batch": batch, "samples": batch * self.batch_size,
                "steps_per_epoch": self.steps_per_epoch, "world": self.world, "workers": self.workers,
                "batch_size": self.batch_size, "seed": self.seed, "shards": self.shards.fingerprint}

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if workers != self.workers:
            raise ValueError(f"this stream was planned for {self.workers} DataLoader workers and runs under {workers}")
        orig, first = resumed_worker(self.batch, self.workers, worker)
        unit = self.rank * self.workers + orig
        B = self.batch_size
        samples = unit_samples(self.shards, self.epoch, unit, self.world * self.workers, seed=self.seed,
                               buffer=self.buffer, skip=first * B, count=self.per_unit * B)
        try:
            for sample_id, name, members in samples:
                yield decode_sample(sample_id, name, members, epoch=self.epoch, seed=self.seed,
                                    num_frames=self.num_frames, transform=self.transform)
        except ShardError as e:  # the stream cannot go on: a marker the trainer stops on, on every rank
            yield {"bad": True, "fatal": str(e), "path": "", "error": str(e), "index": -1}


# ---------------------------------------------------------------- writing

def reencode_video(path: str | Path, short_side: int, crf: int = 23) -> bytes | None:
    """The video as H.264 mp4 (no audio), upright, its short side scaled to ``short_side``; None
    when it is already that small (its bytes are then kept as they are: never scaled up)."""
    import av

    from vidmask.data.video import video_stream

    frames = iter_frames(path)
    first = next(frames)  # (H, W, 3) upright
    frames.close()
    H, W = first.shape[:2]
    if min(H, W) <= short_side:
        return None
    try:
        with av.open(str(path)) as c:
            s = video_stream(c)
            rate = s.average_rate or s.guessed_rate or Fraction(25)
    except av.error.FFmpegError as e:
        raise VideoError(path, f"not a readable video ({e})") from e
    h, w = scaled_size(H, W, short_side)
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=Fraction(rate).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        # a key frame every ~2 s: what the reader's seeking in long videos jumps to
        stream.options = {"crf": str(crf), "preset": "veryfast", "g": str(max(1, round(2 * float(rate))))}
        for rgb in iter_frames(path, short_side):  # (h, w, 3)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


def _image_bytes(path: Path, short_side: int) -> tuple[str, bytes]:
    from PIL import Image

    from vidmask.data.video import load_image

    rgb = load_image(path)[0]  # (H, W, 3); raises VideoError naming the file
    H, W = rgb.shape[:2]
    if short_side <= 0 or min(H, W) <= short_side:
        return path.suffix.lower().lstrip(".") or "jpg", path.read_bytes()
    h, w = scaled_size(H, W, short_side)
    buf = io.BytesIO()
    Image.fromarray(rgb).resize((w, h), Image.Resampling.BOX).save(buf, format="JPEG", quality=90)
    return "jpg", buf.getvalue()


def encode_item(item: VideoText, resize_short: int) -> tuple[str, bytes]:
    """(suffix, bytes) of an item's media member; raises VideoError for a file that cannot be read."""
    path = Path(item.path)
    if item.is_image or is_image_path(path):
        return _image_bytes(path, resize_short)
    if resize_short > 0:
        data = reencode_video(path, resize_short)
        if data is not None:
            return "mp4", data
    if not path.is_file() or path.stat().st_size == 0:
        raise VideoError(path, "file not found or empty")
    return path.suffix.lower().lstrip(".") or "video", path.read_bytes()


def _encode_job(job: tuple[VideoText, int]) -> tuple[str, bytes] | str:
    item, resize_short = job
    if item.problem:
        return item.problem
    try:
        return encode_item(item, resize_short)
    except VideoError as e:
        return e.reason


class _TarSink:
    """Samples into ``out/000000.tar``, ``000001.tar``, ...: a shard is closed once it holds ``shard_bytes``."""

    def __init__(self, out: Path, shard_bytes: int):
        self.out, self.shard_bytes = out, shard_bytes
        self.shards: list[dict] = []
        self.tar: tarfile.TarFile | None = None
        self.samples = 0

    def _member(self, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), 0o644, 0  # fixed times: the same input, the same bytes
        self.tar.addfile(info, io.BytesIO(data))

    def add(self, key: str, members: list[tuple[str, bytes]]) -> None:
        if self.tar is None:
            name = f"{len(self.shards):06d}.tar"
            self.tar = tarfile.open(self.out / (name + ".tmp"), "w", format=tarfile.USTAR_FORMAT)
            self.shards.append({"name": name, "samples": 0, "bytes": 0})
        for suffix, data in members:
            self._member(f"{key}.{suffix}", data)
        self.shards[-1]["samples"] += 1
        self.samples += 1
        if self.tar.fileobj.tell() >= self.shard_bytes:
            self.close()

    def close(self) -> None:
        if self.tar is None:
            return
        self.tar.close()
        name = self.shards[-1]["name"]
        os.replace(self.out / (name + ".tmp"), self.out / name)
        self.shards[-1]["bytes"] = (self.out / name).stat().st_size
        self.tar = None


def write_shards(items: Sequence[VideoText], out: str | Path, *, shard_bytes: int = 10**9, resize_short: int = 256,
                 workers: int = 1, shuffle_seed: int | None = None, source: str = "", progress: bool = False) -> dict:
    """Write ``items`` as tar shards ``out/000000.tar, ...`` and their index ``out/shards.json``.

    resize_short: re-encode each video (H.264, upright) and image (JPEG) whose short side is
    longer, to that short side; 0 copies every file's bytes as they are. shuffle_seed: write the
    items in a random order (None: the annotation's order). Items that cannot become a sample (an
    empty caption; an unreadable file) are left out, logged and counted in the index's
    ``skipped``. Returns the index."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if (out / INDEX_NAME).exists() or any(out.glob("*.tar")):
        raise FileExistsError(f"{out} already holds shards; write to an empty folder or delete them first")
    n = len(items)
    order = np.random.default_rng(shuffle_seed).permutation(n) if shuffle_seed is not None else np.arange(n)
    sink = _TarSink(out, shard_bytes)
    skipped, examples = 0, []
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, desc="shards", unit="clip", dynamic_ncols=True)
    pool = None
    if workers > 1:
        import multiprocessing

        pool = multiprocessing.get_context("fork").Pool(workers)
    try:
        chunk = 64 * max(1, workers)  # bounded: never every item's job at once
        for start in range(0, n, chunk):
            batch = [items[int(i)] for i in order[start: start + chunk]]
            jobs = [(item, resize_short) for item in batch]
            results = pool.map(_encode_job, jobs) if pool is not None else [_encode_job(j) for j in jobs]
            for item, result in zip(batch, results):
                if isinstance(result, str):
                    skipped += 1
                    if len(examples) < 20:
                        examples.append([str(item.path), result])
                        log.warning("left out of the shards: %s: %s", item.path, result)
                    continue
                suffix, data = result
                meta = json.dumps({"caption": list(item.captions), "source": str(item.path)}).encode()
                sink.add(f"{sink.samples:09d}", [(suffix, data), ("json", meta)])
            if bar is not None:
                bar.update(len(batch))
        sink.close()
    finally:
        if pool is not None:
            pool.terminate()
        if bar is not None:
            bar.close()
        if sink.tar is not None:
            sink.tar.close()
    if not sink.samples:
        raise ValueError(f"no item of {source or 'the annotations'} could be written ({skipped} left out)")
    index = {"format": INDEX_FORMAT, "version": 1, "samples": sink.samples, "skipped": skipped,
             "skipped_examples": examples, "resize_short": resize_short, "source": source, "shards": sink.shards}
    tmp = out / (INDEX_NAME + ".tmp")
    tmp.write_text(json.dumps(index, indent=1))
    os.replace(tmp, out / INDEX_NAME)
    return index
