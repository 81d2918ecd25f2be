"""Refactors keep behaviour: every recipe gives the losses it gave when the fixture was recorded.

`tests/fixtures/recipe_losses.json` holds, for each recipe in `configs/recipes/`
(and each fine-tuning config), every named loss term of the first steps of a
fixed-seed run of a tiny model on the tiny hand-made set. It was recorded
before objectives and tasks became registries; a change to the wiring that
alters what a recipe trains shows up here as a different loss. Record again
(on purpose, saying why in the commit) with::

    python tests/test_recipes_unchanged.py

The recipes' teacher is lit-effnet with untrained heads (``teacher.path=''``):
the packaged EfficientNet-Lite0 trunk is deterministic and the heads are
initialised from the run's seed, so no teacher file is needed.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "recipe_losses.json"
# names and shapes of the weights each run's checkpoint held under the first weight naming (format 1),
# recorded once by this script at commit 3c5b27c and frozen since: old checkpoints must keep loading
KEYS = ROOT / "tests" / "fixtures" / "checkpoint_keys.json"
RECIPES = sorted((ROOT / "configs" / "recipes").glob("*.yaml"))
FINETUNE = ("retrieval", "qa", "caption")
PRETRAIN_STEPS, FINETUNE_STEPS = 20, 10
# the test trains the first steps of those schedules (train.stop_at: the same learning rates) and compares
# them with the recorded ones; the fixture holds every step. Twenty teacher steps of 23 recipes were a
# tenth of the suite on a slow CPU.
PRETRAIN_CHECKED, FINETUNE_CHECKED = 8, 5

TINY = [
    "data.size=64", "data.num_frames=4", "data.num_workers=0",
    "model.text.init=random", "model.dim=32", "model.depth=2", "model.heads=2", "model.embed_dim=16",
    "train.batch_size=4", "train.log_every=1", "train.warmup_steps=2", "train.ckpt_every=1000",
    "teacher.path=", "teacher.cache=",
]


def _losses(run_dir: Path) -> dict[str, list[float]]:
    with (run_dir / "metrics.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r.get("loss")]
    names = sorted(k for k in rows[0] if k == "loss" or k.endswith("_loss"))
    return {k: [float(r[k]) for r in rows if r.get(k)] for k in names}


def run_recipe(name: str, corpus: Path, out: Path, first: bool = False) -> dict[str, list[float]]:
    """The named loss terms of each step of one tiny run: recipe file stem, or finetune-<task>; ``first``:
    of its first steps only (PRETRAIN_CHECKED or FINETUNE_CHECKED of the same schedule)."""
    from vidmask.cli import main

    run_dir = out / name
    if name.startswith("finetune-"):
        task = name.split("-", 1)[1]
        args = ["finetune", task, "--config", str(ROOT / "configs" / "finetune" / f"{task}.yaml"),
                f"data.corpus={corpus}", *TINY, "data.test_anno=" + ("test.json" if task == "retrieval" else f"test_{task}.json"),
                f"train.steps={FINETUNE_STEPS}", f"run_dir={run_dir}",
                f"train.stop_at={FINETUNE_CHECKED if first else 0}"]
    else:
        recipe = ROOT / "configs" / "recipes" / f"{name}.yaml"
        args = ["pretrain", "--config", str(recipe), f"data.corpus={corpus}", *TINY,
                "data.test_anno=", f"train.steps={PRETRAIN_STEPS}", f"run_dir={run_dir}",
                f"train.stop_at={PRETRAIN_CHECKED if first else 0}"]
    if main(args) != 0:
        raise AssertionError(f"vidmask {' '.join(args)} failed")
    return _losses(run_dir)


def all_names() -> list[str]:
    return [p.stem for p in RECIPES] + [f"finetune-{t}" for t in FINETUNE]


@pytest.mark.slow
@pytest.mark.parametrize("name", all_names())
def test_recipe_losses_unchanged(name, tiny_set, tmp_path):
    recorded = json.loads(FIXTURE.read_text())
    if name not in recorded:
        pytest.fail(f"{name} has no recorded losses; record them with `python tests/test_recipes_unchanged.py`")
    got = run_recipe(name, tiny_set, tmp_path, first=True)
    want = recorded[name]
    assert sorted(got) == sorted(want), f"loss terms changed: {sorted(want)} -> {sorted(got)}"
    checked = FINETUNE_CHECKED if name.startswith("finetune-") else PRETRAIN_CHECKED
    assert len(got["loss"]) == checked, got["loss"]  # one row a step (log_every=1), and it stopped there
    for term, values in want.items():
        assert got[term], term
        assert got[term] == pytest.approx(values[: len(got[term])], rel=1e-4, abs=1e-5), term


if __name__ == "__main__":
    import tempfile

    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import make_tiny_set

    with tempfile.TemporaryDirectory() as tmp:
        corpus = make_tiny_set(Path(tmp) / "set")
        names = sys.argv[1:] or all_names()
        recorded = json.loads(FIXTURE.read_text()) if FIXTURE.is_file() else {}
        for n in names:
            recorded[n] = run_recipe(n, corpus, Path(tmp) / "runs")
            print(n, {k: v[:3] for k, v in recorded[n].items()}, flush=True)
        FIXTURE.parent.mkdir(exist_ok=True)
        FIXTURE.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
        print(f"wrote {FIXTURE}")
