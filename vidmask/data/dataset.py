"""Video-text samples for training and evaluation, seeded per sample.

Every random choice of sample i (which caption, which frames, which crop or
flip) comes from a generator seeded by ``(seed, epoch, i)``: the same sample
comes out whatever the number of DataLoader workers, the sampler or the
rank, which exact resume needs.

A sample that cannot be read in training (missing, empty, corrupt file,
empty caption) does not raise: ``__getitem__`` returns a marker, the collate
function drops it and hands its file name and reason to the trainer, and
:class:`BadSampleTracker` logs each bad file once and stops the run when the
bad share grows too large. In evaluation a bad sample raises, naming the
file: a metric over a silently shrunk test set is not the published metric.
"""

from __future__ import annotations

import logging
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from vidmask.data.anno_store import AnnoStore
from vidmask.data.annotations import AnnotationError, VideoText, flatten_captions, video_id
from vidmask.data.reversal import reverse_caption
from vidmask.data.transfer import loader_options, to_device
from vidmask.data.transforms import CLIP_MEAN, CLIP_STD, VideoTransform
from vidmask.data.video import (
    SampleMode,
    VideoError,
    count_frames,
    decode_all_frames,
    decode_sampled,
    load_image,
    sample_indices,
)

log = logging.getLogger(__name__)


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """A generator owned by one sample of one epoch.

    SeedSequence mixes the three numbers, so nearby (seed, epoch, index)
    triples do not give correlated streams, as ``seed + epoch + index`` would.
    """
    state = np.random.SeedSequence([seed, epoch, index]).generate_state(2)  # (2,) uint32
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


def draw_sample(
    captions: Sequence[str],
    read_frames: Callable[[torch.Generator], tuple[Tensor, list[int]]],
    transform: VideoTransform,
    generator: torch.Generator,
    train: bool,
) -> tuple[Tensor, str, Tensor, bool]:
    """One sample's (video uint8[T,3,S,S], caption, frame_ids long[T], mirrored) from its own generator.

    The draws come in a fixed order, caption, then frames (``read_frames(generator)`` ->
    uint8[T,H,W,3] and their indices), then crop and flip (:meth:`VideoTransform.pixels`: the clip
    stays uint8, normalised later on the device), so a sample read from loose files
    (:class:`VideoTextDataset`) or from a tar shard (:mod:`vidmask.data.shards`) with the same
    generator comes out the same. Evaluation takes the first caption and draws none.
    """
    if train:
        caption = captions[int(torch.randint(len(captions), (), generator=generator))]
    else:
        caption = captions[0]
    frames, frame_ids = read_frames(generator)  # (T, H, W, 3), T indices
    video, caption, mirrored = transform.pixels_mirrored(frames, caption, generator)  # (T, 3, S, S) uint8
    frame_ids = torch.tensor(frame_ids, dtype=torch.long)  # (T,)
    if transform.draw_reverse(caption, generator):
        # played backwards; the frame ids go with their frames (a teacher cache looks them up)
        video, caption, frame_ids = video.flip(0), reverse_caption(caption), frame_ids.flip(0)  # (T, 3, S, S), (T,)
    return video, caption, frame_ids, mirrored


class FrameCache:
    """All frames of every (short) video, decoded once, in one flat uint8 array.

    One buffer plus integer offset/shape arrays, not a Python object per
    video or frame: DataLoader workers forked after construction share the
    pages, and reading them touches no reference counts, so nothing is
    copied on write.
    """

    def __init__(self, items: Sequence[VideoText], max_frames: int, strict: bool):
        V = len(items)
        self.offsets = np.zeros(V + 1, dtype=np.int64)  # (V+1,) start of video v in `data`
        self.shapes = np.zeros((V, 4), dtype=np.int64)  # (V, 4) n, H, W, 3; n = 0: not cached
        self.errors: dict[int, str] = {}  # videos that failed to decode, with the reason
        chunks: list[np.ndarray] = []
        for v, item in enumerate(items):
            frames = None
            try:
                if item.is_image:
                    frames = load_image(item.path)  # (1, H, W, 3)
                elif count_frames(item.path) <= max_frames:
                    frames = decode_all_frames(item.path).numpy()  # (n, H, W, 3)
            except VideoError as e:
                if strict:
                    raise
                self.errors[v] = e.reason
            if frames is not None:
                self.shapes[v] = frames.shape
                chunks.append(frames.reshape(-1))  # (n*H*W*3,)
            self.offsets[v + 1] = self.offsets[v] + (frames.size if frames is not None else 0)
        self.data = np.concatenate(chunks) if chunks else np.zeros(0, np.uint8)  # (total,)

    def get(self, v: int) -> np.ndarray | None:
        """uint8[n,H,W,3] view of video v, or None when it is not cached."""
        n, H, W, C = self.shapes[v].tolist()
        if n == 0:
            return None
        return self.data[self.offsets[v] : self.offsets[v + 1]].reshape(n, H, W, C)  # (n, H, W, 3)

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)


class VideoTextDataset(Dataset):
    """``items[i]`` -> ``{"video": uint8[T,3,S,S], "caption": str, "index": i, "path": str, "frame_ids": long[T]}``.

    The clip is cropped, resized and flipped but not normalised: that happens on the device
    (:func:`vidmask.data.transfer.to_device` with this dataset's ``transform.mean`` / ``std``).

    Training (``train=True``): a random caption of the item, ``rand`` frame
    sampling, the training transform, all from the sample's own generator
    (:func:`sample_generator`); bad samples come back as markers
    ``{"bad": True, "path", "error", "index"}``. Evaluation: ``middle`` frames,
    ``caption`` is the item's first caption (all captions are in
    :attr:`texts` / :attr:`text_to_video`), and a bad sample raises.

    Call :meth:`set_epoch` before every epoch, as with ``DistributedSampler``.
    Workers must see the new epoch: keep ``persistent_workers=False`` (the
    DataLoader default), since persistent workers keep a stale copy.
    """

    def __init__(
        self,
        items: Sequence[VideoText],
        num_frames: int,
        size: int,
        train: bool,
        *,
        seed: int = 0,
        sample_mode: SampleMode | None = None,
        random_crop_scale: tuple[float, float] | None = None,
        hflip_p: float = 0.0,
        reverse_p: float = 0.0,
        mean: tuple[float, float, float] = CLIP_MEAN,
        std: tuple[float, float, float] = CLIP_STD,
        cache_frames: bool = False,
        cache_max_frames: int = 512,
    ):
        """
        items: from :func:`load_annotations`, or an :class:`AnnoStore` (kept on disk, read per sample).
        num_frames: T frames per clip.
        size: output side S (frames are S x S).
        train: training (random, lenient) or evaluation (deterministic, strict).
        seed: base seed; with the epoch and the index it fixes every sample.
        sample_mode: frame choice; default ``rand`` in training, ``middle`` in evaluation.
        random_crop_scale, hflip_p, reverse_p: see :class:`VideoTransform`.
        mean, std: what the clips are to be normalised with where they are used (``transform.mean``).
        cache_frames: decode every video once, here, and sample from memory
            afterwards; for small corpora of short clips (memory grows with
            every frame at full resolution).
        cache_max_frames: longer videos are not cached but read from disk.
        """
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        # a store stays memory-mapped: a list of its entries is the per-entry memory it exists to avoid
        self.items = items if isinstance(items, AnnoStore) else list(items)
        self.num_frames = num_frames
        self.train = train
        self.seed = seed
        self.epoch = 0
        self.sample_mode: SampleMode = sample_mode or ("rand" if train else "middle")
        self.transform = VideoTransform(
            size=size, train=train, random_crop_scale=random_crop_scale, hflip_p=hflip_p, reverse_p=reverse_p,
            mean=mean, std=std,
        )
        if not train:
            # fail before any decoding: an evaluation set with a broken caption is wrong
            for i, item in enumerate(self.items):
                if item.problem:
                    raise AnnotationError(f"{item.path}: item {i}: {item.problem}; evaluation needs every caption")
        if isinstance(self.items, AnnoStore):
            self.texts, self.text_to_video = self.items.texts, self.items.text_to_video  # lazy, int64[C]
        else:
            self.texts, self.text_to_video = flatten_captions(self.items)
        self.cache = FrameCache(self.items, cache_max_frames, strict=not train) if cache_frames else None

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random choices ``__getitem__`` makes."""
        self.epoch = epoch

    def video_to_texts(self, i: int) -> list[int]:
        """Indices into :attr:`texts` of the captions of video i."""
        return [j for j, v in enumerate(self.text_to_video) if v == i]

    def _frames(self, i: int, item: VideoText, generator: torch.Generator) -> tuple[Tensor, list[int]]:
        """(frames uint8[T,H,W,3], their indices in the video)."""
        T = self.num_frames
        if self.cache is not None and i in self.cache.errors:
            raise VideoError(item.path, self.cache.errors[i])
        cached = self.cache.get(i) if self.cache is not None else None
        if cached is not None:
            idx = sample_indices(cached.shape[0], T, self.sample_mode, generator)
            return torch.from_numpy(cached[idx]), idx  # (T, H, W, 3), fancy indexing copies
        if item.is_image:
            return torch.from_numpy(load_image(item.path)).expand(T, -1, -1, -1), [0] * T  # (T, H, W, 3)
        return decode_sampled(item.path, T, self.sample_mode, generator)  # (T, H, W, 3), T indices

    def _load(self, i: int) -> dict:
        item = self.items[i]
        if item.problem:
            raise AnnotationError(f"{item.path}: item {i}: {item.problem}")
        g = sample_generator(self.seed, self.epoch, i)
        video, caption, frame_ids, mirrored = draw_sample(item.captions, lambda gen: self._frames(i, item, gen),
                                                          self.transform, g, self.train)  # (T, 3, S, S), (T,)
        return {"video": video, "caption": caption, "index": i, "path": str(item.path), "frame_ids": frame_ids,
                "mirrored": mirrored}

    def __getitem__(self, i: int) -> dict:
        try:
            return self._load(i)
        except VideoError as e:
            if not self.train:
                raise
            return self._marker(i, e.reason)
        except AnnotationError:
            if not self.train:
                raise
            return self._marker(i, self.items[i].problem)

    def _marker(self, i: int, reason: str) -> dict:
        return {"bad": True, "path": str(self.items[i].path), "error": reason, "index": i}


def collate_video_text(batch: list[dict]) -> dict:
    """Stack the good samples, list the bad ones.

    Returns ``video`` uint8[B,T,3,S,S] (normalised on the device:
    :func:`vidmask.data.transfer.to_device`), ``caption`` list[str], ``index``
    long[B], ``frame_ids`` long[B,T] (which frames of each video), ``mirrored``
    bool[B] (which clips were flipped left-right),
    ``video_id`` long[B] (:func:`~vidmask.data.annotations.video_id` of each
    path: two entries of one video share it, the contrastive and matching
    losses' same-video positives), ``path`` list[str] and ``bad``
    list[(path, error)], where B
    counts good samples only. When every sample is bad, B = 0 and ``video``
    is an empty tensor: the trainer skips the step. A *fatal* marker (a
    stream that cannot go on: a tar shard that cannot be read) adds ``error``,
    its message: the trainer stops on it.
    """
    fatal = [s["fatal"] for s in batch if s.get("fatal")]
    good = [s for s in batch if not s.get("bad")]
    bad = [(s["path"], s["error"]) for s in batch if s.get("bad") and not s.get("fatal")]
    empty = torch.empty(0, dtype=torch.uint8)
    video = torch.stack([s["video"] for s in good]) if good else empty  # (B, T, 3, S, S) uint8
    return {
        "video": video,
        "caption": [s["caption"] for s in good],
        "index": torch.tensor([s["index"] for s in good], dtype=torch.long),  # (B,)
        "frame_ids": torch.stack([s["frame_ids"] for s in good]) if good else torch.empty(0, dtype=torch.long),  # (B, T)
        # which clips were flipped left-right (a teacher cache mirrors their features: teacher.cache_mirror)
        "mirrored": torch.tensor([bool(s.get("mirrored", False)) for s in good], dtype=torch.bool),  # (B,)
        # shard samples name their source video (video_key); loose files are their path
        "video_id": torch.tensor([video_id(s.get("video_key", s["path"])) for s in good], dtype=torch.long),  # (B,)
        "path": [s["path"] for s in good],
        "bad": bad,
        **({"error": fatal[0]} if fatal else {}),
    }


class _Marking(Dataset):
    """An evaluation dataset whose unreadable samples come back marked instead of raising in a
    worker (whose re-raised error would carry the worker's whole traceback as its message)."""

    def __init__(self, ds: "VideoTextDataset"):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict:
        try:
            return self.ds[i]
        except (VideoError, AnnotationError) as e:
            return {"bad": True, "path": str(self.ds.items[i].path), "error": str(e), "kind": type(e).__name__,
                    "index": i}


def eval_loader(items, num_frames: int, size: int, num_workers: int = 0, batch_size: int = 32, *,
                device: torch.device | str):
    """Evaluation clips in order (`middle` frames, no augmentation): batches of `collate_video_text`
    on ``device``, their ``video`` normalised there (float32[B,T,3,S,S], :func:`to_device`).

    Evaluation never skips: the first unreadable file raises its own one-line error (a
    VideoError or AnnotationError naming the file) in this process, with or without workers."""
    plain = VideoTextDataset(items, num_frames, size, train=False)
    loader = DataLoader(_Marking(plain), batch_size=batch_size, shuffle=False, collate_fn=collate_video_text,
                        **loader_options(device, min(num_workers, 2)))
    for batch in loader:
        if batch["bad"]:
            path, error = batch["bad"][0]
            raise VideoError(error if error.startswith(path) else f"{path}: {error}")
        yield to_device(batch, device, plain.transform.mean, plain.transform.std)


class TooManyBadSamples(RuntimeError):
    """The share of unreadable training samples passed the configured maximum."""


class BadSampleTracker:
    """Counts good and bad training samples; logs each bad file once; stops the run past ``max_share``.

    Call :meth:`update` with every collated batch. The check waits for
    ``min_samples`` samples, so one bad file in the first batch does not
    look like a 50% failure rate.
    """

    def __init__(self, max_share: float = 0.01, min_samples: int = 100, logger: logging.Logger | None = None):
        if not 0.0 <= max_share <= 1.0:
            raise ValueError(f"max_share must be in [0, 1], got {max_share}")
        if min_samples < 1:
            raise ValueError(f"min_samples must be >= 1, got {min_samples}")
        self.max_share = max_share
        self.min_samples = min_samples
        self.log = logger or log
        self.seen = 0
        self.bad = 0
        self.bad_files: dict[str, str] = {}  # path -> first reason seen

    @property
    def share(self) -> float:
        return self.bad / self.seen if self.seen else 0.0

    def update(self, num_good: int, bad: Sequence[tuple[str, str]], total_bad: int | None = None) -> None:
        """Count a batch; raise :class:`TooManyBadSamples` when the bad share is too high.

        bad: this process's unreadable (path, reason) pairs, logged once per file. With several
        processes, ``num_good`` and ``total_bad`` are the counts of all ranks (so every rank reaches
        the same verdict at the same step) and ``bad`` only this rank's files."""
        total_bad = len(bad) if total_bad is None else total_bad
        self.seen += num_good + total_bad
        self.bad += total_bad
        for path, error in bad:
            if path not in self.bad_files:
                self.bad_files[path] = error
                self.log.warning("bad training sample skipped: %s: %s", path, error)
        if self.seen >= self.min_samples and self.share > self.max_share:
            examples = "; ".join(e if e.startswith(p) else f"{p}: {e}" for p, e in list(self.bad_files.items())[:5])
            seen_here = (f"{len(self.bad_files)} distinct files here, e.g. {examples}" if self.bad_files else
                         "read by the other processes (their warnings name the files)")
            raise TooManyBadSamples(
                f"{self.bad} of {self.seen} training samples were unreadable ({self.share:.1%} > "
                f"max {self.max_share:.1%}), {seen_here}. "
                "Fix or remove these files from the annotations, or raise the allowed bad share "
                "if the loss is acceptable."
            )

    def state_dict(self) -> dict:
        return {"seen": self.seen, "bad": self.bad, "bad_files": dict(self.bad_files)}

    def load_state_dict(self, state: dict) -> None:
        """Restore counts from :meth:`state_dict`; an empty dict (an old checkpoint) starts afresh."""
        self.seen = int(state.get("seen", 0))
        self.bad = int(state.get("bad", 0))
        self.bad_files = dict(state.get("bad_files", {}))
