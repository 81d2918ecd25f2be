"""The caption feature store: lookups equal the frozen tower's features, a sharded build equals one process's,
misses are encoded, a store is bound to its tower, an unfinished one is never read, and the CLI prebuilds it."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from helpers.gloo import run_ranks
from vidmask.config import ConfigError, TextConfig, load_config
from vidmask.models.caption_store import (CaptionStore, cached_or_built, caption_hashes, store_plan,
                                          stored_features)
from vidmask.models.text import TextEncoder

from test_train import TINY, vidmask

TOL = dict(rtol=2e-3, atol=2e-3)  # float16 storage of features of magnitude ~1
CAPTIONS = [f"a {c} square moves {m} {i}" for i in range(6) for c in ("red", "blue", "green")
            for m in ("left", "right")]  # 36 distinct


def tower(seed: int = 0, **kw) -> TextEncoder:
    torch.manual_seed(seed)
    return TextEncoder(TextConfig(init="random", **kw))


def build(text: TextEncoder, folder, captions=CAPTIONS, **kw) -> CaptionStore:
    return cached_or_built(folder, text.store_identity(), text.encode_frozen, text.width, captions, **kw)


def test_store_lookup_equals_the_frozen_tower(tmp_path):
    text = tower()
    captions = CAPTIONS + CAPTIONS[:10]  # duplicates become one row each
    store = build(text, tmp_path, captions)
    assert len(store) == len(CAPTIONS) and store.width == text.width
    (folder,) = tmp_path.iterdir()
    assert (folder / "part-0-36.f16").stat().st_size == 36 * text.width * 2  # float16, 2 bytes a value
    assert store.nbytes == 36 * (text.width * 2 + 16)  # features + 128-bit keys
    assert not list(folder.glob("*.tmp*"))  # written under temporary names, then renamed
    assert isinstance(store.parts[0], np.memmap)  # mapped, not read into memory
    asked = [CAPTIONS[i] for i in torch.randperm(36, generator=torch.Generator().manual_seed(0)).tolist()]
    feats, found = store.lookup(asked)  # (36, W), (36,)
    assert found.all() and feats.dtype == torch.float32
    torch.testing.assert_close(feats, text.encode_frozen(asked), **TOL)
    back = CaptionStore.load(folder, text.store_identity())  # reopened: the same rows
    assert torch.equal(back.lookup(asked)[0], feats)


def test_store_plan_dedupes_and_leaves_colliding_keys_out():
    hashes = np.array([[7, 1], [5, 2], [7, 1], [5, 3], [9, 4], [2, 8]], np.uint64)  # (n, 2) key, check
    keys, checks, source, collisions = store_plan(hashes)
    # [7, 1] twice: one row, from its first position; key 5 with two checks: two texts, one 64-bit key: left out
    assert keys.tolist() == [2, 7, 9] and checks.tolist() == [8, 1, 4] and source.tolist() == [5, 0, 4]
    assert collisions == 2
    h = caption_hashes(["a", "a", "b"])
    assert h.shape == (3, 2) and h.dtype == np.uint64 and (h[0] == h[1]).all() and (h[0] != h[2]).any()


def test_a_caption_missing_from_the_store_is_encoded(tmp_path):
    text = tower()
    store = build(text, tmp_path, CAPTIONS[:20])
    text.use_store(store)
    asked = ["a caption nobody stored", CAPTIONS[3], CAPTIONS[30], CAPTIONS[3]]
    encoded = []
    encode = text.encode_frozen
    text.encode_frozen = lambda c: encoded.extend(c) or encode(c)
    out = text(asked)  # (4, W)
    assert sorted(encoded) == sorted([asked[0], CAPTIONS[30]])  # the misses only, once each
    torch.testing.assert_close(out, encode(asked), **TOL)
    assert CAPTIONS[30] in text._cache and CAPTIONS[3] not in text._cache  # misses go through the bounded LRU
    # a stored key whose check word differs (another text with the same first 64 bits): a miss, never a hit
    row = store.rows([CAPTIONS[3]])[0]
    store.checks[row] ^= np.uint64(1)  # copy-on-write map: changes this process's view only
    assert store.rows([CAPTIONS[3]]).tolist() == [-1]
    feats = stored_features(store, [CAPTIONS[3]], encode)
    torch.testing.assert_close(feats, encode([CAPTIONS[3]]), rtol=1e-5, atol=1e-6)  # encoded, not read


def test_another_towers_store_is_refused_or_built_apart(tmp_path):
    text, other = tower(0), tower(1)
    store = build(text, tmp_path / "stores")
    assert other.store_identity()["weights"] != text.store_identity()["weights"]
    with pytest.raises(ConfigError, match=r"another text tower.*weights.*model\.text\.feature_store"):
        CaptionStore.load(store.folder, other.store_identity())
    shorter = tower(0, max_len=8)  # the same weights, captions cut elsewhere
    with pytest.raises(ConfigError, match="max_len"):
        CaptionStore.load(store.folder, shorter.store_identity())
    again = build(other, tmp_path / "stores")  # automatic: another tower gets its own store
    assert again.folder != store.folder and len(list((tmp_path / "stores").iterdir())) == 2
    torch.testing.assert_close(again.lookup(CAPTIONS)[0], other.encode_frozen(CAPTIONS), **TOL)
    # the same weights in a folder: the same features, whatever the path
    saved = tmp_path / "bert"
    text.bert.save_pretrained(saved)
    text.tokenizer.save_pretrained(saved)
    moved = tmp_path / "moved"
    shutil.copytree(saved, moved)
    from_disk = TextEncoder(TextConfig(init=str(moved)))
    assert from_disk.store_identity()["init"] == str(moved)
    CaptionStore.load(store.folder, from_disk.store_identity())  # accepted: only init differs


def test_an_unfinished_store_is_never_read(tmp_path):
    text = tower()
    store = build(text, tmp_path)
    folder = store.folder
    part = folder / "part-0-36.f16"
    stamp = part.stat().st_mtime_ns
    (folder / "index.json").unlink()  # as if rank 0 died before writing it
    with pytest.raises(FileNotFoundError, match="was not finished"):
        CaptionStore.load(folder)
    encoded = []
    encode = text.encode_frozen
    text.encode_frozen = lambda c: encoded.extend(c) or encode(c)
    again = build(text, tmp_path)  # finished now: the complete part is reused, not encoded again
    assert (folder / "index.json").is_file() and part.stat().st_mtime_ns == stamp and not encoded
    assert torch.equal(again.lookup(CAPTIONS)[0], store.lookup(CAPTIONS)[0])
    (folder / "part-0-36.json").unlink()  # a part whose JSON is missing is rebuilt
    (folder / "index.json").unlink()
    build(text, tmp_path)
    assert sorted(encoded) == sorted(CAPTIONS)
    (folder / "index.json").write_text(json.dumps({"format": 0}))
    with pytest.raises(ValueError, match="not a vidmask caption store of format 1"):
        CaptionStore.load(folder)


def test_feature_store_needs_a_frozen_tower():
    with pytest.raises(ConfigError, match=r"model\.text\.feature_store.*model\.text\.trainable_layers=2"):
        TextConfig(feature_store="stores", trainable_layers=2)
    with pytest.raises(ConfigError, match="model.text.trainable_layers=0"):
        load_config(None, ["model.text.feature_store=stores", "model.text.trainable_layers=1"])
    assert load_config(None, ["model.text.feature_store=stores"]).model.text.feature_store == "stores"


def test_the_store_needs_the_training_annotations(tmp_path):
    from vidmask.train.wiring import caption_store_for

    cfg = load_config(None, [f"data.corpus={tmp_path}", f"model.text.feature_store={tmp_path / 's'}"])
    with pytest.raises(ConfigError, match=r"data\.train_anno.*model\.text\.feature_store=''"):
        caption_store_for(cfg, None)
    assert caption_store_for(load_config(None, []), None) is None  # "": no store


def _build_rank(rank, world, folder, out):
    """One gloo rank of a sharded build: the captions it encoded, and its lookups of every caption."""
    import torch.distributed as dist

    text = tower()
    encoded = []
    encode = text.encode_frozen
    text.encode_frozen = lambda c: encoded.extend(c) or encode(c)
    store = build(text, folder, rank=rank, world=world, barrier=dist.barrier)
    out[rank] = (encoded, store.lookup(CAPTIONS)[0])


def test_two_gloo_ranks_build_the_store_each_its_share(tmp_path):
    """Rank r encodes its contiguous half of the distinct captions (in key order) into its part; both read the
    whole store, which equals the store one process builds."""
    out = run_ranks(_build_rank, tmp_path / "two")
    (folder,) = (tmp_path / "two").iterdir()
    index = json.loads((folder / "index.json").read_text())
    assert [(p["first"], p["rows"]) for p in index["parts"]] == [(0, 18), (18, 18)]
    keys, _, source, _ = store_plan(caption_hashes(CAPTIONS))
    halves = [sorted(CAPTIONS[j] for j in source[:18]), sorted(CAPTIONS[j] for j in source[18:])]
    assert sorted(out[0][0]) == halves[0] and sorted(out[1][0]) == halves[1]  # its share, each caption once
    text = tower()
    one = build(text, tmp_path / "one")
    assert one.folder.name == folder.name  # the same tower and captions: the same key, whatever the ranks
    want = one.lookup(CAPTIONS)[0]
    for rank in (0, 1):
        torch.testing.assert_close(out[rank][1], want, **TOL)


def first_loss(run) -> float:
    import csv

    with (run / "metrics.csv").open() as f:
        return float(next(csv.DictReader(f))["vtc_loss"])


def test_text_cache_command_prebuilds_what_pretraining_reads(tiny_set, tmp_path):
    store = tmp_path / "stores"
    common = [f"data.corpus={tiny_set}", *TINY, "data.test_anno=", "train.steps=1"]
    p = vidmask("text", "cache", *common, f"model.text.feature_store={store}")
    assert "32 captions" in p.stdout  # 16 clips x 2 distinct captions
    (index,) = store.glob("random-*/index.json")
    stamp = index.stat().st_mtime_ns
    vidmask("pretrain", *common, f"model.text.feature_store={store}", f"run_dir={tmp_path / 'stored'}")
    assert index.stat().st_mtime_ns == stamp  # pretraining found it and did not rebuild it
    vidmask("pretrain", *common, f"run_dir={tmp_path / 'live'}")
    assert first_loss(tmp_path / "stored") == pytest.approx(first_loss(tmp_path / "live"), rel=1e-3, abs=1e-3)
    p = vidmask("text", "cache", f"data.corpus={tiny_set}", check=False)
    assert p.returncode == 2 and "model.text.feature_store" in p.stderr


def test_the_teachers_caption_tower_is_served_like_the_students(tiny_set, tiny_clip_dir, tmp_path):
    """loss.relevance encodes every step's captions with the teacher's text side: `vidmask text cache` and
    training give the teacher's frozen tower (lit-effnet's MiniLM) a store of its own, beside the student's;
    without a store training warms its cache before step 1, as the student's."""
    from vidmask.masking import build_masker
    from vidmask.tasks.pretrain import PretrainTask
    from vidmask.teachers import build_teacher
    from vidmask.config import LossConfig
    from test_pretrain_objectives import tiny_model

    teacher = build_teacher("lit-effnet", token_dim=32, embed_dim=16, heads=2, text_init="random")
    model = tiny_model()

    def towers(**loss):
        task = PretrainTask(model, build_masker("random", ratio=0.5), LossConfig(vtc=1.0, **loss), teacher,
                            frames=2, grid=4)
        return task.frozen_caption_towers()

    assert towers(relevance=1.0) == [model.text, teacher.text]
    clip = build_teacher("hf-clip", path=str(tiny_clip_dir))
    task = PretrainTask(model, build_masker("random", ratio=0.5), LossConfig(vtc=1.0, relevance=1.0), clip,
                        frames=2, grid=4)
    assert task.frozen_caption_towers() == [model.text, clip.text]
    assert towers(align=1.0) == [model.text]  # the teacher's text side is not read: nothing to serve
    from types import SimpleNamespace
    from vidmask.train.run import frozen_caption_towers

    task = PretrainTask(model, build_masker("random", ratio=0.5), LossConfig(vtc=1.0, relevance=1.0), teacher,
                        frames=2, grid=4)
    assert frozen_caption_towers(SimpleNamespace(task=task, model=model)) == [model.text, teacher.text]
    assert frozen_caption_towers(SimpleNamespace(task=object(), model=model)) == [model.text]  # no such list

    store = tmp_path / "stores"
    common = [f"data.corpus={tiny_set}", *TINY, "data.test_anno=", "train.steps=1", "teacher.name=lit-effnet",
              "loss.relevance=1.0", f"model.text.feature_store={store}"]
    p = vidmask("text", "cache", *common)
    assert p.stdout.count("caption store of the") == 2 and "teacher lit-effnet's text tower" in p.stdout
    indexes = sorted(store.glob("*/index.json"))
    assert len(indexes) == 2  # the student's random tower and the teacher's MiniLM: two identities
    stamps = [i.stat().st_mtime_ns for i in indexes]
    vidmask("pretrain", *common, f"run_dir={tmp_path / 'stored'}")
    assert [i.stat().st_mtime_ns for i in sorted(store.glob("*/index.json"))] == stamps  # found, not rebuilt
