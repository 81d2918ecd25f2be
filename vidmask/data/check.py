"""Find a dataset's unreadable media before a long run does.

:func:`check_media` reads every distinct file of an annotation list the way
training and evaluation will (T frames through :func:`decode_frames`, or the
image), in worker processes, and returns the ones that fail with the
reader's reason. Training would skip them as bad samples (and stop past
``data.max_bad_share``); evaluation would stop at the first. Checking first
lets a user drop or repair them. :func:`check_captions` lists the entries
evaluation would refuse for their captions, and :func:`outside_root` the
ones whose media lies outside the media root.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, NamedTuple, Sequence

from vidmask.data.annotations import VideoText
from vidmask.data.video import VideoError, decode_frames, decode_through, load_image


class BadMedia(NamedTuple):
    path: str
    reason: str


class BadEntry(NamedTuple):
    index: int  # the entry's position in the annotation list
    path: str  # its media file
    reason: str


def check_captions(items: Sequence[VideoText]) -> list[BadEntry]:
    """The entries whose captions evaluation refuses (none, or an empty or whitespace-only one).

    QA entries (those with a ``question``) carry no caption and are not checked."""
    return [BadEntry(i, str(it.path), it.problem) for i, it in enumerate(items)
            if "question" not in it.meta and it.problem is not None]


def outside_root(items: Sequence[VideoText], root: str | Path) -> list[int]:
    """Indices of the entries whose media path leaves ``root`` (``../`` or an absolute path).

    Paths are compared as written (symbolic links are not followed): a media folder linked
    into the root is inside it."""
    top = os.path.abspath(root)
    return [i for i, it in enumerate(items) if os.path.commonpath([top, os.path.abspath(it.path)]) != top]


def check_one(path: str, is_image: bool, num_frames: int, whole: bool = False) -> str | None:
    """Why ``path`` cannot be read as training reads it (``whole``: or any frame of it cannot
    be decoded), or None when it can."""
    try:
        if is_image:
            load_image(path)
        elif whole:
            decode_through(path)
        else:
            decode_frames(path, num_frames, "middle")
    except VideoError as e:
        return e.reason
    return None


def _check_chunk(chunk: list[tuple[str, bool]], num_frames: int, whole: bool) -> list[str | None]:
    return [check_one(path, is_image, num_frames, whole) for path, is_image in chunk]


def check_media(
    items: Sequence[VideoText],
    num_frames: int = 8,
    workers: int = 1,
    progress: Callable[[int], object] | None = None,
    whole: bool = False,
) -> list[BadMedia]:
    """The unreadable files among ``items`` (each distinct file read once), in file order.

    ``workers`` > 1 reads in that many processes; ``progress(n)`` is called as
    each batch of n files is done (e.g. a tqdm bar's ``update``); ``whole``
    decodes every frame (slower; finds damage the sampled frames miss).
    """
    files = list(dict.fromkeys((str(i.path), i.is_image) for i in items))  # distinct, in order
    size = max(1, min(64, len(files) // max(1, 4 * workers)))
    chunks = [files[s : s + size] for s in range(0, len(files), size)]
    reasons: list[str | None] = []
    with ProcessPoolExecutor(workers) if workers > 1 else _InProcess() as pool:
        for chunk, done in zip(chunks, pool.map(_check_chunk, chunks, [num_frames] * len(chunks),
                                                [whole] * len(chunks))):
            reasons += done
            if progress is not None:
                progress(len(chunk))
    return [BadMedia(path, reason) for (path, _), reason in zip(files, reasons) if reason is not None]


class _InProcess:
    """``ProcessPoolExecutor``'s ``map`` in this process, lazily (one worker: no pool to start)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    @staticmethod
    def map(fn, *iterables):
        return map(fn, *iterables)


def without_bad(entries: list[dict], items: Sequence[VideoText], bad: Iterable[BadMedia],
                bad_entries: Iterable[BadEntry] = ()) -> list[dict]:
    """The raw annotation ``entries`` whose media file (``items[k].path``) is not in ``bad``
    and whose index is not in ``bad_entries``."""
    bad_paths = {Path(b.path) for b in bad}
    drop = {b.index for b in bad_entries}
    return [e for k, (e, item) in enumerate(zip(entries, items)) if Path(item.path) not in bad_paths and k not in drop]
