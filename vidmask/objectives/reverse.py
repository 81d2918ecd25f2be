"""Time-order negatives: the same clip played backwards (or shuffled) as a negative for its own caption.

The three papers argue that masking across time makes the encoder model
motion; a contrastive loss alone does not ask for it, since every other clip
in a batch already differs in appearance. Following TACT ("Test of Time",
Bagad et al., CVPR 2023), each clip's time-reversed version joins the
candidates of its own caption as a hard negative: to tell "moves left" from
its reverse, the video feature must depend on the order of frames.

The reversed clip is encoded with the *same* tokens the contrastive term reads
(the kept ones; with ``stm``, the masked set: ``StepContext.video_ids``), mirrored in time
(token (t, n) of the original is token (T-1-t, n) of the reversed clip; with
tubelets, each token's own frames are reversed as well), so it holds exactly
the same patches and differs only in their time order:
an encoder that ignores time gives both the same feature and pays ``log 2``
for it. ``order: shuffle`` permutes the frames instead (one draw per clip from
the step's generator; a permutation equal to the identity is redrawn as the
reversal). The negative's logit is shifted by ``log(negative_weight)``: TACT's
weighting of the time-order negatives in the text-to-video softmax.

Cost: one more pass of the student's encoder (forward and backward) over the
kept tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from vidmask.config import ConfigError
from vidmask.objectives.base import Objective, ObjectiveConfig, ObjectiveEnv, StepContext, register_objective
from vidmask.precision import float32_math


def time_order_ids(ids_keep: Tensor, tokens: int, order: Tensor) -> tuple[Tensor, Tensor]:
    """Kept indices [B,K] of a clip mapped through a frame order (order long[B,T]: for each new frame
    position s, the original frame order[b, s]) -> (the new flat indices sorted ascending [B,K], for
    each of them its column in ``ids_keep`` [B,K], to carry per-token values along)."""
    t, n = ids_keep // tokens, ids_keep % tokens  # (B, K), (B, K)
    where = torch.argsort(order, dim=1)  # (B, T): the new position of each original frame
    moved = where.gather(1, t) * tokens + n  # (B, K)
    return moved.sort(dim=1)  # values (B, K), indices (B, K)


def tubelet_frame_order(order: Tensor, tubelet: int, reverse: bool) -> Tensor:
    """The frame order [B,T*k] that moves tubelets of k frames by the token order ``order`` long[B,T]:
    reversed, each tubelet's frames reversed too (the clip played backwards); otherwise each tubelet
    moved whole, its frames in their own order."""
    B, T = order.shape
    if reverse:
        return torch.arange(T * tubelet - 1, -1, -1, device=order.device).expand(B, T * tubelet)  # (B, T*k)
    inner = torch.arange(tubelet, device=order.device)  # (k,)
    return (order.unsqueeze(-1) * tubelet + inner).flatten(1)  # (B, T*k)


def reorder_frames(video: Tensor, order: Tensor) -> Tensor:
    """video [B,T,3,H,W] with its frames in ``order`` long[B,T] -> [B,T,3,H,W]."""
    index = order.view(*order.shape, 1, 1, 1).expand_as(video)  # (B, T, 3, H, W)
    return video.gather(1, index)


@dataclass
class ReverseConfig(ObjectiveConfig):
    order: str = "reverse"  # reverse (TACT) | shuffle: how the negative's frames are ordered
    negative_weight: float = 1.0  # TACT's weight of the time-order negative in the softmax (> 0)

    def __post_init__(self):
        if self.order not in ("reverse", "shuffle"):
            raise ConfigError(f"loss.reverse.order must be reverse or shuffle, got {self.order!r}")
        if not (math.isfinite(self.negative_weight) and self.negative_weight > 0):
            raise ConfigError(f"loss.reverse.negative_weight must be a finite number > 0, got {self.negative_weight}")


@register_objective("reverse", ReverseConfig)
class Reverse(Objective):
    """Text-to-video contrast with each clip's time-reordered self as an extra negative of its caption."""

    def __init__(self, cfg: ReverseConfig, env: ObjectiveEnv):
        super().__init__()
        self.order, self.log_weight = cfg.order, math.log(cfg.negative_weight)

    def frame_order(self, B: int, T: int, generator, device) -> Tensor:
        """long[B,T]: the original frame at each position of the negative."""
        reverse = torch.arange(T - 1, -1, -1, device=device).expand(B, T)  # (B, T)
        if self.order == "reverse":
            return reverse
        perm = torch.argsort(torch.rand(B, T, generator=generator, device=device), dim=1)  # (B, T)
        identity = (perm == torch.arange(T, device=device)).all(1, keepdim=True)  # (B, 1)
        return torch.where(identity, reverse, perm)  # an unchanged order would be no negative

    def forward(self, ctx: StepContext) -> dict[str, Tensor]:
        video, model = ctx.video, ctx.model  # (B, F, 3, H, W), F = T*k frames for tubelets of k
        B, T = video.shape[0], ctx.frames  # T token time steps
        order = self.frame_order(B, T, ctx.generator, video.device)  # (B, T)
        ids, columns = time_order_ids(ctx.video_ids, ctx.tokens, order)  # (B, K), (B, K)
        frames = tubelet_frame_order(order, video.shape[1] // T, self.order == "reverse")  # (B, F)
        embedded = model.visual.embed_kept(reorder_frames(video, frames), ids)  # (B, K, C): the same patches
        weight = ctx.video_weight  # (B, K) or None, in video_ids' order: carried along
        weight = None if weight is None else weight.gather(1, columns)  # (B, K)
        negative = model.project_video(model.visual.forward_features(embedded, None, weight).tokens)  # (B, E)
        scale = model.temperature_scale()
        with float32_math(video.device.type):
            logits = scale.float() * ctx.text_feat.float() @ ctx.video_feat.float().T  # (B, B): caption i, clip j
            own_negative = scale.float() * (ctx.text_feat.float() * negative.float()).sum(-1)  # (B,)
            logits = torch.cat([logits, (own_negative + self.log_weight).unsqueeze(1)], 1)  # (B, B+1)
            target = torch.arange(B, device=video.device)  # (B,)
            loss = F.cross_entropy(logits, target)
            # how often the caption prefers its clip to the clip's time-reordered self
            # (the similarities themselves, before the negative's log-weight shift)
            order_acc = (logits.diagonal() > logits[:, -1] - self.log_weight).float().mean().detach()
        return {"reverse_loss": loss, "time_order_acc": 100.0 * order_acc}
