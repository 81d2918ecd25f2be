"""The memory-mapped annotation store: the same items as load_annotations, cached and rebuilt."""

from __future__ import annotations

import gc
import json
import logging
import os
import pickle
import tempfile
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from vidmask.cli import main as cli_main
from vidmask.data import (
    AnnoStore,
    AnnotationError,
    VideoTextDataset,
    build_store,
    collate_video_text,
    flatten_captions,
    load_annotations,
    load_store,
)
from vidmask.data import anno_store

ENTRIES = [
    {"video": "a.mp4", "caption": "a dog runs"},
    {"video": "sub/b.mp4", "caption": ["one", "two", "three"]},
    {"image": "c.jpg", "caption": "a photo"},
    {"image": "pics/d.png", "caption": ["first", "second"], "source": "cc3m"},
    {"video": "e.mp4", "caption": ["Ünïcödé café ☃ 日本語 🎬", "line\nbreak \"quoted\" \\ slash"]},
    {"video": "f.mp4", "caption": ["fine", ""]},  # an empty caption: a bad sample, not a bad file
    {"video": "g.mp4", "caption": []},
    {"video": "../outside/h.mp4", "caption": "leaves the root"},
    {"video": "/abs/i.mp4", "caption": "absolute"},
    {"video": "j.mp4", "caption": "lone surrogate \ud800 kept"},
    {"video": "k.mp4", "caption": "q", "question": "what?", "answer": "x", "question_id": 7, "type": "what"},
    {"video": "l.mp4", "caption": "nested", "extra": {"a": [1, 2.5, None, True], "b": "ü"}, "score": 1e-300},
    {"video": "a.mp4", "caption": "a dog runs"},  # repeated: training draws it twice
]
QA = [{"video": "clips/m.mp4", "question": "what colour?", "answer": "red", "question_id": 0, "type": "colour"},
      {"video": "clips/m.mp4", "question": "where?", "answer": "left", "question_id": 1, "type": "where"}]


def write(path: Path, entries, **kw) -> Path:
    text = json.dumps(entries, **kw).replace("\ud800", "\\ud800")  # unescaped, a lone surrogate is no UTF-8
    path.write_text(text, encoding="utf-8")
    return path


def same(store: AnnoStore, items) -> None:
    assert len(store) == len(items)
    for i, (got, want) in enumerate(zip(store, items)):
        assert (got.path, got.captions, got.is_image, got.meta) == (want.path, want.captions, want.is_image,
                                                                    want.meta), i
        assert type(got.path) is type(want.path) and got.problem == want.problem
    texts, t2v = flatten_captions(items)
    assert list(store.texts) == texts and store.text_to_video.tolist() == t2v


@pytest.mark.parametrize("chunk", [1, 5, 1 << 24])  # the JSON is decoded in chunks: entries cut anywhere
@pytest.mark.parametrize("indent", [None, 2])
def test_store_equals_the_json(tmp_path, monkeypatch, chunk, indent):
    monkeypatch.setattr(anno_store, "CHUNK", chunk)
    ann = write(tmp_path / "ann.json", ENTRIES + QA, indent=indent, ensure_ascii=indent is None)
    store = build_store(ann, tmp_path / "out")
    same(store, load_annotations(ann, require_caption=False))
    same(AnnoStore.open(tmp_path / "out", root="/media"), load_annotations(ann, "/media", require_caption=False))
    same(load_store(ann, require_caption=False), load_annotations(ann, require_caption=False))
    assert store.captions(4) == ENTRIES[4]["caption"] and store.meta(10)["question_id"] == 7
    assert store[-1] == store[len(store) - 1] and store[2:5] == [store[2], store[3], store[4]]
    assert store.texts[-1] == store.texts[len(store.texts) - 1]
    with pytest.raises(IndexError):
        store[len(store)]
    same(pickle.loads(pickle.dumps(store)), load_annotations(ann, require_caption=False))


def test_store_of_an_empty_file_and_a_bom(tmp_path):
    ann = write(tmp_path / "empty.json", [])
    assert len(load_store(ann)) == 0 and list(load_store(ann)) == []
    bom = tmp_path / "bom.json"
    bom.write_text(json.dumps(ENTRIES[:2]), encoding="utf-8-sig")
    same(load_store(bom), load_annotations(bom))


@pytest.mark.parametrize("content", [
    "[{\"video\": \"a.mp4\", ",
    json.dumps({"video": "a.mp4", "caption": "x"}),
    json.dumps([{"video": "a.mp4", "caption": "x"}, "b.mp4"]),
    json.dumps([{"video": "a.mp4", "caption": "x"}, {"caption": "x"}]),
    json.dumps([{"video": "a.mp4", "image": "a.jpg", "caption": "x"}]),
    json.dumps([{"video": 3, "caption": "x"}]),
    json.dumps([{"video": "a.mp4", "caption": 5}]),
    json.dumps([{"video": "b.mp4", "caption": ["ok", None]}]),
    "[1,]", "[{\"video\": \"a\", \"caption\": \"b\"}] extra", "[{\"video\": \"a\", \"caption\": \"b\"} {}]",
])
def test_bad_files_fail_as_load_annotations_fails(tmp_path, monkeypatch, content):
    monkeypatch.setattr(anno_store, "CHUNK", 3)
    ann = tmp_path / "bad.json"
    ann.write_text(content)
    with pytest.raises(AnnotationError) as want:
        load_annotations(ann, require_caption=False)
    with pytest.raises(AnnotationError) as got:
        load_store(ann, require_caption=False)
    assert str(got.value) == str(want.value)


@pytest.mark.parametrize("entries, kw", [
    (QA, {}),  # no caption key
    ([], {"nonempty": True}),
    (ENTRIES, {"unique": True}),
])
def test_file_checks_fail_as_load_annotations_fails(tmp_path, entries, kw):
    ann = write(tmp_path / "ann.json", entries)
    with pytest.raises(AnnotationError) as want:
        load_annotations(ann, **kw)
    with pytest.raises(AnnotationError) as got:
        load_store(ann, **kw)
    assert str(got.value) == str(want.value)
    assert len(load_store(ann, require_caption=False)) == len(entries)  # without the check, all entries load


def test_changed_json_rebuilds_the_cached_store(tmp_path):
    ann = write(tmp_path / "train.json", ENTRIES[:3])
    store = load_store(ann)
    header = tmp_path / "train.json.index" / "header.json"
    assert store.folder == tmp_path / "train.json.index" and len(store) == 3
    built = header.stat().st_mtime_ns
    same(load_store(ann), load_annotations(ann))
    assert header.stat().st_mtime_ns == built  # unchanged file: the store is reused
    write(ann, ENTRIES[:4])
    same(load_store(ann), load_annotations(ann))
    # same size, another caption, an older mtime: still seen
    write(ann, [{"video": "a.mp4", "caption": "a cat runs"}, *ENTRIES[1:4]])
    os.utime(ann, ns=(1, 1))
    assert load_store(ann)[0].captions == ["a cat runs"]
    # an open store keeps reading its own files after a rebuild replaced them
    write(ann, ENTRIES[:1])
    assert len(load_store(ann)) == 1 and store[2].is_image and store.captions(1) == ["one", "two", "three"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.json", "train.json.index"]  # nothing left over


def test_read_only_folder_builds_in_the_user_cache(tmp_path, monkeypatch, caplog):
    media = tmp_path / "ro"
    media.mkdir()
    ann = write(media / "train.json", ENTRIES)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    mkdtemp = tempfile.mkdtemp

    def refuse(*args, dir=None, **kw):  # root may write a 0o555 folder: refuse as read-only media would
        if Path(dir) == media:
            raise PermissionError(13, "Permission denied", str(dir))
        return mkdtemp(*args, dir=dir, **kw)

    monkeypatch.setattr(anno_store.tempfile, "mkdtemp", refuse)
    media.chmod(0o555)
    try:
        with caplog.at_level(logging.INFO, logger="vidmask.data.anno_store"):
            store = load_store(ann)
        assert store.folder.parent == tmp_path / "xdg" / "vidmask" / "anno"
        assert not (media / "train.json.index").exists()
        same(store, load_annotations(ann))
        assert any(str(store.folder) in r.getMessage() and "cannot write" in r.getMessage() for r in caplog.records)
        assert load_store(ann).folder == store.folder  # found there next time, not rebuilt
        monkeypatch.delenv("XDG_CACHE_HOME")
        assert anno_store.cache_dir(ann).parent == tmp_path / "home" / ".cache" / "vidmask" / "anno"
    finally:
        media.chmod(0o755)


def test_build_refuses_to_replace_a_folder_that_is_no_store(tmp_path):
    ann = write(tmp_path / "ann.json", ENTRIES[:2])
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError):
        build_store(ann, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_dataset_over_a_store_gives_the_samples_of_the_list(tiny_set, tmp_path):
    ann = tiny_set / "train.json"
    items, store = load_annotations(ann), build_store(ann, tmp_path / "train.index")
    for train in (True, False):
        a = VideoTextDataset(items, num_frames=4, size=32, train=train, seed=3)
        b = VideoTextDataset(store, num_frames=4, size=32, train=train, seed=3)
        assert b.items is store and len(a) == len(b) == 16
        assert list(b.texts) == a.texts and b.text_to_video.tolist() == a.text_to_video
        for ds in (a, b):
            ds.set_epoch(2)
        for i in (0, 5, 15):
            sa, sb = a[i], b[i]
            assert sa.keys() == sb.keys() and torch.equal(sa["video"], sb["video"])
            assert (sa["caption"], sa["index"], sa["path"]) == (sb["caption"], sb["index"], sb["path"])
            assert torch.equal(sa["frame_ids"], sb["frame_ids"])
    # forked loader workers read the store they inherit
    b = VideoTextDataset(store, num_frames=2, size=32, train=True, seed=3)
    batches = DataLoader(b, batch_size=8, num_workers=2, collate_fn=collate_video_text)
    assert [i for batch in batches for i in batch["index"].tolist()] == list(range(16))
    # the finished loader iterator sits in a reference cycle: tear its worker queues down now, not in a
    # later test, where their feeder threads were seen writing to closed pipes
    del batches
    gc.collect()


def test_cli_index_writes_a_store(tiny_set, tmp_path, capsys):
    ann = tiny_set / "train.json"
    out = tmp_path / "idx"
    assert cli_main(["anno", "index", str(ann), "--out", str(out), "--video-root", str(tmp_path / "media")]) == 0
    printed = capsys.readouterr().out
    assert "16 entries" in printed and "bytes per entry" in printed and str(out) in printed
    same(AnnoStore.open(out), load_annotations(ann, tmp_path / "media"))
