"""STM's text-filled reconstruction decoder (Wu et al., CVPR 2025).

STM builds on UMT and adds "a decoder [that] leverages semantic information
to enhance the spatio-temporal representations of masked tokens" (STM
README): where an MAE decoder puts one learned mask token, STM's decoder
puts the clip's **text feature** (projected to the decoder width) plus the
position embedding, so the masked positions start from what the caption says
about the clip. The decoder reads the student's kept-token features, runs a
couple of Blocks and predicts the teacher's token features at every position.

Loss positions: the **masked** ones by default. STM's point is that "the
masked target and the reconstruction target" must be aligned, and its
decoder exists to reconstruct masked tokens; the visible ones are already
aligned to the teacher by UMT's ``align_loss``. ``positions="all"`` scores
every position (an ablation).
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from vidmask.objectives.relevance import TokenDecoder


class StmDecoder(TokenDecoder):
    """(kept [B,K,C], ids_keep [B,K], text [B,E]) -> predicted teacher tokens [B, T*N, D]."""

    def __init__(self, in_dim: int, text_dim: int, out_dim: int, dim: int = 192, depth: int = 2,
                 heads: int = 3, frames: int = 8, grid: int = 8, mlp_ratio: float = 4.0):
        super().__init__(in_dim, out_dim, dim, depth, heads, frames, grid, mlp_ratio)
        self.text_proj = nn.Linear(text_dim, dim)
        nn.init.trunc_normal_(self.text_proj.weight, std=0.02)
        nn.init.zeros_(self.text_proj.bias)

    def forward(self, kept: Tensor, ids_keep: Tensor, text: Tensor, frames: int, tokens: int) -> Tensor:
        filler = self.text_proj(text.to(kept.dtype)).unsqueeze(1)  # (B, 1, dim) the caption fills every masked slot
        return self.decode(kept, ids_keep, filler, frames, tokens)  # (B, L, D)


def stm_decoder_loss(pred: Tensor, teacher_tokens: Tensor, keep: Tensor,
                     positions: Literal["masked", "all"] = "masked") -> dict[str, Tensor]:
    """Mean ``2 - 2 cos`` between pred [B,T*N,D] and the normalised teacher tokens [B,T,N,D].

    keep: bool[B,T,N] (True = the encoder saw it); with ``positions="masked"``
    only tokens with keep False count.
    """
    if positions not in ("masked", "all"):
        raise ValueError(f"positions must be 'masked' or 'all', got {positions!r}")
    B = pred.shape[0]
    target = F.normalize(teacher_tokens.detach().flatten(1, 2).float(), dim=-1)  # (B, L, D)
    cos = (F.normalize(pred.float(), dim=-1) * target).sum(-1)  # (B, L)
    weight = (~keep).reshape(B, -1).float() if positions == "masked" else cos.new_ones(cos.shape)  # (B, L)
    return {"stm_loss": ((2 - 2 * cos) * weight).sum() / weight.sum().clamp_min(1.0)}
