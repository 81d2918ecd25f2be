"""`vidmask finetune retrieval|qa|caption` and `vidmask eval` on the tiny set, from a pretrained run."""

from __future__ import annotations

import json

import pytest

from test_train import TINY, vidmask


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
