"""Typed configs: defaults, YAML files, dotted overrides, unknown keys rejected."""

from pathlib import Path

import pytest

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
    cfg = load_config(path)
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
}


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_clusterstm_ablation_changes_one_thing(name):
    recipes = Path(__file__).resolve().parents[1] / "configs" / "recipes"
    ref = _flat(to_dict(load_config(recipes / "clusterstm.yaml")))
    abl = _flat(to_dict(load_config(recipes / f"{name}.yaml")))
    diff = {k: abl.get(k) for k in set(ref) | set(abl) if k != "name" and ref.get(k) != abl.get(k)}
    assert diff == ABLATIONS[name]
    assert abl["name"] == name
