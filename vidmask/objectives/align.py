"""UMT's unmasked-teacher alignment (Li et al. 2023, "Unmasked Teacher").

The student sees only the kept tokens; its last k layers, through small
per-layer heads, are aligned to the frozen teacher's features at the *same*
(kept) positions: both sides L2-normalised, loss = mean of ``2 - 2 cos``
(the squared distance of unit vectors, UMT's ``l2`` alignment). Only the
visible tokens are aligned, which is what lets the student skip the masked
ones entirely. The teacher gives one token map, so every aligned student
layer targets the same teacher features: UMT itself aligns the last 6
student layers to the teacher's last 6 layers, through heads with a position
embedding and a LayerNorm, which vidmask does not yet (``docs/fidelity.md``,
UMT).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from vidmask.config import ConfigError
from vidmask.models.blocks import init_weights
from vidmask.objectives.base import Objective, ObjectiveConfig, ObjectiveEnv, StepContext, register_objective
from vidmask.tokens import gather_tokens


class AlignHead(nn.Module):
    """One small decoder per aligned student layer: [B,K,C] -> [B,K,D].

    LayerNorm + Linear (``hidden=0``) or LayerNorm + 2-layer MLP; the norm
    puts every layer's features on one scale before the map to the teacher.
    """

    def __init__(self, student_dim: int, teacher_dim: int, layers: int = 1, hidden: int = 0):
        super().__init__()
        if layers < 1:
            raise ValueError(f"AlignHead needs layers >= 1, got {layers}")

        def one() -> nn.Module:
            if hidden:
                return nn.Sequential(nn.LayerNorm(student_dim), nn.Linear(student_dim, hidden), nn.GELU(),
                                     nn.Linear(hidden, teacher_dim))
            return nn.Sequential(nn.LayerNorm(student_dim), nn.Linear(student_dim, teacher_dim))

        self.heads = nn.ModuleList(one() for _ in range(layers))
        init_weights(self)

    def __len__(self) -> int:
        return len(self.heads)

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        if len(feats) != len(self.heads):
            raise ValueError(f"AlignHead has {len(self.heads)} heads but got {len(feats)} student layers")
        return [h(f) for h, f in zip(self.heads, feats)]  # k x (B, K, D)


def align_loss(student_feats: list[Tensor], teacher_tokens: Tensor, ids_keep: Tensor,
               heads: AlignHead) -> dict[str, Tensor]:
    """Mean over layers and kept tokens of ``2 - 2 cos(head_i(student_i), teacher)``.

    student_feats: the last k student layers on the kept tokens, k x [B,K,C];
    teacher_tokens: float[B,T,N,D] (no gradient); ids_keep: long[B,K] flat
    indices into T*N, the positions the student features came from.
    """
    target = gather_tokens(teacher_tokens.detach().flatten(1, 2), ids_keep)  # (B, K, D)
    target = F.normalize(target.float(), dim=-1)  # (B, K, D)
    losses = []
    for pred in heads(student_feats):
        pred = F.normalize(pred.float(), dim=-1)  # (B, K, D)
        losses.append((2 - 2 * (pred * target).sum(-1)).mean())
    return {"align_loss": sum(losses) / len(losses)}


@dataclass
class AlignConfig(ObjectiveConfig):
    layers: int = 1  # last k student blocks aligned to the teacher

    def __post_init__(self):
        if self.layers < 1:
            raise ConfigError("loss.align.layers must be >= 1")


@register_objective("align", AlignConfig)
class Align(Objective):
    """UMT's unmasked-teacher alignment of the last ``layers`` student blocks on the kept tokens."""

    needs_teacher = True

    def __init__(self, cfg: AlignConfig, env: ObjectiveEnv):
        super().__init__()
        self.layers = cfg.layers
        self.head = AlignHead(env.model.cfg.dim, env.teacher.token_dim, layers=cfg.layers)

    def student_layers(self) -> int:
        return self.layers

    def forward(self, ctx: StepContext) -> dict[str, Tensor]:
        own = ctx.layers[len(ctx.layers) - self.layers:]  # k x (B, K, C): the last k blocks
        return align_loss(own, ctx.teacher_out.tokens, ctx.masking.ids_keep, self.head)
