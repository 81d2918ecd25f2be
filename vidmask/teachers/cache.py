"""A frozen teacher's per-frame features of a training set's frames, computed once, stored in float16.

A frozen teacher on all tokens of every clip is the cost of the UMT, STM and
ClusterSTM recipes: on 2 CPU cores the EfficientNet-Lite0 trunk of
``lit-effnet`` takes most of a pretraining step. But the teacher is frozen and
each frame's features depend on that frame's pixels only
(:class:`~vidmask.teachers.base.FrameFeatures`), so with a deterministic
training transform (centre crop, no flip) they can be computed once per frame
of every training video and gathered per batch by (video, frame index).
The cheap half of the teacher (resampling to the student's grid, attention
pooling) still runs every step, so the :class:`TeacherOut` a step sees is the
one the teacher computes on the fly, up to float16 rounding of the stored
features (about 1e-3 relative; attention maps are renormalised to sum to 1
after it) and float rounding of batched trunk convolutions.

    cache = TeacherCache.build(teacher, items, size=128, folder=path)  # encode, write, open
    cache = TeacherCache.load(path)                                    # memory-mapped
    feats = cache.lookup(index [B], frame_ids [B,T])                   # FrameFeatures [B,T,n,D], float32
    out = teacher.from_frames(feats, grid)                             # TeacherOut, as teacher(video, grid)

**Which frames.** ``grid_frames=0`` (``teacher.cache_frames_per_video: 0``,
the default) caches every frame, so the teacher sees exactly the frames the
student sees (training draws a random frame in each of T segments,
:func:`~vidmask.data.video.sample_indices`, so any frame can be asked for).
``grid_frames=G`` caches a fixed grid of G frames per video, the middle
frame of each of G uniform segments (``sample_indices(n, G, "middle")``,
decoded by :func:`~vidmask.data.video.decode_sampled`, which seeks in a long
video), and a lookup serves the grid frame nearest the requested one: the
teacher then sees a frame up to ``floor(ceil(n/G)/2)`` frames away from the
student's (n the video's frames: 28 frames, about 1 s of a 15 s, 30 fps
clip with G=8; 7 frames with G=32), and the exact frame when n <= G. G must
be at least ``data.num_frames``.

**Size, and the cap.** A cache holds videos x frames per video x (the
teacher's per-frame values: n x D for ``tokens``, plus ``attn`` and ``cls``
for hf-clip) x 2 bytes. Every frame of MSR-VTT's 9k training videos through
CLIP-B/16 at 224 px is about 0.8 TB in float16 (1.6 TB in float32, the
format before this one); a grid of 32 frames per video, 58 GB.
:func:`projected_bytes` says so before anything is built (with a grid:
exactly, times the videos; every frame: the mean frame count of the first
:data:`PROBE_VIDEOS` videos read from their containers' metadata
(:func:`~vidmask.data.video.count_frames`), times the videos), and
:func:`cached_or_built` refuses a build above ``teacher.cache_max_gb``
(0 = no cap).

**Files.** A cache is a folder of parts and an ``index.json`` written last
(its presence means complete). Each part is a contiguous share of the
videos, built by one rank: one raw little-endian float16 file per field
(``part-A-B.tokens.f16``, rows = frames in video order), the per-video row
counts (``.counts.i64``) and, with a grid, the frame index of each cached row
(``.grid.i32``, [videos, G]), and a JSON file with the shapes, written last.
Why raw files and not safetensors: a part is written as
its frames are encoded, so a rank's memory does not grow with its share
(``safetensors.save_file`` writes from tensors held in memory, and its
header needs every shape before the first byte); and they are read with
``numpy.memmap``, so a batch gathers its B x T scattered rows straight from
the mapped file, copying only those (``safe_open(...).get_slice`` reads
contiguous slices only; ``load_file`` copies the whole file into memory).
The ranks of a node map the same files and share the page cache: a rank's
own memory does not grow with the cache's size. The parts are read where
they are (no merge: at 1 TB a merge would copy the whole cache once more).

**Across ranks** (:func:`cached_or_built` with ``rank``/``world``/``barrier``):
rank r encodes videos ``[r*V//W, (r+1)*V//W)`` into its part, all wait at
``barrier`` (the trainer's, whose time-out is ``train.dist_timeout_min``),
rank 0 writes the index, all wait again and open the cache. A part already
written by an interrupted build of the same cache is reused.

:func:`cache_key` names a cache by what its features depend on (teacher
weights, the video list, the video reader's version, frame size and
normalisation, the frame grid, this module's :data:`FORMAT`), so a stale
cache is never read: a changed input gets a new folder.

It holds each frame's last layer (``FrameFeatures.tokens``), not the earlier
layers a teacher can give (``encode_frames(video, layers=k)``): six layers
of hf-clip would be six times the memory. An objective that reads several
teacher layers (``align`` with ``targets: layers``, ``stm`` with ``layers`` > 1)
therefore refuses a cache (a ConfigError when the pretraining task is built),
as does ``stm``'s mask module with a teacher that has patch embeddings
(hf-clip): the cache does not hold them.

The motion-shapes corpus (22,400 training frames, lit-effnet at 128 px: 4x4
tokens of 256) takes 184 MB (367 MB in float32).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from vidmask.config import ConfigError
from vidmask.data.annotations import VideoText
from vidmask.data.parts import (INDEX, build_in_parts, finished_part, gather_parts, mapped_rows, part_name,
                                read_parts, write_json)
from vidmask.data.transforms import CLIP_MEAN, CLIP_STD, VideoTransform
from vidmask.data import video as video_reader
from vidmask.data.video import VideoError, count_frames, decode_all_frames, decode_sampled
from vidmask.teachers.base import FrameFeatures, Teacher

log = logging.getLogger(__name__)

# bump when what is stored changes. 2: float16 fields in a folder of per-rank parts, an optional frame grid
FORMAT = 2
PROBE_VIDEOS = 8  # videos whose frame counts estimate an every-frame cache's size
STORE_DTYPE = np.float16


def _digest_path(path: Path, h) -> None:
    """Feed a file's bytes, or every file of a folder (sorted, with names), into hash h."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)


def cache_key(teacher_name: str, teacher_path: str | Path | None, items: Sequence[VideoText], size: int,
              mean: tuple[float, ...] = CLIP_MEAN, std: tuple[float, ...] = CLIP_STD, grid_frames: int = 0,
              options: dict | None = None) -> str:
    """A short hex name for the features of ``items`` through this teacher at this frame size.

    It covers the teacher's files (their bytes: a retrained head file is a
    new key), the teacher's ``options`` (:meth:`Teacher.cache_options`: what
    changes its frame features beyond those bytes, such as lit-effnet's trunk
    scale, kept in the head file's .json sidecar, not in the hashed weights),
    the videos (paths, sizes and modification times, in order), the video
    reader's version, the frame side, the normalisation, the frame grid and
    the storage format. Not the number of ranks that build it.
    """
    h = hashlib.sha256()
    head = {"format": FORMAT, "reader": video_reader.READER_VERSION, "teacher": teacher_name,
            "size": size, "mean": list(mean), "std": list(std), "grid": grid_frames}
    if options:  # only when there are some: the keys of caches built before options existed stay valid
        head["options"] = options
    h.update(json.dumps(head, sort_keys=True).encode())
    if teacher_path:
        _digest_path(Path(teacher_path), h)
    for item in items:
        try:
            st = os.stat(item.path)
            h.update(f"{item.path}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{item.path}|missing\n".encode())
    return h.hexdigest()[:16]


def nearest_slot(grid: Tensor, frame_ids: Tensor) -> Tensor:
    """Position in each video's frame grid ``grid`` long[B,G] of the grid frame nearest each requested
    frame ``frame_ids`` long[B,T] -> long[B,T] (a tie goes to the earlier grid frame)."""
    dist = (grid.unsqueeze(1) - frame_ids.unsqueeze(2)).abs()  # (B, T, G)
    return dist.argmin(-1)  # (B, T): argmin returns the first of equal minima


def field_shapes(teacher: Teacher, size: int, device: torch.device | str = "cpu") -> dict[str, list[int]]:
    """The per-frame shape of each field ``teacher.encode_frames`` gives at ``size`` px (one blank frame)."""
    with torch.no_grad():
        feats = teacher.encode_frames(torch.zeros(1, 1, 3, size, size, device=device))  # fields (1, 1, ...)
    return {k: list(v.shape[2:]) for k, v in feats.fields().items()}


def projected_bytes(shapes: dict[str, list[int]], items: Sequence[VideoText], grid_frames: int = 0) -> tuple[int, str]:
    """(bytes, how they were counted) of the cache of ``items`` with fields of per-frame ``shapes``.

    With a grid, every video holds ``grid_frames`` rows (an unreadable one
    fewer: an upper bound). Every frame: the mean frame count of the first
    :data:`PROBE_VIDEOS` readable videos (container metadata, no decoding of
    pixels), times the videos: an estimate.
    """
    per_frame = sum(math.prod(s) for s in shapes.values())
    itemsize = np.dtype(STORE_DTYPE).itemsize
    if grid_frames:
        frames = float(grid_frames)
        how = f"{grid_frames} frames each (the grid)"
    else:
        counts = []
        for item in items:
            if len(counts) == PROBE_VIDEOS:
                break
            if item.problem:
                continue
            try:
                counts.append(count_frames(item.path))
            except VideoError:
                continue
        frames = sum(counts) / len(counts) if counts else 0.0
        how = f"~{frames:.0f} frames each (the mean of the first {len(counts)} videos' frame counts)"
    total = int(len(items) * frames * per_frame * itemsize)
    values = " + ".join("x".join(map(str, s)) or "1" for s in shapes.values())
    return total, f"{len(items)} videos x {how} x ({values}) values x {itemsize} bytes"


# ---- a part: one rank's share, written as it is encoded ---------------------


def build_part(teacher: Teacher, items: Sequence[VideoText], lo: int, hi: int, folder: str | Path, size: int,
               grid_frames: int = 0, mean: tuple[float, ...] = CLIP_MEAN, std: tuple[float, ...] = CLIP_STD,
               batch_frames: int = 64, device: torch.device | str = "cpu", progress: bool = False,
               desc: str = "teacher cache", position: int = 0) -> dict:
    """Encode videos ``items[lo:hi]`` into the part files ``folder/part-lo-hi.*``; return the part's JSON.

    Each video is decoded (every frame, or its ``grid_frames`` grid frames),
    given the evaluation transform (resize the shorter side, centre crop
    ``size``, normalise), and ``teacher.encode_frames`` runs on
    ``batch_frames`` frames at a time; each batch's features are appended to
    the field files in float16 at once. A part whose JSON exists (an
    interrupted build got that far) is returned as it is.
    """
    from tqdm import tqdm

    folder = Path(folder)
    name = part_name(lo, hi)
    done = finished_part(folder, lo, hi)
    if done is not None:
        return done
    folder.mkdir(parents=True, exist_ok=True)
    tmp = f".tmp{os.getpid()}"
    transform = VideoTransform(size=size, train=False, mean=mean, std=std)
    counts = np.zeros(hi - lo, np.int64)  # (V_p,) rows per video; 0 = unreadable
    grid = np.zeros((hi - lo, grid_frames), np.int32)  # (V_p, G) frame index of each row (G = 0: none)
    shapes: dict[str, list[int]] = {}
    files: dict[str, object] = {}
    pending: list[Tensor] = []  # frames waiting for a batch, [n_i, 3, S, S] each
    skipped: list[tuple[str, str]] = []

    def flush() -> None:
        if not pending:
            return
        frames = torch.cat(pending).to(device)  # (F, 3, S, S)
        pending.clear()
        feats = teacher.encode_frames(frames.unsqueeze(0))  # fields (1, F, ...)
        for k, v in feats.fields().items():
            half = v[0].detach().to("cpu", torch.float16)  # (F, ...)
            if not bool(torch.isfinite(half).all()) and bool(torch.isfinite(v).all()):
                raise ValueError(f"teacher cache: the teacher's {k!r} features exceed float16's range "
                                 f"(|x| > 65504, largest {float(v.abs().max()):.4g}); set teacher.cache= "
                                 "(the teacher then runs every step)")
            if k not in files:
                shapes[k] = list(half.shape[1:])
                files[k] = (folder / f"{name}.{k}.f16{tmp}").open("wb")
            files[k].write(half.contiguous().numpy().astype("<f2", copy=False).tobytes())

    try:
        queued = 0
        for v in tqdm(range(lo, hi), desc=desc, disable=not progress, dynamic_ncols=True, position=position):
            item = items[v]
            if item.problem:
                skipped.append((str(item.path), item.problem))
                continue
            try:
                if grid_frames:
                    frames, ids = decode_sampled(item.path, grid_frames, "middle")  # (G, H, W, 3), G indices
                    grid[v - lo] = ids
                else:
                    frames = decode_all_frames(item.path)  # (n, H, W, 3)
            except VideoError as e:
                skipped.append((str(item.path), e.reason))
                continue
            pending.append(transform(frames)[0])  # (n, 3, S, S)
            counts[v - lo] = frames.shape[0]
            queued += frames.shape[0]
            if queued >= batch_frames:
                flush()
                queued = 0
        flush()
        if not files:  # nothing decodable in this share: empty fields, shaped as the teacher gives them
            for k, s in field_shapes(teacher, size, device).items():
                shapes[k] = s
                files[k] = (folder / f"{name}.{k}.f16{tmp}").open("wb")
    finally:
        for f in files.values():
            f.close()
    for path, reason in skipped[:10]:
        log.warning("teacher cache: skipped %s (%s)", path, reason)
    if len(skipped) > 10:
        log.warning("teacher cache: skipped %d more unreadable items", len(skipped) - 10)
    for k in shapes:
        os.replace(folder / f"{name}.{k}.f16{tmp}", folder / f"{name}.{k}.f16")
    columns = {"counts.i64": counts, **({"grid.i32": grid} if grid_frames else {})}  # little-endian, as read
    for suffix, column in columns.items():
        column.astype(column.dtype.newbyteorder("<")).tofile(folder / f"{name}.{suffix}{tmp}")
        os.replace(folder / f"{name}.{suffix}{tmp}", folder / f"{name}.{suffix}")
    part = {"format": FORMAT, "name": name, "first": lo, "videos": hi - lo, "rows": int(counts.sum()),
            "skipped": len(skipped), "fields": shapes, "grid": grid_frames}
    write_json(folder / f"{name}.json", part)  # the JSON last: a part with one is complete
    return part


def write_index(folder: str | Path, videos: int, world: int, meta: dict) -> dict:
    """Join the parts of a ``world``-rank build of ``videos`` videos in ``folder`` into its ``index.json``."""
    folder = Path(folder)
    parts = [{"name": p["name"], "first": p["first"], "videos": p["videos"], "rows": p["rows"],
              "skipped": p["skipped"]} for p in read_parts(folder, videos, world, "teacher cache", "videos")]
    if not any(p["rows"] for p in parts):
        raise VideoError(folder, "no decodable video to cache")
    index = {**meta, "format": FORMAT, "videos": videos, "frames": sum(p["rows"] for p in parts),
             "skipped": sum(p["skipped"] for p in parts), "parts": parts}
    write_json(folder / INDEX, index, indent=1)
    return index


# ---- reading ----------------------------------------------------------------


class TeacherCache:
    """Per-frame teacher features of a list of videos, gathered by (video, frame), read from a cache folder.

    ``counts`` long[V]: rows of video v (0: it could not be decoded when the
    cache was built; the training loop skips its samples as unreadable, so it
    is never looked up); rows run over all videos in order, video v at
    ``offsets[v] : offsets[v] + counts[v]``, split into parts (each a
    memory-mapped float16 array per field). With a frame grid of G frames
    (``grid_frames``), each part also maps the frame index of each of its
    videos' G rows (:meth:`grid_of`); every frame cached: row j of a video is
    its frame j. Only ``counts`` and ``offsets`` (16 bytes a video) are held.
    """

    def __init__(self, folder: str | Path):
        folder = Path(folder)
        index_path = folder / INDEX
        if not index_path.is_file():
            raise FileNotFoundError(f"teacher cache {folder} does not exist or was not finished (no {INDEX})")
        self.folder = folder
        self.meta = index = json.loads(index_path.read_text())
        if index.get("format") != FORMAT or "parts" not in index:
            raise ValueError(f"{folder} is not a vidmask teacher cache of format {FORMAT} "
                             "(written by vidmask.teachers.cache); delete it and it is built again")
        self.grid_frames = int(index.get("grid", 0))
        counts = []
        self.parts: list[dict[str, np.ndarray]] = []  # per part: field -> memmap (rows, ...)
        self.part_rows: list[int] = []  # first global row of each part
        self.grids: list[np.ndarray] = []  # per part: memmap int32 (V_p, G) with a grid
        self.part_videos: list[int] = []  # first video of each part
        self.shapes: dict[str, list[int]] = {}
        row = 0
        for p in index["parts"]:
            part = json.loads((folder / f"{p['name']}.json").read_text())
            counts.append(torch.from_numpy(np.fromfile(folder / f"{p['name']}.counts.i64", "<i8")))  # (V_p,)
            if self.grid_frames and p["videos"]:
                self.grids.append(np.memmap(folder / f"{p['name']}.grid.i32", dtype="<i4", mode="c",
                                            shape=(p["videos"], self.grid_frames)))  # (V_p, G)
                self.part_videos.append(p["first"])
            self.shapes = part["fields"]
            self.parts.append({k: mapped_rows(folder / f"{p['name']}.{k}.f16", "<f2", part["rows"], shape, folder)
                               for k, shape in part["fields"].items()})
            self.part_rows.append(row)
            row += part["rows"]
        if "tokens" not in self.shapes:
            raise ValueError(f"teacher cache {folder} has no 'tokens' field")
        self.counts = torch.cat(counts)  # (V,)
        self.offsets = torch.cumsum(self.counts, 0) - self.counts  # (V,)

    @classmethod
    def load(cls, folder: str | Path) -> "TeacherCache":
        return cls(folder)

    @classmethod
    def build(cls, teacher: Teacher, items: Sequence[VideoText], size: int, folder: str | Path,
              grid_frames: int = 0, **kw) -> "TeacherCache":
        """Encode ``items`` in one process into ``folder`` (one part and the index) and open it."""
        build_part(teacher, items, 0, len(items), folder, size, grid_frames=grid_frames, **kw)
        write_index(folder, len(items), 1, {"teacher": teacher.name, "size": size, "grid": grid_frames})
        return cls(folder)

    def __len__(self) -> int:
        return int(self.counts.numel())

    @property
    def nbytes(self) -> int:
        """Bytes of the stored fields (on disk; mapped, not held, in memory)."""
        return sum(a.nbytes for part in self.parts for a in part.values())

    def rows(self, index: Tensor, frame_ids: Tensor) -> Tensor:
        """Videos ``index`` long[B] and their frames ``frame_ids`` long[B,T] -> the cached rows long[B,T]
        that serve them (every frame cached: that frame; a grid: the nearest grid frame)."""
        index, frame_ids = index.cpu().long(), frame_ids.cpu().long()  # (B,), (B, T)
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= len(self)):
            raise IndexError(f"teacher cache holds {len(self)} videos; asked for video {int(index.max())}")
        counts = self.counts[index]  # (B,)
        if bool((counts == 0).any()):
            bad = int(index[counts == 0][0])
            raise KeyError(f"teacher cache: video {bad} could not be decoded when the cache was built")
        if self.grid_frames:
            slots = nearest_slot(self.grid_of(index), frame_ids)  # (B, T)
        else:
            # a decoder that ran short gives the last frame, as decode_sampled does
            slots = torch.minimum(frame_ids, (counts - 1).unsqueeze(1))  # (B, T)
        return self.offsets[index].unsqueeze(1) + slots  # (B, T)

    def grid_of(self, index: Tensor) -> Tensor:
        """With a frame grid: the cached frames of videos ``index`` long[B] -> long[B,G]."""
        return torch.from_numpy(gather_parts(self.grids, self.part_videos, index.numpy())).long()  # (B, G)

    def gather(self, name: str, rows: Tensor) -> Tensor:
        """Field ``name`` at global rows ``rows`` long[...] -> float32[..., *shape], read from each part's map."""
        out = gather_parts([part[name] for part in self.parts], self.part_rows, rows.reshape(-1).numpy())
        return torch.from_numpy(out).float().reshape(*rows.shape, *self.shapes[name])  # (..., *shape)

    def lookup(self, index: Tensor, frame_ids: Tensor) -> FrameFeatures:
        """Videos ``index`` long[B] (positions in the item list) and their frames
        ``frame_ids`` long[B,T] -> FrameFeatures with float32 fields [B,T,...] (on the CPU)."""
        rows = self.rows(index, frame_ids)  # (B, T)
        fields = {k: self.gather(k, rows) for k in self.shapes}  # each (B, T, ...)
        if "attn" in fields:  # float16 rounding moved each frame's sum off 1 by up to ~1e-3
            fields["attn"] = fields["attn"] / fields["attn"].sum(-1, keepdim=True).clamp_min(1e-12)  # (B, T, n)
        return FrameFeatures(**fields)


def cache_folder(folder: str | Path, teacher_name: str, size: int, grid_frames: int, key: str) -> Path:
    """Where the cache of this key lives inside ``folder`` (teacher.cache)."""
    frames = f"-{grid_frames}f" if grid_frames else ""
    return Path(folder) / f"{teacher_name}-{size}px{frames}-{key}"


def cached_or_built(folder: str | Path, teacher: Teacher, teacher_path: str | Path | None,
                    items: Sequence[VideoText], size: int, grid_frames: int = 0, max_gb: float = 0.0,
                    rank: int = 0, world: int = 1, barrier: Callable[[], None] | None = None,
                    mean: tuple[float, ...] = CLIP_MEAN, std: tuple[float, ...] = CLIP_STD,
                    device: torch.device | str = "cpu", progress: bool = False, **kw) -> TeacherCache:
    """The cache of ``items`` through ``teacher`` in ``folder``, built first if missing.

    Run by every one of ``world`` ranks (``rank`` this one's), with
    ``barrier`` the collective that makes them wait for each other (None:
    one process). A build first projects the cache's size
    (:func:`projected_bytes`; every rank the same, so all refuse together)
    and refuses it above ``max_gb`` GB (0 = no cap) with a ConfigError naming
    teacher.cache_max_gb; then each rank encodes its share, rank 0 writes the
    index, and every rank opens the cache.
    """
    key = cache_key(teacher.name, teacher_path, items, size, mean, std, grid_frames, teacher.cache_options())
    path = cache_folder(folder, teacher.name, size, grid_frames, key)
    if not (path / INDEX).is_file():
        shapes = field_shapes(teacher, size, device)
        total, how = projected_bytes(shapes, items, grid_frames)
        if max_gb and total > max_gb * 1e9:
            per_frame = projected_bytes(shapes, items, 1)[0]  # one frame of every video
            fit = int(max_gb * 1e9 // per_frame) if per_frame else 0  # grid frames per video under the cap
            hint = (f"cache a grid of at most {fit} frames per video (teacher.cache_frames_per_video={fit}, "
                    "no fewer than data.num_frames), " if fit else "")
            raise ConfigError(f"teacher.cache: the teacher cache would take {total / 1e9:.1f} GB ({how}), above "
                              f"teacher.cache_max_gb={max_gb:g}: {hint}raise teacher.cache_max_gb (0 = no cap), "
                              "or set teacher.cache= (the teacher then runs every step)")
        if rank == 0:
            log.info("building the teacher cache %s: %.2f GB projected (%s), %d rank(s)", path, total / 1e9,
                     how, world)
        build_in_parts(
            len(items), rank, world, barrier,
            lambda lo, hi: build_part(teacher, items, lo, hi, path, size, grid_frames=grid_frames, mean=mean,
                                      std=std, device=device, progress=progress,
                                      desc=f"teacher cache, rank {rank}/{world}", position=rank, **kw),
            lambda: write_index(path, len(items), world, {"teacher": teacher.name, "size": size,
                                                          "grid": grid_frames}))
    cache = TeacherCache.load(path)
    if rank == 0:
        log.info("teacher cache %s: %d frames, %.0f MB (float16, memory-mapped)", path, int(cache.counts.sum()),
                 cache.nbytes / 1e6)
    return cache
