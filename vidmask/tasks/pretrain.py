"""Masked video-text pretraining: mask, encode the kept tokens, and sum the paper's objectives.

One task serves every recipe: the loss weights in `LossConfig` pick the
terms (`vtc`, `vtm`, `mlm`, `align`, `relevance`, `stm`), the masker picks
the tokens. A frozen teacher, when configured, supplies what the strategies
and objectives consume from outside:

* ``attn`` for `umt`, `mascot-*` and `stm` (its CLS-to-patch attention);
* the tokens `clusterstm` clusters (its per-token features, L2-normalised:
  lit-effnet's projected last EfficientNet-Lite0 feature map, or hf-clip's
  patch tokens after the final norm and projection);
* the targets of `align`, `relevance` (Algorithm III) and `stm`.

Without a teacher, strategies see per-patch normalised pixels and a
colour-contrast stand-in for attention (`vidmask.masking.saliency`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vidmask.config import LossConfig
from vidmask.masking.base import Masker
from vidmask.masking.saliency import colour_saliency, pixel_tokens
from vidmask.models.fusion import FusionEncoder
from vidmask.models.video_text import VideoTextModel
from vidmask.objectives.align import AlignHead, align_loss
from vidmask.objectives.mlm import MlmHead, mask_tokens, mlm_loss
from vidmask.objectives.relevance import RelevanceDecoder, relevance_loss, relevance_map
from vidmask.objectives.stm_decoder import StmDecoder, stm_decoder_loss
from vidmask.objectives.vtc import vtc_loss
from vidmask.objectives.vtm import VtmHead, vtm_loss
from vidmask.teachers.base import TeacherOut


def masker_input(model: VideoTextModel, video: Tensor) -> Tensor:
    """What a strategy clusters or ranks when no teacher is configured:
    per-patch normalised pixels (zero mean, unit norm), [B,T,N,p*p*3]."""
    return pixel_tokens(model.visual.patchify(video.float()))  # (B, T, N, P)


class PretrainTask(nn.Module):
    """The pretraining step's forward: returns weighted, named `*_loss` terms and a report.

    The trainer sums the `*_loss` terms and knows nothing of masking.
    """

    def __init__(self, model: VideoTextModel, masker: Masker, loss: LossConfig | None = None,
                 teacher: nn.Module | None = None, frames: int = 8, grid: int = 8, teacher_cache=None):
        """teacher_cache: a :class:`~vidmask.teachers.cache.TeacherCache` of the
        training videos' per-frame teacher features; batches that carry
        ``index`` and ``frame_ids`` are looked up there instead of running the
        teacher's trunk."""
        super().__init__()
        self.model = model
        self.masker = masker
        self.loss_cfg = cfg = loss or LossConfig()
        # a list hides the frozen teacher from state_dict, the optimizer and DDP
        self._teacher = [teacher]
        self.teacher_cache = teacher_cache
        if cfg.needs_teacher() and teacher is None:
            raise ValueError(f"loss.{cfg.needs_teacher()[0]} needs a teacher")
        if isinstance(masker, nn.Module):  # a learnable strategy (stm) trains with the model
            self.add_module("masker_module", masker)
        C, W = model.cfg.dim, model.text.width
        if cfg.vtm > 0 or cfg.mlm > 0:
            self.fusion = FusionEncoder(W, C, depth=cfg.fusion_depth)
        if cfg.vtm > 0:
            self.vtm_head = VtmHead(W)
        if cfg.mlm > 0:
            words = model.text.bert.embeddings.word_embeddings
            self.mlm_head = MlmHead(W, words.num_embeddings, tie_to=words)
        if cfg.align > 0:
            self.align_head = AlignHead(C, teacher.token_dim, layers=cfg.align_layers)
        if cfg.relevance > 0:
            self.relevance_decoder = RelevanceDecoder(C, dim=cfg.decoder_dim, frames=frames, grid=grid)
        if cfg.stm > 0:
            self.stm_decoder = StmDecoder(C, model.cfg.embed_dim, teacher.token_dim, dim=cfg.decoder_dim,
                                          depth=2, heads=4, frames=frames, grid=grid)

    @property
    def teacher(self) -> nn.Module | None:
        return self._teacher[0]

    def _apply(self, fn, *args, **kwargs):
        # .to(device) reaches the hidden teacher too
        if self.teacher is not None:
            self.teacher._apply(fn, *args, **kwargs)
        return super()._apply(fn, *args, **kwargs)

    def run_teacher(self, batch: dict) -> TeacherOut | None:
        """The teacher on a batch: from the cache when there is one, else the whole teacher."""
        if self.teacher is None:
            return None
        video = batch["video"]  # (B, T, 3, H, W)
        grid = video.shape[-1] // self.model.visual.patch
        with torch.no_grad():
            if self.teacher_cache is not None and "frame_ids" in batch:
                feats = self.teacher_cache.lookup(batch["index"], batch["frame_ids"]).to(video.device)
                return self.teacher.from_frames(feats, grid)  # tokens (B, T, N, D), attn (B, T, N)
            return self.teacher(video, grid=grid)  # tokens (B, T, N, D), attn (B, T, N)

    def choose_tokens(self, video: Tensor, generator: torch.Generator | None,
                      teacher_out: TeacherOut | None = None):
        """(MaskOut, TeacherOut | None): the mask is computed in float32, outside autocast.

        ``teacher_out``: the teacher's output on ``video``, if already computed."""
        if self.teacher is not None and teacher_out is None:
            teacher_out = self.run_teacher({"video": video})
        with torch.autocast(video.device.type, enabled=False):
            if teacher_out is not None:
                tokens = F.normalize(teacher_out.tokens.float(), dim=-1)  # (B, T, N, D)
                attn = teacher_out.attn.float()  # (B, T, N)
            else:
                patches = self.model.visual.patchify(video.float())  # (B, T, N, P), once for both
                tokens = pixel_tokens(patches)  # (B, T, N, P)
                attn = colour_saliency(patches)  # (B, T, N)
            out = self.masker(tokens, attn=attn, generator=generator)
        if out.ids_keep is None:
            raise ValueError(f"mask strategy {self.masker.name!r} cannot drop tokens; pretraining needs drop mode")
        return out, teacher_out

    def forward(self, batch: dict, generator: torch.Generator | None = None):
        """batch: {"video": float[B,T,3,H,W], "caption": list of B str, ...}."""
        video, captions = batch["video"], batch["caption"]  # (B, T, 3, H, W)
        cfg = self.loss_cfg
        T, H = video.shape[1], video.shape[3]
        N = (H // self.model.visual.patch) ** 2
        out, t_out = self.choose_tokens(video, generator, self.run_teacher(batch))
        st_weight = (out.extra or {}).get("st_weight")  # (B, K) or None
        embedded = self.model.visual.embed_kept(video, out.ids_keep)  # (B, K, C): only kept patches embedded
        feats = self.model.visual.forward_features(embedded, None, st_weight,
                                                   return_layers=cfg.align_layers if cfg.align > 0 else 0)
        feats, layers = feats if isinstance(feats, tuple) else (feats, [])  # (B, K, C)
        v = self.model.project_video(feats)  # (B, E)
        t = self.model.encode_text(captions)  # (B, E)
        losses: dict[str, Tensor] = {}
        if cfg.vtc > 0:
            losses["vtc_loss"] = cfg.vtc * vtc_loss(v, t, self.model.temperature_scale())["vtc_loss"]
        if cfg.vtm > 0 or cfg.mlm > 0:
            tok = self.model.text.tokenize(captions, video.device)
            if cfg.vtm > 0:
                states, mask = self.model.text.token_states(captions, tok["input_ids"], tok["attention_mask"])
                sim = (t @ v.T).detach()  # (B, B): text i against video j
                losses["vtm_loss"] = cfg.vtm * vtm_loss(self.fusion, self.vtm_head, states, mask, feats, sim,
                                                        generator)["vtm_loss"]
            if cfg.mlm > 0:
                ids, labels = mask_tokens(tok["input_ids"], tok["attention_mask"], self.model.text.tokenizer,
                                          cfg.mlm_prob, generator)  # (B, S), (B, S)
                states, mask = self.model.text.token_states(captions, ids, tok["attention_mask"])
                losses["mlm_loss"] = cfg.mlm * mlm_loss(self.fusion, self.mlm_head, states, mask, feats,
                                                        labels)["mlm_loss"]
        if cfg.align > 0:
            losses["align_loss"] = cfg.align * align_loss(layers, t_out.tokens, out.ids_keep,
                                                          self.align_head)["align_loss"]
        if cfg.relevance > 0:
            with torch.no_grad():
                text_feat = self.teacher.encode_text(captions)  # (B, E_teacher)
                target = relevance_map(t_out.tokens, text_feat, self.teacher.pool, cfg.relevance_window,
                                       pool_windows=self.teacher.pool_windows)  # (B, T, N)
            pred = self.relevance_decoder(feats, out.ids_keep, T, N)  # (B, T*N)
            losses["relevance_loss"] = cfg.relevance * relevance_loss(pred, target, out.keep)["relevance_loss"]
        if cfg.stm > 0:
            pred = self.stm_decoder(feats, out.ids_keep, t, T, N)  # (B, T*N, D)
            losses["stm_loss"] = cfg.stm * stm_decoder_loss(pred, t_out.tokens, out.keep)["stm_loss"]
        report = {"kept_tokens": float(out.ids_keep.shape[1]),
                  "scale": float(self.model.temperature_scale().detach())}
        return losses, report
