"""`hf-clip`: any Hugging Face ``CLIPModel`` folder on local disk as the teacher.

UMT's teacher model: CLIP's vision tower run per frame on all patches (UMT
aligns the student's last 6 layers to its last 6 layers: ``align`` with
``targets: layers``, see ``docs/fidelity.md``).

* ``tokens``: every patch token of the last layer through the final layer
  norm (``post_layernorm``) and the visual projection, as UMT's CLIP teacher
  applies ``ln_post`` and ``proj`` to all tokens, so the student aligns to
  features in CLIP's joint space (D = E = ``projection_dim``).
* ``layers`` (``teacher(video, return_layers=k)``): the patch tokens of the
  last k layers, each through the same ``post_layernorm`` and projection (as
  UMT's teacher does with its ``clip_return_layer`` layers), oldest first,
  resampled like ``tokens``; k is at most the tower's depth (``max_layers``).
  Asking for k > 1 keeps the tower's hidden states; the default k = 1 costs
  what ``tokens`` alone does.
* ``attn``: the CLS query's attention over the patches in the last block,
  averaged over heads and renormalised over the patches (the CLS-to-CLS
  share is dropped) so each frame sums to 1. The model runs SDPA in every
  layer (``attn_implementation="sdpa"``), which returns no weights; the one
  row needed is computed directly (:func:`cls_attention`) from the last
  block's attention input, caught by a forward pre-hook: one query against
  the keys, instead of every layer's full [heads, 1+n, 1+n] maps from the
  eager attention.
* ``patch_embeds`` (``teacher(video, patch_embeds=True)``): the output of
  the patch convolution (``embeddings.patch_embedding``), before the class
  token, the position embedding, ``pre_layrnorm`` and the transformer: what
  STM's CLIP returns as ``img_features`` for its mask module (W = the
  tower's ``hidden_size``, ``patch_dim``), resampled like ``tokens``.
* ``video``: the projected CLS embedding (CLIP's image embedding) averaged
  over frames, normalised.
* ``pool(tokens)``: the mean of the (already normalised-and-projected)
  tokens, normalised. CLIP has no pooler for an arbitrary token set; since
  every token already went through CLIP's head (``post_layernorm`` +
  projection), the mean of projected tokens lies in the joint space.
* ``encode_text``: CLIP's text tower and text projection, normalised. The
  tower is a frozen :class:`~vidmask.models.text.TextEncoder`
  (:meth:`HfClipTeacher.caption_tower`), so training warms or stores its
  caption features as it does the student's.

Frames arrive CLIP-normalised (vidmask loaders use CLIP's mean/std), so no
re-normalisation. At a resolution other than the checkpoint's
``image_size`` the position embeddings are interpolated by transformers
(``interpolate_pos_encoding=True``). The patch grid is H // patch_size: a
patch-16 CLIP at the student's 128 px gives 8x8, the student's grid, and is
used as is; otherwise (patch 32, other sizes) tokens and attention are
resampled bilinearly to the student's grid (:func:`resample_grid`).

Pointing it at real weights: save or copy a CLIP checkpoint folder
(``config.json``, ``model.safetensors``, tokenizer files), e.g.
``openai/clip-vit-base-patch16`` downloaded elsewhere, and pass
``teacher.name=hf-clip teacher.path=/path/to/clip-vit-base-patch16``, or in
Python ``build_teacher("hf-clip", path="/path/to/clip-vit-base-patch16")``.
Nothing is ever fetched from a hub.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vidmask.teachers.base import FrameFeatures, Teacher, TeacherOut, register_teacher, resample_attn, resample_grid


def cls_attention(attn: nn.Module, x: Tensor) -> Tensor:
    """The CLS query's attention over the patches in one CLIP attention block, head mean:
    the block's input x [F,1+n,W] (after its layer norm) -> [F,n], float32.

    What the eager attention's weights give at ``[:, :, 0, 1:].mean(1)``
    (softmax of the scaled query-key products over all 1+n keys, CLS
    included), from ``attn``'s own ``q_proj`` / ``k_proj``: one query row
    per head instead of the full map.
    """
    Fr, S, W = x.shape
    h, d = attn.num_heads, attn.head_dim
    q = attn.q_proj(x[:, :1]).reshape(Fr, 1, h, d).transpose(1, 2).float()  # (F, h, 1, d)
    k = attn.k_proj(x).reshape(Fr, S, h, d).transpose(1, 2).float()  # (F, h, S, d)
    logits = (q * attn.scale) @ k.transpose(-1, -2)  # (F, h, 1, S)
    return logits.softmax(-1)[:, :, 0, 1:].mean(1)  # (F, n)


class HfClipTeacher(Teacher):
    """A frozen local Hugging Face CLIP."""

    def __init__(self, path: str | Path, student_patch: int = 16, max_len: int = 77, frame_chunk: int = 64):
        """
        path: local folder with a CLIPModel (config.json + weights) and its tokenizer.
        student_patch: default output grid = H // student_patch.
        max_len: caption tokens (capped by the text tower's position table).
        frame_chunk: frames per vision-tower call (bounds memory on long clips).
        """
        super().__init__()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import CLIPModel
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        folder = Path(path)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"teacher.path={str(path)!r}: no config.json there; point it at a local Hugging Face "
                "CLIP folder (config.json, model weights, tokenizer files)"
            )
        # SDPA everywhere: `attn`'s one row is computed apart (cls_attention), not returned by the attention
        self.model = CLIPModel.from_pretrained(folder, attn_implementation="sdpa")
        vc, tc = self.model.config.vision_config, self.model.config.text_config
        self.image_size, self.clip_patch = int(vc.image_size), int(vc.patch_size)
        self.token_dim = self.embed_dim = int(self.model.config.projection_dim)
        self.max_layers = int(vc.num_hidden_layers)  # any of the tower's layers can be a target
        self.patch_dim = int(vc.hidden_size)  # width of the patch convolution's output
        self.student_patch = student_patch
        self.max_len = min(max_len, int(tc.max_position_embeddings))
        self.frame_chunk = frame_chunk
        # the text tower as a frozen TextEncoder (CLIP kind: the end-of-text token's state): its pooled caption
        # features are cached, or stored, like the student's (caption_tower); the CLIPModel's own copy goes
        from vidmask.config import TextConfig
        from vidmask.models.text import TextEncoder

        self.text = TextEncoder(TextConfig(init=str(folder), trainable_layers=0, max_len=self.max_len))
        self.text.requires_grad_(False)
        self.model.text_model = None  # encode_text reads self.text; get_text_features is not called

    def autocast_weights(self, dtype: torch.dtype | None) -> None:
        """The CLIP model's weights in ``dtype`` (bf16 or fp16 under autocast): cast once, not at every
        call; frames go in as the weights' dtype (:meth:`encode_frames`) and every output leaves as float32
        where vidmask reads it. The weights' dtype names the teacher cache (:meth:`cache_options`)."""
        if dtype is not None and dtype != self.model.dtype:
            self.model.to(dtype)

    def cache_options(self) -> dict:
        # features from cast weights differ from float32 ones by their rounding: another cache
        return {} if self.model.dtype == torch.float32 else {"weights": str(self.model.dtype)}

    def _frames(self, frames: Tensor, layers: int = 1) -> tuple[Tensor, Tensor, Tensor | None]:
        """frames float[F,3,H,W] -> (projected tokens [F,1+n,E], CLS-to-patch attention [F,n],
        the layers-1 layers before the last, projected, [F,layers-1,1+n,E] or None)."""
        vm = self.model.vision_model
        H = frames.shape[-1]
        last = vm.encoder.layers[-1].self_attn
        seen: dict[str, Tensor] = {}

        def grab(_module, args, kwargs):  # the last block's attention input, after its layer norm
            seen["x"] = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]

        hook = last.register_forward_pre_hook(grab, with_kwargs=True)
        try:
            out = vm(pixel_values=frames, interpolate_pos_encoding=H != self.image_size,
                     output_hidden_states=layers > 1)
        finally:
            hook.remove()
        hidden = vm.post_layernorm(out.last_hidden_state)  # (F, 1+n, W) the final layer norm on every token
        proj = self.model.visual_projection(hidden)  # (F, 1+n, E)
        earlier = None
        if layers > 1:
            # hidden_states: the embeddings, then every layer's output; the last is last_hidden_state
            before = torch.stack(out.hidden_states[-layers:-1], 1)  # (F, layers-1, 1+n, W)
            earlier = self.model.visual_projection(vm.post_layernorm(before))  # (F, layers-1, 1+n, E)
        attn = cls_attention(last, seen["x"])  # (F, n) last block, CLS query, head mean
        return proj, attn / attn.sum(-1, keepdim=True).clamp_min(1e-12), earlier  # (F, n) rows sum to 1

    def encode_frames(self, video: Tensor, layers: int = 1, patch_embeds: bool = False) -> FrameFeatures:
        """The vision tower per frame: [B,T,3,H,W] -> projected patch tokens [B,T,n,E],
        CLS attention [B,T,n] and projected CLS [B,T,E], on CLIP's own patch grid; with
        ``layers`` = k > 1 also the k-1 layers before the last, projected, [B,T,k-1,n,E]; with
        ``patch_embeds`` the patch convolution's output [B,T,n,W]."""
        self.check_layers(layers)
        B, T = video.shape[:2]
        frames = video.flatten(0, 1).to(self.model.dtype)  # (B*T, 3, H, W)
        with torch.no_grad():
            parts = [self._frames(frames[s : s + self.frame_chunk], layers)
                     for s in range(0, frames.shape[0], self.frame_chunk)]
        proj = torch.cat([p for p, _, _ in parts]).float()  # (B*T, 1+n, E), float32 whatever the weights
        attn = torch.cat([a for _, a, _ in parts])  # (B*T, n)
        n = proj.shape[1] - 1
        earlier = None
        if layers > 1:
            earlier = torch.cat([e for _, _, e in parts])[:, :, 1:].float()  # (B*T, k-1, n, E) patch tokens only
            earlier = earlier.reshape(B, T, layers - 1, n, -1)  # (B, T, k-1, n, E)
        embeds = None
        if patch_embeds:
            conv = self.model.vision_model.embeddings.patch_embedding
            with torch.no_grad():
                embeds = torch.cat([conv(frames[s : s + self.frame_chunk]).flatten(2).transpose(1, 2)
                                    for s in range(0, frames.shape[0], self.frame_chunk)])  # (B*T, n, W)
            embeds = embeds.reshape(B, T, n, -1).float()  # (B, T, n, W)
        return FrameFeatures(tokens=proj[:, 1:].reshape(B, T, n, -1), attn=attn.reshape(B, T, n),
                             cls=proj[:, 0].reshape(B, T, -1), earlier=earlier,
                             patch_embeds=embeds)  # (B, T, n, E), (B, T, n), (B, T, E)

    def from_frames(self, feats: FrameFeatures, grid: int) -> TeacherOut:
        N = grid * grid
        tokens = resample_grid(feats.tokens, N)  # (B, T, N, E)
        attn = resample_attn(feats.attn, N)  # (B, T, N)
        clip = F.normalize(feats.cls.float().mean(1), dim=-1)  # (B, E) mean of the frames' CLS features
        layers = [tokens]
        if feats.earlier is not None:
            earlier = resample_grid(feats.earlier, N)  # (B, T, k-1, N, E)
            layers = [*earlier.unbind(2), tokens]  # k x (B, T, N, E), oldest first
        embeds = None if feats.patch_embeds is None else resample_grid(feats.patch_embeds, N)  # (B, T, N, W)
        return TeacherOut(tokens=tokens, attn=attn, video=clip, layers=layers, patch_embeds=embeds)

    def pool(self, tokens: Tensor) -> Tensor:
        """Mean of projected tokens, normalised: [M,W,E] -> [M,E]."""
        return F.normalize(tokens.float().mean(1), dim=-1)  # (M, E)

    def caption_tower(self):
        return self.text  # frozen CLIP text tower: encode_text is the text projection of its pooled features

    def encode_text(self, captions: list[str]) -> Tensor:
        """CLIP's text features (``get_text_features``: the text projection of the end-of-text token's final
        state), normalised, from the caption tower's cached pooled states: [B,E] float32."""
        proj = self.model.text_projection
        with torch.no_grad():
            pooled = self.text(list(captions))  # (B, W), cached per caption
            return F.normalize(proj(pooled.to(proj.weight.dtype)).float(), dim=-1)  # (B, E)


@register_teacher("hf-clip")
def build_hf_clip(path: str | Path | None = None, **kw) -> HfClipTeacher:
    if not path:
        raise ValueError("hf-clip needs teacher.path=/path/to/a/local/CLIP/folder (e.g. clip-vit-base-patch16)")
    return HfClipTeacher(path, **kw)
