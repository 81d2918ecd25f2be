"""UMT's unmasked-teacher alignment (Li et al. 2023, "Unmasked Teacher").

The student sees only the kept tokens; its last k layers, through small
per-layer heads, are aligned to the frozen teacher's features at the *same*
(kept) positions: both sides L2-normalised, loss = mean over layers and kept
tokens of ``2 - 2 cos`` (the squared distance of unit vectors, UMT's ``l2``
alignment). Only the visible tokens are aligned, which is what lets the
student skip the masked ones entirely.

Two choices, each with UMT's form as an option (``docs/fidelity.md``, UMT):

* ``targets``: ``"last"`` aligns every student layer to the teacher's one
  token map (``TeacherOut.tokens``); ``"layers"`` is UMT's: student layer i
  (of the last k, oldest first) to teacher layer i of the teacher's last k
  (``TeacherOut.layers``, each through the teacher's final norm and
  projection). ``"layers"`` needs a teacher that gives k layers (hf-clip:
  its depth; lit-effnet: 1) and no teacher cache, which stores one map.
* ``head``: ``"ln-linear"`` is LayerNorm + Linear on the raw block output;
  ``"umt"`` is UMT's decoder: the encoder's final norm, the position
  embedding of each kept token added, then Linear + LayerNorm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from vidmask.config import ConfigError
from vidmask.models.blocks import init_weights
from vidmask.objectives.base import Objective, ObjectiveConfig, ObjectiveEnv, StepContext, register_objective
from vidmask.tokens import gather_tokens

TARGETS = ("last", "layers")
HEADS = ("ln-linear", "umt")


class AlignHead(nn.Module):
    """One small decoder per aligned student layer: [B,K,C] -> [B,K,D].

    ``kind="ln-linear"``: LayerNorm + Linear (``hidden=0``) or LayerNorm +
    2-layer MLP; the norm puts every layer's features on one scale before the
    map to the teacher. ``kind="umt"``: Linear + LayerNorm, UMT's
    ``Linear_Decoder``, whose input is already normed and position-embedded
    (:func:`umt_head_inputs`).
    """

    def __init__(self, student_dim: int, teacher_dim: int, layers: int = 1, hidden: int = 0,
                 kind: str = "ln-linear"):
        super().__init__()
        if layers < 1:
            raise ValueError(f"AlignHead needs layers >= 1, got {layers}")
        if kind not in HEADS:
            raise ValueError(f"AlignHead kind must be one of {', '.join(HEADS)}, got {kind!r}")
        if kind == "umt" and hidden:
            raise ValueError("AlignHead kind='umt' is Linear + LayerNorm: hidden must be 0")
        self.kind = kind

        def one() -> nn.Module:
            if kind == "umt":
                return nn.Sequential(nn.Linear(student_dim, teacher_dim), nn.LayerNorm(teacher_dim))
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


def umt_head_inputs(layers: list[Tensor], norm: nn.Module, pos: Tensor, ids_keep: Tensor) -> list[Tensor]:
    """UMT's decoder inputs: each student layer through the encoder's final norm, plus the position
    embedding of its kept tokens.

    layers: k x [B,K,C] raw block outputs on the kept tokens; norm: the
    encoder's final norm; pos: float[L,C] the position table of the clip's
    L = T*N tokens; ids_keep: long[B,K]. UMT adds a fixed sinusoidal table
    here; vidmask adds the student's own table, detached, so the heads read
    where each token sits without the loss moving the encoder's positions
    through this side path.
    """
    pos_kept = pos.detach()[ids_keep]  # (B, K, C)
    return [norm(x) + pos_kept.to(x.dtype) for x in layers]  # k x (B, K, C)


def align_loss(student_feats: list[Tensor], teacher_tokens: Tensor | list[Tensor], ids_keep: Tensor,
               heads: AlignHead) -> dict[str, Tensor]:
    """Mean over layers and kept tokens of ``2 - 2 cos(head_i(student_i), teacher_i)``.

    student_feats: the last k student layers on the kept tokens, k x [B,K,C];
    teacher_tokens: float[B,T,N,D], the one map every layer targets, or k
    maps, k x [B,T,N,D], student layer i to map i (no gradient); ids_keep:
    long[B,K] flat indices into T*N, the positions the student features came
    from.
    """
    maps = teacher_tokens if isinstance(teacher_tokens, (list, tuple)) else [teacher_tokens]
    if len(maps) not in (1, len(student_feats)):
        raise ValueError(f"align_loss: {len(student_feats)} student layers but {len(maps)} teacher maps")
    targets = []
    for m in maps:
        target = gather_tokens(m.detach().flatten(1, 2), ids_keep)  # (B, K, D)
        targets.append(F.normalize(target.float(), dim=-1))  # (B, K, D)
    losses = []
    for i, pred in enumerate(heads(student_feats)):
        pred = F.normalize(pred.float(), dim=-1)  # (B, K, D)
        target = targets[i if len(targets) > 1 else 0]  # (B, K, D)
        losses.append((2 - 2 * (pred * target).sum(-1)).mean())
    return {"align_loss": sum(losses) / len(losses)}


@dataclass
class AlignConfig(ObjectiveConfig):
    layers: int = 1  # last k student blocks aligned to the teacher (UMT: 6)
    # "last": every aligned layer targets the teacher's one map (`tokens`); "layers": UMT's, student layer i
    # to teacher layer i of the teacher's last k (needs a teacher with k layers, e.g. hf-clip, and no cache)
    targets: str = "last"
    # "ln-linear": LayerNorm + Linear on the raw block output; "umt": UMT's, the encoder's final norm, the
    # kept tokens' position embedding added, then Linear + LayerNorm
    head: str = "ln-linear"

    def __post_init__(self):
        if self.layers < 1:
            raise ConfigError("loss.align.layers must be >= 1")
        if self.targets not in TARGETS:
            raise ConfigError(f"loss.align.targets must be one of {', '.join(TARGETS)}, got {self.targets!r}")
        if self.head not in HEADS:
            raise ConfigError(f"loss.align.head must be one of {', '.join(HEADS)}, got {self.head!r}")


@register_objective("align", AlignConfig)
class Align(Objective):
    """UMT's unmasked-teacher alignment of the last ``layers`` student blocks on the kept tokens."""

    needs_teacher = True

    def __init__(self, cfg: AlignConfig, env: ObjectiveEnv):
        super().__init__()
        depth = env.model.cfg.depth
        if cfg.layers > depth:
            raise ConfigError(f"loss.align.layers={cfg.layers} exceeds the student's model.depth={depth}")
        most = getattr(env.teacher, "max_layers", 1)
        if cfg.targets == "layers" and cfg.layers > most:
            raise ConfigError(
                f"loss.align.layers={cfg.layers} with targets=layers needs the teacher's last {cfg.layers} layers; "
                f"teacher {getattr(env.teacher, 'name', '')!r} gives at most {most} (max_layers); "
                f"use loss.align.layers<={most} or loss.align.targets=last"
            )
        self.layers, self.targets, self.head_kind = cfg.layers, cfg.targets, cfg.head
        self.head = AlignHead(env.model.cfg.dim, env.teacher.token_dim, layers=cfg.layers, kind=cfg.head)

    def student_layers(self) -> int:
        return self.layers

    def teacher_layers(self) -> int:
        return self.layers if self.targets == "layers" else 0

    def forward(self, ctx: StepContext) -> dict[str, Tensor]:
        own = ctx.layers[len(ctx.layers) - self.layers:]  # k x (B, K, C): the last k blocks
        if self.head_kind == "umt":
            visual = ctx.model.visual
            pos = visual.pos_embed(ctx.frames, math.isqrt(ctx.tokens)).flatten(0, 1)  # (L, C)
            own = umt_head_inputs(own, visual.final_norm, pos, ctx.masking.ids_keep)  # k x (B, K, C)
        out = ctx.teacher_out
        if self.targets == "layers":
            if out.layers is None or len(out.layers) < self.layers:
                got = 1 if out.layers is None else len(out.layers)
                raise ValueError(f"loss.align.layers={self.layers} with targets=layers: the teacher gave {got} layers")
            target = out.layers[len(out.layers) - self.layers:]  # k x (B, T, N, D), oldest first
        else:
            target = out.tokens  # (B, T, N, D)
        return align_loss(own, target, ctx.masking.ids_keep, self.head)
