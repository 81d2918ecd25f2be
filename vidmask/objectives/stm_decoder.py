"""`stm`: STM's decoders and distillation loss, as its authors ran them (Wu et al., CVPR 2025; ``May2333/STM``).

STM's README: "a decoder leverages semantic information to enhance the
spatio-temporal representations of masked tokens". In the official code
(``docs/fidelity.md``, STM, cites each piece) that is, for each of the
student's last k blocks (STM: 6) on the **kept** tokens (the first of the two
encoder passes, ``vidmask.tasks.pretrain``):

1. the block's output through the encoder's final norm at the kept positions,
   the caption's pooled text state (STM: the text encoder's [CLS] hidden
   state; vidmask's tower is mean-pooled, so its pooled state, the one the
   text head projects, through a Linear when its width differs from the
   student's) in **every masked slot**, and the position embedding added
   everywhere (:func:`stm_decoder_inputs`);
2. one light decoder per block (:class:`StmLayerDecoder`): ILA message passing
   between adjacent frames (:class:`~vidmask.models.ila.Ila`) computed on the
   same tokens with the masked slots left at zero, added through two Linears,
   then Linear + LayerNorm to the teacher's width;
3. **all** T*N tokens ("input all token including visible and invisible")
   scored against the teacher's last k layers, decoder i to teacher layer i,
   by the mean ``2 - 2 cos`` of unit vectors (UMT's ``l2`` alignment)
   (:func:`stm_loss`).

The position table is the student's own, detached (as vidmask's UMT heads;
STM adds a fixed sinusoidal table). STM's teacher is ActionCLIP, whose last 6
layers it refines with ActionCLIP's temporal transformer; vidmask has neither
those weights nor that transformer: ``layers`` teacher layers come from
``TeacherOut.layers`` as the teacher gives them (hf-clip: up to its depth;
lit-effnet: its one map, so ``layers: 1``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from vidmask.config import ConfigError
from vidmask.models.ila import Ila
from vidmask.objectives.base import Objective, ObjectiveConfig, ObjectiveEnv, StepContext, register_objective
from vidmask.tokens import scatter_kept


def _xavier(module: nn.Module) -> None:
    """Every Linear xavier-uniform with zero bias: the init STM's decoders end up with (its vision
    transformer's ``_init_weights`` runs over them after they zero their skip Linears)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class StmLayerDecoder(nn.Module):
    """STM's ``Linear_Decoder``: (filled [B,L,C], visible [B,L,C], frames T) -> [B,T,N,D].

    filled: the student's tokens at kept positions and the text state at masked ones, plus positions;
    visible: the same with zeros at masked positions (what the ILA message passing reads).
    """

    def __init__(self, dim: int, out_dim: int, channels: int = 256, jitter: float = 0.2):
        super().__init__()
        self.ila = Ila(dim, channels, jitter)
        self.skip_aligned = nn.Linear(dim, dim)  # STM's temporal_skip_align_fc
        self.skip_interactive = nn.Linear(dim, dim)  # STM's temporal_skip_fc
        self.head = nn.Linear(dim, out_dim)
        self.norm = nn.LayerNorm(out_dim)
        _xavier(self)

    def forward(self, filled: Tensor, visible: Tensor, frames: int) -> Tensor:
        B, L, C = filled.shape
        x = filled.reshape(B, frames, L // frames, C)  # (B, T, N, C)
        aligned, interactive = self.ila(visible.reshape(B, frames, L // frames, C))  # (B, T, N, C) each
        x = x + self.skip_aligned(aligned) + self.skip_interactive(interactive)  # (B, T, N, C)
        return self.norm(self.head(x))  # (B, T, N, D)


def stm_decoder_inputs(student: Tensor, ids_keep: Tensor, text: Tensor, pos: Tensor) -> tuple[Tensor, Tensor]:
    """A decoder's two inputs: student float[B,K,C] (normed, at ids_keep long[B,K]), text float[B,C],
    pos float[L,C] -> (filled [B,L,C]: student at kept, text at masked, plus pos; visible [B,L,C]:
    student at kept, 0 at masked, plus pos)."""
    B, L, C = student.shape[0], pos.shape[0], student.shape[-1]
    pos = pos.to(student.dtype)
    filled = scatter_kept(student, ids_keep, text.to(student.dtype).unsqueeze(1).expand(B, L, C))  # (B, L, C)
    visible = scatter_kept(student, ids_keep, student.new_zeros(B, L, C))  # (B, L, C)
    return filled + pos, visible + pos  # (B, L, C), (B, L, C)


def stm_loss(preds: list[Tensor], targets: list[Tensor]) -> dict[str, Tensor]:
    """Mean over layers and **all** tokens of ``2 - 2 cos(pred_i, target_i)``: preds, targets k x float[B,T,N,D]
    (targets detached; both L2-normalised)."""
    if len(preds) != len(targets):
        raise ValueError(f"stm_loss: {len(preds)} decoder outputs but {len(targets)} teacher layers")
    losses = []
    for pred, target in zip(preds, targets):
        cos = (F.normalize(pred.float(), dim=-1) * F.normalize(target.detach().float(), dim=-1)).sum(-1)  # (B, T, N)
        losses.append((2 - 2 * cos).mean())
    return {"stm_loss": sum(losses) / len(losses)}


@dataclass
class StmConfig(ObjectiveConfig):
    # the student's last k blocks decoded, decoder i against the teacher's layer i of its last k (STM: 6;
    # more than 1 needs a teacher with k layers, hf-clip, and no teacher cache)
    layers: int = 1
    channels: int = 256  # width of each decoder's ILA convolutions (STM: 256; a multiple of 8)
    jitter: float = 0.2  # ILA's jitter of the window points (STM: 0.2)

    def __post_init__(self):
        if self.layers < 1:
            raise ConfigError("loss.stm.layers must be >= 1")
        if self.channels < 8 or self.channels % 8:
            raise ConfigError(f"loss.stm.channels must be a multiple of 8, got {self.channels}")
        if self.jitter < 0:
            raise ConfigError(f"loss.stm.jitter must be >= 0, got {self.jitter}")


@register_objective("stm", StmConfig)
class Stm(Objective):
    """STM's per-layer decoders: every token of the clip, from the kept student tokens and the caption,
    against the teacher's last ``layers`` layers."""

    needs_teacher = True

    def __init__(self, cfg: StmConfig, env: ObjectiveEnv):
        super().__init__()
        depth, most = env.model.cfg.depth, getattr(env.teacher, "max_layers", 1)
        if cfg.layers > depth:
            raise ConfigError(f"loss.stm.layers={cfg.layers} exceeds the student's model.depth={depth}")
        if cfg.layers > most:
            raise ConfigError(f"loss.stm.layers={cfg.layers} needs the teacher's last {cfg.layers} layers; teacher "
                              f"{getattr(env.teacher, 'name', '')!r} gives at most {most} (max_layers)")
        if env.frames < 2 or env.grid < 4:
            raise ConfigError(f"loss.stm passes messages between adjacent frames on the patch grid: it needs at "
                              f"least 2 token frames and a grid side >= 4, got {env.frames} and {env.grid}")
        dim, width = env.model.cfg.dim, env.model.text.width
        self.layers = cfg.layers
        # STM's text and student widths are both 768; vidmask's may differ
        self.text_proj = nn.Identity() if width == dim else nn.Linear(width, dim)
        _xavier(self.text_proj)
        self.decoders = nn.ModuleList(StmLayerDecoder(dim, env.teacher.token_dim, cfg.channels, cfg.jitter)
                                      for _ in range(cfg.layers))

    def student_layers(self) -> int:
        return self.layers

    def teacher_layers(self) -> int:
        return self.layers if self.layers > 1 else 0

    def forward(self, ctx: StepContext) -> dict[str, Tensor]:
        visual = ctx.model.visual
        pos = visual.pos_embed(ctx.frames, math.isqrt(ctx.tokens)).flatten(0, 1).detach()  # (L, C)
        text = self.text_proj(ctx.text_pooled)  # (B, C)
        own = ctx.layers[len(ctx.layers) - self.layers:]  # k x (B, K, C), oldest first
        out = ctx.teacher_out
        if self.layers > 1:
            if out.layers is None or len(out.layers) < self.layers:
                got = 1 if out.layers is None else len(out.layers)
                raise ValueError(f"loss.stm.layers={self.layers}: the teacher gave {got} layers")
            targets = out.layers[len(out.layers) - self.layers:]  # k x (B, T, N, D), oldest first
        else:
            targets = [out.tokens]  # (B, T, N, D)
        preds = []
        for decoder, x in zip(self.decoders, own):
            filled, visible = stm_decoder_inputs(visual.final_norm(x), ctx.masking.ids_keep, text, pos)  # (B, L, C)
            preds.append(decoder(filled, visible, ctx.frames))  # (B, T, N, D)
        return stm_loss(preds, targets)
