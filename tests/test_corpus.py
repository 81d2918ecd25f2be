"""The motion-shapes corpus: determinism, splits, twins, QA, playability, errors."""

from __future__ import annotations

import argparse
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from vidmask.corpus import CorpusError, corpus_info, decode_frames, is_corpus, load_corpus, make_corpus
from vidmask.corpus.make import ANNOTATION_FILES, CORPUS_FILE
from vidmask.corpus.scene import (ASYMMETRIC, MOTIONS, SHAPES, sample_scene, track)

SMALL = dict(videos=20, frames=8, size=64, twin_share=0.5, seed=3)
JSON_FILES = (*ANNOTATION_FILES, CORPUS_FILE)


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus") / "c", workers=1, **SMALL)


def _read(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def _cli(argv: list[str]) -> int:
    # cli.py lists this command too; a local parser keeps the test independent of the others.
    from vidmask.commands import corpus

    parser = argparse.ArgumentParser(prog="vidmask")
    corpus.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


# -- determinism ------------------------------------------------------------------

def test_same_seed_same_corpus_for_any_worker_count(corpus_dir, tmp_path):
    other = make_corpus(tmp_path / "c2", workers=2, **SMALL)
    for name in JSON_FILES:
        assert (corpus_dir / name).read_bytes() == (other / name).read_bytes(), name
    for item in _read(corpus_dir / CORPUS_FILE)["videos"]:
        a, b = decode_frames(corpus_dir / item["video"]), decode_frames(other / item["video"])
        assert np.array_equal(a, b), item["video"]
        # one x264 thread and a fresh frame per input: even the bitstream repeats
        assert (corpus_dir / item["video"]).read_bytes() == (other / item["video"]).read_bytes()


def test_decoded_frames_match_the_rendered_scene(corpus_dir):
    # Each decoded frame is the rendered frame of the same index (no reordering,
    # no buffer reuse), up to compression error; the JSON scene reproduces the video.
    from vidmask.corpus.make import CorpusConfig, scene_for
    from vidmask.corpus.render import render

    cfg = CorpusConfig(**_read(corpus_dir / CORPUS_FILE)["params"])
    for item in _read(corpus_dir / CORPUS_FILE)["videos"]:
        scene, _ = scene_for(cfg, item["scene_id"], item["twin_of"] is not None)
        frames, boxes = render(scene)  # (F, H, W, 3), (F, O, 4)
        assert [o["boxes"] for o in item["objects"]] == boxes.transpose(1, 0, 2).tolist()
        error = np.abs(decode_frames(corpus_dir / item["video"]).astype(int) - frames).mean(axis=(1, 2, 3))  # (F,)
        assert error.max() < 6.0, (item["video"], error)


def test_other_seed_other_corpus(corpus_dir, tmp_path):
    other = make_corpus(tmp_path / "c3", workers=1, **{**SMALL, "seed": 4, "videos": 4})
    assert _read(other / CORPUS_FILE)["videos"][0]["objects"] != _read(corpus_dir / CORPUS_FILE)["videos"][0]["objects"]


# -- splits and annotation formats --------------------------------------------------

def test_splits_are_disjoint_and_complete(corpus_dir):
    corpus = _read(corpus_dir / CORPUS_FILE)
    train = {x["video"] for x in _read(corpus_dir / "train.json")}
    val = {x["video"] for x in _read(corpus_dir / "val_retrieval.json")}
    test = {x["video"] for x in _read(corpus_dir / "test_retrieval.json")}
    assert not (train & val or train & test or val & test)
    assert train | val | test == {v["video"] for v in corpus["videos"]}
    assert len(test) == round(0.2 * SMALL["videos"]) or len(test) == round(0.2 * SMALL["videos"]) + 1
    split = {v["video"]: v["split"] for v in corpus["videos"]}
    for pair in corpus["twins"]:
        assert split[pair["a"]] == split[pair["b"]]
    for name, videos in (("test_retrieval_all.json", test), ("test_caption.json", test),
                         ("test_paragraph.json", test), ("train_caption.json", train)):
        assert {x["video"] for x in _read(corpus_dir / name)} == videos, name


def test_caption_formats(corpus_dir):
    for item in _read(corpus_dir / "train.json") + _read(corpus_dir / "test_retrieval_all.json"):
        assert 3 <= len(item["caption"]) <= 5 and len(set(item["caption"])) == len(item["caption"])
    for item in _read(corpus_dir / "test_retrieval.json") + _read(corpus_dir / "test_paragraph.json"):
        assert isinstance(item["caption"], str) and item["caption"]
    # every caption names every object by colour and motion (shape words have synonyms)
    for video in _read(corpus_dir / CORPUS_FILE)["videos"]:
        for caption in video["captions"]:
            for obj in video["objects"]:
                assert obj["colour"] in caption


def test_qa_answers_in_answer_list(corpus_dir):
    answers = set(_read(corpus_dir / "answer_list.json"))
    corpus = _read(corpus_dir / CORPUS_FILE)
    split = {v["video"]: v["split"] for v in corpus["videos"]}
    ids = []
    for name, want in (("train_qa.json", "train"), ("val_qa.json", "val"), ("test_qa.json", "test")):
        for q in _read(corpus_dir / name):
            assert set(q) == {"video", "question", "answer", "question_id", "type"}
            assert q["answer"] in answers and " " not in q["answer"]
            assert split[q["video"]] == want
            ids.append(q["question_id"])
    assert len(ids) == len(set(ids)) >= SMALL["videos"]


# -- twins ------------------------------------------------------------------------

def test_twins_differ_in_exactly_one_attribute(corpus_dir):
    corpus = _read(corpus_dir / CORPUS_FILE)
    by_name = {v["video"]: v for v in corpus["videos"]}
    assert corpus["twins"], "the test corpus should have twins"
    for pair in corpus["twins"]:
        a, b = by_name[pair["a"]], by_name[pair["b"]]
        assert a["background"] == b["background"] and len(a["objects"]) == len(b["objects"])
        for i, (oa, ob) in enumerate(zip(a["objects"], b["objects"])):
            if i != pair["object"]:
                assert oa == ob  # untouched objects keep their exact path
                continue
            for key in ("shape", "size", "diameter"):
                assert oa[key] == ob[key]
            if pair["differs"] == "colour":
                assert oa["colour"] != ob["colour"] and oa["motion"] == ob["motion"] and oa["boxes"] == ob["boxes"]
            else:
                assert oa["colour"] == ob["colour"] and (oa["motion"], oa["side"]) != (ob["motion"], ob["side"])
        frames_a, frames_b = decode_frames(corpus_dir / a["video"]), decode_frames(corpus_dir / b["video"])
        assert np.abs(frames_a.astype(int) - frames_b.astype(int)).mean(axis=(1, 2, 3)).max() > 1.0


def test_retrieval_reports_each_twin_kind_by_objects_in_the_scene(corpus_dir):
    """twin_pairs lists every twin of the annotations once under its kind, once under kind_{n}obj (n: its
    scene's objects) and once under kind:x/y (the changed object's two values); each breakdown sums back
    to the kind's figure."""
    import torch

    from vidmask.data import load_annotations
    from vidmask.metrics import twin_accuracy
    from vidmask.tasks.retrieval import hardest_pairs, twin_lines, twin_pairs

    corpus = _read(corpus_dir / CORPUS_FILE)
    objects = {v["video"]: len(v["objects"]) for v in corpus["videos"]}
    items = load_annotations(corpus_dir / "train.json", unique=True, nonempty=True)
    pairs = twin_pairs(corpus_dir / "train.json", items)
    plain = [p for p in pairs if p[2] in ("motion", "colour")]
    assert plain and len(pairs) == 3 * len(plain)
    name = {i: str(Path(it.path).relative_to(corpus_dir.resolve())) for i, it in enumerate(items)}
    scene = {v["video"]: v["objects"] for v in corpus["videos"]}
    changed = {(tw["a"], tw["b"]): tw["object"] for tw in corpus["twins"]}
    for a, b, kind in plain:
        assert (a, b, f"{kind}_{objects[name[a]]}obj") in pairs
        o = changed[(name[a], name[b])]
        x, y = scene[name[a]][o][kind], scene[name[b]][o][kind]
        assert (a, b, f"{kind}:{min(x, y)}/{max(x, y)}") in pairs
    t2v = torch.tensor([i for i, it in enumerate(items) for _ in it.captions])  # (Nt,)
    sim = torch.randn(len(t2v), len(items))  # (Nt, Nv)
    acc = twin_accuracy(sim, t2v, pairs)
    for kind in {k for _, _, k in plain}:
        sizes = [k for k in acc if k.startswith(kind + "_") and k.endswith("obj")]
        values = [k for k in acc if k.startswith(kind + ":") and not k.endswith("_n")]
        for parts in (sizes, values):
            assert parts and sum(acc[k + "_n"] for k in parts) == acc[kind + "_n"]
            assert sum(acc[k] * acc[k + "_n"] for k in parts) == pytest.approx(acc[kind] * acc[kind + "_n"])
    text = "\n".join(twin_lines(acc))
    assert "twin accuracy (motion)" in text and "  by objects in the scene: " in text
    hardest = hardest_pairs(acc, "motion")
    assert hardest and f"  hardest pairs: {hardest[0].split(':', 1)[1]} {acc[hardest[0]]:.1f} % of" in text
    assert [acc[k] for k in hardest] == sorted(acc[k] for k in hardest)


def test_hardest_pairs_prefer_pairs_scored_often():
    from vidmask.tasks.retrieval import hardest_pairs

    twins = {"motion": 70.0, "motion_n": 40.0, "motion:a/b": 0.0, "motion:a/b_n": 2.0, "motion:c/d": 60.0,
             "motion:c/d_n": 20.0, "motion:e/f": 90.0, "motion:e/f_n": 18.0, "colour:x/y": 1.0, "colour:x/y_n": 50.0}
    assert hardest_pairs(twins, "motion") == ["motion:c/d", "motion:e/f"]  # a/b: 2 captions, too few to rank
    assert hardest_pairs(twins, "motion", least=100) == ["motion:a/b", "motion:c/d", "motion:e/f"]


# -- scenes: every motion is visible --------------------------------------------------

@pytest.mark.parametrize("size", [64, 128])
def test_motions_visible_and_in_frame(size):
    seen = set()
    for i in range(400):
        scene = sample_scene(np.random.default_rng([11, i]), size, 16)
        for obj in scene.objects:
            seen.add(obj.motion)
            pose = track(obj, 16, size)  # (F, 4) = cx, cy, d, angle
            assert obj.shape in SHAPES
            if obj.motion == "rotate":
                assert obj.shape in ASYMMETRIC and abs(obj.spin) >= 200
                assert abs(pose[1, 3] - pose[0, 3]) * 2 < 180  # no aliasing at stride 2
            if obj.motion in ("left", "right", "up", "down"):
                axis = 0 if obj.motion in ("left", "right") else 1
                sign = 1 if obj.motion in ("right", "down") else -1
                assert sign * (pose[-1, axis] - pose[0, axis]) >= 40 * size / 128
            if obj.motion not in ("enter", "leave"):
                r = pose[:, 2] / 2
                assert (pose[:, 0] - r >= 0).all() and (pose[:, 0] + r <= size).all()
                assert (pose[:, 1] - r >= 0).all() and (pose[:, 1] + r <= size).all()
            else:  # starts (enter) or ends (leave) fully outside
                end = pose[0] if obj.motion == "enter" else pose[-1]
                r = end[2] / 2
                assert min(end[0] + r, end[1] + r) <= 0 or max(end[0] - r, end[1] - r) >= size
    assert seen == set(MOTIONS)


def test_boxes_follow_the_motion(corpus_dir):
    size = SMALL["size"]
    for video in _read(corpus_dir / CORPUS_FILE)["videos"]:
        for obj in video["objects"]:
            boxes = np.asarray(obj["boxes"])  # (F, 4)
            assert boxes.shape == (SMALL["frames"], 4) and (boxes >= 0).all() and (boxes <= size).all()
            centre = (boxes[:, :2] + boxes[:, 2:]) / 2  # (F, 2)
            if obj["motion"] == "left":
                assert centre[-1, 0] < centre[0, 0] - 0.3 * size
            if obj["motion"] == "still":
                assert (boxes == boxes[0]).all()


# -- playability: two independent readers -----------------------------------------------

def _boxes(data: bytes, start: int, end: int):
    """(type, payload start, payload end) of the MP4 boxes in data[start:end]."""
    while start + 8 <= end:
        size, kind = struct.unpack(">I4s", data[start:start + 8])
        header = 8
        if size == 1:
            size, header = struct.unpack(">Q", data[start + 8:start + 16])[0], 16
        elif size == 0:
            size = end - start
        yield kind.decode("latin-1"), start + header, start + size
        start += size


def _find(data: bytes, path: list[str], start: int = 0, end: int | None = None):
    end = len(data) if end is None else end
    for kind, a, b in _boxes(data, start, end):
        if kind == path[0]:
            return (a, b) if len(path) == 1 else _find(data, path[1:], a, b)
    raise AssertionError(f"no {path[0]} box")


def _mp4_samples(path: Path) -> tuple[int, int, bytes, list[bytes]]:
    """A pure-Python MP4 reader: width, height, avcC and the H.264 samples.

    Independent of FFmpeg's demuxer: box tree, stsd/stsz/stsc/stco tables.
    """
    data = path.read_bytes()
    kinds = [k for k, _, _ in _boxes(data, 0, len(data))]
    assert kinds[0] == "ftyp" and "moov" in kinds and "mdat" in kinds
    stbl = _find(data, ["moov", "trak", "mdia", "minf", "stbl"])
    a, _ = _find(data, ["stsd"], *stbl)
    entry = a + 8  # full-box header + entry count
    assert data[entry + 4:entry + 8] == b"avc1"
    width, height = struct.unpack(">HH", data[entry + 32:entry + 36])
    avcc = _find(data, ["avcC"], entry + 86, entry + struct.unpack(">I", data[entry:entry + 4])[0])
    a, _ = _find(data, ["stsz"], *stbl)
    fixed, count = struct.unpack(">II", data[a + 4:a + 12])
    sizes = [fixed] * count if fixed else list(struct.unpack(f">{count}I", data[a + 12:a + 12 + 4 * count]))
    a, _ = _find(data, ["stsc"], *stbl)
    (n_runs,) = struct.unpack(">I", data[a + 4:a + 8])
    runs = [struct.unpack(">III", data[a + 8 + 12 * k:a + 20 + 12 * k]) for k in range(n_runs)]
    a, _ = _find(data, ["stco"], *stbl)
    (n_chunks,) = struct.unpack(">I", data[a + 4:a + 8])
    offsets = struct.unpack(f">{n_chunks}I", data[a + 8:a + 8 + 4 * n_chunks])
    samples, k = [], 0
    for c, offset in enumerate(offsets, start=1):
        per_chunk = [r[1] for r in runs if r[0] <= c][-1]
        for _ in range(per_chunk):
            samples.append(data[offset:offset + sizes[k]])
            offset += sizes[k]
            k += 1
    assert k == count
    return width, height, data[avcc[0]:avcc[1]], samples


def test_every_annotation_points_at_a_playable_video(corpus_dir):
    import av

    referenced = set()
    for name in ANNOTATION_FILES:
        if name != "answer_list.json":
            referenced |= {x["video"] for x in _read(corpus_dir / name)}
    assert referenced == {v["video"] for v in _read(corpus_dir / CORPUS_FILE)["videos"]}
    size, frames = SMALL["size"], SMALL["frames"]
    for name in sorted(referenced):
        path = corpus_dir / name
        assert path.is_file() and not name.startswith("/")
        clip = decode_frames(path)  # reader 1: PyAV's demuxer and decoder
        assert clip.shape == (frames, size, size, 3)
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
        # reader 2: our own MP4 parser feeding raw samples to a fresh decoder context
        width, height, avcc, samples = _mp4_samples(path)
        assert (width, height) == (size, size) and len(samples) == frames
        decoder = av.CodecContext.create("h264", "r")
        decoder.extradata = avcc
        decoder.thread_type = "SLICE"
        out = [f for s in samples for f in decoder.decode(av.Packet(s))] + list(decoder.decode(None))
        again = np.stack([f.to_ndarray(format="rgb24") for f in out])
        assert np.array_equal(again, clip)


def test_colours_survive_encoding(corpus_dir):
    # The named colour is what a caption promises; it must still be there after x264.
    from vidmask.corpus.scene import COLOURS

    for video in _read(corpus_dir / CORPUS_FILE)["videos"][:6]:
        clip = decode_frames(corpus_dir / video["video"]).astype(int)  # (F, H, W, 3)
        for obj in video["objects"]:
            if obj["motion"] in ("enter", "leave", "shrink"):
                continue
            x0, y0, x1, y1 = obj["boxes"][0]
            cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
            patch = clip[0, cy - 1:cy + 2, cx - 1:cx + 2].reshape(-1, 3)
            dist = {c: np.abs(patch - np.array(rgb)).sum(1).min() for c, rgb in COLOURS.items()}
            covered = any(o is not obj and _inside(o["boxes"][0], cx, cy) for o in video["objects"])
            if not covered and obj["shape"] not in ("l-shape", "half-moon", "arrow", "star", "triangle"):
                assert min(dist, key=dist.get) == obj["colour"]


def _inside(box, x, y) -> bool:
    return box[0] <= x < box[2] and box[1] <= y < box[3]


# -- errors, atomicity, CLI --------------------------------------------------------------

@pytest.mark.parametrize("kwargs, flag", [
    (dict(videos=0), "--videos"),
    (dict(frames=1), "--frames"),
    (dict(size=100), "--size"),
    (dict(test_share=0.6, val_share=0.5), "--test-share"),
    (dict(workers=0), "--workers"),
])
def test_bad_arguments(tmp_path, kwargs, flag):
    with pytest.raises(CorpusError, match=flag):
        make_corpus(tmp_path / "bad", **kwargs)


def test_non_empty_folder_needs_overwrite(corpus_dir, tmp_path, capsys):
    with pytest.raises(CorpusError, match="--overwrite"):
        make_corpus(corpus_dir, workers=1, **SMALL)
    assert _cli(["corpus", "make", "--out", str(corpus_dir), "--videos", "4"]) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and "Traceback" not in err
    assert _cli(["corpus", "make", "--out", str(tmp_path / "x"), "--size", "100"]) == 2
    assert "--size" in capsys.readouterr().err
    target = tmp_path / "re"
    make_corpus(target, workers=1, **{**SMALL, "videos": 3})
    make_corpus(target, workers=1, overwrite=True, **{**SMALL, "videos": 2})
    assert len(list((target / "videos").iterdir())) == 2 and load_corpus(target)["params"]["videos"] == 2


def test_interrupted_run_leaves_no_trusted_file(tmp_path, monkeypatch):
    from vidmask.corpus import make

    real, calls = make.render, []

    def failing(scene):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(scene)

    monkeypatch.setattr(make, "render", failing)
    out = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        make_corpus(out, workers=1, **SMALL)
    assert not is_corpus(out)
    left = sorted(p.name for p in out.iterdir())
    assert left == ["videos"]  # no annotation file, no temporary file
    assert all(p.suffix == ".mp4" for p in (out / "videos").iterdir())
    with pytest.raises(CorpusError, match="corpus make"):
        corpus_info(out)


def test_info_and_contact_sheet(corpus_dir, tmp_path, capsys):
    from PIL import Image

    info = corpus_info(corpus_dir)
    assert info["videos"] == SMALL["videos"] and sum(info["splits"].values()) == SMALL["videos"]
    assert info["twins"]["pairs"] == len(_read(corpus_dir / CORPUS_FILE)["twins"])
    sheet = tmp_path / "sheet.png"
    assert _cli(["corpus", "info", str(corpus_dir), "--sheet", str(sheet), "--rows", "3"]) == 0
    assert str(sheet) in capsys.readouterr().out
    with Image.open(sheet) as image:
        assert image.format == "PNG" and image.width == 8 * 128
