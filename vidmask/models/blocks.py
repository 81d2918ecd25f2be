"""The transformer building blocks, written once and reused by every model."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Attention(nn.Module):
    """Multi-head self-attention (or cross-attention when `context` is given)."""

    def __init__(self, dim: int, heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} not divisible by heads {heads}")
        self.heads = heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, context: Tensor | None = None, attn_mask: Tensor | None = None) -> Tensor:
        ctx = x if context is None else context  # (B or 1, S, C)
        return self.attend(x, self.kv(ctx), attn_mask)  # (B, M, C)

    def attend(self, x: Tensor, kv: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """Queries from x [B,M,C] over already projected keys and values ``kv = self.kv(context)``
        [B or 1, S, 2C] -> [B,M,C].

        Split from :meth:`forward` for callers that project each context token
        once and reuse it in many overlapping contexts (sliding windows).
        """
        B, M, C = x.shape
        h, Bc = self.heads, kv.shape[0]
        q = self.q(x).reshape(B, M, h, C // h).transpose(1, 2)  # (B, h, M, C/h)
        # a context of batch 1 is shared by every row: keys and values computed once
        k, v = kv.reshape(Bc, kv.shape[1], 2, h, C // h).permute(2, 0, 3, 1, 4)  # 2 x (Bc, h, S, C/h)
        if Bc != B:
            k, v = k.expand(B, -1, -1, -1), v.expand(B, -1, -1, -1)  # (B, h, S, C/h)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, h, M, C/h)
        return self.proj(out.transpose(1, 2).reshape(B, M, C))  # (B, M, C)


    def weights(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """Self-attention probabilities of x [B,M,C] averaged over heads -> [B,M,M] (MASCOT eq. 1).

        ``attn_mask``: as in :meth:`forward` (scaled_dot_product_attention's): bool (True = may attend)
        or additive float, broadcastable to [B, heads, M, M], e.g. [B,1,M,M].
        Computed apart from :meth:`forward` (which never materialises them) for the callers that read
        one layer's attention map.
        """
        B, M, C = x.shape
        h = self.heads
        q = self.q(x).reshape(B, M, h, C // h).transpose(1, 2)  # (B, h, M, C/h)
        k = self.kv(x)[..., :C].reshape(B, M, h, C // h).transpose(1, 2)  # (B, h, M, C/h)
        logits = (q @ k.transpose(-2, -1)) * (C // h) ** -0.5  # (B, h, M, M)
        if attn_mask is not None:
            if attn_mask.dtype == torch.bool:
                logits = logits.masked_fill(~attn_mask, float("-inf"))  # (B, h, M, M)
            else:
                logits = logits + attn_mask  # (B, h, M, M)
        return logits.float().softmax(-1).mean(1)  # (B, M, M)

    def step(self, x: Tensor, cache: Tensor | None) -> tuple[Tensor, Tensor]:
        """Causal self-attention for one new position per row, with a key/value cache.

        x [B,1,C] is the newest position; ``cache`` holds the projected keys and
        values ``self.kv`` of the earlier positions [B,l,2C] (None at the first).
        The new position attends to all of them and to itself, which is what a
        causal mask gives it in a full forward. Returns ([B,1,C], cache [B,l+1,2C]).
        """
        if x.shape[1] != 1:
            raise ValueError(f"Attention.step takes one position per row, got {x.shape[1]}")
        kv = self.kv(x)  # (B, 1, 2C)
        cache = kv if cache is None else torch.cat([cache, kv], 1)  # (B, l+1, 2C)
        return self.attend(x, cache), cache  # (B, 1, C)


def quick_gelu(x: Tensor) -> Tensor:
    """OpenAI CLIP's GELU approximation x * sigmoid(1.702 x) (Hugging Face's ``quick_gelu``)."""
    return x * torch.sigmoid(1.702 * x)  # (...)


# the MLP activations by name (`model.act`, as vidmask.config.MLP_ACTIVATIONS lists them; a CLIP config's
# `hidden_act` names the same functions)
ACTIVATIONS = {"gelu": F.gelu, "quick_gelu": quick_gelu}


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, act: str = "gelu"):
        super().__init__()
        if act not in ACTIVATIONS:
            raise ValueError(f"unknown MLP activation {act!r}; one of {', '.join(ACTIVATIONS)}")
        self.act = ACTIVATIONS[act]
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))  # (..., dim)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x)).

    The layout of a CLIP encoder layer too (``layer_norm1``, ``self_attn``,
    ``layer_norm2``, ``mlp``), so CLIP's weights load into it
    (:mod:`vidmask.models.hf_clip`) with ``act="quick_gelu"``.
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, act: str = "gelu"):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        x = x + self.attn(self.norm1(x), attn_mask=attn_mask)  # (B, M, C)
        return x + self.mlp(self.norm2(x))  # (B, M, C)

    def attention_map(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """The head-averaged attention probabilities this block computes on its input x [B,M,C] -> [B,M,M]."""
        return self.attn.weights(self.norm1(x), attn_mask)  # (B, M, M)


def init_weights(module: nn.Module) -> None:
    """ViT-style init: truncated-normal linears, unit LayerNorms."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def count_params(module: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


