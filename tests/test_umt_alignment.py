"""UMT's alignment: per-layer teacher targets and UMT's heads, against a slow loop; the errors that guard them."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from vidmask.config import ConfigError, LossConfig, ModelConfig, TextConfig, load_config
from vidmask.masking import build_masker
from vidmask.masking.base import keep_to_ids
from vidmask.models import VideoTextModel
from vidmask.objectives import ObjectiveEnv, StepContext
from vidmask.objectives.align import Align, AlignConfig, AlignHead, align_loss
from vidmask.tasks import PretrainTask
from vidmask.teachers import TeacherOut, build_teacher

from test_pretrain_objectives import batch


def small_model(depth: int = 3) -> VideoTextModel:
    torch.manual_seed(0)
    cfg = ModelConfig(dim=16, depth=depth, heads=2, embed_dim=8, text=TextConfig(init="random"))
    return VideoTextModel(cfg, num_frames=2, img_size=48)  # 3x3 grid


def _ln(x, m):
    """LayerNorm of one vector, written out."""
    return (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + m.eps) * m.weight + m.bias


def _lin(x, m):
    return m.weight @ x + m.bias


@pytest.mark.parametrize("targets", ["last", "layers"])
@pytest.mark.parametrize("head", ["ln-linear", "umt"])
def test_align_matches_a_loop_over_layers_and_kept_tokens(targets, head):
    B, T, g, k, D = 2, 2, 3, 2, 5
    N = g * g
    model = small_model(depth=3)
    teacher = SimpleNamespace(name="stub", token_dim=D, max_layers=3)
    align = Align(AlignConfig(weight=1.0, layers=k, targets=targets, head=head),
                  ObjectiveEnv(model=model, teacher=teacher, frames=T, grid=g))
    torch.manual_seed(1)
    with torch.no_grad():  # no identity norms: every affine part shows in the result
        for p in [*align.parameters(), *model.visual.norm.parameters()]:
            p.copy_(torch.randn_like(p))
    g_keep = torch.Generator().manual_seed(0)
    keep = torch.rand(B, T, N, generator=g_keep).argsort(-1) < 4  # (B, T, N): 4 kept per frame
    ids = keep_to_ids(keep)  # (B, K)
    K = ids.shape[1]
    student = [torch.randn(B, K, 16) for _ in range(3)]  # the last 3 blocks, raw
    maps = [torch.randn(B, T, N, D) for _ in range(3)]  # the teacher's last 3 layers, oldest first
    out = TeacherOut(tokens=maps[-1], attn=None, video=None, layers=maps)
    ctx = StepContext(model=model, video=None, captions=[], masking=SimpleNamespace(ids_keep=ids), feats=None,
                      layers=student, video_feat=None, text_feat=None, teacher_out=out, teacher=None,
                      fusion=None, generator=None, frames=T, tokens=N)
    got = align(ctx)["align_loss"]

    pos = model.visual.pos_embed(T, g)  # (T, N, C)
    norm = model.visual.norm
    total = 0.0
    with torch.no_grad():
        for i in range(k):
            s_layer = student[3 - k + i]  # student layer i of the last k
            t_map = maps[3 - k + i] if targets == "layers" else maps[-1]  # teacher layer i, or the one map
            h = align.head.heads[i]
            for b in range(B):
                for j in range(K):
                    t, n = divmod(int(ids[b, j]), N)
                    x = s_layer[b, j]
                    if head == "umt":  # final norm, position, Linear, LayerNorm
                        pred = _ln(_lin(_ln(x, norm) + pos[t, n], h[0]), h[1])
                    else:  # LayerNorm, Linear
                        pred = _lin(_ln(x, h[0]), h[1])
                    total += float(2 - 2 * F.cosine_similarity(pred, t_map[b, t, n], dim=0))
    assert got.item() == pytest.approx(total / (k * B * K), rel=1e-5)
    assert align.student_layers() == k and align.teacher_layers() == (k if targets == "layers" else 0)
    got.backward()
    assert all(p.grad is not None for p in align.parameters())
    if head == "umt":
        assert norm.weight.grad is not None  # the encoder's own final norm is part of the head's path


def test_align_loss_pairs_layers_with_maps():
    heads = AlignHead(4, 3, layers=2)
    feats = [torch.randn(1, 2, 4), torch.randn(1, 2, 4)]
    maps = [torch.randn(1, 1, 4, 3) for _ in range(3)]
    with pytest.raises(ValueError, match="2 student layers but 3 teacher maps"):
        align_loss(feats, maps, torch.tensor([[0, 3]]), heads)
    one = align_loss(feats, maps[0], torch.tensor([[0, 3]]), heads)["align_loss"]
    same = align_loss(feats, [maps[0], maps[0]], torch.tensor([[0, 3]]), heads)["align_loss"]
    torch.testing.assert_close(one, same)


def test_a_teacher_with_fewer_layers_than_asked_is_a_named_error(tiny_clip_dir):
    teacher = build_teacher("hf-clip", path=str(tiny_clip_dir))  # a 2-layer tower
    env = ObjectiveEnv(model=small_model(depth=3), teacher=teacher, frames=2, grid=3)
    with pytest.raises(ConfigError, match=r"loss\.align\.layers=3 .*teacher 'hf-clip' gives at most 2"):
        Align(AlignConfig(weight=1.0, layers=3, targets="layers"), env)
    Align(AlignConfig(weight=1.0, layers=3, targets="last"), env)  # one map serves any number of layers
    with pytest.raises(ConfigError, match=r"loss\.align\.layers=4 exceeds the student's model\.depth=3"):
        Align(AlignConfig(weight=1.0, layers=4), env)
    # and through the task, as a run builds it
    with pytest.raises(ConfigError, match=r"loss\.align\.layers"):
        PretrainTask(small_model(depth=3), build_masker("random", ratio=0.5),
                     LossConfig(align={"weight": 1.0, "layers": 3, "targets": "layers"}), teacher, frames=2, grid=3)


def test_per_layer_targets_refuse_a_teacher_cache(tiny_clip_dir):
    teacher = build_teacher("hf-clip", path=str(tiny_clip_dir))
    loss = LossConfig(align={"weight": 1.0, "layers": 2, "targets": "layers"})
    with pytest.raises(ConfigError, match=r"loss\.align reads the teacher's last 2 layers .*teacher\.cache="):
        PretrainTask(small_model(), build_masker("random", ratio=0.5), loss, teacher, frames=2, grid=3,
                     teacher_cache=object())
    # one map (the default) still works with a cache
    PretrainTask(small_model(), build_masker("random", ratio=0.5), LossConfig(align=1.0), teacher, frames=2,
                 grid=3, teacher_cache=object())


@pytest.mark.parametrize("override, key", [("loss.align.targets=all", "loss.align.targets"),
                                           ("loss.align.head=mlp", "loss.align.head")])
def test_bad_align_choices_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key):
        load_config(None, ["teacher.name=lit-effnet", "loss.align=1.0", override])


def test_the_task_asks_the_teacher_for_the_layers_align_reads(tiny_clip_dir, monkeypatch):
    teacher = build_teacher("hf-clip", path=str(tiny_clip_dir))
    asked = []
    forward = teacher.forward

    def spy(video, grid=None, return_layers=1):
        asked.append(return_layers)
        return forward(video, grid=grid, return_layers=return_layers)

    monkeypatch.setattr(teacher, "forward", spy)
    torch.manual_seed(0)
    model = VideoTextModel(ModelConfig(dim=32, depth=2, heads=2, embed_dim=16, text=TextConfig(init="random")),
                           num_frames=2, img_size=64)
    loss = LossConfig(align={"weight": 1.0, "layers": 2, "targets": "layers", "head": "umt"})
    task = PretrainTask(model, build_masker("umt", ratio=0.75), loss, teacher, frames=2, grid=4)
    losses, _ = task(batch(), torch.Generator().manual_seed(1))
    assert asked == [2] and torch.isfinite(losses["align_loss"])
    losses["align_loss"].backward()
    assert all(p.grad is not None for p in task.objectives["align"].parameters())
    assert any(b.grad is not None and b.grad.abs().sum() > 0 for b in model.visual.parameters())
    # the default reads `tokens` alone: the teacher is asked for its last layer only
    asked.clear()
    PretrainTask(model, build_masker("umt", ratio=0.75), LossConfig(align=1.0), teacher, frames=2, grid=4)(
        batch(), torch.Generator().manual_seed(1))
    assert asked == [1]


def test_the_recipes_align_as_documented():
    from pathlib import Path

    recipes = Path(__file__).resolve().parents[1] / "configs" / "recipes"
    tiny = load_config(recipes / "umt.yaml")
    base = load_config(recipes / "base" / "umt.yaml", ["teacher.path=/path/to/clip-vit-base-patch16"])  # required
    assert (tiny.teacher.name, tiny.loss.align.layers, tiny.loss.align.targets, tiny.loss.align.head) == (
        "lit-effnet", 1, "last", "umt")
    assert (base.teacher.name, base.teacher.cache, base.loss.align.layers, base.loss.align.targets,
            base.loss.align.head) == ("hf-clip", "", 6, "layers", "umt")
    assert base.model.depth >= 6 and math.isclose(base.loss.align.weight, 1.0)
