"""Looking at a corpus: counts, vocabularies and a contact sheet.

``corpus_info(dir)`` summarises a complete corpus (one with corpus.json) as a
plain dict; ``write_contact_sheet(dir, path)`` decodes a few videos (a twin
pair first, so the sheet shows what a counterfactual looks like) and lays
out sampled frames in a row with the captions underneath.
"""

from __future__ import annotations

import json
import os
import re
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np

from vidmask.corpus.make import ANNOTATION_FILES, CORPUS_FILE, SPLITS, CorpusError

_WORD = re.compile(r"[a-z][a-z-]*")


def load_corpus(corpus_dir: str | os.PathLike) -> dict:
    """The parsed corpus.json; a clear error if the corpus is incomplete."""
    path = Path(corpus_dir) / CORPUS_FILE
    if not path.is_file():
        raise CorpusError(
            f"{corpus_dir} holds no complete corpus ({CORPUS_FILE} is missing; it is written last); "
            f"make one with `vidmask corpus make --out {corpus_dir}`")
    return json.loads(path.read_text(encoding="utf-8"))


def corpus_info(corpus_dir: str | os.PathLike) -> dict:
    """Counts, splits, attribute histograms and vocabularies of a corpus."""
    root = Path(corpus_dir)
    corpus = load_corpus(root)
    videos = corpus["videos"]
    words: Counter = Counter()
    captions = 0
    for v in videos:
        captions += len(v["captions"])
        for c in v["captions"]:
            words.update(_WORD.findall(c.lower()))
    objects = [o for v in videos for o in v["objects"]]
    qa: dict[str, int] = {}
    qa_types: Counter = Counter()
    answers: Counter = Counter()
    for split in SPLITS:
        path = root / f"{split}_qa.json"
        items = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
        qa[split] = len(items)
        qa_types.update(q["type"] for q in items)
        answers.update(q["answer"] for q in items)
    answer_list = json.loads((root / "answer_list.json").read_text(encoding="utf-8"))
    return {
        "dir": str(root),
        "generator": corpus["generator"],
        "version": corpus["version"],
        "params": corpus["params"],
        "videos": len(videos),
        "scenes": len({v["scene_id"] for v in videos}),
        "splits": dict(Counter(v["split"] for v in videos)),
        "twins": {"pairs": len(corpus["twins"]), **Counter(t["differs"] for t in corpus["twins"])},
        "objects_per_video": dict(sorted(Counter(len(v["objects"]) for v in videos).items())),
        "shapes": dict(Counter(o["shape"] for o in objects).most_common()),
        "colours": dict(Counter(o["colour"] for o in objects).most_common()),
        "sizes": dict(Counter(o["size"] for o in objects).most_common()),
        "motions": dict(Counter(o["motion"] for o in objects).most_common()),
        "backgrounds": dict(Counter(v["background"]["kind"] for v in videos).most_common()),
        "captions": {"total": captions, "per_video": round(captions / max(len(videos), 1), 2),
                     "vocabulary_size": len(words), "vocabulary": sorted(words)},
        "qa": {"questions": qa, "types": dict(qa_types.most_common()),
               "answers_used": len(answers), "answer_list": answer_list},
        "files": {name: (root / name).stat().st_size for name in (*ANNOTATION_FILES, CORPUS_FILE)
                  if (root / name).is_file()},
    }


def decode_frames(path: str | os.PathLike) -> np.ndarray:
    """All frames of a video as uint8[F, H, W, 3] RGB (PyAV)."""
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])  # (F, H, W, 3)


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: fixed bitmap font
        return ImageFont.load_default()


def write_contact_sheet(corpus_dir: str | os.PathLike, path: str | os.PathLike, videos: int = 6,
                        frames: int = 8) -> Path:
    """A PNG with ``videos`` rows: ``frames`` evenly spaced frames, captions below.

    The first twin pair comes first (so the sheet shows a counterfactual),
    then videos in corpus order. Frames under 128 px are enlarged for reading.
    """
    from PIL import Image, ImageDraw

    root = Path(corpus_dir)
    corpus = load_corpus(root)
    by_name = {v["video"]: v for v in corpus["videos"]}
    chosen: list[str] = []
    if corpus["twins"]:
        chosen += [corpus["twins"][0]["a"], corpus["twins"][0]["b"]]
    chosen += [v["video"] for v in corpus["videos"] if v["video"] not in chosen]
    chosen = chosen[:videos]

    size = corpus["params"]["size"]
    tile = max(size, 128)
    font, line = _font(13), 16
    chars = max(20, int(tile * frames / 7.2))  # rough glyph width at 13 px
    rows = []
    for name in chosen:
        record = by_name[name]
        clip = decode_frames(root / name)  # (F, H, W, 3)
        picks = np.linspace(0, len(clip) - 1, frames).round().astype(int)
        strip = np.concatenate([clip[i] for i in picks], axis=1)  # (H, frames*W, 3)
        strip_img = Image.fromarray(strip).resize((tile * frames, tile), Image.NEAREST)
        title = f"{name} [{record['split']}]"
        if record["twin_of"]:
            changed = record["changed"]
            title += f"  twin of {record['twin_of']}: {changed['differs']} of object {changed['object']} changed"
        text = [title] + [ln for c in record["captions"] for ln in textwrap.wrap("- " + c, chars)]
        row = Image.new("RGB", (tile * frames, tile + line * len(text) + 6), (255, 255, 255))
        row.paste(strip_img, (0, 0))
        draw = ImageDraw.Draw(row)
        for k, ln in enumerate(text):
            draw.text((4, tile + 3 + k * line), ln, fill=(0, 0, 0) if k else (90, 90, 90), font=font)
        rows.append(row)
    sheet = Image.new("RGB", (tile * frames, sum(r.height for r in rows) + 4 * len(rows)), (200, 200, 200))
    y = 0
    for row in rows:
        sheet.paste(row, (0, y))
        y += row.height + 4
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    sheet.save(tmp, format="PNG")
    os.replace(tmp, out)
    return out
