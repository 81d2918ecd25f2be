"""Arrow of time: the video encoder alone tells a clip from itself played backwards.

A self-supervised task from "Learning and Using the Arrow of Time" (Wei et
al., CVPR 2018), here as an auxiliary objective: the mean of the student's
tokens of a clip and of its time-reversed self (the same kept patches, mirrored
in time, as `reverse` builds them) go through a small head that says which one
plays forward. Unlike `reverse`, nothing here depends on the text side having
learned its direction words first, so it asks the video encoder for the order
of frames directly; a linear head on the *mean* token means the direction has
to be in the feature that retrieval uses.

Cost: one more pass of the student's encoder over the kept tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vidmask.config import ConfigError
from vidmask.models.blocks import init_weights
from vidmask.objectives.base import Objective, ObjectiveConfig, ObjectiveEnv, StepContext, register_objective
from vidmask.objectives.reverse import reorder_frames, time_order_ids, tubelet_frame_order


@dataclass
class ArrowConfig(ObjectiveConfig):
    hidden: int = 256  # the head's hidden width

    def __post_init__(self):
        if self.hidden < 1:
            raise ConfigError(f"loss.arrow.hidden must be >= 1, got {self.hidden}")


@register_objective("arrow", ArrowConfig)
class Arrow(Objective):
    """Binary cross-entropy: forward (1) or reversed (0), from the mean student token."""

    def __init__(self, cfg: ArrowConfig, env: ObjectiveEnv):
        super().__init__()
        dim = env.model.cfg.dim
        self.head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, cfg.hidden), nn.GELU(), nn.Linear(cfg.hidden, 1))
        init_weights(self.head)

    def forward(self, ctx: StepContext) -> dict[str, Tensor]:
        video, model = ctx.video, ctx.model  # (B, F, 3, H, W)
        B, T = video.shape[0], ctx.frames
        order = torch.arange(T - 1, -1, -1, device=video.device).expand(B, T)  # (B, T): reversed
        ids, columns = time_order_ids(ctx.masking.ids_keep, ctx.tokens, order)  # (B, K), (B, K)
        frames = tubelet_frame_order(order, video.shape[1] // T, reverse=True)  # (B, F)
        embedded = model.visual.embed_kept(reorder_frames(video, frames), ids)  # (B, K, C): the same patches
        weight = ctx.masking.token_weight  # (B, K) or None
        weight = None if weight is None else weight.gather(1, columns)  # (B, K)
        backwards = model.visual.forward_features(embedded, None, weight).tokens.mean(1)  # (B, C)
        pooled = torch.cat([ctx.feats.mean(1), backwards])  # (2B, C): forward clips first
        logits = self.head(pooled).squeeze(-1).float()  # (2B,)
        target = torch.cat([torch.ones(B), torch.zeros(B)]).to(logits.device)  # (2B,)
        loss = F.binary_cross_entropy_with_logits(logits, target)
        acc = ((logits > 0).float() == target).float().mean().detach()
        return {"arrow_loss": loss, "arrow_acc": 100.0 * acc}
