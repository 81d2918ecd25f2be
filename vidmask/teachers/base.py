"""The frozen-teacher interface every teacher follows.

A teacher is a frozen image-text model run per frame on *all* tokens of a
clip. UMT distils its per-token features into the student's visible tokens,
attention-guided maskers (``umt``, ``mascot-*``, ``stm``, ``stm-guided``) rank
tokens by its CLS-to-patch attention, STM's mask module reads its patch
embeddings, and ClusterSTM's relevance reconstruction pools its tokens with
its own pooler and scores them against its text feature.

For a clip ``video`` float[B,T,3,H,W] (CLIP-normalised, as every vidmask
batch is on the device: ``vidmask.data.transfer.to_device``) a teacher
returns a :class:`TeacherOut`, computed under ``torch.no_grad()``:

* ``tokens`` float[B,T,N,D]: per-token features on the **student's** grid
  (N = grid * grid, grid = H // student_patch unless given);
* ``attn`` float[B,T,N]: CLS-to-patch attention, each frame sums to 1;
* ``video`` float[B,E]: unit-norm clip feature in the joint space;
* ``layers``: the teacher's last k layers, k x float[B,T,N,D], each through
  the same final norm and projection as ``tokens``, oldest first, the last
  one ``tokens`` itself (UMT aligns student layer i to teacher layer i). k is
  asked for with ``teacher(video, return_layers=k)``; the default 1 costs
  nothing more than ``tokens``. A teacher gives at most ``max_layers``
  (1 for a teacher with one token map);
* ``patch_embeds`` float[B,T,N,W]: the patch embeddings **before** the
  teacher's transformer (a ViT's patch convolution, no position embedding,
  no norm), what STM's mask module reads, when asked for with
  ``teacher(video, patch_embeds=True)`` and the teacher has them
  (``patch_dim`` > 0: hf-clip); None otherwise (lit-effnet, a CNN, has no
  patch embedding: ``vidmask.masking.inputs`` then gives the pixel patches).

and offers ``pool(tokens [M,W,D]) -> [M,E]`` (unit norm; any set of W tokens
to the joint space) and ``encode_text(captions) -> [B,E]`` (unit norm).

The work is split in two so that the expensive half can be cached
(:mod:`vidmask.teachers.cache`): :meth:`Teacher.encode_frames` runs the trunk
on every frame independently and returns :class:`FrameFeatures` on the
teacher's own grid; :meth:`Teacher.from_frames` (cheap: resampling, attention
pooling) turns them into the :class:`TeacherOut` above. ``teacher(video)`` is
``from_frames(encode_frames(video))``; ``teacher(video, return_layers=k)`` is
``from_frames(encode_frames(video, layers=k))``.

Teachers are looked up by exact name: ``build_teacher("lit-effnet")``,
``build_teacher("hf-clip", path=...)``; :func:`list_teachers` names them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from vidmask.tokens import resample_grid


@dataclass
class TeacherOut:
    """What a teacher returns for one batch of clips (no gradient)."""

    tokens: Tensor  # float[B,T,N,D] per-token features on the student's grid
    attn: Tensor  # float[B,T,N] CLS-to-patch attention; every frame's row sums to 1
    video: Tensor  # float[B,E] unit-norm clip feature in the joint space
    # the last k layers, k x float[B,T,N,D] on the student's grid, through the final norm and projection,
    # oldest first, the last being `tokens`; None from a teacher that does not say
    layers: list[Tensor] | None = None
    # float[B,T,N,W]: the patch embeddings before the transformer, on the student's grid, when asked for
    # and the teacher has them; None otherwise
    patch_embeds: Tensor | None = None


@dataclass
class FrameFeatures:
    """The expensive half of a teacher's output, frame by frame, on the teacher's own grid.

    Each frame's features depend on that frame's pixels only, so they can be
    computed once per frame of a corpus and gathered per batch.
    """

    tokens: Tensor  # float[B,T,n,D] per-token features, n = the teacher's grid squared
    attn: Tensor | None = None  # float[B,T,n] CLS-to-patch attention, for teachers whose trunk gives it
    cls: Tensor | None = None  # float[B,T,E] per-frame global feature, for teachers that have one
    # float[B,T,k-1,n,D]: the k-1 layers before the one in `tokens` (oldest first, same norm and
    # projection), when encode_frames was asked for k > 1 layers; `tokens` is the k-th
    earlier: Tensor | None = None
    patch_embeds: Tensor | None = None  # float[B,T,n,W] before the transformer, when encode_frames was asked

    def fields(self) -> dict[str, Tensor]:
        """The tensors that are set, by name."""
        named = (("tokens", self.tokens), ("attn", self.attn), ("cls", self.cls), ("earlier", self.earlier),
                 ("patch_embeds", self.patch_embeds))
        return {k: v for k, v in named if v is not None}

    def to(self, device: torch.device | str) -> "FrameFeatures":
        return FrameFeatures(**{k: v.to(device, non_blocking=True) for k, v in self.fields().items()})


def mirror_grid(x: Tensor, dim: int) -> Tensor:
    """Tokens of a square row-major grid (``dim`` holds n = g*g, x fastest) flipped left-right."""
    n = x.shape[dim]
    g = math.isqrt(n)
    if g * g != n:
        raise ValueError(f"mirror_grid: {n} tokens are not a square grid")
    grid = x.reshape(*x.shape[:dim], g, g, *x.shape[dim + 1:])  # (..., g rows, g columns, ...)
    return grid.flip(dim + 1).reshape(x.shape)  # (..., n, ...)


def mirror_frames(feats: FrameFeatures, which: Tensor) -> FrameFeatures:
    """Cached per-frame features of the clips ``which`` (bool[B]) flipped left-right, the others as they are.

    What a teacher cache serves a flipped training clip (``teacher.cache_mirror``): the cache holds
    the features of the unflipped frames, and the features of a mirrored frame are taken to be the
    mirrored features, as Re-labeling ImageNet (Yun et al., CVPR 2021) and Token Labeling (Jiang
    et al., NeurIPS 2021) do with their stored dense teacher maps under a random flip. This is an
    approximation: a convolution or a patch embedding is not mirror-symmetric, so the teacher's
    features of a flipped frame are near, not equal to, the flipped features
    (``bench/teacher_mirror.py`` measures how near). Per-frame global features (``cls``) are kept.
    No host read: a ``torch.where`` per field.
    """
    grid_dim = {"tokens": 2, "attn": 2, "earlier": 3, "patch_embeds": 2}  # where each field holds its n tokens
    out = {}
    for name, x in feats.fields().items():
        if name in grid_dim:
            sel = which.to(x.device).view(-1, *[1] * (x.dim() - 1))  # (B, 1, ...)
            x = torch.where(sel, mirror_grid(x, grid_dim[name]), x)  # same shape
        out[name] = x
    return FrameFeatures(**out)


# The teachers' grids are resampled onto the student's by the one grid resampler
# (vidmask.tokens.resample_grid, bilinear). When it runs: a teacher whose grid already
# equals the student's (hf-clip with a patch-16 CLIP at the student's resolution) is
# untouched, and so is lit-effnet at trunk scale 2 (frames resized 2x before its stride-32
# trunk: 8x8 at 128 px); lit-effnet at trunk scale 1 is resampled (4x4 at 128 px, 7x7 at
# 224 px, for the student's 8x8 / 14x14), hf-clip with a patch-32 CLIP or at a resolution
# the patch sizes do not share.


def tubelet_mean(out: TeacherOut, tubelet: int) -> TeacherOut:
    """A teacher's per-frame output on a student whose tokens span ``tubelet`` frames: tokens, attention,
    layers and patch embeddings averaged over each tubelet's frames ([B,T,...] -> [B,T/k,...]); the clip
    feature as is. Each averaged attention map still sums to 1."""
    if tubelet == 1:
        return out

    def mean(x: Tensor) -> Tensor:
        B, T = x.shape[:2]
        return x.reshape(B, T // tubelet, tubelet, *x.shape[2:]).mean(2)  # (B, T/k, ...)

    layers = None if out.layers is None else [mean(x) for x in out.layers]
    embeds = None if out.patch_embeds is None else mean(out.patch_embeds)
    return TeacherOut(tokens=mean(out.tokens), attn=mean(out.attn), video=out.video, layers=layers,
                      patch_embeds=embeds)


def resample_attn(attn: Tensor, N: int) -> Tensor:
    """Resample per-frame attention maps [B,T,n] -> [B,T,N], renormalised to sum to 1 per frame."""
    if attn.shape[-1] == N:
        return attn
    out = resample_grid(attn.unsqueeze(-1), N).squeeze(-1).clamp_min(0.0)  # (B, T, N)
    return out / out.sum(-1, keepdim=True).clamp_min(1e-12)  # (B, T, N)


class Teacher(nn.Module):
    """Base of every teacher: frozen, always in eval mode, no gradient in ``forward``.

    Subclasses set ``token_dim`` (D), ``embed_dim`` (E), ``max_layers`` when
    they can give more than their last layer, and implement
    :meth:`encode_frames` (the trunk, per frame), :meth:`from_frames` (to the
    target grid), :meth:`pool` and :meth:`encode_text`.
    """

    name: str = ""
    token_dim: int = 0  # D: width of `tokens`
    embed_dim: int = 0  # E: width of the joint video-text space
    student_patch: int = 16  # default target grid = H // student_patch
    max_layers: int = 1  # most layers `return_layers` may ask for (1: the teacher has one token map)
    patch_dim: int = 0  # W: width of `patch_embeds`; 0 = the teacher has no patch embedding to give

    def freeze(self) -> "Teacher":
        """No parameter trains and no dropout / batch-norm update ever runs."""
        self.requires_grad_(False)
        self.eval()
        return self

    @property
    def frozen(self) -> bool:
        return not any(p.requires_grad for p in self.parameters())

    def train(self, mode: bool = True):
        # a frozen teacher stays in eval mode whatever the trainer's model.train() says
        return super().train(mode and not self.frozen)

    def forward(self, video: Tensor, grid: int | None = None, return_layers: int = 1,
                patch_embeds: bool = False) -> TeacherOut:
        """video float[B,T,3,H,W] -> TeacherOut on a grid x grid token grid per frame,
        with the last ``return_layers`` layers in ``TeacherOut.layers`` and, with ``patch_embeds``,
        the patch embeddings in ``TeacherOut.patch_embeds`` (None from a teacher without them)."""
        if video.dim() != 5 or video.shape[2] != 3:
            raise ValueError(f"{self.name}: video must be [B,T,3,H,W], got {tuple(video.shape)}")
        self.check_layers(return_layers)
        grid = grid or video.shape[-1] // self.student_patch
        with torch.no_grad():
            return self.from_frames(self.encode_frames(video, layers=return_layers, patch_embeds=patch_embeds), grid)

    def check_layers(self, layers: int) -> None:
        """A ValueError unless 1 <= layers <= max_layers."""
        if not 1 <= layers <= self.max_layers:
            raise ValueError(f"teacher {self.name} gives its last 1 to {self.max_layers} layers, "
                             f"{layers} were asked for")

    def encode_frames(self, video: Tensor, layers: int = 1,
                      patch_embeds: bool = False) -> FrameFeatures:  # pragma: no cover - abstract
        """The trunk, frame by frame: video float[B,T,3,H,W] -> FrameFeatures on the teacher's grid
        (``layers`` > 1: the layers before the last in ``FrameFeatures.earlier``; ``patch_embeds``: the
        patch embeddings in ``FrameFeatures.patch_embeds``, from a teacher with ``patch_dim`` > 0)."""
        raise NotImplementedError

    def from_frames(self, feats: FrameFeatures, grid: int) -> TeacherOut:  # pragma: no cover - abstract
        """FrameFeatures (computed now or cached) -> TeacherOut on a grid x grid token grid per frame,
        ``layers`` holding as many layers as the features do, ``patch_embeds`` resampled when they hold them."""
        raise NotImplementedError

    def pool(self, tokens: Tensor) -> Tensor:  # pragma: no cover - abstract
        """Any token set float[M,W,D] -> unit-norm joint-space features [M,E]."""
        raise NotImplementedError

    def encode_text(self, captions: list[str]) -> Tensor:  # pragma: no cover - abstract
        """captions -> unit-norm joint-space features [B,E]."""
        raise NotImplementedError

    def autocast_weights(self, dtype: torch.dtype | None) -> None:
        """Hold the frozen weights in ``dtype``, the dtype the training step runs in under autocast (None:
        float32, no autocast). Autocast casts a frozen weight (one that needs no gradient) again at every
        use; a teacher whose forward takes its inputs in its weights' dtype overrides this to cast once.
        The default keeps float32."""

    def caption_tower(self):
        """The frozen text tower (a :class:`~vidmask.models.text.TextEncoder`) whose pooled caption features
        :meth:`encode_text` starts from, or None when it has none such. Training gives it the caption
        cache or store the student's frozen tower gets (``model.text.feature_store``, else the warmed LRU),
        so a caption is encoded once, not every step it is drawn."""
        return None

    def cache_options(self) -> dict:
        """Settings beyond the teacher's weights files that change :meth:`encode_frames`' output; they
        name a teacher cache (:func:`vidmask.teachers.cache.cache_key`). {} = none (the default)."""
        return {}

    def pool_windows(self, frames: Tensor, window: int) -> Tensor:
        """:meth:`pool` of every token's ``window x window`` neighbourhood (replicate padding):
        frames float[F,N,D] -> [F*N,E]. Teachers whose pooler has per-token work override it."""
        from vidmask.tokens import window_tokens

        return self.pool(window_tokens(frames, window))  # (F*N, E)


_REGISTRY: dict[str, Callable[..., Teacher]] = {}


def register_teacher(name: str):
    """Decorator for a factory ``(**kw) -> Teacher``, registered under an exact name."""

    def deco(factory):
        if name in _REGISTRY:
            raise ValueError(f"teacher {name!r} registered twice")
        _REGISTRY[name] = factory
        return factory

    return deco


def list_teachers() -> list[str]:
    return sorted(_REGISTRY)


def build_teacher(name: str, **kw) -> Teacher:
    """Build a registered teacher by exact name; it comes back frozen and in eval mode."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown teacher {name!r}; known: {', '.join(list_teachers())}")
    teacher = _REGISTRY[name](**kw)
    teacher.name = name
    return teacher.freeze()
