"""The dual-encoder video-language model: video ViT + a text tower (BERT or CLIP's), a joint space.

``model.proj_head`` picks the joint-space heads: vidmask's (a Linear on the
mean video token, a two-layer MLP on the pooled text), CLIP's (a bias-free
Linear each side, ``visual_projection`` and ``text_projection``), what a model
started from a CLIP (``finetune.init=hf-clip:FOLDER``) holds, or ``whitened``
(vidmask's video head; the frozen text features PCA-whitened on the training
captions, nothing trained on the text side: :mod:`vidmask.models.whiten`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vidmask.config import ModelConfig
from vidmask.models.blocks import init_weights
from vidmask.models.pooling import segment_offsets
from vidmask.models.text import TextEncoder
from vidmask.models.video_vit import VideoViT
from vidmask.models.whiten import WhitenedHead


class VideoTextModel(nn.Module):
    def __init__(self, cfg: ModelConfig, num_frames: int = 8, img_size: int = 128):
        super().__init__()
        self.cfg = cfg
        self.visual = VideoViT(
            img_size=img_size, patch=cfg.patch, frames=num_frames, dim=cfg.dim, depth=cfg.depth,
            heads=cfg.heads, mlp_ratio=cfg.mlp_ratio, grad_checkpointing=cfg.grad_checkpointing, tubelet=cfg.tubelet,
            pos_embed=cfg.pos_embed, frame_diff=cfg.frame_diff, normal_flow=cfg.normal_flow, act=cfg.act,
            ln_pre=cfg.ln_pre, cls_token=cfg.cls_token,
        )
        self.text = TextEncoder(cfg.text)
        w = self.text.width
        if cfg.proj_head == "clip":  # CLIP's heads: linear maps of the encoders' outputs into the joint space
            self.vision_proj = nn.Linear(cfg.dim, cfg.embed_dim, bias=False)
            self.text_proj = nn.Linear(w, cfg.embed_dim, bias=False)
        elif cfg.proj_head == "whitened":  # a locked text side: the frozen features, whitened (fitted before training)
            self.vision_proj = nn.Linear(cfg.dim, cfg.embed_dim)
            self.text_proj = WhitenedHead(w, cfg.embed_dim)
        else:
            self.vision_proj = nn.Linear(cfg.dim, cfg.embed_dim)
            # a two-layer head: with a frozen tower it is all the text side can learn
            self.text_proj = nn.Sequential(nn.Linear(w, w), nn.GELU(), nn.Linear(w, cfg.embed_dim))
        init_weights(self.vision_proj)
        init_weights(self.text_proj)
        self.order_proj = None
        if cfg.pool == "segments":  # zero at init: a new model starts as the mean-pooled one
            self.order_proj = nn.Linear(cfg.pool_segments * cfg.dim, self.vision_proj.out_features, bias=False)
            nn.init.zeros_(self.order_proj.weight)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.temperature)))

    def video_tokens(self, video: Tensor, ids_keep: Tensor | None = None,
                     token_weight: Tensor | None = None) -> Tensor:
        """video [B,T,3,H,W] -> encoder output [B,K,C]: the kept tokens only (K = T*N when
        ids_keep is None, or the eval selection's K outside training with ``model.eval_tokens=motion``).
        What the fusion layers, QA and captioning heads read."""
        if ids_keep is None and not self.training and self.cfg.eval_tokens == "motion":
            from vidmask.masking.motion import motion_ids

            ids_keep = motion_ids(self.visual.patchify(video), self.cfg.eval_ratio)  # (B, K)
        if ids_keep is None:
            tokens = self.visual.embed(video)  # (B, T, N, C)
        else:
            tokens = self.visual.embed_kept(video, ids_keep)  # (B, K, C): only kept patches embedded
        return self.visual.forward_features(tokens, None, token_weight).tokens  # (B, K, C)

    def encode_video(self, video: Tensor, ids_keep: Tensor | None = None,
                     token_weight: Tensor | None = None) -> Tensor:
        """video [B,T,3,H,W] (+ kept-token indices [B,K]) -> unit features [B,E]."""
        return self.project_video(self.video_tokens(video, ids_keep, token_weight))

    def project_video(self, feats: Tensor) -> Tensor:
        """Encoder output [B,K,C], tokens in time order -> unit features [B,E] (mean over the kept tokens;
        with ``model.pool=segments`` plus the projected offsets of its time segments)."""
        out = self.vision_proj(feats.mean(1))  # (B, E)
        if self.order_proj is not None:
            out = out + self.order_proj(segment_offsets(feats, self.cfg.pool_segments))  # (B, E)
        return F.normalize(out.float(), dim=-1)  # (B, E)

    def encode_text(self, captions: list[str]) -> Tensor:
        """captions -> unit features [B,E]."""
        return self.project_text(self.text(captions))  # (B, E)

    def project_text(self, pooled: Tensor) -> Tensor:
        """The text tower's pooled states [B,W] -> unit features [B,E]."""
        return F.normalize(self.text_proj(pooled).float(), dim=-1)  # (B, E)

    def temperature_scale(self) -> Tensor:
        # clamp as CLIP does, so the logits cannot blow up (scale <= 100)
        return self.logit_scale.clamp(max=math.log(100.0)).exp()
