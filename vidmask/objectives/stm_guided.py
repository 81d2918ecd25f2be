"""`stm-guided`: vidmask's text-filled reconstruction decoder, its own reading of STM (Wu et al., CVPR 2025).

Not the official decoder: ``stm`` (``vidmask.objectives.stm_decoder``) is
STM's as its authors ran it (one light decoder per aligned layer with ILA
message passing, the text [CLS] state in every masked slot, **all** tokens
scored against the teacher's last layers). This is the decoder vidmask
called ``stm`` before it had the official one, kept with the ``stm-guided``
masker and recipe (``docs/fidelity.md``, STM, "stm-guided"): a single
decoder scoring the masked positions by default.

Where an MAE decoder puts one learned mask token, it puts the clip's **text
feature** (the unit joint-space feature, projected to the decoder width) plus
the position embedding, so the masked positions start from what the caption
says about the clip. The decoder reads the student's kept-token features,
runs a couple of Blocks and predicts the teacher's token features at every
position.

Loss positions: the **masked** ones by default (the visible ones are aligned
to the teacher by UMT's ``align_loss`` in the recipe); ``positions: all``
scores every position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor, nn

from vidmask.config import ConfigError
from vidmask.models.decoder import TokenDecoder
from vidmask.objectives.base import Objective, ObjectiveConfig, ObjectiveEnv, StepContext, register_objective
from vidmask.objectives.token_loss import token_cosine_loss


class StmGuidedDecoder(TokenDecoder):
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


def stm_guided_loss(pred: Tensor, teacher_tokens: Tensor, keep: Tensor,
                    positions: Literal["masked", "all"] = "masked") -> dict[str, Tensor]:
    """Mean ``2 - 2 cos`` between pred [B,T*N,D] and the normalised teacher tokens [B,T,N,D]
    (:func:`~vidmask.objectives.token_loss.token_cosine_loss`), on the masked positions by default."""
    return {"stm-guided_loss": token_cosine_loss(pred, teacher_tokens, keep, positions)}


@dataclass
class StmGuidedConfig(ObjectiveConfig):
    decoder_dim: int = 128  # width of the decoder
    positions: str = "masked"  # which positions the loss scores: masked | all (an ablation)

    def __post_init__(self):
        if self.decoder_dim < 1:
            raise ConfigError("loss.stm-guided.decoder_dim must be >= 1")
        if self.positions not in ("masked", "all"):
            raise ConfigError(f"loss.stm-guided.positions must be masked or all, got {self.positions!r}")


@register_objective("stm-guided", StmGuidedConfig)
class StmGuided(Objective):
    """vidmask's text-filled decoder: the teacher's tokens predicted from the kept student tokens and the caption."""

    needs_teacher = True

    def __init__(self, cfg: StmGuidedConfig, env: ObjectiveEnv):
        super().__init__()
        self.positions = cfg.positions
        self.decoder = StmGuidedDecoder(env.model.cfg.dim, env.model.cfg.embed_dim, env.teacher.token_dim,
                                        dim=cfg.decoder_dim, depth=2, heads=4, frames=env.frames, grid=env.grid)

    def forward(self, ctx: StepContext) -> dict[str, Tensor]:
        pred = self.decoder(ctx.feats, ctx.masking.ids_keep, ctx.text_feat, ctx.frames, ctx.tokens)  # (B, T*N, D)
        return stm_guided_loss(pred, ctx.teacher_out.tokens, ctx.masking.keep, self.positions)
