"""A local Hugging Face CLIP in vidmask's own modules: the model config it fixes, and its weights.

``finetune.init=hf-clip:FOLDER`` (``vidmask finetune retrieval --init
hf-clip:FOLDER``) starts the dual encoder from a folder written by
``CLIPModel.save_pretrained`` (config.json, model.safetensors, tokenizer
files), e.g. ``openai/clip-vit-base-patch32`` or ``-patch16`` downloaded
elsewhere; nothing is fetched. CLIP4Clip and MASCOT start from CLIP so.

**The config** (:func:`clip_model_config`): the model keys a CLIP fixes are
set from it: ``model.patch``, ``dim``, ``depth``, ``heads``, ``mlp_ratio``
(``intermediate_size / hidden_size``), ``embed_dim`` (``projection_dim``),
``act`` (the vision ``hidden_act``: ``quick_gelu`` for OpenAI's), and
``ln_pre``, ``cls_token``, ``proj_head=clip``, ``model.text.init=FOLDER`` (its
text tower and tokenizer). Switches CLIP has no weights for (``tubelet`` > 1,
``pos_embed=sincos``, ``frame_diff``, ``normal_flow``) are refused. ``data.size`` may differ
from CLIP's ``image_size``: the patch positions are resampled bicubically
(as Hugging Face's ``interpolate_pos_encoding``), the class token's is kept.

**The weights** (:func:`clip_state_dict`), CLIP key -> vidmask key:

==============================================  ===========================================
``vision_model.embeddings.patch_embedding``     ``visual.patch_embed`` (bias zero: CLIP has none)
``embeddings.class_embedding + position[0]``    ``visual.cls_token`` (the frame token's input)
``embeddings.position_embedding[1:]``           ``visual.pos_space`` (resampled to the grid)
(none)                                          ``visual.pos_time`` zero: CLIP sees single frames
``pre_layrnorm``                                ``visual.ln_pre``
``encoder.layers.i.layer_norm1 / 2``            ``visual.blocks.i.norm1 / 2``
``self_attn.q_proj``                            ``attn.q``
``self_attn.k_proj``, ``v_proj``                ``attn.kv`` (keys then values, stacked)
``self_attn.out_proj``                          ``attn.proj``
``mlp.fc1``, ``mlp.fc2``                        ``mlp.fc1``, ``mlp.fc2``
``post_layernorm``                              ``visual.norm``
``visual_projection``                           ``vision_proj`` (no bias)
``text_model.*``                                ``text.clip.*`` (the tower itself)
``text_projection``                             ``text_proj`` (no bias)
``logit_scale``                                 ``logit_scale``
==============================================  ===========================================

Every CLIP weight has a place and every vidmask weight gets a value (the
load is strict). So, with every patch visible, the frame-level path's frame
token (:func:`vidmask.models.mascot.encode_frames`) through ``vision_proj`` is
CLIP's ``get_image_features`` of each frame, and ``text_proj`` of the text
tower's pooled feature is ``get_text_features``. The dual encoder's own clip
path (joint space-time attention over the patch tokens, mean-pooled) has no
CLIP counterpart: it starts from CLIP's weights, not from its features.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
from torch import Tensor, nn

from vidmask.config import ConfigError, ModelConfig
from vidmask.models.blocks import ACTIVATIONS
from vidmask.tokens import resample_grid

# what a weights file of a saved CLIPModel may be called (one file or shards with an index)
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
# the model keys a CLIP fixes (model.text.init included), in the order messages list them
CLIP_KEYS = ("patch", "dim", "depth", "heads", "mlp_ratio", "embed_dim", "act", "ln_pre", "cls_token", "proj_head",
             "text.init")
# switches CLIP has no weights for: the value a CLIP-started model needs
NO_CLIP_WEIGHTS = {"tubelet": 1, "pos_embed": "learned", "frame_diff": False, "normal_flow": False}
LAYER_NORM_EPS = 1e-5  # torch's default, what vidmask's LayerNorms use (and OpenAI's CLIPs)


def read_clip_config(folder: str | Path, key: str = "finetune.init"):
    """The ``CLIPConfig`` of a local CLIPModel folder; a ConfigError naming ``key`` and the folder when
    it is missing, holds no config.json or weights, or is not a CLIPModel."""
    from transformers import CLIPConfig

    folder = Path(folder)
    where = f"{key}: {folder}"
    if not folder.is_dir():
        raise ConfigError(f"{where} is not a folder; point it at a local Hugging Face CLIP folder written by "
                          "CLIPModel.save_pretrained (config.json, model.safetensors, tokenizer files)")
    config = folder / "config.json"
    if not config.is_file():
        raise ConfigError(f"{where} has no config.json; it must be a folder written by CLIPModel.save_pretrained "
                          "(config.json, model.safetensors, tokenizer files)")
    try:
        raw = json.loads(config.read_text())
    except ValueError as e:
        raise ConfigError(f"{where}: config.json is not valid JSON ({e})") from None
    if raw.get("model_type") != "clip":
        raise ConfigError(f"{where} holds a {raw.get('model_type', 'model without a model_type')!r} model, not a "
                          "CLIPModel (config.json model_type 'clip', with both towers and their projections)")
    if not any((folder / name).is_file() for name in WEIGHT_FILES):
        raise ConfigError(f"{where} has no weights ({', '.join(WEIGHT_FILES)}); save the model with "
                          "CLIPModel.save_pretrained(folder)")
    return CLIPConfig.from_pretrained(folder)


def clip_model_config(clip, model: ModelConfig, folder: str | Path) -> ModelConfig:
    """``model`` with the keys of :data:`CLIP_KEYS` set to what the CLIP of ``clip`` (a CLIPConfig, from
    ``folder``) holds. A ConfigError naming the key when ``model`` sets a switch CLIP has no weights for
    (:data:`NO_CLIP_WEIGHTS`) or the CLIP has something vidmask's modules cannot hold."""
    vc = clip.vision_config
    where = f"finetune.init: the CLIP at {folder}"
    if vc.hidden_act not in ACTIVATIONS:
        raise ConfigError(f"{where} has vision_config.hidden_act={vc.hidden_act!r}; vidmask's MLPs have "
                          f"{', '.join(ACTIVATIONS)} (model.act)")
    if not abs(float(vc.layer_norm_eps) - LAYER_NORM_EPS) <= 1e-12:
        raise ConfigError(f"{where} has vision_config.layer_norm_eps={vc.layer_norm_eps}; vidmask's LayerNorms "
                          f"use {LAYER_NORM_EPS}")
    if int(vc.num_channels) != 3:
        raise ConfigError(f"{where} reads {vc.num_channels}-channel images; vidmask's frames are RGB")
    ratio = vc.intermediate_size / vc.hidden_size
    if int(vc.hidden_size * ratio) != vc.intermediate_size:
        raise ConfigError(f"{where}: its MLP width {vc.intermediate_size} is no model.mlp_ratio of its width "
                          f"{vc.hidden_size}")
    wrong = [f"model.{k}={_yaml(getattr(model, k))} (set model.{k}={_yaml(v)})"
             for k, v in NO_CLIP_WEIGHTS.items() if getattr(model, k) != v]
    if wrong:
        raise ConfigError(f"{where} has no weights for {', '.join(wrong)}")
    text = dataclasses.replace(model.text, init=str(folder))
    return dataclasses.replace(
        model, patch=int(vc.patch_size), dim=int(vc.hidden_size), depth=int(vc.num_hidden_layers),
        heads=int(vc.num_attention_heads), mlp_ratio=ratio, embed_dim=int(clip.projection_dim), act=vc.hidden_act,
        ln_pre=True, cls_token=True, proj_head="clip", text=text,
    )


def clip_mismatches(model: ModelConfig, clip, folder: str | Path) -> list[tuple[str, str, str]]:
    """The keys of :data:`CLIP_KEYS` where ``model`` differs from the CLIP's, as (``model.KEY``, its value,
    the CLIP's), values written as a dotted override takes them; empty when the model holds the CLIP."""
    want = clip_model_config(clip, model, folder)
    out = []
    for key in CLIP_KEYS:
        have_v, want_v = _dotted(model, key), _dotted(want, key)
        same = have_v == want_v
        if key == "text.init":  # the same folder however it is written
            same = Path(have_v).resolve() == Path(want_v).resolve()
        if not same:
            out.append((f"model.{key}", _yaml(have_v), _yaml(want_v)))
    return out


def _dotted(cfg, key: str):
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _yaml(value) -> str:
    """A value as a dotted override writes it."""
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def clip_state_dict(clip: dict[str, Tensor], model: nn.Module) -> tuple[dict[str, Tensor], list[str]]:
    """A Hugging Face CLIPModel's state dict -> (a state dict of ``model``, a VideoTextModel built from
    :func:`clip_model_config`, the CLIP keys it has no place for). Float32 throughout; the patch
    positions resampled to the model's grid (the table the encoder was built with)."""
    visual = model.visual
    used: set[str] = set()

    def take(key: str) -> Tensor:
        used.add(key)
        return clip[key].float()

    out: dict[str, Tensor] = {}
    v = "vision_model."
    out["visual.patch_embed.weight"] = take(v + "embeddings.patch_embedding.weight")  # (C, 3, p, p)
    out["visual.patch_embed.bias"] = torch.zeros(visual.dim)  # (C,): CLIP's patch conv has no bias
    pos = take(v + "embeddings.position_embedding.weight")  # (1+N0, C): the class token's position first
    out["visual.cls_token"] = take(v + "embeddings.class_embedding") + pos[0]  # (C,)
    out["visual.pos_space"] = resample_grid(pos[1:], visual.pos_space.shape[0], mode="bicubic")  # (N, C)
    out["visual.pos_time"] = torch.zeros_like(visual.pos_time)  # (T, C): CLIP knows no time
    for src, dst in (("pre_layrnorm", "visual.ln_pre"), ("post_layernorm", "visual.norm")):
        for p in ("weight", "bias"):
            out[f"{dst}.{p}"] = take(f"{v}{src}.{p}")
    for i in range(len(visual.blocks)):
        src, dst = f"{v}encoder.layers.{i}.", f"visual.blocks.{i}."
        for a, b in (("layer_norm1", "norm1"), ("layer_norm2", "norm2"), ("self_attn.q_proj", "attn.q"),
                     ("self_attn.out_proj", "attn.proj"), ("mlp.fc1", "mlp.fc1"), ("mlp.fc2", "mlp.fc2")):
            for p in ("weight", "bias"):
                out[f"{dst}{b}.{p}"] = take(f"{src}{a}.{p}")
        for p in ("weight", "bias"):  # Attention.kv projects keys then values: [2C, C] / [2C]
            out[f"{dst}attn.kv.{p}"] = torch.cat([take(f"{src}self_attn.k_proj.{p}"),
                                                 take(f"{src}self_attn.v_proj.{p}")])
    out["vision_proj.weight"] = take("visual_projection.weight")  # (E, C)
    out["text_proj.weight"] = take("text_projection.weight")  # (E, W)
    out["logit_scale"] = take("logit_scale")  # log of the scale, as vidmask's
    text_keys = {k for k in model.state_dict() if k.startswith("text.clip.")}
    for key in clip:
        if key.startswith("text_model."):  # the CLIPTextModel's own keys (transformers 5: without text_model.)
            for name in (f"text.clip.{key[len('text_model.'):]}", f"text.clip.{key}"):
                if name in text_keys:
                    out[name] = take(key)
                    break
    return out, sorted(set(clip) - used)


def load_clip(model: nn.Module, folder: str | Path) -> None:
    """Every weight of the CLIPModel in ``folder`` into ``model`` (a VideoTextModel of
    :func:`clip_model_config`), strictly: a CLIP weight without a place, or a model weight without a
    value, is an error."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import CLIPModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    if getattr(model.text, "kind", None) != "clip":
        raise ConfigError(f"finetune.init: the CLIP at {folder} needs its own text tower: "
                          f"set model.text.init={folder}")
    clip = CLIPModel.from_pretrained(folder, dtype=torch.float32).state_dict()
    weights, unused = clip_state_dict(clip, model)
    if unused:
        raise ConfigError(f"finetune.init: the CLIP at {folder} has weights vidmask has no place for: "
                          f"{', '.join(unused[:8])}{' ...' if len(unused) > 8 else ''}")
    model.load_state_dict(weights, strict=True)
