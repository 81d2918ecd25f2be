"""`finetune.init=hf-clip:FOLDER`: a local Hugging Face CLIPModel in vidmask's own modules.

Against Hugging Face's CLIP itself, on a tiny randomly initialised one saved
with ``save_pretrained``: per-frame image features, text features, the logit
scale, the CLS attention MASCOT's masks read; every CLIP weight placed; the
default model untouched; clear errors; the real CLI, MASCOT and plain
retrieval, from such a folder.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from vidmask.config import ConfigError, load_config, rebase_paths
from vidmask.models.mascot import encode_frames
from vidmask.train.wiring import init_model, resolve_init

CPU = torch.device("cpu")


def _features(out):
    """transformers 5's get_*_features return an output object; earlier ones the tensor."""
    return out.pooler_output if hasattr(out, "pooler_output") else out


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    """A tiny random CLIPModel (vision width 32, text width 24, patch 16 at 64 px, quick_gelu, joint space 16)
    with every weight perturbed (no LayerNorm at ones, no zero bias, logit scale 3.1) and a tokenizer."""
    from transformers import AutoTokenizer, CLIPConfig, CLIPModel

    from vidmask.models.text import packaged_minilm_dir

    tok = AutoTokenizer.from_pretrained(packaged_minilm_dir())
    cfg = CLIPConfig(
        text_config=dict(vocab_size=tok.vocab_size, hidden_size=24, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=40, eos_token_id=tok.sep_token_id,
                         bos_token_id=tok.cls_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=64, patch_size=16, hidden_act="quick_gelu"),
        projection_dim=16,
    )
    torch.manual_seed(0)
    model = CLIPModel(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        model.logit_scale.fill_(3.1)
    folder = tmp_path_factory.mktemp("clip")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _hf(folder):
    from transformers import CLIPModel

    return CLIPModel.from_pretrained(folder, attn_implementation="eager").eval()


def _config(folder, *over):
    cfg = load_config(None, [f"finetune.init=hf-clip:{folder}", "data.num_frames=3", *over])
    resolve_init(cfg)
    return cfg


def _video(size, B=2, T=3):
    return torch.randn(B, T, 3, size, size, generator=torch.Generator().manual_seed(1))


# ------------------------------------------------------------------ the same features as Hugging Face's CLIP


@pytest.mark.parametrize("size", [64, 32, 128])  # CLIP's own 64 px, and resampled patch positions
def test_frame_tokens_are_clip_image_features(clip_dir, size):
    model = init_model(_config(clip_dir, f"data.size={size}"), CPU).eval()
    hf = _hf(clip_dir)
    video = _video(size)  # (B, T, 3, H, W)
    with torch.no_grad():
        frames = encode_frames(model.visual, video).frames  # (B, T, C): every patch visible, no learned CLS
        ours = model.vision_proj(frames)  # (B, T, E)
        want = _features(hf.get_image_features(pixel_values=video.flatten(0, 1),
                                                interpolate_pos_encoding=size != 64))  # (B*T, E)
    torch.testing.assert_close(ours.flatten(0, 1), want, atol=1e-5, rtol=1e-4)


def test_text_features_and_logit_scale_are_clips(clip_dir):
    model = init_model(_config(clip_dir), CPU).eval()
    hf = _hf(clip_dir)
    captions = ["a red square moves left", "the blue box goes up and then down again", "green"]
    batch = model.text.tokenize(captions, CPU)
    with torch.no_grad():
        want = _features(hf.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]))
        states, mask = model.text.token_states(captions)  # (B, S, W), (B, S)
        hidden = hf.text_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        torch.testing.assert_close(model.text_proj(model.text(captions)), want, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(model.encode_text(captions), F.normalize(want, dim=-1), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(states, hidden, atol=1e-5, rtol=1e-4)
    assert torch.equal(mask, batch["attention_mask"])
    assert model.logit_scale.item() == pytest.approx(3.1) == hf.logit_scale.item()
    assert model.temperature_scale().item() == pytest.approx(math.exp(3.1), rel=1e-6)
    assert torch.equal(model.text.word_embeddings().weight, hf.text_model.embeddings.token_embedding.weight)
    assert model.text.kind == "clip" and model.text.width == 24
    identity = model.text.store_identity()  # a caption store is bound to this tower and its end-token pooling
    assert identity["pooling"] == "eos" and identity["width"] == 24


def test_max_len_is_cut_to_the_position_table(clip_dir):
    model = init_model(_config(clip_dir, "model.text.max_len=64"), CPU)
    assert model.text.max_len == 40  # the tiny CLIP's table (OpenAI's: 77)
    assert model.text.tokenize(["word " * 100], CPU)["input_ids"].shape[1] == 40


def test_mascot_masks_read_the_cls_row_of_the_last_block(clip_dir):
    from vidmask.tasks.mascot import MascotTask

    cfg = _config(clip_dir, "data.size=64", "finetune.task=retrieval", "finetune.method=mascot",
                  "finetune.mascot.temporal_heads=2")
    model = init_model(cfg, CPU).eval()
    task = MascotTask(model, cfg.finetune.mascot, 3, model.text.max_len)
    assert task.heads.cls is None  # the class token is the encoder's, trained with it
    video = _video(64)
    with torch.no_grad():
        _, attn = task.encode(video, return_attn=True)  # (B, T, N)
        out = _hf(clip_dir).vision_model(pixel_values=video.flatten(0, 1), output_attentions=True)
    want = out.attentions[-1][:, :, 0, 1:].mean(1)  # (B*T, N): the CLS query, head mean, patches only
    torch.testing.assert_close(attn.flatten(0, 1), want, atol=1e-5, rtol=1e-4)


def test_every_clip_weight_finds_its_place(clip_dir):
    from vidmask.models.hf_clip import clip_state_dict

    model = init_model(_config(clip_dir), CPU)
    clip = _hf(clip_dir).state_dict()  # no position_ids: Hugging Face keeps them as non-persistent buffers
    weights, unused = clip_state_dict(clip, model)
    assert unused == []
    assert set(weights) == set(model.state_dict())  # and every vidmask weight gets a value
    assert torch.equal(model.visual.patch_embed.bias, torch.zeros(32))  # CLIP's patch conv has no bias
    assert torch.equal(model.visual.pos_time, torch.zeros(3, 32))  # CLIP has no time table
    pos = clip["vision_model.embeddings.position_embedding.weight"]
    assert torch.equal(model.visual.cls_token, clip["vision_model.embeddings.class_embedding"] + pos[0])
    k, v = clip["vision_model.encoder.layers.1.self_attn.k_proj.weight"], clip[
        "vision_model.encoder.layers.1.self_attn.v_proj.weight"]
    assert torch.equal(model.visual.blocks[1].attn.kv.weight, torch.cat([k, v]))
    assert model.vision_proj.bias is None and model.text_proj.bias is None


def test_the_config_comes_from_the_clip(clip_dir):
    cfg = load_config(None, [f"finetune.init=hf-clip:{clip_dir}", "model.patch=32", "model.dim=768"])
    changes = resolve_init(cfg)
    m = cfg.model
    assert (m.patch, m.dim, m.depth, m.heads, m.mlp_ratio, m.embed_dim) == (16, 32, 2, 2, 2.0, 16)
    assert (m.act, m.ln_pre, m.cls_token, m.proj_head, m.text.init) == ("quick_gelu", True, True, "clip",
                                                                         str(clip_dir))
    assert "model.patch: 32 -> 16" in changes and "model.dim: 768 -> 32" in changes
    assert resolve_init(cfg) == []  # a resolved config holds the CLIP: nothing left to change


def test_activation_names_agree():
    from vidmask.config import MLP_ACTIVATIONS
    from vidmask.models.blocks import ACTIVATIONS, quick_gelu

    assert tuple(ACTIVATIONS) == MLP_ACTIVATIONS
    x = torch.linspace(-4, 4, 9)
    torch.testing.assert_close(quick_gelu(x), x * torch.sigmoid(1.702 * x))
    with pytest.raises(ConfigError, match="model.act must be one of gelu, quick_gelu"):
        load_config(None, ["model.act=relu"])
    with pytest.raises(ConfigError, match="model.proj_head must be"):
        load_config(None, ["model.proj_head=mlp"])


def test_rebase_keeps_the_hf_clip_prefix(clip_dir, tmp_path, monkeypatch):
    cfg = load_config(None, [f"finetune.init=hf-clip:{clip_dir.name}"])
    monkeypatch.chdir(tmp_path)  # the run is read from another folder than the one it was started from
    assert rebase_paths(cfg, clip_dir.parent) == ["finetune.init"]
    assert cfg.finetune.init == f"hf-clip:{clip_dir}"


# ------------------------------------------------------------------ the default model is untouched


def test_the_default_model_is_unchanged():
    """Same weight names as checkpoints always had, no CLIP switch on, and the forward of an explicit
    reference (exact GELU, no pre-norm, the frame token the patch mean)."""
    from test_recipes_unchanged import KEYS, TINY
    from vidmask.train.wiring import build_model

    cfg = load_config(None, [o for o in TINY if not o.startswith("teacher.")])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    recorded = {k[len("model."):]: v for k, v in json.loads(KEYS.read_text())["random"].items()
                if k.startswith("model.")}
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == recorded
    vit = model.visual
    assert vit.ln_pre is None and vit.cls_token is None
    video = _video(64, T=4)
    with torch.no_grad():
        x = vit.embed(video).flatten(0, 1)  # (B*T, N, C): each frame a token set
        got, _ = vit.forward_sets(torch.cat([x.mean(1, keepdim=True), x], 1))  # (B*T, 1+N, C)
        ref = torch.cat([x.mean(1, keepdim=True), x], 1)
        for blk in vit.blocks:
            h = blk.norm1(ref)
            B, M, C = h.shape
            q = blk.attn.q(h).view(B, M, 2, C // 2).transpose(1, 2)  # (B, h, M, C/h)
            k, v = blk.attn.kv(h).view(B, M, 2, 2, C // 2).permute(2, 0, 3, 1, 4)  # 2 x (B, h, M, C/h)
            a = ((q @ k.transpose(-1, -2)) / math.sqrt(C // 2)).softmax(-1) @ v  # (B, h, M, C/h)
            ref = ref + blk.attn.proj(a.transpose(1, 2).reshape(B, M, C))
            ref = ref + blk.mlp.fc2(F.gelu(blk.mlp.fc1(blk.norm2(ref))))  # exact GELU
        ref = vit.norm(ref)
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)
        first = encode_frames(vit, video, torch.zeros(32)).frames  # the patch-mean frame token
        torch.testing.assert_close(first.flatten(0, 1), ref[:, 0], atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------ errors


def test_a_missing_or_wrong_folder_is_named(clip_dir, tmp_path):
    from transformers import BertConfig, BertModel

    with pytest.raises(ConfigError, match=f"finetune.init: {tmp_path / 'nowhere'} is not a folder"):
        _config(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="has no config.json"):
        _config(empty)
    bert = tmp_path / "bert"
    BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(bert)
    with pytest.raises(ConfigError, match="holds a 'bert' model, not a CLIPModel"):
        _config(bert)
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text((clip_dir / "config.json").read_text())
    with pytest.raises(ConfigError, match=f"{bare} has no weights"):
        _config(bare)
    from vidmask.config import FinetuneConfig

    with pytest.raises(ConfigError, match="names no folder"):
        FinetuneConfig(init="hf-clip:")


def test_a_clip_patch_that_does_not_divide_the_frames_is_named(clip_dir, tmp_path):
    raw = json.loads((clip_dir / "config.json").read_text())
    raw["vision_config"]["patch_size"] = 32
    (tmp_path / "config.json").write_text(json.dumps(raw))
    (tmp_path / "model.safetensors").touch()  # the config is all resolving reads
    with pytest.raises(ConfigError, match="data.size=48 is no multiple of the patch size 32"):
        _config(tmp_path, "data.size=48")
    assert _config(tmp_path, "data.size=64").model.patch == 32


def test_a_model_config_that_cannot_hold_the_clip_is_named(clip_dir):
    unresolved = load_config(None, [f"finetune.init=hf-clip:{clip_dir}", "model.text.init=random"])
    with pytest.raises(ConfigError) as e:
        init_model(unresolved, CPU)
    for key, want in (("dim", 32), ("depth", 2), ("heads", 2), ("embed_dim", 16), ("act", "quick_gelu"),
                      ("ln_pre", "true"), ("cls_token", "true"), ("proj_head", "clip"),
                      ("text.init", str(clip_dir))):
        assert f"(set model.{key}={want})" in str(e.value), key
    assert "model.patch" not in str(e.value)  # 16 already
    for over, key in (("model.tubelet=3", "model.tubelet=3 (set model.tubelet=1)"),
                      ("model.pos_embed=sincos", "model.pos_embed=sincos (set model.pos_embed=learned)"),
                      ("model.frame_diff=true", "model.frame_diff=true (set model.frame_diff=false)"),
                      ("model.normal_flow=true", "model.normal_flow=true (set model.normal_flow=false)")):
        with pytest.raises(ConfigError, match="has no weights for " + key.replace("(", r"\(").replace(")", r"\)")):
            _config(clip_dir, over)


# ------------------------------------------------------------------ the command line


TINY_CLI = ["data.test_anno=test.json", "data.size=32", "data.num_frames=4", "data.num_workers=0",
            "train.batch_size=4", "train.log_every=1", "train.warmup_steps=1", "train.steps=2"]


@pytest.mark.parametrize("recipe, extra", [
    ("mascot", ["finetune.mascot.temporal_heads=2", "finetune.mascot.disc_hidden=8"]),
    ("retrieval", ["finetune.rerank_k=4"]),  # the dual encoder: vtc + vtm on half of the tokens
])
def test_finetune_retrieval_from_a_clip_folder(recipe, extra, clip_dir, tiny_set, tmp_path):
    from test_train import vidmask

    run = tmp_path / recipe
    p = vidmask("finetune", "retrieval", "--config", f"configs/finetune/{recipe}.yaml", "--init", f"hf-clip:{clip_dir}",
                f"data.corpus={tiny_set}", *TINY_CLI, *extra, f"run_dir={run}")
    assert "model.dim: 192 -> 32" in p.stderr  # the config's model keys replaced by the CLIP's, said so
    res = json.loads((run / "eval_retrieval.json").read_text())
    assert {"t2v", "v2t", "rsum"} <= set(res)
    saved = load_config(run / "config.yaml")
    assert (saved.model.dim, saved.model.cls_token, saved.model.proj_head) == (32, True, "clip")
    assert "initialised from the CLIP" in (run / "log.txt").read_text()
    again = tmp_path / "again.json"
    vidmask("eval", "retrieval", "--run", str(run), "--json", str(again))  # rebuilt from config.yaml alone
    assert json.loads(again.read_text())["t2v"] == res["t2v"]


def test_the_cli_names_a_missing_clip_folder(tmp_path):
    from test_train import vidmask

    p = vidmask("finetune", "retrieval", "--init", f"hf-clip:{tmp_path / 'nowhere'}", check=False)
    assert p.returncode == 2 and "is not a folder" in p.stderr and "nowhere" in p.stderr
