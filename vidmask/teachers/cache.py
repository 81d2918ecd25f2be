"""A frozen teacher's per-frame features for every frame of a training set, computed once.

A frozen teacher on all tokens of every clip is the cost of the UMT, STM and
ClusterSTM recipes: on 2 CPU cores the EfficientNet-Lite0 trunk of
``lit-effnet`` takes most of a pretraining step. But the teacher is frozen and
each frame's features depend on that frame's pixels only
(:class:`~vidmask.teachers.base.FrameFeatures`), so with a deterministic
training transform (centre crop, no flip) they can be computed once for every
frame of every training video and gathered per batch by (video, frame index).
The cheap half of the teacher (resampling to the student's grid, attention
pooling) still runs every step, so the :class:`TeacherOut` a step sees is the
one the teacher computes on the fly, up to float rounding: batched trunk
convolutions do not promise bit-identical results across batch sizes.

    cache = TeacherCache.build(teacher, items, size=128)   # every frame, once
    cache.save(path); cache = TeacherCache.load(path)
    feats = cache.lookup(index [B], frame_ids [B,T])       # FrameFeatures [B,T,n,D]
    out = teacher.from_frames(feats, grid)                 # TeacherOut, as teacher(video, grid)

:func:`cache_key` names a cache by what its features depend on (teacher
weights, the video list, the video reader's version, frame size and
normalisation), so a stale cache is never read: a changed input gets a new
file.

It holds each frame's last layer (``FrameFeatures.tokens``), not the earlier
layers a teacher can give (``encode_frames(video, layers=k)``): six layers
of hf-clip would be six times the memory. An objective that reads several
teacher layers (``align`` with ``targets: layers``, ``stm`` with ``layers`` > 1)
therefore refuses a cache (a ConfigError when the pretraining task is built),
as does ``stm``'s mask module with a teacher that has patch embeddings
(hf-clip): the cache does not hold them.

Memory: 4 bytes x frames x n x D. The motion-shapes corpus (22,400 training
frames, lit-effnet at 128 px: 4x4 tokens of 256) takes 367 MB.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from vidmask.data.annotations import VideoText
from vidmask.data.transforms import CLIP_MEAN, CLIP_STD, VideoTransform
from vidmask.data import video as video_reader
from vidmask.data.video import VideoError, decode_all_frames
from vidmask.teachers.base import FrameFeatures, Teacher

log = logging.getLogger(__name__)

FORMAT = 1  # bump when what is stored changes


def _digest_path(path: Path, h) -> None:
    """Feed a file's bytes, or every file of a folder (sorted, with names), into hash h."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)


def cache_key(teacher_name: str, teacher_path: str | Path | None, items: Sequence[VideoText], size: int,
              mean: tuple[float, ...] = CLIP_MEAN, std: tuple[float, ...] = CLIP_STD) -> str:
    """A short hex name for the features of ``items`` through this teacher at this frame size.

    It covers the teacher's files (their bytes: a retrained head file is a
    new key), the videos (paths, sizes and modification times, in order),
    the video reader's version, the frame side and the normalisation.
    """
    h = hashlib.sha256()
    h.update(json.dumps({"format": FORMAT, "reader": video_reader.READER_VERSION, "teacher": teacher_name,
                         "size": size, "mean": list(mean), "std": list(std)}, sort_keys=True).encode())
    if teacher_path:
        _digest_path(Path(teacher_path), h)
    for item in items:
        try:
            st = os.stat(item.path)
            h.update(f"{item.path}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{item.path}|missing\n".encode())
    return h.hexdigest()[:16]


class TeacherCache:
    """Per-frame teacher features of every frame of a list of videos, gathered by (video, frame).

    ``fields[name]`` is float[F_total, ...] over all frames of all videos, video
    v occupying rows ``offsets[v] : offsets[v] + counts[v]``; a video that could
    not be decoded has count 0 (its samples are skipped by the training loop
    as unreadable, so it is never looked up).
    """

    def __init__(self, fields: dict[str, Tensor], counts: Tensor, meta: dict | None = None):
        if "tokens" not in fields:
            raise ValueError("a teacher cache needs at least the 'tokens' field")
        self.fields = fields
        self.counts = counts.long()  # (V,)
        self.offsets = torch.cumsum(self.counts, 0) - self.counts  # (V,)
        self.meta = meta or {}
        total = int(self.counts.sum())
        for k, v in fields.items():
            if v.shape[0] != total:
                raise ValueError(f"teacher cache field {k!r} has {v.shape[0]} rows for {total} frames")

    def __len__(self) -> int:
        return int(self.counts.numel())

    @property
    def nbytes(self) -> int:
        return sum(v.numel() * v.element_size() for v in self.fields.values())

    def lookup(self, index: Tensor, frame_ids: Tensor) -> FrameFeatures:
        """Videos ``index`` long[B] (positions in the item list) and their frames
        ``frame_ids`` long[B,T] -> FrameFeatures with fields [B,T,...] (on the CPU)."""
        index, frame_ids = index.cpu().long(), frame_ids.cpu().long()  # (B,), (B, T)
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= len(self)):
            raise IndexError(f"teacher cache holds {len(self)} videos; asked for video {int(index.max())}")
        counts = self.counts[index]  # (B,)
        if bool((counts == 0).any()):
            bad = int(index[counts == 0][0])
            raise KeyError(f"teacher cache: video {bad} could not be decoded when the cache was built")
        # a decoder that ran short gives the last frame, as decode_sampled does
        frames = torch.minimum(frame_ids, (counts - 1).unsqueeze(1))  # (B, T)
        rows = self.offsets[index].unsqueeze(1) + frames  # (B, T)
        return FrameFeatures(**{k: v[rows] for k, v in self.fields.items()})  # each (B, T, ...)

    # ---- building ---------------------------------------------------------

    @classmethod
    def build(cls, teacher: Teacher, items: Sequence[VideoText], size: int,
              mean: tuple[float, ...] = CLIP_MEAN, std: tuple[float, ...] = CLIP_STD,
              batch_frames: int = 64, device: torch.device | str = "cpu", progress: bool = False) -> "TeacherCache":
        """Decode every frame of every item, apply the evaluation transform
        (resize the shorter side, centre crop ``size``, normalise), run
        ``teacher.encode_frames`` on ``batch_frames`` frames at a time."""
        from tqdm import tqdm

        transform = VideoTransform(size=size, train=False, mean=mean, std=std)
        counts = torch.zeros(len(items), dtype=torch.long)  # (V,)
        out: dict[str, list[Tensor]] = {}
        pending: list[Tensor] = []  # frames waiting for a batch, [n_i, 3, S, S] each

        def flush() -> None:
            if not pending:
                return
            frames = torch.cat(pending).to(device)  # (F, 3, S, S)
            pending.clear()
            feats = teacher.encode_frames(frames.unsqueeze(0))  # fields (1, F, ...)
            for k, v in feats.fields().items():
                out.setdefault(k, []).append(v[0].float().cpu())  # (F, ...)

        queued = 0
        skipped = []
        for v, item in enumerate(tqdm(items, desc="teacher cache", disable=not progress, dynamic_ncols=True)):
            if item.problem:
                skipped.append((str(item.path), item.problem))
                continue
            try:
                frames = decode_all_frames(item.path)  # (n, H, W, 3)
            except VideoError as e:
                skipped.append((str(item.path), e.reason))
                continue
            pending.append(transform(frames)[0])  # (n, 3, S, S)
            counts[v] = frames.shape[0]
            queued += frames.shape[0]
            if queued >= batch_frames:
                flush()
                queued = 0
        flush()
        for path, reason in skipped[:10]:
            log.warning("teacher cache: skipped %s (%s)", path, reason)
        if len(skipped) > 10:
            log.warning("teacher cache: skipped %d more unreadable items", len(skipped) - 10)
        if not out:
            raise VideoError(Path(str(items[0].path)) if items else Path("."), "no decodable video to cache")
        fields = {k: torch.cat(v) for k, v in out.items()}  # (F_total, ...)
        meta = {"teacher": teacher.name, "size": size, "videos": len(items), "frames": int(counts.sum()),
                "skipped": len(skipped), "fields": {k: list(v.shape[1:]) for k, v in fields.items()}}
        return cls(fields, counts, meta)

    # ---- files ------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """safetensors, written to a temporary name and renamed (never half a file)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        tensors = {f"field.{k}": v.contiguous() for k, v in self.fields.items()}
        tensors["counts"] = self.counts.contiguous()
        save_file(tensors, str(tmp), metadata={"vidmask_teacher_cache": json.dumps(self.meta)})
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "TeacherCache":
        from safetensors import safe_open
        from safetensors.torch import load_file

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"teacher cache {path} does not exist")
        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {}).get("vidmask_teacher_cache", "{}"))
        tensors = load_file(str(path))
        fields = {k[len("field."):]: v for k, v in tensors.items() if k.startswith("field.")}
        if "counts" not in tensors or not fields:
            raise ValueError(f"{path} is not a vidmask teacher cache (written by TeacherCache.save)")
        return cls(fields, tensors["counts"], meta)


def cached_or_built(folder: str | Path, teacher: Teacher, teacher_path: str | Path | None,
                    items: Sequence[VideoText], size: int, build: bool = True, **kw) -> TeacherCache:
    """The cache of ``items`` through ``teacher`` in ``folder``, built and saved first if missing
    (``build=False``: wait for another process to have built it; raise if it did not)."""
    key = cache_key(teacher.name, teacher_path, items, size, kw.get("mean", CLIP_MEAN), kw.get("std", CLIP_STD))
    path = Path(folder) / f"{teacher.name}-{size}px-{key}.safetensors"
    if not path.is_file():
        if not build:
            raise FileNotFoundError(f"teacher cache {path} was not built")
        log.info("building the teacher cache %s (every frame of %d videos, once)", path, len(items))
        cache = TeacherCache.build(teacher, items, size, **kw)
        cache.save(path)  # the built cache is used as it is: no second read of what was just written
    else:
        cache = TeacherCache.load(path)
    log.info("teacher cache %s: %d frames, %.0f MB", path, int(cache.counts.sum()), cache.nbytes / 1e6)
    return cache
