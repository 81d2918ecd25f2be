"""Writing a motion-shapes corpus to disk: videos, annotations, ground truth.

``make_corpus(out_dir, ...)`` plans the corpus (which scenes get a twin, which
split each scene lands in), renders and encodes the videos in worker
processes, and streams the annotation files as results come back in video
order. Three properties drive the design:

* **Deterministic.** Scene ``s`` is sampled from ``default_rng([seed, s])``,
  its twin change from ``[seed, s, 1]``, its captions from ``[seed, s, 2]``
  and its questions from ``[seed, s, 3]``; results are written in video
  order. The worker count changes nothing; twins share caption draws, so
  their captions differ only in the changed words.
* **Streaming.** Workers write their mp4 and return only small metadata
  (scene, boxes, captions); at most ``4 * workers`` chunks are in flight, and
  annotation lists are written item by item, so 100,000 videos need no more
  memory than 1,000 (the twin list and the plan are the only O(N) state).
* **Atomic.** Every file is written under a hidden temporary name in its own
  folder and moved into place with ``os.replace``; ``corpus.json`` is moved
  last, so its presence marks a complete corpus and an interrupted run leaves
  nothing a later run trusts.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import deque
from dataclasses import asdict, dataclass, fields
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from vidmask.corpus.captions import ANSWERS, QUESTION_TYPES, captions, questions
from vidmask.corpus.render import render
from vidmask.corpus.scene import BACKGROUNDS, COLOURS, MOTIONS, SHAPES, SIDES, SIZES, Scene, make_twin, sample_scene

GENERATOR = "vidmask.corpus/motion-shapes"
VERSION = 1
CORPUS_FILE = "corpus.json"
VIDEO_DIR = "videos"
SPLITS = ("train", "val", "test")
# Every file make_corpus writes besides the videos; corpus.json comes last.
ANNOTATION_FILES = (
    "train.json", "train_caption.json", "train_qa.json",
    "val_retrieval.json", "val_qa.json",
    "test_retrieval.json", "test_retrieval_all.json", "test_caption.json",
    "test_paragraph.json", "test_qa.json",
    "answer_list.json",
)
# ultrafast: ~2 ms per clip, and the only preset whose bitstream we found
# repeatable: with veryfast, x264 at 64 px gave a clip different bytes (and
# slightly different pixels) depending on which clips the same process had
# encoded before, so results depended on the worker count. crf sets quality.
PRESET = "ultrafast"
CHUNK = 8  # videos per worker task: amortises inter-process overhead


class CorpusError(ValueError):
    """A bad argument or output folder; the message says what to do."""


@dataclass(frozen=True)
class CorpusConfig:
    """Everything that determines the corpus bytes (stored in corpus.json)."""

    videos: int = 2000  # total videos, twins included
    seed: int = 0  # the only source of randomness
    frames: int = 16  # frames per video
    size: int = 128  # frame side in px, a multiple of 16 (the ViT patch size)
    fps: int = 8  # frame rate written in the mp4
    twin_share: float = 0.3  # share of scenes that get a counterfactual twin
    test_share: float = 0.2  # share of videos in the held-out test split
    val_share: float = 0.1  # share of videos in the validation split
    crf: int = 20  # x264 quality; ~18-23 keeps the named colours intact

    def __post_init__(self) -> None:
        def bad(flag: str, got, need: str) -> None:
            raise CorpusError(f"--{flag} must be {need} (got {got!r}); pass e.g. --{flag} {_default(flag)}")

        if not isinstance(self.videos, int) or self.videos < 1:
            bad("videos", self.videos, "a whole number >= 1")
        if not isinstance(self.frames, int) or self.frames < 2:
            bad("frames", self.frames, "a whole number >= 2 (motion needs at least two frames)")
        if not isinstance(self.size, int) or self.size < 32 or self.size % 16:
            bad("size", self.size, "a multiple of 16 and at least 32 (H.264 macroblocks and 16 px ViT patches)")
        if not isinstance(self.fps, int) or self.fps < 1:
            bad("fps", self.fps, "a whole number >= 1")
        if not 0.0 <= self.twin_share <= 1.0:
            bad("twin-share", self.twin_share, "between 0 and 1")
        if not 0.0 <= self.test_share < 1.0:
            bad("test-share", self.test_share, "between 0 and 1")
        if not 0.0 <= self.val_share < 1.0:
            bad("val-share", self.val_share, "between 0 and 1")
        if self.test_share + self.val_share >= 1.0:
            raise CorpusError(
                f"--test-share + --val-share must leave videos for training "
                f"(got {self.test_share} + {self.val_share} >= 1); lower one of them")
        if not isinstance(self.crf, int) or not 0 <= self.crf <= 51:
            bad("crf", self.crf, "a whole number in 0..51")


def _default(flag: str):
    return {f.name.replace("_", "-"): f.default for f in fields(CorpusConfig)}.get(flag)


@dataclass(frozen=True)
class Plan:
    """Which scene each video shows and where each scene goes."""

    scene_of: np.ndarray  # int[V], scene id of each video
    is_twin: np.ndarray  # bool[V], True = the counterfactual of the video before it
    split_of_scene: np.ndarray  # int[S], index into SPLITS


def plan_corpus(cfg: CorpusConfig) -> Plan:
    """Decide twins and splits, exactly to the requested shares.

    With S scenes of which T get a twin, V = S + T; so S = ceil(V / (1 +
    twin_share)). Splits are drawn per scene, so twins always share a split:
    scenes in a seeded random order fill test, then val, then train.
    """
    rng = np.random.default_rng([cfg.seed, 0x5EED, 0])  # a stream no scene uses
    scenes = int(np.ceil(cfg.videos / (1.0 + cfg.twin_share)))
    twins = cfg.videos - scenes
    has_twin = np.zeros(scenes, dtype=bool)
    has_twin[rng.choice(scenes, size=twins, replace=False)] = True
    per_scene = 1 + has_twin.astype(np.int64)  # (S,) videos per scene
    scene_of = np.repeat(np.arange(scenes), per_scene)  # (V,)
    is_twin = np.zeros(cfg.videos, dtype=bool)
    is_twin[1:] = scene_of[1:] == scene_of[:-1]
    split_of_scene = np.full(scenes, SPLITS.index("train"), dtype=np.int64)
    order = rng.permutation(scenes)
    filled = np.cumsum(per_scene[order])  # (S,) videos after taking each scene in order
    n_test, n_val = round(cfg.test_share * cfg.videos), round(cfg.val_share * cfg.videos)
    test = order[: int(np.searchsorted(filled, n_test, side="left")) + (1 if n_test else 0)]
    rest = order[len(test):]
    filled_rest = np.cumsum(per_scene[rest])
    val = rest[: int(np.searchsorted(filled_rest, n_val, side="left")) + (1 if n_val else 0)]
    split_of_scene[test] = SPLITS.index("test")
    split_of_scene[val] = SPLITS.index("val")
    return Plan(scene_of, is_twin, split_of_scene)


def scene_for(cfg: CorpusConfig, scene_id: int, twin: bool) -> tuple[Scene, dict | None]:
    """The scene of a video: the sampled one, or its twin and what changed."""
    scene = sample_scene(np.random.default_rng([cfg.seed, scene_id]), cfg.size, cfg.frames)
    if not twin:
        return scene, None
    scene, index, differs = make_twin(np.random.default_rng([cfg.seed, scene_id, 1]), scene)
    return scene, {"object": index, "differs": differs}


def video_name(index: int, videos: int) -> str:
    """Relative path of a video, zero-padded so names sort in video order."""
    width = max(6, len(str(videos - 1)))
    return f"{VIDEO_DIR}/{index:0{width}d}.mp4"


def write_mp4(frames: np.ndarray, path: Path, fps: int, crf: int) -> None:
    """Encode uint8[F, H, W, 3] RGB frames as H.264 yuv420p mp4, atomically.

    One encoder thread: the workers already use every core, and a single
    thread keeps the bitstream identical from run to run.
    """
    import av

    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with av.open(str(tmp), "w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=fps, options={
                "crf": str(crf), "preset": PRESET, "g": str(max(1, fps)), "threads": "1"})
            stream.width, stream.height = frames.shape[2], frames.shape[1]
            stream.pix_fmt = "yuv420p"
            stream.codec_context.time_base = Fraction(1, fps)
            for f, rgb in enumerate(frames):
                # swscale's default RGB -> YUV (BT.601, limited range) is what
                # decoders assume when they convert back.
                rgb_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
                frame = rgb_frame.reformat(format="yuv420p")
                frame.pts = f
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def make_video(cfg: CorpusConfig, out_dir: str, index: int, scene_id: int, twin: bool) -> dict:
    """Render and write one video; return its (small) metadata record."""
    scene, changed = scene_for(cfg, scene_id, twin)
    frames, boxes = render(scene)  # (F, H, W, 3), (F, O, 4)
    name = video_name(index, cfg.videos)
    write_mp4(frames, Path(out_dir) / name, cfg.fps, cfg.crf)
    objects = []
    for i, obj in enumerate(scene.objects):
        objects.append({**asdict(obj), "boxes": boxes[:, i].tolist()})
    background = asdict(scene.background)
    return {
        "video": name,
        "index": index,
        "scene_id": scene_id,
        "twin_of": video_name(index - 1, cfg.videos) if twin else None,
        "changed": changed,
        "background": background,
        "objects": objects,
        "captions": captions(np.random.default_rng([cfg.seed, scene_id, 2]), scene),
        "qa": questions(np.random.default_rng([cfg.seed, scene_id, 3]), scene),
    }


def _make_chunk(cfg: CorpusConfig, out_dir: str, jobs: list[tuple[int, int, bool]]) -> list[dict]:
    return [make_video(cfg, out_dir, *job) for job in jobs]


def _chunks(items: Iterable, n: int) -> Iterator[list]:
    chunk: list = []
    for item in items:
        chunk.append(item)
        if len(chunk) == n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _records(cfg: CorpusConfig, out_dir: Path, plan: Plan, workers: int) -> Iterator[dict]:
    """Video records in video order, with a bounded number of chunks in flight."""
    jobs = ((i, int(plan.scene_of[i]), bool(plan.is_twin[i])) for i in range(cfg.videos))
    if workers == 1:
        for job in jobs:
            yield make_video(cfg, str(out_dir), *job)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # forkserver: safe even when the caller already runs threads (torch).
    context = multiprocessing.get_context("forkserver")
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context)
    try:
        pending: deque = deque()
        for chunk in _chunks(jobs, CHUNK):
            pending.append(pool.submit(_make_chunk, cfg, str(out_dir), chunk))
            if len(pending) >= 4 * workers:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class _JsonList:
    """A JSON list written one item per line under a temporary name."""

    def __init__(self, path: Path):
        self.path = path
        self.tmp = path.with_name(f".{path.name}.tmp")
        self.file = open(self.tmp, "w", encoding="utf-8")
        self.file.write("[")
        self.count = 0

    def add(self, item) -> None:
        self.file.write(("\n" if self.count == 0 else ",\n") + json.dumps(item, ensure_ascii=False))
        self.count += 1

    def commit(self) -> None:
        self.file.write("\n]\n" if self.count else "]\n")
        self.file.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)


def _write_json(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _prepare(out: Path, overwrite: bool) -> None:
    """Create ``out``, or clear the corpus in it when asked to."""
    if out.exists() and not out.is_dir():
        raise CorpusError(f"--out {out} is a file, not a folder; choose a folder path")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise CorpusError(
                f"--out {out} is not empty; pass --overwrite to replace the corpus in it, or choose another --out")
        # corpus.json first: from this moment the folder is not a complete corpus.
        for name in (CORPUS_FILE, *ANNOTATION_FILES):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / VIDEO_DIR, ignore_errors=True)
        for leftover in out.glob(".*.tmp"):
            leftover.unlink(missing_ok=True)
    (out / VIDEO_DIR).mkdir(parents=True, exist_ok=True)


def _vocabulary() -> dict:
    return {"colours": list(COLOURS), "shapes": list(SHAPES), "sizes": list(SIZES), "motions": list(MOTIONS),
            "sides": list(SIDES), "backgrounds": list(BACKGROUNDS), "question_types": list(QUESTION_TYPES),
            "answers": list(ANSWERS)}


def make_corpus(
    out_dir: str | os.PathLike,
    videos: int = 2000,
    seed: int = 0,
    frames: int = 16,
    size: int = 128,
    fps: int = 8,
    twin_share: float = 0.3,
    test_share: float = 0.2,
    val_share: float = 0.1,
    crf: int = 20,
    workers: int | None = None,
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Generate the motion-shapes corpus into ``out_dir`` and return its path.

    ``workers`` processes render and encode (default: every CPU); the output
    is byte-identical for any worker count. Raises :class:`CorpusError` (a
    ``ValueError``) for bad arguments or a non-empty ``out_dir`` without
    ``overwrite``. ``log`` receives progress lines.
    """
    cfg = CorpusConfig(videos, seed, frames, size, fps, twin_share, test_share, val_share, crf)
    workers = (os.cpu_count() or 1) if workers is None else workers
    if not isinstance(workers, int) or workers < 1:
        raise CorpusError(f"--workers must be a whole number >= 1 (got {workers!r}); pass e.g. --workers 2")
    out = Path(out_dir)
    _prepare(out, overwrite)
    plan = plan_corpus(cfg)
    start = time.perf_counter()
    say = log or (lambda line: None)
    say(f"making {cfg.videos} videos ({len(plan.split_of_scene)} scenes) in {out} with {workers} worker(s)")

    lists = {name: _JsonList(out / name) for name in ANNOTATION_FILES if name != "answer_list.json"}
    corpus_tmp = out / f".{CORPUS_FILE}.tmp"
    corpus = open(corpus_tmp, "w", encoding="utf-8")
    split_counts = np.bincount(plan.split_of_scene[plan.scene_of], minlength=len(SPLITS))
    header = {
        "generator": GENERATOR,
        "version": VERSION,
        "params": asdict(cfg),
        "vocabulary": _vocabulary(),
        "files": {"videos": VIDEO_DIR, "annotations": list(ANNOTATION_FILES)},
        "counts": {"videos": cfg.videos, "scenes": len(plan.split_of_scene), "twins": int(plan.is_twin.sum()),
                   **{s: int(n) for s, n in zip(SPLITS, split_counts)}},
    }
    twins: list[dict] = []
    try:
        corpus.write("{\n" + "".join(f"{json.dumps(k)}: {json.dumps(v)},\n" for k, v in header.items()))
        corpus.write('"videos": [')
        every = max(1, cfg.videos // 20)
        for done, rec in enumerate(_records(cfg, out, plan, workers), start=1):
            split = SPLITS[int(plan.split_of_scene[rec["scene_id"]])]
            video, caps = rec["video"], rec["captions"]
            qa = [{"video": video, "question": q, "answer": a, "question_id": rec["index"] * 10 + k, "type": t}
                  for k, (t, q, a) in enumerate(rec.pop("qa"))]
            if split == "train":
                lists["train.json"].add({"video": video, "caption": caps})
                lists["train_caption.json"].add({"video": video, "caption": caps})
            elif split == "val":
                lists["val_retrieval.json"].add({"video": video, "caption": caps[0]})
            else:
                lists["test_retrieval.json"].add({"video": video, "caption": caps[0]})
                lists["test_retrieval_all.json"].add({"video": video, "caption": caps})
                lists["test_caption.json"].add({"video": video, "caption": caps})
                lists["test_paragraph.json"].add({"video": video, "caption": ". ".join(caps) + "."})
            for item in qa:
                lists[f"{split}_qa.json"].add(item)
            if rec["twin_of"] is not None:
                twins.append({"a": rec["twin_of"], "b": video, **rec["changed"]})
            corpus.write(("\n" if done == 1 else ",\n") + json.dumps({"split": split, **rec}, ensure_ascii=False))
            if done % every == 0 or done == cfg.videos:
                rate = done / max(time.perf_counter() - start, 1e-9)
                say(f"  {done}/{cfg.videos} videos, {rate:.0f}/s")
        corpus.write('\n],\n"twins": [' + ",".join("\n" + json.dumps(t) for t in twins) + "\n]\n}\n")
        corpus.close()
        for writer in lists.values():
            writer.commit()
        _write_json(out / "answer_list.json", list(ANSWERS))
        os.replace(corpus_tmp, out / CORPUS_FILE)  # last: marks the corpus complete
    except BaseException:
        corpus.close()
        corpus_tmp.unlink(missing_ok=True)
        for writer in lists.values():
            if not writer.file.closed:
                writer.abort()
        raise
    say(f"done in {time.perf_counter() - start:.1f} s: {out / CORPUS_FILE}")
    return out


def is_corpus(out_dir: str | os.PathLike) -> bool:
    """True when ``out_dir`` holds a complete corpus (corpus.json is written last)."""
    return (Path(out_dir) / CORPUS_FILE).is_file()
