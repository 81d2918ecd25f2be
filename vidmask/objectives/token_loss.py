"""The token-feature distance the reconstruction objectives share: ``2 - 2 cos`` on chosen positions.

UMT's alignment, STM's decoder and ClusterSTM's masked-feature reconstruction
all compare predicted tokens with the frozen teacher's as L2-normalised
vectors: ``2 - 2 cos`` is the squared distance of unit vectors (UMT's ``l2``
alignment), bounded in [0, 4] whatever the teacher's feature scale.
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor


def token_cosine_loss(pred: Tensor, teacher_tokens: Tensor, keep: Tensor,
                      positions: Literal["masked", "all"] = "masked") -> Tensor:
    """Mean ``2 - 2 cos`` between pred [B,T*N,D] and the normalised teacher tokens [B,T,N,D].

    keep: bool[B,T,N] (True = the encoder saw it); with ``positions="masked"``
    only tokens with keep False count, with ``"all"`` every position.
    """
    if positions not in ("masked", "all"):
        raise ValueError(f"positions must be 'masked' or 'all', got {positions!r}")
    B = pred.shape[0]
    target = F.normalize(teacher_tokens.detach().flatten(1, 2).float(), dim=-1)  # (B, L, D)
    cos = (F.normalize(pred.float(), dim=-1) * target).sum(-1)  # (B, L)
    weight = (~keep).reshape(B, -1).float() if positions == "masked" else cos.new_ones(cos.shape)  # (B, L)
    return ((2 - 2 * cos) * weight).sum() / weight.sum().clamp_min(1.0)
