"""MASCOT's frame-level retrieval model around a vidmask dual encoder (sections 3.1-3.4).

The paper's model is CLIP4Clip's: a spatial encoder gives one token per frame
(CLIP's CLS), a temporal transformer over the frame tokens gives the video
tokens, and the text tower gives word tokens; the two sides meet in WTI
(`vidmask.models.wti`). Here the spatial encoder is the dual encoder's own
video ViT run on each frame alone (:meth:`VideoViT.forward_sets`), so a
vidmask pretrained run (or any later video encoder) is the starting point:

* **frame token**: a CLS token is prepended to each frame; its output is the
  frame token and its row of the last block's attention (eq. 1) drives the
  masks. Its input is the ViT's class token when it has one (a model started
  from CLIP, ``finetune.init=hf-clip:FOLDER``: CLIP's class embedding plus its
  position, so the frame token is CLIP's CLS, as in the paper); otherwise the
  mean of the frame's visible patch embeddings plus a learned vector
  (``MascotHeads.cls``, zero at the start).
* **co-encoder**: the same ViT (shared parameters) on the erased frames, with
  the spatial interaction mask (eq. 3) in every block when unidirectional.
* **reconstructor**: one pre-norm transformer block over the frame tokens,
  with the temporal interaction mask (eq. 4) when unidirectional.
* **temporal transformer**: CLIP4Clip's sequence transformer: frame tokens
  plus a learned temporal position table through ``depth`` blocks.
* **content discriminator**: an MLP telling masked from unmasked video
  representations, behind a gradient reversal layer (eq. 5).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vidmask.config import MascotConfig
from vidmask.models.blocks import Block, init_weights
from vidmask.models.interaction import spatial_interaction, temporal_interaction
from vidmask.models.pos_embed import resample_time
from vidmask.models.video_vit import VideoViT
from vidmask.models.wti import TokenWeights


@dataclass
class FrameOut:
    """The spatial encoder's output on a clip."""

    frames: Tensor  # float[B,T,C]: one token per frame (the CLS output)
    cls_attn: Tensor | None  # float[B,T,N]: the CLS row of the last block's attention (eq. 1), when asked


def encode_frames(visual: VideoViT, video: Tensor, cls: Tensor | None = None, keep: Tensor | None = None,
                  unidirectional: bool = False, return_attn: bool = False) -> FrameOut:
    """Each frame alone through ``visual``, a CLS token first.

    video float[B,T,3,H,W] (already erased where ``keep`` is False); cls float[C], a learned
    vector added to the CLS input (:meth:`VideoViT.frame_token`), or None; keep bool[B,T,N]
    (True = visible patch) or None (all visible). ``unidirectional``: the spatial interaction
    mask (eq. 3) in every block. With a CLIP-started ``visual``, all patches visible and no ``cls``,
    ``frames`` through the visual projection is CLIP's image embedding of each frame.
    """
    tokens = visual.embed(video)  # (B, T, N, C): patches + space-time positions
    B, T, N, C = tokens.shape
    x = tokens.flatten(0, 1)  # (B*T, N, C)
    first = visual.frame_token(x, None if keep is None else keep.flatten(0, 1))  # (B*T, 1, C)
    if cls is not None:
        first = first + cls.to(x.dtype)  # (B*T, 1, C)
    x = torch.cat([first, x], 1)  # (B*T, 1+N, C)
    allowed = None
    if unidirectional and keep is not None:
        allowed = spatial_interaction(keep.flatten(0, 1), prefix=1).unsqueeze(1)  # (B*T, 1, 1+N, 1+N)
    out, attn = visual.forward_sets(x, allowed, return_attn=return_attn)  # (B*T, 1+N, C), (B*T, 1+N, 1+N)
    frames = out[:, 0].reshape(B, T, C)  # (B, T, C)
    cls_attn = attn[:, 0, 1:].reshape(B, T, N) if attn is not None else None  # (B, T, N)
    return FrameOut(frames, cls_attn)


class TemporalTransformer(nn.Module):
    """Frame tokens [B,T,C] + temporal positions -> video tokens [B,T,C] (CLIP4Clip's seqTransf)."""

    def __init__(self, dim: int, depth: int, heads: int, frames: int):
        super().__init__()
        self.pos = nn.Parameter(torch.zeros(frames, dim))  # (T0, C), resampled for other clip lengths
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        init_weights(self.blocks)

    def forward(self, x: Tensor) -> Tensor:
        x = x + resample_time(self.pos, x.shape[1]).to(x.dtype)  # (B, T, C)
        for blk in self.blocks:
            x = blk(x)  # (B, T, C)
        return x  # (B, T, C)


class MascotHeads(nn.Module):
    """Everything MASCOT adds to the dual encoder; what trains at the modules' learning rate.

    Only the parts the config uses are built (a reconstructor when a branch has
    one, the discriminator when a branch uses it), so every parameter gets a
    gradient and a checkpoint holds exactly what the run trained.
    """

    def __init__(self, cfg: MascotConfig, dim: int, embed_dim: int, frames: int, learned_cls: bool = True):
        """learned_cls: a learned vector added to each frame's CLS input; False when the encoder has a
        class token of its own (a CLIP-started one), which then trains as part of the encoder."""
        super().__init__()
        # (C,): the learned part of each frame's CLS input, zero at the start; None: the encoder's class token
        self.cls = nn.Parameter(torch.zeros(dim)) if learned_cls else None
        self.temporal = TemporalTransformer(dim, cfg.temporal_depth, cfg.temporal_heads, frames)
        self.video_weights = TokenWeights(embed_dim)  # WTI weights of video tokens
        self.text_weights = TokenWeights(embed_dim)  # WTI weights of text tokens
        branches = [b for b in (cfg.high, cfg.low) if b.weight > 0]
        self.reconstructor = None
        if any(b.reconstructor != "none" for b in branches):
            self.reconstructor = Block(dim, cfg.temporal_heads)  # one self-attention layer (section 3.3)
            init_weights(self.reconstructor)
        self.discriminator = None
        if cfg.adversarial > 0 and any(b.discriminator for b in branches):
            self.discriminator = nn.Sequential(nn.Linear(dim, cfg.disc_hidden), nn.GELU(),
                                               nn.Linear(cfg.disc_hidden, 2))  # 2 domains: unmasked, masked
            init_weights(self.discriminator)

    def video_tokens(self, frames: Tensor, frame_masked: Tensor | None = None, reconstructor: str = "none") -> Tensor:
        """Frame tokens [B,T,C] -> video tokens [B,T,C]: (reconstructor, eq. 4 when unidirectional), then
        the temporal transformer. frame_masked bool[B,T]: frames with erased patches."""
        if reconstructor != "none":
            allowed = None
            if reconstructor == "unidirectional" and frame_masked is not None:
                allowed = temporal_interaction(frame_masked).unsqueeze(1)  # (B, 1, T, T)
            frames = self.reconstructor(frames, allowed)  # (B, T, C)
        return self.temporal(frames)  # (B, T, C)
