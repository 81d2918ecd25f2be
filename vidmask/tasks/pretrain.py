"""Masked video-text pretraining: mask, encode the kept tokens, align with text."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vidmask.masking.base import Masker
from vidmask.masking.saliency import colour_saliency
from vidmask.models.video_text import VideoTextModel
from vidmask.objectives.vtc import vtc_loss


def masker_input(model: VideoTextModel, video: Tensor) -> Tensor:
    """What a strategy clusters or ranks when no teacher is configured:
    per-patch normalised pixels (zero mean, unit norm), [B,T,N,p*p*3]."""
    patches = model.visual.patchify(video.float())  # (B, T, N, P)
    patches = patches - patches.mean(-1, keepdim=True)  # (B, T, N, P)
    return F.normalize(patches, dim=-1)  # (B, T, N, P)


class PretrainTask(nn.Module):
    """The pretraining step's forward: returns named `*_loss` terms and a report.

    The trainer sums the `*_loss` terms and knows nothing of masking.
    """

    def __init__(self, model: VideoTextModel, masker: Masker):
        super().__init__()
        self.model = model
        self.masker = masker
        # a learnable strategy (stm) is a module and trains with the model
        if isinstance(masker, nn.Module):
            self.add_module("masker_module", masker)

    def forward(self, batch: dict, generator: torch.Generator | None = None):
        """batch: {"video": float[B,T,3,H,W], "caption": list of B str, ...}."""
        video, captions = batch["video"], batch["caption"]  # (B, T, 3, H, W)
        with torch.autocast(video.device.type, enabled=False):
            # no teacher yet: a colour-contrast stand-in for CLS attention, for
            # the strategies that rank by it (umt, mascot-*, stm); others ignore it
            attn = colour_saliency(self.model.visual.patchify(video.float()))  # (B, T, N)
            out = self.masker(masker_input(self.model, video), attn=attn, generator=generator)
        if out.ids_keep is None:
            raise ValueError(f"mask strategy {self.masker.name!r} cannot drop tokens; pretraining needs drop mode")
        st_weight = (out.extra or {}).get("st_weight")  # (B, K) or None
        v = self.model.encode_video(video, out.ids_keep, st_weight)  # (B, E): only kept patches embedded
        t = self.model.encode_text(captions)  # (B, E)
        losses = vtc_loss(v, t, self.model.temperature_scale())
        report = {"kept_tokens": float(out.ids_keep.shape[1]), "scale": float(self.model.temperature_scale().detach())}
        return losses, report
