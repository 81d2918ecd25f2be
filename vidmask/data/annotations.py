"""UMT/VINDLU annotation files: a JSON list of ``{"video" | "image": path, "caption": ...}``.

Each entry names one media file, relative to a media root (by default the
annotation file's folder), and one caption or a list of captions. Other keys
(``question``, ``answer``, ``question_id``, ``type``, ...) are kept in
``meta``. A malformed file is an :class:`AnnotationError` at load time; an
empty caption is not: it is a bad *sample* (see :attr:`VideoText.problem`),
which training skips and counts and evaluation refuses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence


class AnnotationError(ValueError):
    """A malformed annotation file; the message names the file and the entry."""


@dataclass
class VideoText:
    """One annotated video (or image, read as a 1-frame video)."""

    path: Path  # media file, already joined with the media root
    captions: list[str]  # one or more; may hold empty strings (a bad sample)
    is_image: bool = False  # True when the entry used the `image` key
    meta: dict = field(default_factory=dict)  # every other key of the entry

    @property
    def problem(self) -> str | None:
        """Why this item cannot be a training sample, or None when it can."""
        if not self.captions:
            return "no caption (empty caption list)"
        for j, c in enumerate(self.captions):
            if not c.strip():
                where = "caption" if len(self.captions) == 1 else f"caption {j}"
                return f"{where} is empty"
        return None


def _fail(path: Path, what: str, todo: str) -> AnnotationError:
    return AnnotationError(f"{path}: {what}. {todo}")


def _parse_entry(entry, idx: int, ann_path: Path, root: Path, require_caption: bool) -> VideoText:
    where = f"entry {idx}"
    if not isinstance(entry, dict):
        raise _fail(ann_path, f"{where} is a {type(entry).__name__}, not an object",
                    'Each entry must look like {"video": "clip.mp4", "caption": "..."}')
    has_video, has_image = "video" in entry, "image" in entry
    if has_video == has_image:
        if has_video:
            what = "has both 'video' and 'image'"
        else:
            what = f"has neither 'video' nor 'image' (keys: {sorted(entry)})"
        raise _fail(ann_path, f"{where} {what}", "Give exactly one of them, holding the media path")
    key = "video" if has_video else "image"
    rel = entry[key]
    if not isinstance(rel, str) or not rel:
        raise _fail(ann_path, f"{where}: '{key}' must be a non-empty path string, got {rel!r}",
                    "Fix the entry or remove it")
    if "caption" not in entry:
        if require_caption:
            raise _fail(ann_path, f"{where} has no 'caption' key (keys: {sorted(entry)})",
                        "Add a caption, or load with require_caption=False (e.g. QA files)")
        captions: list[str] = []
    else:
        cap = entry["caption"]
        if isinstance(cap, str):
            captions = [cap]
        elif isinstance(cap, list):
            for j, c in enumerate(cap):
                if not isinstance(c, str):
                    raise _fail(ann_path, f"{where}: caption[{j}] is a {type(c).__name__}, not a string",
                                "Captions must be a string or a list of strings")
            captions = list(cap)
        else:
            raise _fail(ann_path, f"{where}: 'caption' is a {type(cap).__name__}, not a string or list of strings",
                        "Captions must be a string or a list of strings")
    meta = {k: v for k, v in entry.items() if k not in ("video", "image", "caption")}
    return VideoText(path=root / rel, captions=captions, is_image=has_image, meta=meta)


def load_annotations(
    path: str | Path, root: str | Path | None = None, *, require_caption: bool = True,
    unique: bool = False, nonempty: bool = False,
) -> list[VideoText]:
    """Read an annotation JSON file into :class:`VideoText` items, in file order.

    ``root`` is the folder media paths are relative to (default: the
    annotation file's folder). Paths may leave it (``../clips/a.mp4``, or an
    absolute path, kept as it is): datasets often keep their media apart from
    the annotations, so such entries are read from where they point, and
    ``vidmask anno check`` counts them. Files are not checked for existence
    here: a missing one is a bad sample when it is read, so one lost file does
    not stop a large corpus.

    Evaluation files pass ``unique=True``: an entry repeated exactly (same
    media, captions and other keys) would be scored twice, so it is an error.
    Training files may repeat entries (a repeat is drawn more often). With
    ``nonempty=True`` a file holding no entries is an error.
    """
    path = Path(path)
    root = path.parent if root is None else Path(root)
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: a byte-order mark some editors write is skipped
    except FileNotFoundError:
        raise _fail(path, "annotation file not found", "Check the path in the config") from None
    except (OSError, UnicodeDecodeError) as e:
        raise _fail(path, f"cannot read the annotation file ({e})", "Check the file is UTF-8 JSON") from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise _fail(path, f"not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})",
                    "Fix the file; it must be a JSON list of entries") from e
    if not isinstance(data, list):
        raise _fail(path, f"the top level is a {type(data).__name__}, not a list",
                    'The file must be a JSON list: [{"video": ..., "caption": ...}, ...]')
    if nonempty and not data:
        raise _fail(path, "holds no entries", "Evaluation needs at least one; check the file is the right one")
    items = [_parse_entry(entry, i, path, root, require_caption) for i, entry in enumerate(data)]
    if unique:
        first: dict[tuple, int] = {}
        for i, it in enumerate(items):
            key = (it.path, it.is_image, tuple(it.captions), json.dumps(it.meta, sort_keys=True))
            j = first.setdefault(key, i)
            if j != i:
                video = data[i].get("video", data[i].get("image"))
                raise _fail(path, f"entries {j} and {i} are the same ({video!r}, same captions)",
                            "Remove one: evaluation would count it twice")
    return items


def flatten_captions(items: Sequence[VideoText]) -> tuple[list[str], list[int]]:
    """Every caption as one text query, with the index of its video.

    Retrieval evaluation ranks texts against videos: ``texts[j]`` describes
    video ``text_to_video[j]``. Videos with several captions give several
    queries, in order.
    """
    texts: list[str] = []
    text_to_video: list[int] = []
    for i, item in enumerate(items):
        for c in item.captions:
            texts.append(c)
            text_to_video.append(i)
    return texts, text_to_video


def video_id(path: str) -> int:
    """A stable 63-bit id of a video from its path (or shard key): equal paths, equal ids.

    A batch's ``video_id`` column: two annotation entries of one video (two
    captions listed apart, or a sample repeated to even out ranks) are then
    one video to the contrastive and matching losses (``StepContext.pair_ids``).
    A hash, not a table, so no rank or worker holds a path-to-id map of a
    10M-entry set; two different paths collide with probability ~B^2 / 2^64.
    """
    import hashlib

    digest = hashlib.blake2b(str(path).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # fits a signed int64
