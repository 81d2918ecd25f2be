"""MASCOT retrieval fine-tuning: dual-masking co-learning (sections 3.2-3.5, eq. 9).

``vidmask finetune retrieval --config configs/finetune/mascot.yaml`` (that is,
``finetune.method=mascot``). Each step runs four branches on one batch:

1. the spatial encoder on the clean clip gives frame tokens and each frame's
   CLS attention (eq. 1); the temporal transformer gives the video tokens
   ``e_v``; ``L_vtc`` is WTI contrastive between ``e_v`` and the text tokens;
2. the H-completer: patches of the high-informed mask (r_H, a random temporal
   interval) erased with random pixels, the co-encoder (same weights, eq. 3),
   the reconstructor (eq. 4) and the temporal transformer give ``e_v^rH``;
   ``L_vtc^H`` pulls it to the text, ``L_vvc^H`` to the unmasked ``e_v``;
3. the L-completer: the same on the low-informed mask (r_L), no reconstructor,
   and the content discriminator behind the gradient reversal layer learns to
   tell ``e_v^rL`` from ``e_v`` while the encoders learn to hide it (``L_adv``);
4. the masks of the next step come from the updated spatial encoder.

``L = L_vtc + alpha (L_vtc^H + L_vvc^H) + beta (L_vtc^L + L_vvc^L) + gamma L_adv``.
The choices where the paper is silent are in docs/fidelity.md (MASCOT).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vidmask.config import Config, ConfigError, MascotConfig
from vidmask.data import CLIP_MEAN, CLIP_STD, flatten_captions, load_annotations
from vidmask.data.shard import gather_ordered, my_share
from vidmask.masking import build_masker, replace_patches
from vidmask.metrics import retrieval_metrics
from vidmask.models.grl import grad_reverse
from vidmask.models.mascot import MascotHeads, encode_frames
from vidmask.models.video_text import VideoTextModel
from vidmask.models.wti import TokenSet, token_set, wti_similarity, wti_similarity_chunked
from vidmask.precision import float32_math


def gather_set(s: TokenSet) -> tuple[TokenSet, int]:
    """A token set from every rank (gradients to this rank's rows) -> (all rows, offset of this rank's)."""
    from vidmask.objectives.vtc import gather_with_grad, rank_sizes

    sizes = rank_sizes(s.tokens.shape[0], s.tokens.device)  # one count for the three (None: one process)
    tokens, off = gather_with_grad(s.tokens, sizes)  # (sum B, M, E)
    weights, _ = gather_with_grad(s.weights, sizes)  # (sum B, M)
    valid, _ = gather_with_grad(s.valid.float(), sizes)  # (sum B, M)
    return TokenSet(tokens, weights, valid > 0.5), off


def wti_contrastive(a: TokenSet, b: TokenSet, scale: Tensor, gather: bool = True) -> Tensor:
    """Eq. 6-8: symmetric InfoNCE on WTI between paired sets a[i] <-> b[i], against every rank's rows.

    ``a`` is the query side of WTI (text when text is involved), ``b`` the other.
    """
    a_all, off = gather_set(a) if gather else (a, 0)
    b_all, _ = gather_set(b) if gather else (b, 0)
    labels = torch.arange(len(a), device=a.tokens.device) + off  # (B,)
    with float32_math(a.tokens.device.type):  # float32 logits, as vtc
        a2b = scale.float() * wti_similarity(a, b_all)  # (B, W*B): each local a against every b
        b2a = scale.float() * wti_similarity(a_all, b).T  # (B, W*B): each local b against every a
        return 0.5 * (F.cross_entropy(a2b, labels) + F.cross_entropy(b2a, labels))


def detached(s: TokenSet) -> TokenSet:
    return TokenSet(s.tokens.detach(), s.weights.detach(), s.valid)


class MascotTask(nn.Module):
    """The co-learning step's forward: weighted, named ``*_loss`` terms and a report."""

    def __init__(self, model: VideoTextModel, cfg: MascotConfig, frames: int, text_len: int):
        super().__init__()
        self.model = model  # the dual encoder: its ViT is the spatial encoder and the co-encoder
        self.cfg = cfg
        self.text_len = text_len
        # a model with a class token (started from CLIP) needs no learned CLS vector of MASCOT's own
        self.heads = MascotHeads(cfg, model.cfg.dim, model.cfg.embed_dim, frames,
                                 learned_cls=not model.cfg.cls_token)
        self.branches: list[tuple[str, object]] = [(n, b) for n, b in (("h", cfg.high), ("l", cfg.low))
                                                   if b.weight > 0]
        self.maskers = {}
        for name, b in self.branches:
            try:
                self.maskers[name] = build_masker(b.mask, b.ratio)
            except TypeError as e:
                key = "high" if name == "h" else "low"
                raise ConfigError(f"finetune.mascot.{key}.mask={b.mask}: {e}") from e
        # new modules learn at train.lr x module_lr_scale (the paper: 1e-4 against 1e-7 for the encoders)
        self.lr_scales = {"heads.": cfg.module_lr_scale}

    # -------------------------------------------------------------- the two sides of WTI

    def video_set(self, tokens: Tensor) -> TokenSet:
        """Video tokens [B,T,C] -> projected unit tokens [B,T,E] with their WTI weight logits."""
        return token_set(self.model.vision_proj(tokens), self.heads.video_weights)

    def text_set(self, captions: list[str]) -> TokenSet:
        """Captions -> word tokens [B,S,E] (S = model.text.max_len: equal on every rank) with weights."""
        text = self.model.text
        device = self.model.logit_scale.device
        enc = text.tokenizer(captions, padding="max_length", truncation=True, max_length=self.text_len,
                             return_tensors="pt")
        states, valid = text.token_states(None, enc["input_ids"].to(device),
                                          enc["attention_mask"].to(device))  # (B, S, W), (B, S)
        return token_set(self.model.text_proj(states), self.heads.text_weights, valid.bool())

    def encode(self, video: Tensor, return_attn: bool = False):
        """The clean clip: (video tokens [B,T,C], CLS attention [B,T,N] or None)."""
        out = encode_frames(self.model.visual, video, self.heads.cls, return_attn=return_attn)
        return self.heads.video_tokens(out.frames), out.cls_attn  # (B, T, C), (B, T, N)

    # -------------------------------------------------------------- training

    def forward(self, batch: dict, generator: torch.Generator | None = None):
        video, captions = batch["video"], batch["caption"]  # (B, T, 3, H, W)
        cfg = self.cfg
        v_clean, attn = self.encode(video, return_attn=bool(self.branches))  # (B, T, C), (B, T, N)
        vset, tset = self.video_set(v_clean), self.text_set(captions)  # (B, T, E), (B, S, E)
        scale = self.model.temperature_scale()
        losses = {"vtc_loss": wti_contrastive(tset, vset, scale)}
        report: dict = {"scale": scale.detach()}
        if not self.branches:
            return losses, report
        # the masks come from this step's spatial encoder, as data: no gradient through them
        with torch.no_grad(), torch.autocast(video.device.type, enabled=False):
            patches = self.model.visual.patchify(video.float())  # (B, T, N, P): the token layout
            attn = attn.float()  # (B, T, N)
        video_target, text_target = detached(vset), detached(tset)
        domains = []  # (pooled video [b,C], label) for the discriminator
        for name, b in self.branches:
            keep = self.maskers[name](patches, attn=attn, generator=generator).keep  # (B, T, N), T token steps
            pixel_keep = keep.repeat_interleave(self.model.visual.tubelet, 1)  # (B, F, N): per frame
            erased = replace_patches(video, pixel_keep, generator, mean=CLIP_MEAN, std=CLIP_STD)  # (B, F, 3, H, W)
            out = encode_frames(self.model.visual, erased, self.heads.cls, keep,
                                unidirectional=b.co_encoder == "unidirectional")  # frames (B, T, C)
            frame_masked = (~keep).any(-1)  # (B, T)
            v = self.heads.video_tokens(out.frames, frame_masked, b.reconstructor)  # (B, T, C)
            mset = self.video_set(v)  # (B, T, E)
            if b.text_target > 0:
                losses[f"vtc_{name}_loss"] = b.weight * b.text_target * wti_contrastive(text_target, mset, scale)
            if b.video_target > 0:
                losses[f"vvc_{name}_loss"] = b.weight * b.video_target * wti_contrastive(mset, video_target, scale)
            report[f"masked_{name}"] = 1.0 - keep.float().mean().detach()
            if b.discriminator and self.heads.discriminator is not None:
                domains.append((v.mean(1), 1))  # (B, C): masked
        if domains:
            domains.insert(0, (v_clean.mean(1), 0))  # (B, C): unmasked
            feats = torch.cat([f for f, _ in domains])  # (D*B, C)
            labels = torch.cat([torch.full((f.shape[0],), y, device=feats.device) for f, y in domains])  # (D*B,)
            logits = self.heads.discriminator(grad_reverse(feats, cfg.grl))  # (D*B, 2)
            losses["adv_loss"] = cfg.adversarial * F.cross_entropy(logits.float(), labels)
            report["disc_acc"] = (logits.argmax(-1) == labels).float().mean().detach()
        return losses, report

    # -------------------------------------------------------------- evaluation

    @torch.no_grad()
    def retrieval_scores(self, items: list, texts: list[str], loader, similarity: str,
                         batch_size: int = 256) -> Tensor:
        """Text x video scores [Nt, Nv] for ``texts`` against the clips of ``items`` (as batched by
        ``loader`` over this rank's share, on the model's device and normalised: ``config_loader``),
        by ``wti`` or ``mean`` (pooled unit features)."""
        self.eval()
        mine = []  # this rank's clips: pooled unit features [E] (mean) or (tokens [T,E], weight logits [T]) (wti)
        for batch in loader:
            v, _ = self.encode(batch["video"])  # (b, T, C), on the model's device, normalised there
            if similarity == "mean":
                mine += list(F.normalize(self.model.vision_proj(v.mean(1)).float(), dim=-1).cpu())  # b x (E,)
            else:
                s = self.video_set(v)  # (b, T, E)
                mine += list(zip(s.tokens.cpu(), s.weights.cpu()))  # b x ((T, E), (T,))
        clips = gather_ordered(mine, len(items))  # every rank's, in item order
        if similarity == "mean":
            tfeat = torch.cat([self.model.encode_text(texts[s : s + batch_size]).float().cpu()
                               for s in range(0, len(texts), batch_size)])  # (Nt, E)
            return tfeat @ torch.stack(clips).T  # (Nt, Nv)
        tokens = torch.stack([t for t, _ in clips])  # (Nv, T, E)
        video = TokenSet(tokens, torch.stack([w for _, w in clips]), torch.ones(tokens.shape[:2], dtype=torch.bool))
        parts = [self.text_set(texts[s : s + batch_size]).to("cpu") for s in range(0, len(texts), batch_size)]
        text = TokenSet(torch.cat([p.tokens for p in parts]), torch.cat([p.weights for p in parts]),
                        torch.cat([p.valid for p in parts]))  # (Nt, S, E)
        return wti_similarity_chunked(text, video)  # (Nt, Nv)


def evaluate_mascot(task: MascotTask, anno, cfg: Config, items=None) -> dict:
    """Retrieval of a MASCOT run on ``anno``: the same report as the dual encoder's, scored by
    finetune.similarity (wti or mean)."""
    from pathlib import Path

    from vidmask.tasks.retrieval import config_loader, score_report

    anno = Path(anno)
    items = items if items is not None else load_annotations(anno, root=cfg.data.root(), unique=True, nonempty=True)
    if cfg.finetune.paragraph:
        texts, t2v = [" ".join(it.captions) for it in items], list(range(len(items)))
    else:
        texts, t2v = flatten_captions(items)
    loader = config_loader([items[i] for i in my_share(len(items))], cfg, task.model.logit_scale.device)
    sim = task.retrieval_scores(items, texts, loader, cfg.finetune.similarity)  # (Nt, Nv)
    res = score_report(sim, torch.tensor(t2v), anno, items, len(texts), cfg)
    res["similarity"] = cfg.finetune.similarity
    return res


def build_mascot(cfg: Config, model: VideoTextModel, device, evaluating: bool = False):
    """The retrieval job of finetune.method=mascot."""
    from vidmask.tasks.base import Job
    from vidmask.tasks.retrieval import format_table
    from vidmask.train.wiring import training_items

    if cfg.finetune.mascot.temporal_heads and cfg.model.dim % cfg.finetune.mascot.temporal_heads:
        raise ConfigError(f"finetune.mascot.temporal_heads ({cfg.finetune.mascot.temporal_heads}) must divide "
                          f"model.dim ({cfg.model.dim})")
    items = [] if evaluating else training_items(cfg)
    task = MascotTask(model, cfg.finetune.mascot, cfg.data.num_frames // cfg.model.tubelet,
                      model.text.max_len).to(device)  # model.text.max_len within the tower's position table
    test_path = cfg.data.path(cfg.data.test_anno)
    test = load_annotations(test_path, root=cfg.data.root(), unique=True, nonempty=True) if cfg.data.test_anno else None
    return Job(
        task=task, model=model, items=items,
        evaluate=lambda: evaluate_mascot(task, test_path, cfg, items=test),
        table=format_table,
        short=lambda r: {"eval_t2v_R@1": r["t2v"]["R@1"], "eval_rsum": r["rsum"]},
        result_file="eval_retrieval.json",
        masked=False,
    )
