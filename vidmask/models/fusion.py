"""Cross-modal fusion: text token states that attend to video tokens.

The layers ALBEF / UMT put on top of the text encoder for matching (VTM),
masked language modelling, QA and (with a causal self-attention mask)
captioning. Each layer is pre-norm:

    x = x + self_attn(norm1(x), attn_mask=text padding)      # text <-> text
    x = x + cross_attn(norm2(x), context=video, attn_mask=video padding)
    x = x + mlp(norm3(x))

`FusionLayer` is the one block both the encoder here and the caption
decoder (`vidmask.models.caption`) stack; only the self-attention mask
differs (padding here, causal + padding there).
"""

from __future__ import annotations

from torch import Tensor, nn

from vidmask.models.blocks import Attention, Mlp, init_weights


def default_heads(width: int) -> int:
    """64-channel heads as in BERT (width 384 -> 6); at least one."""
    return max(1, width // 64)


def key_padding_mask(valid: Tensor | None) -> Tensor | None:
    """bool/long[B,S] (True/1 = a real token) -> bool[B,1,1,S] for SDPA (True = may be attended)."""
    if valid is None:
        return None
    return valid.bool()[:, None, None, :]  # (B, 1, 1, S)


class FusionLayer(nn.Module):
    """Pre-norm self-attention + cross-attention to a context + MLP, at width W."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.self_attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.cross_attn = Attention(width, heads)
        self.norm3 = nn.LayerNorm(width)
        self.mlp = Mlp(width, int(width * mlp_ratio))

    def forward(self, x: Tensor, context: Tensor, self_mask: Tensor | None = None,
                context_mask: Tensor | None = None, context_index: Tensor | None = None) -> Tensor:
        """x [B,S,W], context [B,K,W] (or [Nc,K,W] with ``context_index`` long[B]: row b reads
        context ``context_index[b]``); masks are SDPA bool masks (True = attend), broadcastable."""
        x = x + self.self_attn(self.norm1(x), attn_mask=self_mask)  # (B, S, W)
        kv = self.cross_attn.kv(context)  # (Nc, K, 2W): each distinct context projected once
        if context_index is not None:
            kv = kv.index_select(0, context_index)  # (B, K, 2W); backward: index_add, cheap on CPU
        x = x + self.cross_attn.attend(self.norm2(x), kv, attn_mask=context_mask)  # (B, S, W)
        return x + self.mlp(self.norm3(x))  # (B, S, W)

    def step(self, x: Tensor, context_kv: Tensor, cache: Tensor | None) -> tuple[Tensor, Tensor]:
        """One new causal position per row (incremental decoding): x [B,1,W], the context's
        keys and values ``cross_attn.kv(context)`` [B,K,2W] (computed once per clip), the
        self-attention cache (see `Attention.step`) -> ([B,1,W], new cache)."""
        h, cache = self.self_attn.step(self.norm1(x), cache)  # (B, 1, W)
        x = x + h  # (B, 1, W)
        x = x + self.cross_attn.attend(self.norm2(x), context_kv)  # (B, 1, W)
        return x + self.mlp(self.norm3(x)), cache  # (B, 1, W)


class FusionEncoder(nn.Module):
    """(text states [B,S,W], text mask [B,S], video tokens [B,K,C]) -> fused text states [B,S,W].

    The video tokens are projected to the text width W once, before the
    layers, so every layer reuses the one `Attention` block at one width
    (ALBEF's cross-attention instead maps keys and values from the vision
    width in every layer). Position 0 ([CLS]) of the output is what the
    matching and QA heads read.
    """

    def __init__(self, text_width: int, video_width: int, depth: int = 2, heads: int | None = None,
                 mlp_ratio: float = 4.0):
        super().__init__()
        if depth < 1:
            raise ValueError(f"fusion depth must be >= 1, got {depth}")
        self.width = text_width
        heads = heads or default_heads(text_width)
        self.video_proj = nn.Linear(video_width, text_width)
        self.layers = nn.ModuleList(FusionLayer(text_width, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(text_width)
        init_weights(self)

    def project_video(self, video_tokens: Tensor) -> Tensor:
        return self.video_proj(video_tokens)  # (B, K, W)

    def forward(self, text_states: Tensor, text_mask: Tensor, video_tokens: Tensor,
                video_mask: Tensor | None = None, video_index: Tensor | None = None) -> Tensor:
        """text_states [B,S,W], text_mask [B,S] (1 = token, 0 = padding),
        video_tokens [B,K,C] (or [1,K,C]: one clip shared by every text, projected once),
        video_mask optional [B,K] (1 = real token) -> [B,S,W].

        video_index: optional long[B]; then video_tokens is [Nv,K,C] and text b
        reads clip ``video_index[b]``. Matching pairs each clip with several
        texts (its caption and a hard negative): the clip's projection and
        cross-attention keys and values are computed once per distinct clip,
        not once per pair, which is most of the fusion's cost.
        """
        if video_index is not None:
            if video_index.shape != text_states.shape[:1]:
                raise ValueError(f"video_index {tuple(video_index.shape)} needs one entry per text row "
                                 f"({text_states.shape[0]})")
        elif video_tokens.shape[0] not in (1, text_states.shape[0]):
            raise ValueError(f"batch mismatch: text {tuple(text_states.shape)} vs video {tuple(video_tokens.shape)}")
        ctx = self.project_video(video_tokens.to(text_states.dtype))  # (Nv, K, W)
        self_mask = key_padding_mask(text_mask)  # (B, 1, 1, S): padding is never a key
        ctx_mask = key_padding_mask(video_mask)  # (Nv, 1, 1, K) or None
        if ctx_mask is not None and video_index is not None:
            ctx_mask = ctx_mask[video_index]  # (B, 1, 1, K)
        x = text_states  # (B, S, W)
        for layer in self.layers:
            x = layer(x, ctx, self_mask, ctx_mask, video_index)  # (B, S, W)
        return self.norm(x)  # (B, S, W)
