"""Every model: forward, backward, no NaN, kept-token count, checkpointing equivalence."""

import pytest
import torch

from vidmask.config import ModelConfig, TextConfig
from vidmask.masking import build_masker
from vidmask.models import VideoTextModel, VideoViT
from vidmask.models.pos_embed import resample_time
from vidmask.tokens import resample_grid
from vidmask.objectives import vtc_loss
from vidmask.tasks import PretrainTask


def tiny_cfg(**kw):
    return ModelConfig(dim=32, depth=2, heads=2, embed_dim=16, text=TextConfig(init="random"), **kw)


def test_vit_encodes_only_kept_tokens():
    torch.manual_seed(0)
    vit = VideoViT(img_size=64, patch=16, frames=4, dim=32, depth=2, heads=2)
    video = torch.randn(2, 4, 3, 64, 64)
    tokens = vit.embed(video)
    assert tokens.shape == (2, 4, 16, 32)
    out = build_masker("random", ratio=0.75)(tokens, generator=torch.Generator().manual_seed(0))
    feats = vit.forward_features(tokens, out.ids_keep).tokens
    assert feats.shape == (2, 4 * 4, 32)  # 4 kept per frame x 4 frames
    # the encoder sees exactly the gathered tokens: same as running on them by hand
    manual = torch.stack([tokens[b].flatten(0, 1)[out.keep[b].flatten()] for b in range(2)])
    assert torch.allclose(feats, vit.forward_features(manual.unsqueeze(1), None).tokens, atol=1e-5)


def test_grad_checkpointing_same_output_and_grads():
    torch.manual_seed(0)
    a = VideoViT(img_size=32, patch=16, frames=2, dim=32, depth=3, heads=2)
    b = VideoViT(img_size=32, patch=16, frames=2, dim=32, depth=3, heads=2, grad_checkpointing=True)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 2, 3, 32, 32)
    ya, yb = a(x), b(x)
    assert torch.allclose(ya, yb, atol=1e-6)
    ya.square().sum().backward()
    yb.square().sum().backward()
    for (n, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.allclose(pa.grad, pb.grad, atol=1e-5), n


def test_position_embeddings_resample():
    pos = torch.randn(16, 8)
    assert resample_grid(pos, 16, mode="bicubic") is pos
    assert resample_grid(pos, 36, mode="bicubic").shape == (36, 8)
    assert resample_time(torch.randn(8, 8), 4).shape == (4, 8)
    vit = VideoViT(img_size=64, patch=16, frames=8, dim=32, depth=1, heads=2)
    # other frame counts and resolutions than the table was made for
    assert vit.embed(torch.randn(1, 4, 3, 96, 96)).shape == (1, 4, 36, 32)


@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.9])
def test_pretrain_task_forward_backward(ratio):
    torch.manual_seed(0)
    model = VideoTextModel(tiny_cfg(), num_frames=4, img_size=32)
    task = PretrainTask(model, build_masker("random" if ratio else "none", ratio=ratio))
    video = torch.randn(3, 4, 3, 32, 32)
    batch = {"video": video, "caption": ["a red circle moves left", "a blue square", "two stars"]}
    losses, report = task(batch, torch.Generator().manual_seed(1))
    assert set(losses) == {"vtc_loss"}
    assert torch.isfinite(losses["vtc_loss"])
    assert report["kept_tokens"] == 4 * max(1, round(4 * (1 - ratio)))  # at least one per frame
    losses["vtc_loss"].backward()
    grads = [p.grad for p in model.visual.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.text_proj[0].weight.grad is not None


def test_frozen_text_tower_caches_and_does_not_train():
    model = VideoTextModel(tiny_cfg(), num_frames=2, img_size=32)
    assert not any(p.requires_grad for p in model.text.bert.parameters())
    a = model.encode_text(["a red circle", "a blue star"])
    assert len(model.text._cache) == 2
    b = model.encode_text(["a blue star", "a red circle"])
    assert torch.allclose(a.flip(0), b, atol=1e-6)


def test_trainable_text_layers():
    cfg = tiny_cfg()
    cfg.text.trainable_layers = 1
    model = VideoTextModel(cfg, num_frames=2, img_size=32)
    trainable = {n.split(".")[2] for n, p in model.text.bert.named_parameters() if p.requires_grad}
    assert trainable == {"1"}  # only the last of 2 layers
    model.encode_text(["a red circle", "a blue star"]).sum().backward()
    assert model.text.bert.encoder.layer[1].output.dense.weight.grad is not None


def test_vtc_loss_matches_reference():
    torch.manual_seed(0)
    v = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    t = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    scale = torch.tensor(10.0)
    got = vtc_loss(v, t, scale)["vtc_loss"]
    logits = scale * v @ t.T
    ref = 0
    for i in range(5):
        ref = ref - torch.log_softmax(logits[i], 0)[i] / 10 - torch.log_softmax(logits[:, i], 0)[i] / 10
    assert torch.allclose(got, ref, atol=1e-5)


def test_bf16_autocast_forward():
    model = VideoTextModel(tiny_cfg(), num_frames=2, img_size=32)
    task = PretrainTask(model, build_masker("random", ratio=0.5))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses, _ = task({"video": torch.randn(2, 2, 3, 32, 32), "caption": ["a", "b"]}, torch.Generator().manual_seed(0))
    assert torch.isfinite(losses["vtc_loss"])


def test_embed_kept_equals_gathered_embed():
    torch.manual_seed(0)
    vit = VideoViT(img_size=48, patch=16, frames=3, dim=24, depth=1, heads=2)
    video = torch.randn(2, 3, 3, 48, 48)
    out = build_masker("random", ratio=0.6)(torch.zeros(2, 3, 9, 1), generator=torch.Generator().manual_seed(0))
    full = vit.embed(video).flatten(1, 2)  # (B, L, C)
    gathered = torch.stack([full[b, out.ids_keep[b]] for b in range(2)])
    assert torch.allclose(vit.embed_kept(video, out.ids_keep), gathered, atol=1e-5)
