"""Checkpoints written before objectives and tasks became registries still load.

`tests/fixtures/checkpoint_keys.json` holds the weight names and shapes of each
recipe's and fine-tuning task's checkpoint as the earlier code wrote them
(recorded with `python tests/test_recipes_unchanged.py`). Each is rebuilt here
as a file of distinct random values under those names, without the format
tag, and loaded strictly into today's task: every weight must find its place.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from test_recipes_unchanged import FINETUNE, KEYS, ROOT, TINY
from vidmask.config import load_config
from vidmask.train import checkpoint as ckpt
from vidmask.train.run import make_job

OLD = json.loads(KEYS.read_text())


def config_of(name: str, corpus: Path):
    if name.startswith("finetune-"):
        task = name.split("-", 1)[1]
        test = "test.json" if task == "retrieval" else f"test_{task}.json"
        return load_config(ROOT / "configs" / "finetune" / f"{task}.yaml",
                           [f"data.corpus={corpus}", *TINY, f"finetune.task={task}", f"data.test_anno={test}"])
    # the clusterstm recipes trained these losses when the names were recorded (clusterstm-umt-losses
    # today); an old run folder's config.yaml holds them, the recipe files have moved on
    # (and relevance with a decoder of its own: an old config.yaml has no loss.relevance.decoder, whose default is own)
    before = (["loss.recon=0", "loss.align=1", "loss.vtm=1", "loss.mlm=1", "loss.relevance.decoder=own"]
              if name.startswith("clusterstm") else [])
    if name.startswith(("clusterstm", "umt", "stm")):
        before.append("loss.align.head=ln-linear")  # umt.yaml has UMT's heads since; the old runs had these
    # the recipe called stm then is stm-guided now (stm is STM's official algorithm): an old stm run's
    # config.yaml migrates to it (vidmask.config.migrate_legacy) and its weights are renamed to it
    recipe = "stm-guided" if name == "stm" else name
    return load_config(ROOT / "configs" / "recipes" / f"{recipe}.yaml",
                       [f"data.corpus={corpus}", *TINY, "data.test_anno=test.json", *before])


@pytest.mark.parametrize("name", sorted(OLD))
def test_old_checkpoint_loads(name, tiny_set, tmp_path):
    g = torch.Generator().manual_seed(0)
    old = {k: torch.randn(shape, generator=g) for k, shape in OLD[name].items()}
    file = tmp_path / "model.safetensors"
    save_file(old, str(file), metadata={"step": "20"})  # no vidmask_format: the first naming
    job = make_job(config_of(name, tiny_set), torch.device("cpu"), evaluating=True)
    assert ckpt.load_weights(job.task, file, strict=True) == []
    state = job.task.state_dict()
    renamed = ckpt.upgrade_names(old, 1)
    assert set(renamed) == set(state)
    ptrs = [v.data_ptr() for v in state.values()]
    for key, value in renamed.items():
        if ptrs.count(state[key].data_ptr()) == 1:  # a tied weight (MLM head) holds whichever came last
            assert torch.equal(state[key], value), key
    assert not any(k.startswith("masker_module.") for k in state)  # a learnable masker is saved once


def test_every_fixture_task_is_covered():
    assert {f"finetune-{t}" for t in FINETUNE} <= set(OLD)


def test_newer_format_and_misfit_are_named(tiny_set, tmp_path):
    job = make_job(config_of("random", tiny_set), torch.device("cpu"), evaluating=True)
    weights = ckpt.model_state(job.task)
    newer = tmp_path / "newer.safetensors"
    save_file(weights, str(newer), metadata={"vidmask_format": str(ckpt.FORMAT + 1)})
    with pytest.raises(ValueError, match="newer vidmask"):
        ckpt.load_weights(job.task, newer)
    weights.pop("model.logit_scale")
    weights["objectives.nothing.weight"] = torch.zeros(1)
    misfit = tmp_path / "misfit.safetensors"
    save_file(weights, str(misfit), metadata={"vidmask_format": str(ckpt.FORMAT)})
    with pytest.raises(ValueError, match=r"missing model\.logit_scale; unexpected objectives\.nothing\.weight"):
        ckpt.load_weights(job.task, misfit)
