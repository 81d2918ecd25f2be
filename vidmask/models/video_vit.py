"""A video ViT that encodes only the tokens a mask keeps.

Per-frame patch embedding (or tubelets of ``tubelet`` frames, as VideoMAE
and ViViT, so that one token sees motion), optionally a second patch embedding of the
frame differences added to each token (``frame_diff``, TSN / TDN's RGB-difference
stream) and one of the per-pixel normal flow (``normal_flow``: which way edges
move, whatever their colours), separable space and time position embeddings
(resampled when the clip has other frames or resolution than the weights were
made for), and MAE-style token dropping: ``forward_features`` gathers the kept
tokens first, so a 75 % mask really cuts the encoder's work by about 4x.

Three switches, all off by default, let it hold a CLIP vision tower exactly
(:mod:`vidmask.models.hf_clip`): the MLP activation (``act="quick_gelu"``),
a LayerNorm on the embedded tokens before the first block (``ln_pre``,
CLIP's ``pre_layrnorm``) and a class token (``cls_token``: CLIP's class
embedding plus its position) as the summary token of the frame-level path
(:meth:`VideoViT.frame_token`, MASCOT's spatial encoder).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from einops import rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from vidmask.models.blocks import Block, init_weights
from vidmask.models.pos_embed import sincos_tables, space_time_pos
from vidmask.tokens import gather_tokens


def central_difference(x: Tensor, dim: int) -> Tensor:
    """Central differences ``(x[i+1] - x[i-1]) / 2`` of ``x`` along ``dim``, one-sided ``x[1] - x[0]`` and
    ``x[n-1] - x[n-2]`` at its ends (zeros where ``dim`` has one entry); same shape as ``x``."""
    n = x.shape[dim]
    if n == 1:
        return torch.zeros_like(x)
    ahead = torch.cat([x.narrow(dim, 1, n - 1), x.narrow(dim, n - 1, 1)], dim)  # x[min(i+1, n-1)]
    behind = torch.cat([x.narrow(dim, 0, 1), x.narrow(dim, 0, n - 1)], dim)  # x[max(i-1, 0)]
    steps = torch.full((n,), 2.0, dtype=x.dtype, device=x.device)  # (n,): entries apart
    steps[0] = steps[-1] = 1.0
    shape = [1] * x.dim()
    shape[dim] = n
    return (ahead - behind) / steps.view(shape)


def frame_differences(video: Tensor) -> Tensor:
    """Temporal differences of a clip, frame by frame: video [B,T,...] -> [B,T,...].

    Central differences ``(x[t+1] - x[t-1]) / 2`` inside the clip, one-sided
    ``x[1] - x[0]`` and ``x[T-1] - x[T-2]`` at its ends (zeros for a one-frame
    clip). The RGB-difference stream of TSN (Wang et al., ECCV 2016) and TDN
    (CVPR 2021): static background cancels and what moves stands out, so a
    linear patch embedding of it already responds to the direction an edge
    moves in. Reversing the clip in time negates it frame for frame
    (``d(x reversed)[t] = -d(x)[T-1-t]``), so a played-backwards clip differs
    from its original in exactly this stream.
    """
    return central_difference(video, 1)  # (B, T, ...)


def normal_flow(video: Tensor, eps: float = 1e-2) -> Tensor:
    """Per-pixel normal flow of a clip: video [B,T,3,H,W] -> [B,T,2,H,W], (u, v) in pixels per frame,
    u to the right, v downwards.

    The brightness-constancy constraint ``I_t + grad(I) . w = 0`` (Horn and
    Schunck 1981) fixes the velocity ``w`` along the image gradient only: the
    normal flow ``-I_t grad(I) / |grad(I)|^2``, here with numerator and
    denominator summed over the colour channels (one scalar normalisation per
    pixel, not Lucas-Kanade's 2x2 solve over a window) and ``eps`` added to
    ``|grad(I)|^2`` so that flat regions give about zero. Unlike the raw
    frame differences it does not depend on the colours: a red square and
    a dark blue one moving left give the same signs, which the difference
    stream only gives for the same colour on the same background. ``I_t`` is
    :func:`frame_differences`, the gradient central differences in space, so
    reversing the clip negates the flow and mirroring it negates ``u``.
    """
    it = frame_differences(video)  # (B, T, 3, H, W)
    gx = central_difference(video, -1)  # (B, T, 3, H, W)
    gy = central_difference(video, -2)  # (B, T, 3, H, W)
    energy = (gx * gx + gy * gy).sum(2) + eps  # (B, T, H, W)
    u = -(it * gx).sum(2) / energy  # (B, T, H, W)
    v = -(it * gy).sum(2) / energy  # (B, T, H, W)
    return torch.stack([u, v], 2)  # (B, T, 2, H, W)


def patchify(video: Tensor, patch: int, tubelet: int = 1) -> Tensor:
    """Pixel patches: video [B,T,3,H,W] -> [B,T/k,N,k*p*p*3] for tubelets of k frames (k = 1: one
    frame's patch), each in (k p1 p2 c) order."""
    if video.shape[1] % tubelet:
        raise ValueError(f"a clip of {video.shape[1]} frames does not split into tubelets of {tubelet} frames")
    return rearrange(video, "b (t k) c (h p1) (w p2) -> b t (h w) (k p1 p2 c)", k=tubelet, p1=patch, p2=patch)


def patch_conv(channels: int, dim: int, patch: int, tubelet: int, bias: bool = True) -> nn.Module:
    """The linear embedding of a p x p patch (of k frames: a tubelet) with ``channels`` channels as a strided
    conv: Conv2d for k = 1, Conv3d over (k, p, p) otherwise."""
    if tubelet == 1:
        return nn.Conv2d(channels, dim, kernel_size=patch, stride=patch, bias=bias)
    return nn.Conv3d(channels, dim, kernel_size=(tubelet, patch, patch), stride=(tubelet, patch, patch), bias=bias)


@dataclass
class EncoderOut:
    """What the video encoder returns."""

    tokens: Tensor  # float[B,K,C] after the final norm (K = T*N without a mask)
    layers: list[Tensor] = field(default_factory=list)  # raw outputs of the last k blocks, k x [B,K,C], when asked


class VideoViT(nn.Module):
    def __init__(
        self,
        img_size: int = 128,
        patch: int = 16,
        frames: int = 8,
        dim: int = 192,
        depth: int = 6,
        heads: int = 3,
        mlp_ratio: float = 4.0,
        grad_checkpointing: bool = False,
        tubelet: int = 1,
        pos_embed: str = "learned",
        frame_diff: bool = False,
        normal_flow: bool = False,
        act: str = "gelu",
        ln_pre: bool = False,
        cls_token: bool = False,
    ):
        super().__init__()
        if img_size % patch:
            raise ValueError(f"image size {img_size} is not a multiple of the patch size {patch}")
        if tubelet < 1 or frames % tubelet:
            raise ValueError(f"{frames} frames do not split into tubelets of {tubelet} frames")
        self.patch = patch
        self.grid = img_size // patch
        self.tubelet = tubelet  # frames per token (VideoMAE / ViViT tubelet embedding); 1 = per-frame patches
        self.frames = frames // tubelet  # token time steps of a clip of `frames` frames
        self.dim = dim
        self.grad_checkpointing = grad_checkpointing
        # a token sees k frames of its patch with tubelets (k > 1): motion inside one token
        self.patch_embed = patch_conv(3, dim, patch, tubelet)
        # frame_diff: a second patch embedding of the clip's frame differences, added to each token
        # (TSN / TDN's RGB-difference stream), so that a token sees how its patch changes
        self.frame_diff = frame_diff
        self.diff_embed = patch_conv(3, dim, patch, tubelet, bias=False) if frame_diff else None
        # normal_flow: a patch embedding of the clip's per-pixel normal flow (2 channels), added to each token,
        # so that a token sees which way its edges move whatever their colours
        self.normal_flow = normal_flow
        self.flow_embed = patch_conv(2, dim, patch, tubelet, bias=False) if normal_flow else None
        self.pos_space = nn.Parameter(torch.zeros(self.grid * self.grid, dim))  # (N, C)
        self.pos_time = nn.Parameter(torch.zeros(self.frames, dim))  # (T/k, C)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio, act) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        # CLIP's pre_layrnorm: every token the blocks see (a frame's class token included) is normalised first
        self.ln_pre = nn.LayerNorm(dim) if ln_pre else None
        # the summary token's input in the frame-level path (CLIP: class_embedding + position_embedding[0]; it
        # keeps its position when the patch positions are resampled, as Hugging Face's interpolate_pos_encoding)
        self.cls_token = nn.Parameter(torch.zeros(dim)) if cls_token else None  # (C,)
        if pos_embed == "learned":
            nn.init.trunc_normal_(self.pos_space, std=0.02)
            nn.init.trunc_normal_(self.pos_time, std=0.02)
        elif pos_embed == "sincos":
            # fixed codes at the patch embeddings' scale (MAE): learned tables started at std 0.02
            # stayed there in the tiny model (0.023 after 660 steps beside tokens of std 1.27),
            # leaving the encoder a bag of patches in space and time
            space, time = sincos_tables(self.grid, self.frames, dim)  # (N, C), (T/k, C)
            self.pos_space.data.copy_(space)
            self.pos_time.data.copy_(time)
            self.pos_space.requires_grad_(False)
            self.pos_time.requires_grad_(False)
        else:
            raise ValueError(f"pos_embed must be 'learned' or 'sincos', got {pos_embed!r}")
        init_weights(self)
        for conv in (self.patch_embed, self.diff_embed, self.flow_embed):
            if conv is not None:
                w = conv.weight.data
                nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # as MAE: the conv is a linear map
        if self.cls_token is not None:  # drawn last: the default model's initialisation is unchanged
            nn.init.trunc_normal_(self.cls_token, std=0.02)

    def patchify(self, video: Tensor) -> Tensor:
        """Pixel patches (tubelets): video [B,T,3,H,W] -> [B,T/k,N,k*p*p*3], the token layout."""
        return patchify(video, self.patch, self.tubelet)

    def token_frames(self, frames: int) -> int:
        """Token time steps of a clip of ``frames`` frames (T/k)."""
        if frames % self.tubelet:
            raise ValueError(f"a clip of {frames} frames does not split into tubelets of {self.tubelet} frames")
        return frames // self.tubelet

    def pos_embed(self, frames: int, grid: int) -> Tensor:
        """Space + time position embeddings: [T, N, C]."""
        return space_time_pos(self.pos_space, self.pos_time, frames, grid * grid)  # (T, N, C)

    def pre_norm(self, x: Tensor) -> Tensor:
        """What the first block reads: x [..., C] through ``ln_pre`` (CLIP's pre_layrnorm) when the encoder
        has one, else unchanged."""
        return x if self.ln_pre is None else self.ln_pre(x)  # (..., C)

    def frame_token(self, x: Tensor, keep: Tensor | None = None) -> Tensor:
        """The input of each token set's summary token (MASCOT's per-frame CLS), to prepend before
        :meth:`forward_sets`: x [B',N,C] embedded tokens (:meth:`embed`), keep bool[B',N] (True = visible
        patch) or None (all) -> [B',1,C].

        The class token when the encoder has one (``cls_token``; from CLIP: its class embedding plus
        its position, so the output is CLIP's CLS); else the mean of the set's visible tokens.
        """
        if self.cls_token is not None:
            return self.cls_token.to(x.dtype).expand(x.shape[0], 1, -1)  # (B', 1, C)
        if keep is None:
            return x.mean(1, keepdim=True)  # (B', 1, C)
        w = keep.unsqueeze(-1).to(x.dtype)  # (B', N, 1)
        return (x * w).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp(min=1.0)  # (B', 1, C)

    def final_norm(self, x: Tensor) -> Tensor:
        """The encoder's final LayerNorm on block outputs [..., C] (what UMT's alignment heads start from)."""
        return self.norm(x)

    def embed(self, video: Tensor) -> Tensor:
        """video float[B,T,3,H,W] -> tokens float[B,T/k,N,C] (patches or tubelets + positions)."""
        B, T, _, H, W = video.shape
        if H != W or H % self.patch:
            raise ValueError(f"video frames must be square multiples of {self.patch} px, got {H}x{W}")
        Tk = self.token_frames(T)
        x = self._conv_tokens(self.patch_embed, video)  # (B, T/k, N, C)
        if self.diff_embed is not None:
            x = x + self._conv_tokens(self.diff_embed, frame_differences(video))  # (B, T/k, N, C)
        if self.flow_embed is not None:
            x = x + self._conv_tokens(self.flow_embed, normal_flow(video))  # (B, T/k, N, C)
        return x + self.pos_embed(Tk, H // self.patch).to(x.dtype)  # (B, T/k, N, C)

    def _conv_tokens(self, conv: nn.Module, video: Tensor) -> Tensor:
        """A patch (tubelet) embedding conv over video [B,T,c,H,W] -> tokens [B,T/k,N,C]."""
        if self.tubelet == 1:
            x = conv(video.flatten(0, 1))  # (B*T, C, g, g)
            return rearrange(x, "(b t) c h w -> b t (h w) c", b=video.shape[0])  # (B, T, N, C)
        x = conv(video.transpose(1, 2))  # (B, C, T/k, g, g)
        return rearrange(x, "b c t h w -> b t (h w) c")  # (B, T/k, N, C)

    def _linear_weight(self, conv: nn.Module) -> Tensor:
        """A patch embedding conv's weight [C, c, (k,) p, p] as a linear map over (k p1 p2 c)-ordered pixels:
        [C, k*p*p*c]."""
        w = conv.weight
        w = w.unsqueeze(2) if w.dim() == 4 else w  # (C, c, k, p, p)
        return w.permute(0, 2, 3, 4, 1).reshape(self.dim, -1)  # (C, k*p*p*c)

    def embed_kept(self, video: Tensor, ids_keep: Tensor) -> Tensor:
        """Embed only the kept patches: video [B,T,3,H,W], ids_keep long[B,K] (into (T/k)*N) -> [B,K,C].

        Same values as ``gather(embed(video))`` but the patch projection runs
        on K tokens instead of T*N, which matters at high mask ratios.
        """
        B, T, _, H, W = video.shape
        grid = H // self.patch
        pixels = gather_tokens(self.patchify(video).flatten(1, 2), ids_keep)  # (B, K, k*p*p*3)
        w = self._linear_weight(self.patch_embed)  # (C, k*p*p*3)
        x = pixels @ w.T.to(pixels.dtype) + self.patch_embed.bias  # (B, K, C)
        if self.diff_embed is not None:
            diffs = gather_tokens(self.patchify(frame_differences(video)).flatten(1, 2), ids_keep)  # (B, K, k*p*p*3)
            x = x + diffs @ self._linear_weight(self.diff_embed).T.to(diffs.dtype)  # (B, K, C)
        if self.flow_embed is not None:
            flow = gather_tokens(self.patchify(normal_flow(video)).flatten(1, 2), ids_keep)  # (B, K, k*p*p*2)
            x = x + flow @ self._linear_weight(self.flow_embed).T.to(flow.dtype)  # (B, K, C)
        pos = self.pos_embed(self.token_frames(T), grid).flatten(0, 1)  # (L, C)
        return x + pos[ids_keep].to(x.dtype)  # (B, K, C)

    def forward_features(self, tokens: Tensor, ids_keep: Tensor | None = None, token_weight: Tensor | None = None,
                         return_layers: int = 0) -> EncoderOut:
        """Encode the kept tokens only.

        tokens: [B,T,N,C], or already gathered [B,K,C] (then ids_keep is None);
        ids_keep: long[B,K] flat indices into T*N (None = all tokens);
        token_weight: optional float[B,K] from a learnable masker (``MaskOut.token_weight``),
        multiplied onto the kept tokens so the task's gradient reaches the masker.
        ``return_layers=k`` also keeps the raw outputs of the last k blocks (what
        UMT's alignment reads) in ``EncoderOut.layers``.
        """
        x = tokens.flatten(1, 2) if tokens.dim() == 4 else tokens  # (B, L, C)
        if ids_keep is not None:
            x = gather_tokens(x, ids_keep)  # (B, K, C)
        x = self.pre_norm(x)  # (B, K, C): before the weights, which a LayerNorm would cancel
        if token_weight is not None:
            x = x * token_weight.unsqueeze(-1).to(x.dtype)  # (B, K, C)
        layers = []
        first_kept = len(self.blocks) - return_layers
        for i, blk in enumerate(self.blocks):
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(blk, x, use_reentrant=False)  # (B, K, C)
            else:
                x = blk(x)  # (B, K, C)
            if i >= first_kept:
                layers.append(x)
        return EncoderOut(self.norm(x), layers)  # tokens (B, K, C)

    def forward_sets(self, x: Tensor, attn_mask: Tensor | None = None,
                     return_attn: bool = False) -> tuple[Tensor, Tensor | None]:
        """The blocks over independent token sets, e.g. each frame alone: x [B',M,C] -> [B',M,C] normed.

        What a frame-level model (MASCOT's spatial encoder: one frame's patches
        and a CLS token per set) runs instead of :meth:`forward_features`'
        joint space-time attention. ``attn_mask``: bool, broadcastable to
        [B', heads, M, M], True = may attend, in every block (MASCOT's interaction
        masks). ``return_attn``: also the last block's head-averaged attention
        probabilities [B',M,M] (MASCOT eq. 1), else None.
        """
        attn = None
        x = self.pre_norm(x)  # (B', M, C)
        for i, blk in enumerate(self.blocks):
            if return_attn and i == len(self.blocks) - 1:
                attn = blk.attention_map(x, attn_mask)  # (B', M, M)
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(blk, x, attn_mask, use_reentrant=False)  # (B', M, C)
            else:
                x = blk(x, attn_mask)  # (B', M, C)
        return self.norm(x), attn  # (B', M, C)

    def compile_blocks(self, **options) -> None:
        """``torch.compile`` every block in place (``train.compile``). Blocks, not the encoder: training
        and evaluation call :meth:`embed`, :meth:`embed_kept` and :meth:`forward_features`, never the
        module itself, and a compiled ``__call__`` would never run. Parameter names, and so
        checkpoints, are unchanged; a new kept-token count recompiles once, then shapes go dynamic."""
        for blk in self.blocks:
            blk.compile(**options)

    def forward(self, video: Tensor, ids_keep: Tensor | None = None) -> Tensor:
        """video [B,T,3,H,W] -> pooled clip feature [B,C] (mean over kept tokens)."""
        return self.forward_features(self.embed(video), ids_keep).tokens.mean(1)  # (B, C)
