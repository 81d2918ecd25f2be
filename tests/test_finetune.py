"""`vidmask finetune retrieval|qa|caption` and `vidmask eval` on the tiny set, from a pretrained run."""

from __future__ import annotations

import json

import pytest

from test_train import TINY, vidmask

from vidmask.config import load_config
from vidmask.train import checkpoint as ckpt
from vidmask.train.wiring import build_model, init_run_config, resolve_init


@pytest.fixture(scope="module")
def pretrained(tiny_set, tmp_path_factory):
    run = tmp_path_factory.mktemp("ft") / "pre"
    vidmask("pretrain", f"data.corpus={tiny_set}", *TINY, "train.steps=3", f"run_dir={run}")
    return run


@pytest.mark.parametrize("task, metric_file, keys", [
    ("retrieval", "eval_retrieval.json", {"t2v", "v2t", "rsum", "reranked"}),
    ("qa", "eval_qa.json", {"acc", "per_type", "n"}),
    ("caption", "eval_caption.json", {"CIDEr", "BLEU-4", "ROUGE-L"}),
])
def test_finetune_and_eval(task, metric_file, keys, pretrained, tiny_set, tmp_path):
    run = tmp_path / task
    extra = ["loss.vtm=1.0", "finetune.rerank_k=4"] if task == "retrieval" else []
    extra += ["finetune.beam=2", "finetune.max_len=8"] if task == "caption" else []
    # the tiny set names its retrieval test file test.json; QA and captioning use the standard names
    overrides = TINY if task == "retrieval" else [o for o in TINY if not o.startswith("data.test_anno")]
    vidmask("finetune", task, "--init", str(pretrained), f"data.corpus={tiny_set}", *overrides,
                "train.steps=3", f"run_dir={run}", *extra)
    res = json.loads((run / metric_file).read_text())
    assert keys <= set(res), res.keys()
    out = tmp_path / "again.json"
    vidmask("eval", task, "--run", str(run), "--json", str(out))
    again = json.loads(out.read_text())
    for k in keys - {"per_type"}:
        assert again[k] == res[k], k  # the eval command reproduces the end-of-training evaluation
    if task == "qa":
        assert 0.0 <= res["acc"] <= 100.0 and set(res["per_type"]) == {"colour", "direction"}
    assert "initialised from" in (run / "log.txt").read_text()


def test_eval_refuses_the_wrong_task(pretrained):
    p = vidmask("eval", "qa", "--run", str(pretrained), check=False)
    assert p.returncode == 2 and "retrieval" in p.stderr


def test_init_from_a_run_takes_that_runs_model(tiny_set, tmp_path):
    """`finetune --init RUN` builds the model RUN trained (its model section: here frame differences and the
    whitened text head), where a config without those keys used to fail on the weights' names."""
    pre = tmp_path / "pre"
    vidmask("pretrain", f"data.corpus={tiny_set}", *TINY, "model.frame_diff=true", "model.proj_head=whitened",
            "model.eval_tokens=motion", "train.steps=2", f"run_dir={pre}")
    run = tmp_path / "ft"
    p = vidmask("finetune", "retrieval", "--init", str(pre), f"data.corpus={tiny_set}", *TINY, "train.steps=2",
                "loss.vtm=0", "finetune.rerank_k=0", f"run_dir={run}")
    saved = load_config(run / "config.yaml")
    assert saved.model.frame_diff and saved.model.proj_head == "whitened" and saved.model.eval_tokens == "motion"
    assert "model.frame_diff: False -> True" in p.stderr
    assert (run / "eval_retrieval.json").is_file()


def test_resolve_init_reads_the_run_folder_from_any_of_its_paths(tmp_path):
    pre = tmp_path / "pre"
    ck = pre / "checkpoints" / "step_000002"
    ck.mkdir(parents=True)
    (ck / "model.safetensors").write_bytes(b"")
    (pre / "config.yaml").write_text("model: {frame_diff: true, dim: 48, heads: 4, text: {max_len: 16}}\n")
    for init in (pre, ck, ck / "model.safetensors"):
        assert init_run_config(str(init)) == pre / "config.yaml"
        cfg = load_config(None, [f"finetune.init={init}", "model.dim=96"])
        changes = resolve_init(cfg, explicit=["model.dim"])  # a command-line model key wins
        assert cfg.model.frame_diff and cfg.model.heads == 4 and cfg.model.text.max_len == 16
        assert cfg.model.dim == 96
        assert sorted(c.split(":")[0] for c in changes) == ["model.frame_diff", "model.heads", "model.text.max_len"]
        assert resolve_init(cfg, explicit=["model.dim"]) == []  # resolved: nothing left to change
    bare = tmp_path / "weights.safetensors"
    bare.write_bytes(b"")
    assert init_run_config(str(bare)) is None and init_run_config("") is None
    assert resolve_init(load_config(None, [f"finetune.init={bare}"])) == []


def test_weights_of_another_model_name_the_keys_and_the_fix(pretrained):
    cfg = load_config(pretrained / "config.yaml", ["model.frame_diff=true"])
    with pytest.raises(ValueError, match=r"missing visual\.diff_embed.*model\.\* settings"):
        ckpt.load_model_weights(build_model(cfg), pretrained)
