"""A light MAE-style token decoder: kept encoder features back onto every position of the clip.

The reconstruction objectives (ClusterSTM's relevance and recon, the
text-filled decoder of ``stm-guided``) share it: kept student features
(projected to ``dim``) go to their positions, a filler the subclass chooses
(a learned mask token, projected text) to the masked ones; space + time
position embeddings are added everywhere, a few ``Block``s run over all
L = T*N positions, and a linear head maps each position to ``out_dim``.
STM's official decoders (``vidmask.objectives.stm_decoder``) are another
design: no blocks, ILA message passing between frames.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vidmask.models.blocks import Block, init_weights
from vidmask.models.pos_embed import space_time_pos
from vidmask.tokens import scatter_kept


class TokenDecoder(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, dim: int, depth: int, heads: int,
                 frames: int, grid: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.dim = dim
        self.embed = nn.Linear(in_dim, dim)
        self.pos_space = nn.Parameter(torch.zeros(grid * grid, dim))  # (N, dim)
        self.pos_time = nn.Parameter(torch.zeros(frames, dim))  # (T, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, out_dim)
        init_weights(self)
        nn.init.trunc_normal_(self.pos_space, std=0.02)
        nn.init.trunc_normal_(self.pos_time, std=0.02)

    def pos_embed(self, frames: int, tokens: int) -> Tensor:
        """[T, N, dim], resampled when the clip differs from the tables' frames / grid."""
        return space_time_pos(self.pos_space, self.pos_time, frames, tokens)  # (T, N, dim)

    def decode(self, kept: Tensor, ids_keep: Tensor, filler: Tensor, frames: int, tokens: int) -> Tensor:
        """kept [B,K,C], ids_keep long[B,K], filler [B or 1, 1 or L, dim] -> [B, L, out_dim]."""
        return self.head(self.hidden(kept, ids_keep, filler, frames, tokens))  # (B, L, out_dim)

    def hidden(self, kept: Tensor, ids_keep: Tensor, filler: Tensor, frames: int, tokens: int) -> Tensor:
        """The normed states before the head, [B, L, dim]: what another head can read (a second target
        decoded from one trunk, ``loss.relevance.decoder=recon``)."""
        B, L = kept.shape[0], frames * tokens
        x = self.embed(kept)  # (B, K, dim)
        full = scatter_kept(x, ids_keep, filler.expand(B, L, self.dim))  # (B, L, dim)
        full = full + self.pos_embed(frames, tokens).flatten(0, 1).to(full.dtype)  # (B, L, dim)
        for blk in self.blocks:
            full = blk(full)  # (B, L, dim)
        return self.norm(full)  # (B, L, dim)


class MaskTokenDecoder(TokenDecoder):
    """A :class:`TokenDecoder` whose masked positions start from one learned mask token (MAE):
    kept [B,K,C], ids_keep long[B,K] -> [B, T*N, out_dim]."""

    def __init__(self, in_dim: int, out_dim: int, dim: int = 128, depth: int = 2, heads: int = 4,
                 frames: int = 8, grid: int = 8, mlp_ratio: float = 4.0):
        super().__init__(in_dim, out_dim, dim, depth, heads, frames, grid, mlp_ratio)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))  # (1, 1, dim)
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def forward(self, kept: Tensor, ids_keep: Tensor, frames: int, tokens: int) -> Tensor:
        return self.decode(kept, ids_keep, self.mask_token, frames, tokens)  # (B, L, out_dim)

    def trunk(self, kept: Tensor, ids_keep: Tensor, frames: int, tokens: int) -> Tensor:
        """The states before the head, [B, L, dim] (:meth:`TokenDecoder.hidden` with the mask token)."""
        return self.hidden(kept, ids_keep, self.mask_token, frames, tokens)  # (B, L, dim)
