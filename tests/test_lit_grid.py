"""lit-effnet's trunk scale: frames resized before the stride-32 trunk put its tokens on the student's grid.

At 128 px the trunk gives 4x4 (scale 1, resampled to the patch-16 student's 8x8)
or 8x8 (scale 2, the student's own grid: nothing resampled). The scale is saved
with the heads, names a teacher cache, and is set by `vidmask teacher train
--trunk-scale` and `teacher.trunk_scale`.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from vidmask.config import ConfigError, load_config
from vidmask.data import load_annotations
from vidmask.teachers import LitEffnetConfig, LitEffnetTeacher, build_teacher, resample_grid
from vidmask.teachers.cache import cache_key, cached_or_built

SMALL = dict(token_dim=32, embed_dim=16, heads=2, text_init="random")  # small heads, no MiniLM to load


def lit(scale: int) -> LitEffnetTeacher:
    torch.manual_seed(0)
    return build_teacher("lit-effnet", **SMALL, trunk_scale=scale)


@pytest.fixture(scope="module")
def lit1():
    return lit(1)


@pytest.fixture(scope="module")
def lit2():
    return lit(2)


def test_trunk_grid_at_128_px_is_4x4_at_scale_1_and_8x8_at_scale_2(lit1, lit2):
    video = torch.randn(1, 2, 3, 128, 128)  # (B, T, 3, H, W)
    for teacher, n in ((lit1, 16), (lit2, 64)):
        assert teacher.trunk_features(video).shape == (1, 2, n, 1280)
        assert teacher.encode_frames(video).tokens.shape == (1, 2, n, 32)  # the trunk's own grid
        out = teacher(video)  # the patch-16 student's 8x8 either way
        assert out.tokens.shape == (1, 2, 64, 32) and out.attn.shape == (1, 2, 64) and out.video.shape == (1, 16)
        torch.testing.assert_close(out.attn.sum(-1), torch.ones(1, 2))


def test_scale_2_runs_the_trunk_on_frames_resized_2x(lit1, lit2):
    video = torch.randn(1, 2, 3, 64, 64)
    big = F.interpolate(video.flatten(0, 1), scale_factor=2, mode="bilinear", align_corners=False)  # (T, 3, 128, 128)
    # the per-channel renormalisation and the bilinear resize commute, up to float rounding
    torch.testing.assert_close(lit2.trunk_features(video), lit1.trunk_features(big.unflatten(0, (1, 2))),
                               rtol=1e-4, atol=1e-4)


def test_scale_2_tokens_are_the_projected_trunk_map_not_an_interpolation(lit1, lit2):
    video = torch.randn(2, 2, 3, 128, 128)
    with torch.no_grad():
        projected = lit2.token_proj(lit2.trunk_features(video))  # (B, T, 64, D) on the trunk's grid
        assert resample_grid(projected, 64) is projected  # equal grids: the resampler does nothing
        out = lit2(video, grid=8)
        torch.testing.assert_close(out.tokens, projected, rtol=0, atol=0)
        torch.testing.assert_close(lit2.project(lit2.trunk_features(video), 8), projected, rtol=0, atol=0)
        # scale 1: the 4x4 map is interpolated to 8x8, so the tokens are not the trunk's own
        coarse = lit1.token_proj(lit1.trunk_features(video))  # (B, T, 16, D)
        torch.testing.assert_close(lit1(video, grid=8).tokens, resample_grid(coarse, 64), rtol=0, atol=0)


def test_trunk_scale_is_saved_with_the_heads_and_old_files_load_as_1(lit2, tmp_path):
    path = lit2.save(tmp_path / "lit2.safetensors")
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["config"]["trunk_scale"] == 2
    loaded = build_teacher("lit-effnet", path=str(path))
    assert loaded.cfg == lit2.cfg and loaded.cfg.trunk_scale == 2
    assert build_teacher("lit-effnet", path=str(path), trunk_scale=2).cfg.trunk_scale == 2  # a check that holds
    with pytest.raises(ValueError, match=r"trained at trunk scale 2, not 1.*--trunk-scale 1"):
        build_teacher("lit-effnet", path=str(path), trunk_scale=1)
    del meta["config"]["trunk_scale"]  # a head file saved before the option existed
    path.with_suffix(".json").write_text(json.dumps(meta))
    assert build_teacher("lit-effnet", path=str(path)).cfg.trunk_scale == 1


@pytest.mark.parametrize("scale", [0, -1, 1.5, True])
def test_bad_trunk_scales_are_refused(scale):
    with pytest.raises(ValueError, match="trunk_scale must be an integer >= 1"):
        LitEffnetConfig(trunk_scale=scale)


def test_cache_key_changes_with_the_trunk_scale(lit1, tmp_path, tiny_set):
    items = load_annotations(tiny_set / "train.json")
    # the same head bytes at two scales: the scale is in the .json sidecar, which the key does not hash
    path = lit1.save(tmp_path / "lit.safetensors")
    t1 = build_teacher("lit-effnet", path=str(path))
    meta = json.loads(path.with_suffix(".json").read_text())
    meta["config"]["trunk_scale"] = 2
    path.with_suffix(".json").write_text(json.dumps(meta))
    t2 = build_teacher("lit-effnet", path=str(path))
    assert (t1.cache_options(), t2.cache_options()) == ({}, {"trunk_scale": 2})
    k1 = cache_key("lit-effnet", path, items, 128, options=t1.cache_options())
    k2 = cache_key("lit-effnet", path, items, 128, options=t2.cache_options())
    assert k1 != k2
    assert k1 == cache_key("lit-effnet", path, items, 128)  # scale 1 keeps the keys of older caches
    # the builder names its folder with the teacher's options: two caches, each on its own trunk grid
    c1 = cached_or_built(tmp_path / "cache", t1, path, items[:2], size=32)
    c2 = cached_or_built(tmp_path / "cache", t2, path, items[:2], size=32)
    assert c1.folder != c2.folder
    assert c1.shapes["tokens"] == [1, 32] and c2.shapes["tokens"] == [4, 32]  # 1x1 vs 2x2 at 32 px


def test_run_config_trunk_scale(tmp_path, lit1):
    from vidmask.train.wiring import build_teacher_from

    assert load_config(None, []).teacher.trunk_scale == 0  # the head file's
    for override, words in [("teacher.trunk_scale=-1", "teacher.trunk_scale must be an integer >= 0"),
                            ("teacher.trunk_scale=1.5", "teacher.trunk_scale must be int"),
                            ("teacher.trunk_scale=2", "teacher.trunk_scale is lit-effnet's option")]:
        with pytest.raises(ConfigError, match=words):
            load_config(None, [override])
    cfg = load_config(None, ["teacher.name=lit-effnet", "teacher.trunk_scale=2", "model.text.init=random"])
    assert build_teacher_from(cfg).cfg.trunk_scale == 2  # untrained heads at the asked scale
    path = lit1.save(tmp_path / "lit1.safetensors")
    cfg = load_config(None, ["teacher.name=lit-effnet", f"teacher.path={path}", "teacher.trunk_scale=2"])
    with pytest.raises(ConfigError, match=r"teacher.trunk_scale: .*trained at trunk scale 1, not 2"):
        build_teacher_from(cfg)
    cfg = load_config(None, ["teacher.name=lit-effnet", f"teacher.path={path}"])
    assert build_teacher_from(cfg).cfg.trunk_scale == 1


def test_cli_teacher_train_trunk_scale_2(tiny_set, tmp_path, capsys):
    from vidmask.cli import main

    out = tmp_path / "lit2.safetensors"
    common = ["teacher", "train", "--corpus", str(tiny_set), "--out", str(out), "--steps", "2",
              "--batch-size", "4", "--frames", "2", "--size", "32"]
    assert main([*common, "--trunk-scale", "0"]) == 2
    assert "--trunk-scale must be an integer >= 1" in capsys.readouterr().err
    assert main([*common, "--trunk-scale", "2"]) == 0
    teacher = build_teacher("lit-effnet", path=str(out))
    assert teacher.cfg.trunk_scale == 2
    assert teacher.encode_frames(torch.zeros(1, 1, 3, 32, 32)).tokens.shape[2] == 4  # 2x2 at 32 px: 64 px trunk
    assert json.loads(out.with_suffix(".json").read_text())["config"]["trunk_scale"] == 2
