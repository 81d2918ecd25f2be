"""Every model: forward, backward, no NaN, kept-token count, checkpointing equivalence."""

import math

import pytest
import torch

from vidmask.config import ConfigError, ModelConfig, TextConfig
from vidmask.masking import build_masker
from vidmask.models import VideoTextModel, VideoViT
from vidmask.models.pos_embed import resample_time, sincos_1d, sincos_tables
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


def test_sincos_positions_code_every_token_apart_and_stay_fixed():
    # the 1-D code against its formula: sin / cos of p * 10000^(-2i/d)
    code = sincos_1d(torch.arange(5), 8)  # (5, 8)
    p, i = 3, 2
    assert code[p, i].item() == pytest.approx(math.sin(p * 10000 ** (-2 * i / 8)), abs=1e-6)
    assert code[p, 4 + i].item() == pytest.approx(math.cos(p * 10000 ** (-2 * i / 8)), abs=1e-6)
    space, time = sincos_tables(grid=4, frames=6, dim=32)  # (16, 32), (6, 32)
    # space and time write disjoint channels, so the separable sum is a concatenation
    assert not ((space != 0).any(0) & (time != 0).any(0)).any()
    vit = VideoViT(img_size=64, patch=16, frames=6, dim=32, depth=1, heads=2, pos_embed="sincos")
    pos = vit.pos_embed(6, 4).flatten(0, 1)  # (T*N, C)
    dist = torch.cdist(pos, pos) + torch.eye(pos.shape[0]) * 1e3
    assert dist.min() > 0.1  # no two (t, n) share a code
    assert pos.abs().max() <= 1.0 + 1e-6 and pos.std() > 0.3  # the patch embeddings' scale, not 0.02
    # fixed: not trained, not handed to the optimiser, kept by a training step
    assert not vit.pos_space.requires_grad and not vit.pos_time.requires_grad
    before = vit.pos_space.clone()
    opt = torch.optim.AdamW([q for q in vit.parameters() if q.requires_grad], lr=1e-2)
    vit(torch.randn(1, 6, 3, 64, 64)).square().mean().backward()
    opt.step()
    assert torch.equal(vit.pos_space, before)
    with pytest.raises(ValueError, match="pos_embed"):
        VideoViT(img_size=64, patch=16, frames=6, dim=32, depth=1, heads=2, pos_embed="rope")


def test_pos_embed_config_key():
    assert VideoTextModel(tiny_cfg(pos_embed="sincos"), num_frames=4, img_size=32).visual.pos_time.requires_grad is False
    with pytest.raises(ConfigError, match="model.pos_embed"):
        tiny_cfg(pos_embed="rope")


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


def test_the_bert_tower_gets_its_padding_mask_without_a_host_read():
    """The 4D boolean mask _run hands a BERT tower on SDPA gives the states of the 2D mask, and the
    tower reads nothing back (Hugging Face's check for padding was one sync per call)."""
    from test_gpu_check import load

    bench = load("masking")
    cfg = tiny_cfg()
    cfg.text.trainable_layers = 1
    text = VideoTextModel(cfg, num_frames=2, img_size=32).text.eval()
    tok = text.tokenize(["a red circle moves left quickly", "a star"], "cpu")  # padded: two lengths
    assert not tok["attention_mask"].bool().all()
    want = text.tower(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"]).last_hidden_state
    with bench.OpLog() as log:
        got, _ = text.token_states([], tok["input_ids"], tok["attention_mask"])
    assert log.syncs == 0
    assert torch.equal(got, want)


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
