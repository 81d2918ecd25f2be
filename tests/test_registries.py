"""The contracts of the objective and task registries, run over everything registered."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vidmask.config import ConfigError, LossConfig, load_config
from vidmask.data import VideoTextDataset, collate_video_text
from vidmask.data.transfer import to_device
from vidmask.masking import build_masker, list_maskers
from vidmask.objectives import ObjectiveConfig, list_objectives, objective_class, register_objective
from vidmask.tasks import PretrainTask, list_tasks, task_info
from vidmask.teachers import build_teacher

from test_pretrain_objectives import batch, tiny_model  # the same tiny model and batch

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- objectives

@pytest.mark.parametrize("name", list_objectives())
def test_objective_contract(name, tiny_clip_dir):
    cls = objective_class(name)
    assert dataclasses.is_dataclass(cls.config) and issubclass(cls.config, ObjectiveConfig)
    teacher = build_teacher("hf-clip", path=str(tiny_clip_dir))
    model = tiny_model()
    sections = {n: 0.0 for n in list_objectives()} | {name: 2.0}
    task = PretrainTask(model, build_masker("random", ratio=0.5), LossConfig(**sections),
                        teacher if cls.needs_teacher else None, frames=2, grid=4)
    assert list(task.objectives) == [name]
    losses, report = task(batch(), torch.Generator().manual_seed(1))
    assert set(losses) == {f"{name}_loss"}  # the named key, and nothing else counted as a loss
    loss = losses[f"{name}_loss"]
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert task.objectives[name].name == name
    loss.backward()
    student = [p.grad for p in model.visual.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in student), "no gradient reaches the student"
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())  # frozen, untouched
    for pname, p in task.objectives[name].named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"{name}.{pname} gets no gradient"


@pytest.mark.parametrize("name", list_objectives())
def test_objective_weight_scales_its_term(name, tiny_clip_dir):
    teacher = build_teacher("hf-clip", path=str(tiny_clip_dir)) if objective_class(name).needs_teacher else None
    out = []
    for w in (1.0, 3.0):
        sections = {n: 0.0 for n in list_objectives()} | {name: w}
        task = PretrainTask(tiny_model(), build_masker("random", ratio=0.5), LossConfig(**sections), teacher,
                            frames=2, grid=4)
        out.append(task(batch(), torch.Generator().manual_seed(1))[0][f"{name}_loss"].detach())
    torch.testing.assert_close(out[1], 3.0 * out[0], rtol=1e-4, atol=1e-6)


def test_loss_sections_shorthand_and_errors():
    cfg = load_config(None, ["loss.relevance=1.0", "loss.relevance.window=1", "teacher.name=lit-effnet"])
    assert cfg.loss.relevance.weight == 1.0 and cfg.loss.relevance.window == 1
    assert cfg.loss.active() == ["vtc", "relevance"] and cfg.loss.needs_teacher() == ["relevance"]
    with pytest.raises(ConfigError, match="loss.nothing"):
        load_config(None, ["loss.nothing=1.0"])
    with pytest.raises(ConfigError, match="loss.relevance.window must be odd"):
        load_config(None, ["loss.relevance.window=2"])
    with pytest.raises(ConfigError, match="loss.vtm.weight must be a finite number >= 0"):
        load_config(None, ["loss.vtm=-1"])
    with pytest.raises(ConfigError, match="loss.relevance_window is now loss.relevance.window"):
        load_config(None, ["loss.relevance_window=1"])


def test_run_config_of_the_flat_loss_section_still_loads(tmp_path):
    old = tmp_path / "config.yaml"
    old.write_text("loss: {vtc: 1.0, vtm: 0.5, mlm_prob: 0.3, align_layers: 2, relevance_window: 5, "
                   "fusion_depth: 3, decoder_dim: 64}\n")
    cfg = load_config(old)
    assert cfg.loss.vtm.weight == 0.5 and cfg.loss.mlm.prob == 0.3 and cfg.loss.align.layers == 2
    # decoder_dim was the stm decoder's, vidmask's own STM reading, now stm-guided
    assert cfg.loss.relevance.window == 5 and cfg.loss["stm-guided"].decoder_dim == 64 and cfg.model.fusion_depth == 3


def test_a_new_objective_is_one_registration(monkeypatch):
    """What docs/extending.md promises: register, then `loss.<name>` trains it."""
    from vidmask.objectives import base

    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))

    @dataclasses.dataclass
    class NormConfig(ObjectiveConfig):
        power: int = 2  # the norm's power

    @register_objective("feature-norm", NormConfig)
    class FeatureNorm(base.Objective):
        def __init__(self, cfg, env):
            super().__init__()
            self.power = cfg.power

        def forward(self, ctx):
            return {"feature-norm_loss": ctx.feats.norm(dim=-1).pow(self.power).mean(), "feat_mean": 1.0}

    cfg = load_config(None, ["loss.feature-norm.weight=0.5", "loss.feature-norm.power=1"])
    task = PretrainTask(tiny_model(), build_masker("random", ratio=0.5), cfg.loss, None, frames=2, grid=4)
    losses, report = task(batch())
    assert set(losses) == {"vtc_loss", "feature-norm_loss"} and report["feat_mean"] == 1.0


# ---------------------------------------------------------------- tasks

TINY = ["data.size=32", "data.num_frames=2", "data.num_workers=0", "model.text.init=random", "model.dim=32",
        "model.depth=1", "model.heads=2", "model.embed_dim=16", "finetune.rerank_k=4"]


@pytest.mark.parametrize("name", list_tasks())
def test_task_contract(name, tiny_set):
    from vidmask.train.run import make_job

    info = task_info(name)
    train_file, test_file = info.files
    overrides = [f"data.corpus={tiny_set}", *TINY, f"data.train_anno={train_file}",
                 "data.test_anno=" + ("test.json" if test_file == "test_retrieval.json" else test_file)]
    if info.finetune:
        overrides.append(f"finetune.task={name}")
    cfg = load_config(None, overrides)
    torch.manual_seed(0)
    job = make_job(cfg, torch.device("cpu"))
    assert job.items and job.result_file.endswith(".json")
    ds = VideoTextDataset(job.items[:4], cfg.data.num_frames, cfg.data.size, train=True)
    b = job.prepare(to_device(collate_video_text([ds[i] for i in range(4)]), "cpu"))  # uint8 clips normalised
    losses, report = job.task(b, torch.Generator().manual_seed(0))
    assert losses and all(k.endswith("_loss") and torch.isfinite(v) for k, v in losses.items())
    sum(losses.values()).backward()
    result = job.evaluate()
    assert isinstance(job.table(result), str)
    assert all(isinstance(v, float) for v in job.short(result).values())


def test_cli_lists_tasks_from_the_registry():
    for command in ("finetune", "eval"):
        out = subprocess.run([sys.executable, "-m", "vidmask", command, "--help"], capture_output=True, text=True,
                             check=True).stdout
        for name in list_tasks(finetune=True):
            assert re.search(rf"^\s+{name}\s", out, re.M), (command, name)
        assert "pretrain " not in out


def test_no_strategy_name_outside_masking():
    """The trainer, the tasks and the commands never dispatch on a masking strategy's name."""
    names = set(list_maskers())
    found = []
    for folder in ("vidmask/train", "vidmask/tasks", "vidmask/commands"):
        for path in sorted((ROOT / folder).glob("*.py")):
            for lineno, line in enumerate(path.read_text().splitlines(), 1):
                for quoted in re.findall(r"""["']([a-z-]+)["']""", line):
                    if quoted in names:
                        found.append(f"{path.relative_to(ROOT)}:{lineno}: {quoted}")
    assert not found, found
