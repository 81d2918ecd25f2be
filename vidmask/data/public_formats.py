"""The public datasets' own annotation files, converted to the UMT/VINDLU lists vidmask reads.

Each converter is a pure function from the released file(s) to a list of
entries for :func:`vidmask.data.annotations.load_annotations`:

* ``msrvtt``: MSR-VTT's ``train_val_videodatainfo.json`` / ``test_videodatainfo.json``
  (or CLIP4Clip's ``MSRVTT_data.json``, the same layout): ``{"videos": [{"video_id",
  "split", ...}], "sentences": [{"video_id", "caption", "sen_id"}]}``; one entry per
  video with all its sentences as the ``caption`` list; ``split`` picks the official
  train / validate / test videos, ``ids`` a video list such as CLIP4Clip's
  ``MSRVTT_train.9k.csv`` (the 9k training split of the 1k-A protocol).
* ``msrvtt-1k``: the 1k-A test split, ``MSRVTT_JSFUSION_test.csv`` (``key, vid_key,
  video_id, sentence``): one entry and one caption per video.
* ``msrvtt-qa`` / ``msvd-qa``: ``{train,val,test}_qa.json`` lists of ``{"question",
  "answer", "video_id": int, "id"}``. MSRVTT-QA's ``video_id`` N is ``videoN``;
  MSVD-QA's is ``vidN`` of ``youtube_mapping.txt`` (``<clip> vidN`` per line).
  The question type is the question's first word (what / who / how / when / where),
  which is how both datasets report accuracy by type.
* ``activitynet-qa``: ActivityNet-QA's ``{split}_q.json`` (``{"video_name", "question",
  "question_id"}``) with the ``{split}_a.json`` beside it (``{"question_id", "answer",
  "type"}``); videos are ``v_<video_name>``, types named as its README numbers them
  (motion, spatial, temporal, then the free questions' answer types yes_no, color,
  object, location, number, other).
* ``msvd-caption``: MSVD's ``AllVideoDescriptions.txt`` (``<clip> <sentence>`` per line,
  ``#`` comments); one entry per clip with its sentences. ``split`` (with the mapping)
  takes the standard split: vid1-1200 train, 1201-1300 val, 1301-1970 test.
* ``webvid``: WebVid-2M / 10M's ``results_*.csv`` (``videoid, contentUrl, duration,
  page_dir, name``), pretraining pairs; videos at ``<page_dir>/<videoid>.mp4``, as its
  download script stores them.
* ``didemo``: DiDeMo's ``{train,val,test}_data.json`` (one moment per item:
  ``{"video", "description", "times", ...}``); one entry per video with its moment
  descriptions in file order, for paragraph retrieval (``--paragraph``).
* ``activitynet``: ActivityNet Captions' ``train.json`` / ``val_1.json`` / ``val_2.json``
  (``{"v_<id>": {"duration", "timestamps", "sentences"}}``); one entry per video with
  its sentences in order, for paragraph retrieval.

Every problem is an :class:`AnnotationError` naming the file and what is wrong.
:func:`find_videos` then matches entries to the files on disk (another
extension than the annotation says is fine: downloaded sets mix mp4, mkv and
webm) and reports the missing ones.
"""

from __future__ import annotations

import csv
import json
import re
from collections import Counter
from pathlib import Path
from typing import Callable

from vidmask.data.annotations import AnnotationError

Entry = dict  # {"video": str, "caption": str | list[str]} or a QA entry


def _fail(path: Path, what: str) -> AnnotationError:
    return AnnotationError(f"{path}: {what}")


def _read_json(path: Path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _fail(path, "file not found") from None
    except json.JSONDecodeError as e:
        raise _fail(path, f"not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from e


def _need(path: Path, item, keys: tuple[str, ...], where: str) -> None:
    if not isinstance(item, dict):
        raise _fail(path, f"{where} is a {type(item).__name__}, not an object")
    missing = [k for k in keys if k not in item]
    if missing:
        raise _fail(path, f"{where} lacks {missing} (has {sorted(item)}); is this the right format?")


def _read_lines(path: Path) -> list[str]:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        raise _fail(path, "file not found") from None


def _csv_rows(path: Path, key: str, text: str, layout: str) -> list[dict]:
    """The rows of a csv with a header, each checked to have a non-empty ``key`` and a ``text``
    column; errors name the row and the ``layout`` expected."""
    try:
        with Path(path).open(encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        raise _fail(path, "file not found") from None
    for i, row in enumerate(rows):
        if not row.get(key) or row.get(text) is None:
            columns = sorted(k for k in row if k)  # None holds a row's extra fields
            raise _fail(path, f"row {i + 2} lacks {key} or {text} (columns: {columns}); expected {layout}")
    if not rows:
        raise _fail(path, f"no rows; expected {layout}")
    return rows


def read_id_list(path: Path) -> list[str]:
    """Video ids, one per line (first column of a csv; a ``video_id`` header is skipped)."""
    ids = []
    for line in _read_lines(path):
        first = line.split(",")[0].strip()
        if first and first != "video_id":
            ids.append(first)
    if not ids:
        raise _fail(path, "no video ids in the file")
    return ids


def msrvtt(path: Path, split: str | None = None, ids: list[str] | None = None, ext: str = ".mp4") -> list[Entry]:
    data = _read_json(path)
    _need(path, data, ("videos", "sentences"), "the top level")
    videos = []
    for i, v in enumerate(data["videos"]):
        _need(path, v, ("video_id",), f"videos[{i}]")
        videos.append(v)
    if split is not None:
        splits = sorted({str(v.get("split")) for v in videos})
        if split not in splits:
            raise _fail(path, f"no videos with split {split!r}; the file has {splits}")
        videos = [v for v in videos if v.get("split") == split]
    if ids is not None:
        known = {v["video_id"] for v in videos}
        unknown = [i for i in ids if i not in known]
        if unknown:
            raise _fail(path, f"{len(unknown)} listed video ids are not in the file (first: {unknown[:3]})")
        wanted = set(ids)
        videos = [v for v in videos if v["video_id"] in wanted]
    captions: dict[str, list[tuple[int, str]]] = {}
    for j, s in enumerate(data["sentences"]):
        _need(path, s, ("video_id", "caption"), f"sentences[{j}]")
        captions.setdefault(s["video_id"], []).append((int(s.get("sen_id", j)), str(s["caption"]).strip()))
    out = []
    for v in videos:
        caps = [c for _, c in sorted(captions.get(v["video_id"], []))]
        if not caps:
            raise _fail(path, f"video {v['video_id']} has no sentences")
        out.append({"video": v["video_id"] + ext, "caption": caps})
    return out


def msrvtt_1k(path: Path, ext: str = ".mp4") -> list[Entry]:
    out = []
    for row in _csv_rows(path, "video_id", "sentence", "MSRVTT_JSFUSION_test.csv (key,vid_key,video_id,sentence)"):
        sentence = ",".join([row["sentence"], *row.get(None, [])])  # an unquoted comma split it
        out.append({"video": row["video_id"] + ext, "caption": sentence.strip()})
    return out


def read_msvd_mapping(path: Path) -> dict[int, str]:
    """youtube_mapping.txt: ``<clip> vidN`` per line -> {N: clip}."""
    mapping = {}
    for k, line in enumerate(_read_lines(path)):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or not re.fullmatch(r"vid\d+", parts[1]):
            raise _fail(path, f"line {k + 1} is not '<clip> vid<N>': {line!r}")
        mapping[int(parts[1][3:])] = parts[0]
    return mapping


def question_type(question: str) -> str:
    """The first word, lower case: what / who / how / when / where / ..."""
    words = question.strip().lower().split()
    return words[0] if words else ""


def video_qa(path: Path, video_name: Callable[[int], str], ext: str) -> list[Entry]:
    data = _read_json(path)
    if not isinstance(data, list):
        raise _fail(path, f"the top level is a {type(data).__name__}, not a list of questions")
    out = []
    for i, q in enumerate(data):
        _need(path, q, ("question", "answer", "video_id"), f"entry {i}")
        try:
            name = video_name(int(q["video_id"]))
        except KeyError:
            raise _fail(path, f"entry {i}: video_id {q['video_id']} is not in the mapping file") from None
        out.append({"video": name + ext, "question": q["question"].strip(), "answer": str(q["answer"]).strip(),
                    "question_id": q.get("id", q.get("question_id", i)), "type": question_type(q["question"])})
    return out


ANET_QA_TYPES = ("motion", "spatial", "temporal", "yes_no", "color", "object", "location", "number", "other")


def activitynet_qa(path: Path, ext: str = ".mp4") -> list[Entry]:
    path = Path(path)
    if not path.name.endswith("_q.json"):
        raise _fail(path, "expected ActivityNet-QA's questions file, <split>_q.json (its answers beside it)")
    answers_path = path.with_name(path.name[: -len("_q.json")] + "_a.json")
    questions, answers = _read_json(path), _read_json(answers_path)
    for f, data in ((path, questions), (answers_path, answers)):
        if not isinstance(data, list):
            raise _fail(f, f"the top level is a {type(data).__name__}, not a list")
    by_id = {}
    for i, a in enumerate(answers):
        _need(answers_path, a, ("question_id", "answer"), f"entry {i}")
        by_id[a["question_id"]] = a
    out = []
    for i, q in enumerate(questions):
        _need(path, q, ("video_name", "question", "question_id"), f"entry {i}")
        a = by_id.get(q["question_id"])
        if a is None:
            raise _fail(answers_path, f"no answer for question_id {q['question_id']!r} (entry {i} of {path.name})")
        kind = a.get("type")
        out.append({"video": f"v_{q['video_name']}{ext}", "question": q["question"].strip(),
                    "answer": str(a["answer"]).strip(), "question_id": q["question_id"],
                    "type": ANET_QA_TYPES[kind] if isinstance(kind, int) and 0 <= kind < 9 else str(kind)})
    return out


def msrvtt_qa(path: Path, ext: str = ".mp4") -> list[Entry]:
    return video_qa(path, lambda n: f"video{n}", ext)


def msvd_qa(path: Path, mapping: dict[int, str], ext: str = ".avi") -> list[Entry]:
    return video_qa(path, mapping.__getitem__, ext)


MSVD_SPLITS = {"train": range(1, 1201), "val": range(1201, 1301), "test": range(1301, 1971)}


def msvd_caption(path: Path, mapping: dict[int, str] | None = None, split: str | None = None,
                 ext: str = ".avi") -> list[Entry]:
    captions: dict[str, list[str]] = {}
    for line in _read_lines(path):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        clip, _, sentence = line.partition(" ")
        if sentence.strip():
            captions.setdefault(clip, []).append(sentence.strip())
    if not captions:
        raise _fail(path, "no '<clip> <sentence>' lines")
    clips = list(captions)
    if split is not None:
        if split not in MSVD_SPLITS:
            raise AnnotationError(f"msvd-caption: unknown split {split!r}; use one of {sorted(MSVD_SPLITS)}")
        if mapping is None:
            raise AnnotationError("msvd-caption: a split needs the youtube_mapping.txt file (--mapping)")
        clips = [mapping[n] for n in MSVD_SPLITS[split] if n in mapping and mapping[n] in captions]
    return [{"video": c + ext, "caption": captions[c]} for c in clips]


def webvid(path: Path, ext: str = ".mp4") -> list[Entry]:
    out = []
    for row in _csv_rows(path, "videoid", "name", "WebVid's csv (videoid,contentUrl,duration,page_dir,name)"):
        folder = (row.get("page_dir") or "").strip()
        video = f"{folder}/{row['videoid']}{ext}" if folder else f"{row['videoid']}{ext}"
        out.append({"video": video, "caption": row["name"].strip()})
    return out


def didemo(path: Path, ext: str | None = None) -> list[Entry]:
    data = _read_json(path)
    if not isinstance(data, list):
        raise _fail(path, f"the top level is a {type(data).__name__}, not a list of moments")
    paragraphs: dict[str, list[str]] = {}
    for i, m in enumerate(data):
        _need(path, m, ("video", "description"), f"entry {i}")
        paragraphs.setdefault(m["video"], []).append(m["description"].strip())
    return [{"video": v if ext is None else str(Path(v).with_suffix(ext)), "caption": caps}
            for v, caps in paragraphs.items()]


def activitynet(path: Path, ext: str = ".mp4") -> list[Entry]:
    data = _read_json(path)
    if not isinstance(data, dict):
        raise _fail(path, f"the top level is a {type(data).__name__}, not an object of videos")
    out = []
    for vid, item in data.items():
        _need(path, item, ("sentences",), f"video {vid}")
        out.append({"video": vid + ext, "caption": [s.strip() for s in item["sentences"]]})
    return out


# each format's video file extension, unless ``ext`` says otherwise (DiDeMo's file names its videos)
DEFAULT_EXT = {"msrvtt": ".mp4", "msrvtt-1k": ".mp4", "msrvtt-qa": ".mp4", "msvd-qa": ".avi",
               "activitynet-qa": ".mp4", "msvd-caption": ".avi", "webvid": ".mp4", "didemo": None,
               "activitynet": ".mp4"}
FORMATS = tuple(DEFAULT_EXT)
FORMAT_HELP = {
    "msrvtt": "MSR-VTT train_val_videodatainfo.json / test_videodatainfo.json / MSRVTT_data.json "
              "(--split train|validate|test or --ids MSRVTT_train.9k.csv)",
    "msrvtt-1k": "MSR-VTT 1k-A test split, MSRVTT_JSFUSION_test.csv",
    "msrvtt-qa": "MSRVTT-QA {train,val,test}_qa.json",
    "msvd-qa": "MSVD-QA {train,val,test}_qa.json (--mapping youtube_mapping.txt)",
    "activitynet-qa": "ActivityNet-QA {train,val,test}_q.json, with the _a.json beside it",
    "msvd-caption": "MSVD AllVideoDescriptions.txt (--split train|val|test with --mapping youtube_mapping.txt)",
    "webvid": "WebVid-2M/10M results_*.csv (pretraining pairs; videos at <page_dir>/<videoid>.mp4)",
    "didemo": "DiDeMo {train,val,test}_data.json, one paragraph per video",
    "activitynet": "ActivityNet Captions train.json / val_1.json / val_2.json, one paragraph per video",
}
QA_FORMATS = ("msrvtt-qa", "msvd-qa", "activitynet-qa")


def convert(fmt: str, src: str | Path, *, split: str | None = None, ids: str | Path | None = None,
            mapping: str | Path | None = None, ext: str | None = None) -> list[Entry]:
    """``src`` in public format ``fmt`` (one of :data:`FORMATS`) as vidmask annotation entries.

    ``split``: msrvtt (train / validate / test) and msvd-caption (train / val / test);
    ``ids``: msrvtt, a file of video ids to keep; ``mapping``: MSVD's youtube_mapping.txt;
    ``ext``: the video extension to write (default :data:`DEFAULT_EXT`).
    """
    if fmt not in DEFAULT_EXT:
        raise AnnotationError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    src = Path(src)
    ext = DEFAULT_EXT[fmt] if ext is None else ext
    if fmt.startswith("msvd") and mapping is None and (fmt == "msvd-qa" or split):
        raise AnnotationError(f"{fmt}{' --split' if split else ''} needs MSVD's youtube_mapping.txt (--mapping)")
    msvd_map = read_msvd_mapping(Path(mapping)) if fmt.startswith("msvd") and mapping else None
    if fmt == "msrvtt":
        return msrvtt(src, split, read_id_list(Path(ids)) if ids else None, ext)
    if fmt == "msrvtt-1k":
        return msrvtt_1k(src, ext)
    if fmt == "msrvtt-qa":
        return msrvtt_qa(src, ext)
    if fmt == "msvd-qa":
        return msvd_qa(src, msvd_map, ext)
    if fmt == "activitynet-qa":
        return activitynet_qa(src, ext)
    if fmt == "msvd-caption":
        return msvd_caption(src, msvd_map, split, ext)
    if fmt == "webvid":
        return webvid(src, ext)
    if fmt == "didemo":
        return didemo(src, ext)
    return activitynet(src, ext)


def answer_list(entries: list[Entry], top: int) -> list[str]:
    """The ``top`` most frequent answers of QA entries (UMT's answer vocabulary), most frequent
    first, ties in order of first appearance."""
    counts = Counter(e["answer"] for e in entries)
    return [a for a, _ in counts.most_common(top)]


def find_videos(entries: list[Entry], root: str | Path) -> tuple[list[Entry], list[str]]:
    """Match entries to files under ``root``: (entries with ``video`` set to the file found,
    names not found).

    A name is found as written, or else as the only file under ``root`` (at any depth)
    with the same stem and another extension. Entries whose video is missing are left
    out of the first list.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: video folder not found")
    by_stem: dict[str, list[str]] = {}
    for f in root.rglob("*"):
        if f.is_file():
            by_stem.setdefault(f.stem, []).append(f.relative_to(root).as_posix())
    found, missing = [], []
    for e in entries:
        name = e["video"]
        if (root / name).is_file():
            found.append(e)
            continue
        candidates = by_stem.get(Path(name).stem, [])
        if len(candidates) == 1:
            found.append({**e, "video": candidates[0]})
        else:
            missing.append(name)
    return found, missing
