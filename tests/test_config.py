"""Typed configs: defaults, YAML files, dotted overrides, unknown keys rejected."""

from pathlib import Path

import pytest
import yaml

from vidmask.config import Config, ConfigError, load_config, save_config, to_dict


def test_defaults_and_overrides(tmp_path):
    cfg = load_config(None, ["mask.ratio=0.9", "train.steps=12", "model.text.init=random", "mask.params={knn: 3}"])
    assert isinstance(cfg, Config)
    assert cfg.mask.ratio == 0.9 and cfg.train.steps == 12 and cfg.model.text.init == "random"
    assert cfg.mask.params == {"knn": 3}
    assert cfg.train.lr == Config().train.lr


def test_yaml_with_base_and_roundtrip(tmp_path):
    (tmp_path / "base.yaml").write_text("train:\n  steps: 7\n  lr: 1.0e-3\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\ntrain:\n  steps: 9\nmask:\n  strategy: tube\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert cfg.train.steps == 9 and cfg.train.lr == 1e-3 and cfg.mask.strategy == "tube"
    save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml") == cfg


@pytest.mark.parametrize(
    "override, words",
    [
        ("train.stepz=3", ["train.stepz", "steps"]),
        ("nope.x=1", ["nope"]),
        ("train.steps=many", ["train.steps", "int"]),
        ("mask.ratio=1.5", ["mask.ratio"]),
        ("train.precision=fp8", ["train.precision"]),
        ("data.size=100", ["data.size", "16"]),
        ("model.heads=5", ["model.dim", "model.heads"]),
        ("trainsteps", ["section.key=value"]),
    ],
)
def test_bad_keys_and_values_name_the_key(override, words):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    for w in words:
        assert w in str(e.value)


def test_missing_and_malformed_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(bad)


CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(p.parents[1])) if "recipes" in str(p) else p.name)
def test_every_shipped_config_loads(path):
    if path.parent.name == "base" and path.parent.parent.name == "recipes":
        # the papers'-scale recipes with a teacher require CLIP weights on the command line
        raw = yaml.safe_load(path.read_text()) or {}
        if (raw.get("teacher") or {}).get("name") == "hf-clip":
            with pytest.raises(ConfigError, match="teacher.path"):
                load_config(path)
            cfg = load_config(path, ["teacher.path=/path/to/clip-vit-base-patch16"])
            assert cfg.teacher.name == "hf-clip" and not cfg.teacher.cache
            return _check_loaded(path, cfg)
    _check_loaded(path, load_config(path))


def test_base_recipes_with_a_teacher_use_clip():
    """At the papers' scale no recipe silently falls back to the toy teacher trained on the corpus."""
    base = Path(__file__).resolve().parents[1] / "configs" / "recipes" / "base"
    for path in sorted(base.glob("*.yaml")):
        cfg = load_config(path, ["teacher.path=/clip"]) if "hf-clip" in path.read_text() else load_config(path)
        assert cfg.teacher.name in ("", "hf-clip"), path.name
        assert not cfg.loss.needs_teacher() or cfg.teacher.name == "hf-clip", path.name


def _check_loaded(path, cfg):
    assert cfg.name
    if "recipes" in path.parts:
        # a recipe's masker and teacher-dependent losses are consistent
        from vidmask.masking import list_maskers

        assert cfg.mask.strategy in list_maskers()
        assert not cfg.loss.needs_teacher() or cfg.teacher.name
    if path.parent.name == "base":
        assert cfg.model.dim == 768 and cfg.data.size == 224


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):  # an empty dict adds no key
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# the paper's ablation table (and the supplement's window table): what each recipe changes, and only that
ABLATIONS = {
    "clusterstm-no-cluster": {"mask.strategy": "random"},
    "clusterstm-no-density": {"mask.strategy": "cluster-random"},
    "clusterstm-no-relevance": {"loss.relevance.weight": 0.0},
    "clusterstm-ratio0.75": {"mask.ratio": 0.75},
    "clusterstm-ratio0.85": {},
    "clusterstm-ratio0.9": {"mask.ratio": 0.9},
    "clusterstm-window1": {"loss.relevance.window": 1},
    "clusterstm-density-topk": {"mask.strategy": "density-topk"},
    "clusterstm-dynamics": {"mask.params.select": "dynamics"},
    "clusterstm-adjacent": {"mask.params.select": "adjacent"},
}


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_clusterstm_ablation_changes_one_thing(name):
    recipes = Path(__file__).resolve().parents[1] / "configs" / "recipes"
    ref = _flat(to_dict(load_config(recipes / "clusterstm.yaml")))
    abl = _flat(to_dict(load_config(recipes / f"{name}.yaml")))
    diff = {k: abl.get(k) for k in set(ref) | set(abl) if k != "name" and ref.get(k) != abl.get(k)}
    assert diff == ABLATIONS[name]
    assert abl["name"] == name


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lr=.inf", "train.lr must be a finite number > 0, got inf"),
        ("train.lr=.nan", "train.lr must be a finite number > 0, got nan"),
        ("train.min_lr=-1", "train.min_lr must be a finite number >= 0, got -1.0"),
        ("train.min_lr=0.01", "train.min_lr (0.01) must not exceed train.lr (0.0005)"),
        ("train.weight_decay=-1", "train.weight_decay must be a finite number >= 0, got -1.0"),
        ("train.grad_clip=-1", "train.grad_clip must be a finite number >= 0 (0 = no clipping), got -1.0"),
        ("train.time_limit_min=-1", "train.time_limit_min must be a finite number >= 0 (0 = no limit), got -1.0"),
        ("train.ckpt_every=0", "train.ckpt_every must be >= 1, got 0"),
        ("train.log_every=0", "train.log_every must be >= 1, got 0"),
        ("train.eval_every=-1", "train.eval_every must be >= 0 (0 = only at the end), got -1"),
        ("train.seed=-1", "train.seed must be >= 0, got -1"),
        ("train.warmup_steps=-1", "train.warmup_steps must be >= 0, got -1"),
        ("model.embed_dim=0", "model.embed_dim must be >= 1, got 0"),
        ("model.mlp_ratio=0", "model.mlp_ratio must be a finite number > 0, got 0.0"),
        ("model.heads=0", "model.heads must be >= 1, got 0"),
        ("model.dim=0", "model.dim must be >= 1, got 0"),
        ("model.fusion_depth=0", "model.fusion_depth must be >= 1, got 0"),
        ("data.num_workers=-1", "data.num_workers must be >= 0 (0 = load in the main process), got -1"),
        ("data.prefetch_factor=0", "data.prefetch_factor must be >= 1 (batches each loader worker holds ready), got 0"),
        ("data.crop_scale=0", "data.crop_scale must be in (0, 1] (1 = the centre crop), got 0.0"),
        ("data.crop_scale=1.5", "data.crop_scale must be in (0, 1] (1 = the centre crop), got 1.5"),
        ("teacher.cache=c data.crop_scale=0.5", "teacher.cache stores the features of the centre crop; "
                                                "data.crop_scale=0.5"),
    ],
)
def test_out_of_range_values_name_the_key(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, override.split())
    assert message in str(e.value)


@pytest.mark.parametrize("override", ["train.grad_clip=0", "train.min_lr=0", "train.min_lr=5.0e-4",
                                      "data.num_workers=0", "train.eval_every=0", "train.time_limit_min=0",
                                      "data.prefetch_factor=1", "data.crop_scale=1"])
def test_boundary_values_are_valid(override):
    load_config(None, [override])


def test_crop_scale_is_the_training_crops_area_range():
    assert load_config(None, []).data.random_crop() is None  # the centre crop, as evaluation
    assert load_config(None, ["data.crop_scale=0.5"]).data.random_crop() == (0.5, 1.0)


def test_base_cycle_names_the_files(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: [a.yaml]\n")
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "a.yaml")
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    assert f"config files extend each other in a cycle: {a} -> {b} -> {a}" in str(e.value)


@pytest.mark.parametrize("base", ["5", "[3]", "{x: 1}"])
def test_base_of_the_wrong_type(tmp_path, base):
    (tmp_path / "child.yaml").write_text(f"base: {base}\n")
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "child.yaml")
    assert f"config file {tmp_path / 'child.yaml'}: base must be a file name or a list of file names" in str(e.value)


def test_missing_base_names_it_and_the_file_naming_it(tmp_path):
    (tmp_path / "child.yaml").write_text("base: [nope.yaml]\n")
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "child.yaml")
    assert f"config file {tmp_path / 'child.yaml'}: base file 'nope.yaml' not found" in str(e.value)


def test_duplicate_yaml_key_is_refused(tmp_path):
    (tmp_path / "twice.yaml").write_text("train:\n  steps: 3\n  lr: 1.0e-3\n  steps: 4\n")
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "twice.yaml")
    assert f"config file {tmp_path / 'twice.yaml'}: key 'steps' appears twice in one mapping (line 4)" in str(e.value)
    with pytest.raises(ConfigError, match="key 'knn' appears twice"):
        load_config(None, ["mask.params={knn: 3, knn: 4}"])


def test_yaml_merge_keys_may_be_overridden(tmp_path):
    (tmp_path / "merge.yaml").write_text("train: {steps: 3, lr: 1.0e-3}\n")
    (tmp_path / "child.yaml").write_text("base: merge.yaml\ntrain:\n  <<: {steps: 5, seed: 2}\n  steps: 6\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert cfg.train.steps == 6 and cfg.train.seed == 2 and cfg.train.lr == 1e-3


def test_floats_written_without_a_dot_are_numbers(tmp_path):
    """PyYAML reads "1e-3" as a string (YAML 1.1 wants "1.0e-3"); an override or a file means the number."""
    assert load_config(None, ["train.lr=1e-3", "train.min_lr=5E-6"]).train.lr == 1e-3
    assert load_config(None, ["train.min_lr=5E-6"]).train.min_lr == 5e-6
    f = tmp_path / "r.yaml"
    f.write_text("train: {lr: 2e-4, min_lr: 1e-6}\n")
    cfg = load_config(f, [])
    assert (cfg.train.lr, cfg.train.min_lr) == (2e-4, 1e-6)
    assert load_config(None, ["name=run1e3"]).name == "run1e3"  # not a number: stays a string
    with pytest.raises(ConfigError, match="train.steps must be int"):
        load_config(None, ["train.steps=1e3"])  # a float where a whole number is wanted is still refused


def test_stop_at_is_a_step_of_the_schedule():
    assert load_config(None, ["train.steps=20", "train.stop_at=8"]).train.stop_at == 8
    for bad in ("21", "-1"):
        with pytest.raises(ConfigError, match="train.stop_at"):
            load_config(None, ["train.steps=20", f"train.stop_at={bad}"])
