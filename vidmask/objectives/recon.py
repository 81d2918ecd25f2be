"""ClusterSTM's visual reconstruction: the teacher's features of the masked tokens, from the kept ones.

The ClusterSTM summary trains with three losses: this one ("the features of
masked tokens reconstructed from the kept ones"), the video-text contrastive
loss and the relevance reconstruction. A light MAE-style decoder
(:class:`~vidmask.models.decoder.MaskTokenDecoder`: the kept student
features at their positions, one learned mask token at every masked one,
space-time position embeddings, a few blocks) predicts the frozen teacher's
token features at every position; the loss is ``2 - 2 cos`` to the
normalised teacher tokens on the **masked** positions only (the kept ones
are what the encoder saw; scoring them too is ``positions: all``).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from vidmask.config import ConfigError
from vidmask.models.decoder import MaskTokenDecoder
from vidmask.objectives.base import (
    RECON_TRUNK, Objective, ObjectiveConfig, ObjectiveEnv, StepContext, register_objective,
)
from vidmask.objectives.token_loss import token_cosine_loss


@dataclass
class ReconConfig(ObjectiveConfig):
    decoder_dim: int = 128  # width of the reconstruction decoder
    depth: int = 2  # its blocks
    positions: str = "masked"  # which positions the loss scores: masked | all

    def __post_init__(self):
        if self.decoder_dim < 1 or self.depth < 1:
            raise ConfigError("loss.recon.decoder_dim and loss.recon.depth must be >= 1")
        if self.positions not in ("masked", "all"):
            raise ConfigError(f"loss.recon.positions must be masked or all, got {self.positions!r}")


@register_objective("recon", ReconConfig)
class Recon(Objective):
    """Masked-token teacher features from the kept student tokens through a light mask-token decoder."""

    needs_teacher = True

    def __init__(self, cfg: ReconConfig, env: ObjectiveEnv):
        super().__init__()
        self.positions = cfg.positions
        self.decoder = MaskTokenDecoder(env.model.cfg.dim, env.teacher.token_dim, dim=cfg.decoder_dim,
                                        depth=cfg.depth, heads=4, frames=env.frames, grid=env.grid)

    def forward(self, ctx: StepContext) -> dict[str, Tensor]:
        hidden = ctx.shared(RECON_TRUNK, lambda: self.decoder.trunk(ctx.feats, ctx.masking.ids_keep, ctx.frames,
                                                              ctx.tokens))  # (B, T*N, decoder_dim)
        pred = self.decoder.head(hidden)  # (B, T*N, D)
        return {"recon_loss": token_cosine_loss(pred, ctx.teacher_out.tokens, ctx.masking.keep, self.positions)}
