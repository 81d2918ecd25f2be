"""The pretraining task with every objective switched on, driven by a tiny hf-clip teacher."""

from __future__ import annotations

import pytest
import torch

from vidmask.config import Config, ConfigError, LossConfig, ModelConfig, TextConfig, load_config
from vidmask.masking import build_masker, list_maskers
from vidmask.models import VideoTextModel
from vidmask.tasks import PretrainTask
from vidmask.teachers import build_teacher


def tiny_model():
    torch.manual_seed(0)
    cfg = ModelConfig(dim=32, depth=2, heads=2, embed_dim=16, text=TextConfig(init="random"))
    return VideoTextModel(cfg, num_frames=2, img_size=64)


def batch():
    g = torch.Generator().manual_seed(0)
    return {"video": torch.randn(3, 2, 3, 64, 64, generator=g),
            "caption": ["a red circle moves left", "a blue square grows", "two stars spin"]}


def test_every_objective_with_hf_clip_teacher(tiny_clip_dir):
    teacher = build_teacher("hf-clip", path=str(tiny_clip_dir))
    model = tiny_model()
    loss = LossConfig(vtc=1.0, vtm=1.0, mlm=1.0, align={"weight": 1.0, "layers": 2}, relevance=1.0,
                      stm={"weight": 1.0, "channels": 16}, **{"stm-guided": 1.0})
    task = PretrainTask(model, build_masker("clusterstm", ratio=0.75), loss, teacher, frames=2, grid=4)
    losses, report = task(batch(), torch.Generator().manual_seed(1))
    assert set(losses) == {"vtc_loss", "vtm_loss", "mlm_loss", "align_loss", "relevance_loss", "stm_loss",
                           "stm-guided_loss"}
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    for name, part in [("fusion", task.fusion), *task.objectives.items()]:
        grads = [p.grad for p in part.parameters() if p.requires_grad]
        assert all(g is not None for g in grads), name
        assert grads or name == "vtc", name
    # the frozen teacher is neither saved nor trained
    assert not any(k.startswith("_teacher") or "teacher" in k for k in task.state_dict())
    assert all(p.grad is None for p in teacher.parameters())


def test_teacher_attention_drives_attention_strategies(tiny_clip_dir):
    teacher = build_teacher("hf-clip", path=str(tiny_clip_dir))
    task = PretrainTask(tiny_model(), build_masker("umt", ratio=0.5), LossConfig(), teacher, frames=2, grid=4)
    out, t_out = task.choose_tokens(batch()["video"], torch.Generator().manual_seed(0))
    assert t_out.attn.shape == (3, 2, 16) and out.keep.sum().item() == 3 * 2 * 8


@pytest.mark.parametrize("name", list_maskers())
def test_pretraining_takes_every_strategy(name):
    """`mask.strategy=<name>` works for every registered strategy (no teacher: pixel tokens, colour saliency)."""
    ratio = 0.0 if name == "none" else 0.5
    masker = build_masker(name, ratio=ratio, token_dim=16 * 16 * 3)
    task = PretrainTask(tiny_model(), masker, LossConfig(), None, frames=2, grid=4)
    if "replace" in task.masker.modes and "drop" not in task.masker.modes:
        pytest.skip(f"{name} only supports replace mode")
    losses, report = task(batch(), torch.Generator().manual_seed(0))
    assert torch.isfinite(losses["vtc_loss"])
    losses["vtc_loss"].backward()


def test_config_requires_a_teacher_for_teacher_losses():
    with pytest.raises(ValueError, match="teacher"):
        load_config(None, ["loss.relevance=1.0"])
    cfg = load_config(None, ["loss.relevance=1.0", "teacher.name=lit-effnet"])
    assert isinstance(cfg, Config)


def test_vtc_same_video_pairs_are_positives_against_a_loop():
    from vidmask.data.annotations import video_id
    from vidmask.objectives import vtc_loss

    g = torch.Generator().manual_seed(0)
    v = torch.nn.functional.normalize(torch.randn(5, 8, generator=g), dim=-1)
    t = torch.nn.functional.normalize(torch.randn(5, 8, generator=g), dim=-1)
    scale = torch.tensor(10.0)
    # distinct ids: exactly the one-hot loss
    distinct = torch.tensor([video_id(f"v{i}.mp4") for i in range(5)])
    torch.testing.assert_close(vtc_loss(v, t, scale, pair_ids=distinct)["vtc_loss"], vtc_loss(v, t, scale)["vtc_loss"])
    # samples 0 and 3 are one video (video_id of equal paths), 1 and 4 another
    paths = ["a.mp4", "b.mp4", "c.mp4", "a.mp4", "b.mp4"]
    ids = torch.tensor([video_id(p) for p in paths])
    assert ids[0] == ids[3] and ids[1] == ids[4] and len(set(ids.tolist())) == 3
    got = vtc_loss(v, t, scale, pair_ids=ids)["vtc_loss"]
    total = 0.0
    for i in range(5):  # -sum_j target_ij log softmax_j, both directions, target even over the same video
        pos = [j for j in range(5) if paths[j] == paths[i]]
        for a, b in ((v, t), (t, v)):
            logp = torch.log_softmax(scale * a[i] @ b.T, 0)
            total = total - sum(logp[j] for j in pos) / len(pos) / 2
    torch.testing.assert_close(got, total / 5)


def test_batch_video_ids_reach_vtc_and_vtm(monkeypatch):
    import vidmask.objectives.vtc as vtc_mod
    import vidmask.objectives.vtm as vtm_mod

    seen = {}
    for mod, fn in ((vtc_mod, "vtc_loss"), (vtm_mod, "vtm_loss")):
        def spy(*args, _orig=getattr(mod, fn), _fn=fn, **kw):
            seen[_fn] = kw.get("pair_ids")
            return _orig(*args, **kw)
        monkeypatch.setattr(mod, fn, spy)
    task = PretrainTask(tiny_model(), build_masker("random", ratio=0.5), LossConfig(vtc=1.0, vtm=1.0), None,
                        frames=2, grid=4)
    b = batch()
    ids = torch.tensor([5, 9, 5])  # samples 0 and 2: one video
    losses, _ = task({**b, "video_id": ids}, torch.Generator().manual_seed(0))
    assert torch.equal(seen["vtc_loss"], ids) and torch.equal(seen["vtm_loss"], ids)
    assert all(torch.isfinite(v) for v in losses.values())


def test_relevance_decodes_from_the_recon_trunk_once(tiny_clip_dir):
    """loss.relevance.decoder=recon: one decoder pass a step feeds both targets; relevance owns a linear
    head only, its gradient reaches the shared trunk, and the checkpoint holds the trunk once."""
    teacher = build_teacher("hf-clip", path=str(tiny_clip_dir))

    def task_with(decoder: str) -> PretrainTask:
        torch.manual_seed(0)
        loss = LossConfig(vtc=1.0, recon=1.0, relevance={"weight": 1.0, "decoder": decoder})
        return PretrainTask(tiny_model(), build_masker("clusterstm", ratio=0.75), loss, teacher, frames=2, grid=4)

    shared, own = task_with("recon"), task_with("own")
    calls = []
    trunk = shared.objectives["recon"].decoder
    original = trunk.trunk
    trunk.trunk = lambda *a: calls.append(1) or original(*a)
    losses, _ = shared(batch(), torch.Generator().manual_seed(1))
    assert set(losses) == {"vtc_loss", "recon_loss", "relevance_loss"} and calls == [1]  # one pass, two heads
    relevance = shared.objectives["relevance"]
    assert [n for n, _ in relevance.named_parameters()] == ["head.weight", "head.bias"]
    losses["relevance_loss"].backward()
    assert all(p.grad is not None for p in trunk.blocks.parameters())  # relevance trains the shared trunk
    assert trunk.head.weight.grad is None  # and not recon's own head
    keys = list(shared.state_dict())
    assert sum(k.endswith("decoder.blocks.0.attn.q.weight") for k in keys) == 1
    n_params = lambda t: sum(p.numel() for p in t.parameters())  # noqa: E731
    assert n_params(shared) < n_params(own)  # one decoder, not two

    with pytest.raises(ConfigError, match="loss.relevance.decoder=recon .* switch loss.recon on"):
        PretrainTask(tiny_model(), build_masker("clusterstm", ratio=0.75),
                     LossConfig(vtc=1.0, relevance={"weight": 1.0, "decoder": "recon"}), teacher, frames=2, grid=4)
    with pytest.raises(ConfigError, match="loss.relevance.decoder must be one of own, recon"):
        load_config(None, ["loss.relevance.decoder=shared"])
    with pytest.raises(ConfigError, match=r"loss.relevance.decoder_dim=64 .* loss.recon.decoder_dim"):
        load_config("configs/recipes/clusterstm.yaml", ["loss.relevance.decoder_dim=64"])
