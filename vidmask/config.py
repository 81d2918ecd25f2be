"""Typed run configuration: nested dataclasses, YAML files, dotted overrides.

A YAML file holds only what differs from the defaults below; command-line
overrides are ``section.key=value`` (values parsed as YAML, so ``0.9``,
``true``, ``[1, 2]`` work). Unknown keys are rejected with the list of valid
ones, and every section validates itself in ``__post_init__``.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config file or override that cannot be applied."""


# finetune.init's prefix for a local Hugging Face CLIP folder: finetune.init=hf-clip:/path/to/clip-vit-base-patch32
HF_CLIP = "hf-clip:"
# model.act's names (vidmask.models.blocks.ACTIVATIONS holds their functions; named here so that validating a
# config imports no torch)
MLP_ACTIVATIONS = ("gelu", "quick_gelu")


def _require(key: str, value: float, low: float, strict: bool = False, note: str = "") -> None:
    """Raise unless ``value`` is a finite number >= ``low`` (> ``low`` when ``strict``)."""
    if not (math.isfinite(value) and (value > low if strict else value >= low)):
        raise ConfigError(f"{key} must be a finite number {'>' if strict else '>='} {low:g}{note}, got {value!r}")


@dataclass
class DataConfig:
    corpus: str = "corpus"  # corpus folder; annotation paths below are relative to it unless absolute
    train_anno: str = "train.json"  # UMT/VINDLU-format training annotations
    test_anno: str = "test_retrieval.json"  # zero-shot retrieval evaluation annotations
    video_root: str = ""  # folder the annotations' `video` paths are relative to; empty = the annotation file's folder
    num_frames: int = 8  # frames sampled per clip (T)
    size: int = 128  # square input resolution in pixels
    num_workers: int = 2  # DataLoader worker processes; they return uint8 clips, normalised on the device
    prefetch_factor: int = 2  # batches each worker loads ahead (used only with num_workers > 0)
    cache_frames: bool = False  # decode every video once and sample frames from memory
    hflip_p: float = 0.0  # horizontal flip probability; captions get left/right swapped when > 0
    # training crops (RandomResizedCrop, aspect 3/4 to 4/3, one box for all frames of a clip): the smallest
    # share of the frame's area a crop keeps, e.g. 0.5 for (0.5, 1.0); 1.0 = the centre crop, as evaluation
    crop_scale: float = 1.0
    # time-reversal probability: the clip played backwards, its caption's directions, size changes and
    # entering/leaving turned round (vidmask.data.reversal); for captions whose motions have English reverses
    reverse_p: float = 0.0
    max_bad_share: float = 0.05  # stop training when more than this share of samples is unreadable
    # WebDataset tar shards to train from instead of train_anno (`vidmask shards make`): a brace
    # range `DIR/{000000..000123}.tar`, a glob, `pipe:COMMAND` URLs, or a list of these; "" = loose files
    shards: str | list[str] = ""
    shards_index: str = ""  # the shards' shards.json (a path or a pipe: URL); "" = shards.json beside the first shard
    shuffle_buffer: int = 256  # shards: samples each loader worker holds to shuffle (that many encoded clips in memory)

    def __post_init__(self):
        if self.num_frames < 1:
            raise ConfigError(f"data.num_frames must be >= 1, got {self.num_frames}")
        if self.size < 16 or self.size % 16:
            raise ConfigError(f"data.size must be a positive multiple of 16, got {self.size}")
        if not 0.0 <= self.hflip_p <= 1.0:
            raise ConfigError(f"data.hflip_p must be in [0, 1], got {self.hflip_p}")
        if not 0.0 <= self.reverse_p <= 1.0:
            raise ConfigError(f"data.reverse_p must be in [0, 1], got {self.reverse_p}")
        if not 0.0 < self.crop_scale <= 1.0:
            raise ConfigError(f"data.crop_scale must be in (0, 1] (1 = the centre crop), got {self.crop_scale}")
        if not 0.0 <= self.max_bad_share < 1.0:
            raise ConfigError(f"data.max_bad_share must be in [0, 1), got {self.max_bad_share}")
        if self.num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0 (0 = load in the main process), got {self.num_workers}")
        if self.prefetch_factor < 1:
            raise ConfigError(f"data.prefetch_factor must be >= 1 (batches each loader worker holds ready), "
                              f"got {self.prefetch_factor}")
        if isinstance(self.shards, list) and not (self.shards and all(isinstance(u, str) and u.strip()
                                                                      for u in self.shards)):
            raise ConfigError(f"data.shards must be a shard pattern or a non-empty list of them, got {self.shards!r}")
        if self.shuffle_buffer < 1:
            raise ConfigError(f"data.shuffle_buffer must be >= 1 (1 = no shuffling within shards), "
                              f"got {self.shuffle_buffer}")
        if self.shards and self.cache_frames:
            raise ConfigError("data.cache_frames decodes the loose files of data.train_anno; "
                              "set data.cache_frames=false to train from data.shards")
        if self.shards_index and not self.shards:
            raise ConfigError("data.shards_index is set but data.shards is empty; name the shards too")

    def random_crop(self) -> tuple[float, float] | None:
        """The training crops' area range for :class:`~vidmask.data.transforms.VideoTransform`, None = the
        centre crop."""
        return (self.crop_scale, 1.0) if self.crop_scale < 1.0 else None

    def path(self, name: str) -> Path:
        p = Path(name)
        return p if p.is_absolute() else Path(self.corpus) / p

    def root(self) -> Path | None:
        """Media root for load_annotations (None: next to the annotation file)."""
        return Path(self.video_root) if self.video_root else None


@dataclass
class TextConfig:
    # "minilm" (packaged all-MiniLM-L6-v2), "random" (tests), a local HF BERT folder, or a local HF CLIP folder
    # (a CLIPModel's or CLIPTextModel's: its text tower, pooled at the end-of-text token)
    init: str = "minilm"
    trainable_layers: int = 0  # last text layers trained (CLIP: and its final norm); 0 = frozen tower, cached features
    max_len: int = 32  # tokens per caption (at most the tower's position table: CLIP's 77)
    random_layers: int = 2  # depth of the randomly initialised tower (init="random" only)
    # frozen tower: caption features kept, least recently used dropped past this many (384 floats each for
    # MiniLM: 200k = 0.3 GB per rank); 0 = encode every batch's captions again
    cache_captions: int = 200_000
    # frozen tower: a folder of caption feature stores (vidmask.models.caption_store), one per tower and
    # caption set, built on first use from data.train_anno's captions (each rank its share) or by
    # `vidmask text cache`, memory-mapped, read instead of warming the LRU; "" = the LRU alone
    feature_store: str = ""

    def __post_init__(self):
        if self.trainable_layers < 0:
            raise ConfigError("model.text.trainable_layers must be >= 0")
        if self.feature_store and self.trainable_layers:
            raise ConfigError(f"model.text.feature_store holds a frozen tower's caption features, but "
                              f"model.text.trainable_layers={self.trainable_layers} trains the tower: set "
                              "model.text.trainable_layers=0 or model.text.feature_store=''")
        if self.cache_captions < 0:
            raise ConfigError(f"model.text.cache_captions must be >= 0 (0 = no cache), got {self.cache_captions}")
        if self.max_len < 4:
            raise ConfigError("model.text.max_len must be >= 4")


@dataclass
class ModelConfig:
    patch: int = 16  # patch size in pixels
    dim: int = 192  # video encoder width
    depth: int = 6  # video encoder blocks
    heads: int = 3  # attention heads
    mlp_ratio: float = 4.0  # MLP hidden width / dim
    embed_dim: int = 256  # joint video-text space
    temperature: float = 0.07  # initial contrastive temperature (learnable)
    grad_checkpointing: bool = False  # recompute block activations in backward to save memory
    fusion_depth: int = 2  # cross-attention fusion layers over the text tower (vtm, mlm, QA)
    tubelet: int = 1  # frames per video token (VideoMAE's 2: a token sees motion); data.num_frames must divide by it
    pos_embed: str = "learned"  # learned (std 0.02 init) | sincos (fixed, MAE; at the patch embeddings' scale)
    # a second patch embedding of the frame differences added to every token (TSN / TDN's RGB-difference
    # stream): a token sees how its patch changes, what the motion-shapes corpus's motion words need
    frame_diff: bool = False
    # a patch embedding of the per-pixel normal flow added to every token (vidmask.models.video_vit.normal_flow:
    # the brightness-constancy velocity along each edge's gradient), so the direction an edge moves reaches a
    # token whatever the colours on either side of it, which the frame differences' signs are not
    normal_flow: bool = False
    # The switches that let the model hold a CLIP exactly (finetune.init=hf-clip:FOLDER sets them from the CLIP):
    act: str = "gelu"  # the video encoder's MLP activation: gelu (exact) | quick_gelu (x*sigmoid(1.702x), OpenAI CLIP)
    ln_pre: bool = False  # a LayerNorm on the embedded tokens before the first block (CLIP's pre_layrnorm)
    # a learned class token as each frame's CLS input in the frame-level path (MASCOT; CLIP's class embedding
    # plus its position); false: the mean of the frame's visible patch embeddings
    cls_token: bool = False
    # the joint-space heads: vidmask = a Linear on the mean video token, Linear-GELU-Linear on the pooled text;
    # clip = a bias-free Linear on each side (CLIP's visual_projection and text_projection)
    # whitened = vidmask's video head, and on the text side the frozen tower's features PCA-whitened on the
    # training captions, no trained parameter (vidmask.models.whiten: a locked text side that cannot shrink
    # the words the video does not yet tell apart, e.g. motion words); needs a frozen tower
    proj_head: str = "vidmask"
    whiten_captions: int = 100_000  # proj_head=whitened: training captions its statistics are fitted on
    whiten_eps: float = 1e-3  # proj_head=whitened: added to every eigenvalue, relative to the largest
    # the tokens the video encoder sees outside training (retrieval, probes, QA, captions): all = every token;
    # motion = each frame's tokens whose pixels change most (vidmask.masking.motion: what mask.strategy=motion-topk
    # keeps in training without a teacher or with lit-effnet; hf-clip's patch embeddings can rank a little
    # differently), hiding the share eval_ratio
    eval_tokens: str = "all"
    eval_ratio: float = 0.75  # eval_tokens=motion: share of each frame's tokens hidden
    # the video feature: mean = a Linear on the mean kept token; segments = that plus a Linear (zero at init) on
    # how each of pool_segments consecutive time segments of the tokens differs from the mean, in order
    # (vidmask.models.pooling: TSN's segments concatenated as TRN's, so "in view first" and "in view last" differ)
    pool: str = "mean"
    pool_segments: int = 2
    text: TextConfig = field(default_factory=TextConfig)

    def __post_init__(self):
        for key in ("dim", "heads", "embed_dim", "fusion_depth"):
            if getattr(self, key) < 1:
                raise ConfigError(f"model.{key} must be >= 1, got {getattr(self, key)}")
        if self.dim % self.heads:  # heads >= 1 checked above
            raise ConfigError(f"model.dim ({self.dim}) must be divisible by model.heads ({self.heads})")
        if self.pos_embed not in ("learned", "sincos"):
            raise ConfigError(f"model.pos_embed must be 'learned' or 'sincos', got {self.pos_embed!r}")
        if self.act not in MLP_ACTIVATIONS:
            raise ConfigError(f"model.act must be one of {', '.join(MLP_ACTIVATIONS)}, got {self.act!r}")
        if self.proj_head not in ("vidmask", "clip", "whitened"):
            raise ConfigError(f"model.proj_head must be 'vidmask', 'clip' or 'whitened', got {self.proj_head!r}")
        if self.proj_head == "whitened" and self.text.trainable_layers:
            raise ConfigError(f"model.proj_head=whitened whitens a frozen text tower's features, but "
                              f"model.text.trainable_layers={self.text.trainable_layers} trains it: set "
                              "model.text.trainable_layers=0 or another model.proj_head")
        if self.eval_tokens not in ("all", "motion"):
            raise ConfigError(f"model.eval_tokens must be 'all' or 'motion', got {self.eval_tokens!r}")
        if self.pool not in ("mean", "segments"):
            raise ConfigError(f"model.pool must be 'mean' or 'segments', got {self.pool!r}")
        if self.pool_segments < 2:
            raise ConfigError(f"model.pool_segments must be >= 2 (one segment is the mean), got {self.pool_segments}")
        if not 0.0 <= self.eval_ratio < 1.0:
            raise ConfigError(f"model.eval_ratio must be in [0, 1), got {self.eval_ratio}")
        if self.whiten_captions < 2:
            raise ConfigError(f"model.whiten_captions must be >= 2, got {self.whiten_captions}")
        _require("model.whiten_eps", self.whiten_eps, 0, strict=True)
        if self.patch < 1 or self.depth < 1 or self.tubelet < 1:
            raise ConfigError("model.patch, model.depth and model.tubelet must be >= 1")
        _require("model.mlp_ratio", self.mlp_ratio, 0, strict=True)
        if not 0.0 < self.temperature < 1.0:
            raise ConfigError("model.temperature must be in (0, 1)")


@dataclass
class MaskConfig:
    strategy: str = "random"  # a name from vidmask.masking.list_maskers()
    ratio: float = 0.75  # share of visual tokens hidden from the encoder
    params: dict = field(default_factory=dict)  # strategy-specific keyword arguments

    def __post_init__(self):
        if not 0.0 <= self.ratio < 1.0:
            raise ConfigError(f"mask.ratio must be in [0, 1), got {self.ratio}")


@dataclass
class TeacherConfig:
    name: str = ""  # "" = no teacher; "lit-effnet" or "hf-clip" (vidmask.teachers.list_teachers())
    path: str = ""  # lit-effnet: heads .safetensors from `vidmask teacher train`; hf-clip: a local CLIPModel folder
    # folder of per-frame teacher features (float16, memory-mapped) of the training frames, built on first
    # use (each rank its share of the videos) and reused (vidmask.teachers.cache); "" = run the teacher's
    # trunk every step. With data.hflip_p > 0 it needs cache_mirror.
    cache: str = ""
    # a flipped training clip gets its cached features mirrored left-right (vidmask.teachers.base.mirror_frames:
    # an approximation, the teacher's features of a mirrored frame are near its mirrored features, not equal;
    # bench/teacher_mirror.py); false: a cache refuses data.hflip_p > 0
    cache_mirror: bool = False
    # frames cached per video: 0 = every frame (the teacher sees the student's exact frames); G >= data.num_frames
    # = a fixed grid of G frames (segment middles), each lookup served by the nearest one (<= ceil(n/G)/2 frames off)
    cache_frames_per_video: int = 0
    # refuse to build a teacher cache projected above this many GB (printed before the build); 0 = no cap
    cache_max_gb: float = 50.0
    # lit-effnet only: frames resized by this integer factor before its stride-32 trunk (2: 128 px -> an 8x8
    # map, the patch-16 student's grid, nothing resampled; about 4x the trunk compute). 0 = the head file's
    # scale (`vidmask teacher train --trunk-scale`; 1 without a head file); N >= 1 = heads trained at N
    trunk_scale: int = 0

    def __post_init__(self):
        if self.name and self.name not in ("lit-effnet", "hf-clip"):
            raise ConfigError(f"teacher.name must be '', 'lit-effnet' or 'hf-clip', got {self.name!r}")
        if self.cache_frames_per_video < 0:
            raise ConfigError(f"teacher.cache_frames_per_video must be >= 0 (0 = every frame), "
                              f"got {self.cache_frames_per_video}")
        if self.cache_max_gb < 0:
            raise ConfigError(f"teacher.cache_max_gb must be >= 0 (0 = no cap), got {self.cache_max_gb}")
        if self.name == "hf-clip" and not self.path:
            raise ConfigError("teacher.name=hf-clip needs teacher.path=/path/to/a/local/CLIPModel/folder (a Hugging "
                              "Face CLIPModel saved with save_pretrained, tokenizer included, e.g. "
                              "clip-vit-base-patch16 for configs/recipes/base/*; nothing is downloaded)")
        if isinstance(self.trunk_scale, bool) or not isinstance(self.trunk_scale, int) or self.trunk_scale < 0:
            raise ConfigError(f"teacher.trunk_scale must be an integer >= 0 (0 = the head file's, 1 = the "
                              f"trunk at the frame size, 2 = frames resized 2x first), got {self.trunk_scale!r}")
        if self.trunk_scale and self.name != "lit-effnet":
            raise ConfigError(f"teacher.trunk_scale is lit-effnet's option; teacher.name={self.name!r} "
                              "takes none (leave it 0)")


class LossConfig:
    """The objectives' sections: one typed section per registered objective.

    ``loss: {vtc: 1.0, relevance: {weight: 1.0, window: 3}}``: a number alone is
    the section's weight; the section types live beside their objectives
    (``vidmask.objectives.list_objectives()``), so adding an objective adds its
    section here without touching this file. ``cfg.loss.relevance.window``
    reads a field; :meth:`active` lists the objectives whose weight is above 0.
    """

    def __init__(self, **sections: Any):
        from vidmask.objectives import list_objectives, objective_class

        names = list_objectives()
        unknown = sorted(set(sections) - set(names))
        if unknown:
            raise ConfigError(f"unknown config key 'loss.{unknown[0]}'; valid keys here: {', '.join(names)}")
        self._sections: dict[str, Any] = {}
        for name in names:
            section_type = objective_class(name).config
            value = sections.get(name, {})
            if _is_dataclass_type(type(value)) and isinstance(value, section_type):
                section = value
            else:
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    value = {"weight": value}  # the shorthand: a number is the weight
                section = _coerce(value, section_type, f"loss.{name}")
            w = section.weight
            if not (isinstance(w, (int, float)) and math.isfinite(w) and w >= 0):
                raise ConfigError(f"loss.{name}.weight must be a finite number >= 0, got {w!r}")
            self._sections[name] = section

    def __getattr__(self, name: str):
        sections = self.__dict__.get("_sections", {})
        if name in sections:
            return sections[name]
        raise AttributeError(f"LossConfig has no objective {name!r}; known: {', '.join(sections)}")

    def __getitem__(self, name: str):
        return self._sections[name]

    def __eq__(self, other) -> bool:
        return isinstance(other, LossConfig) and self._sections == other._sections

    def __repr__(self) -> str:
        return f"LossConfig({', '.join(f'{k}={v!r}' for k, v in self._sections.items())})"

    def weight(self, name: str) -> float:
        return float(self._sections[name].weight)

    def active(self) -> list[str]:
        """Objectives with a weight above 0, in registration order."""
        return [k for k, v in self._sections.items() if v.weight > 0]

    def needs_teacher(self) -> list[str]:
        from vidmask.objectives import objective_class

        return [k for k in self.active() if objective_class(k).needs_teacher]

    def to_dict(self) -> dict:
        return {k: dataclasses.asdict(v) for k, v in self._sections.items()}


INTERACTIONS = ("unidirectional", "full")


@dataclass
class MascotHighConfig:
    """MASCOT's H-completer (section 3.3): informed semantics reconstruction of a high-informed mask."""

    weight: float = 0.5  # alpha of eq. 9 on (L_vtc^H + L_vvc^H); 0 = branch off
    mask: str = "mascot-high"  # strategy whose keep mask erases patches (replace mode): mascot-high|mascot-low|random|tube
    ratio: float = 0.7  # r_H: share of each masked frame's patches erased
    co_encoder: str = "unidirectional"  # spatial interaction in every co-encoder layer: unidirectional (V_u, eq. 3) | full (V)
    reconstructor: str = "unidirectional"  # one attention layer over frame tokens: unidirectional (R_u, eq. 4) | full (R) | none
    discriminator: bool = False  # the GRL content discriminator on this branch's video (the paper: L only)
    text_target: float = 1.0  # weight of L_vtc^H (masked video vs the text) inside the branch
    video_target: float = 1.0  # weight of L_vvc^H (masked video vs the unmasked video target) inside the branch

    def __post_init__(self):
        check_mascot_branch(self, "high")


@dataclass
class MascotLowConfig:
    """MASCOT's L-completer (section 3.4): background attention shift on a low-informed mask."""

    weight: float = 0.5  # beta of eq. 9 on (L_vtc^L + L_vvc^L); 0 = branch off
    mask: str = "mascot-low"  # strategy whose keep mask erases patches (replace mode)
    ratio: float = 0.5  # r_L
    co_encoder: str = "unidirectional"  # unidirectional (V_u) | full (V)
    reconstructor: str = "none"  # none: Table 2 found the L-completer better without one
    discriminator: bool = True  # D: masked vs unmasked video through a gradient reversal layer (eq. 5)
    text_target: float = 1.0  # weight of L_vtc^L inside the branch
    video_target: float = 1.0  # weight of L_vvc^L inside the branch

    def __post_init__(self):
        check_mascot_branch(self, "low")


def check_mascot_branch(b, name: str) -> None:
    key = f"finetune.mascot.{name}"
    _require(f"{key}.weight", b.weight, 0)
    _require(f"{key}.text_target", b.text_target, 0)
    _require(f"{key}.video_target", b.video_target, 0)
    if not 0.0 < b.ratio < 1.0:
        raise ConfigError(f"{key}.ratio must be in (0, 1), got {b.ratio}")
    if b.co_encoder not in INTERACTIONS:
        raise ConfigError(f"{key}.co_encoder must be one of {', '.join(INTERACTIONS)}, got {b.co_encoder!r}")
    if b.reconstructor not in (*INTERACTIONS, "none"):
        raise ConfigError(f"{key}.reconstructor must be unidirectional, full or none, got {b.reconstructor!r}")
    from vidmask.masking import list_maskers

    if b.mask not in list_maskers():
        raise ConfigError(f"{key}.mask must be a strategy from `vidmask masks --list`, got {b.mask!r}")


@dataclass
class MascotConfig:
    """MASCOT (ACM MM 2023) retrieval fine-tuning, with finetune.method=mascot: the frame-level model,
    WTI, the dual completers and co-learning (eq. 9). Paper scale: temporal_depth 4, temporal_heads 8."""

    temporal_depth: int = 2  # temporal transformer layers over frame tokens (the paper: 4)
    temporal_heads: int = 3  # its heads, also the reconstructor's (the paper: 8); must divide model.dim
    high: MascotHighConfig = field(default_factory=MascotHighConfig)
    low: MascotLowConfig = field(default_factory=MascotLowConfig)
    adversarial: float = 0.2  # gamma of eq. 9 on L_adv (with a branch's discriminator on)
    grl: float = 1.0  # the gradient reversal layer's scale: encoders receive -grl x the discriminator's gradient
    disc_hidden: int = 256  # the content discriminator's hidden width
    module_lr_scale: float = 10.0  # new modules learn at train.lr x this; the encoders at train.lr (paper: 1e-4 vs 1e-7)

    def __post_init__(self):
        if self.temporal_depth < 1 or self.temporal_heads < 1 or self.disc_hidden < 1:
            raise ConfigError("finetune.mascot.temporal_depth, temporal_heads and disc_hidden must be >= 1")
        _require("finetune.mascot.adversarial", self.adversarial, 0)
        _require("finetune.mascot.grl", self.grl, 0)
        _require("finetune.mascot.module_lr_scale", self.module_lr_scale, 0, strict=True)


@dataclass
class FinetuneConfig:
    task: str = ""  # "" = pretraining; a task from vidmask.tasks.list_tasks() (set by `vidmask finetune TASK`)
    # pretrained run folder, checkpoint folder or .safetensors; "hf-clip:FOLDER" = a local Hugging Face CLIPModel
    # folder (config.json, weights, tokenizer files), which also sets the model.* keys it fixes; "" = from scratch
    init: str = ""
    answer_list: str = "answer_list.json"  # QA answer vocabulary, relative to data.corpus unless absolute
    rerank_k: int = 128  # retrieval: re-rank each query's top-k with the matching head (UMT uses 128)
    beam: int = 3  # captioning: beam size (1 = greedy)
    max_len: int = 20  # captioning: longest generated caption in tokens
    paragraph: bool = False  # retrieval: join all captions of a video into one query (DiDeMo, ActivityNet)
    dsl: bool = False  # retrieval: also report dual-softmax re-weighted scores
    method: str = ""  # retrieval: "" = the dual encoder with cfg.loss; "mascot" = MASCOT (finetune.mascot)
    # retrieval scores: mean (pooled features) | wti (weighted token interaction, mascot) | clauses (dual encoder:
    # each caption clause's best token of the clip, averaged over the clauses; loss.clauses's late interaction)
    similarity: str = "mean"
    mascot: MascotConfig = field(default_factory=MascotConfig)

    def __post_init__(self):
        if self.init.startswith(HF_CLIP) and not self.init[len(HF_CLIP):].strip():
            raise ConfigError(f"finetune.init={self.init!r} names no folder: write "
                              f"{HF_CLIP}/path/to/clip-vit-base-patch32")
        if self.method not in ("", "mascot"):
            raise ConfigError(f"finetune.method must be '' or 'mascot', got {self.method!r}")
        if self.similarity not in ("mean", "wti", "clauses"):
            raise ConfigError(f"finetune.similarity must be mean, wti or clauses, got {self.similarity!r}")
        if self.similarity == "clauses" and self.method:
            raise ConfigError(f"finetune.similarity=clauses scores a dual encoder's tokens; finetune.method="
                              f"{self.method} has its own (wti or mean)")
        if self.similarity == "wti" and self.method != "mascot":
            raise ConfigError("finetune.similarity=wti needs finetune.method=mascot (the token-weight heads "
                              "are MASCOT's); the dual encoder scores with mean")
        if self.method and self.task and self.task != "retrieval":
            raise ConfigError(f"finetune.method={self.method} is a retrieval fine-tuning method: run it with "
                              f"`vidmask finetune retrieval` (finetune.task is {self.task!r})")
        if self.task:
            from vidmask.tasks import list_tasks

            if self.task not in list_tasks(finetune=True):
                raise ConfigError(f"finetune.task must be one of {', '.join(list_tasks(finetune=True))} "
                                  f"(or empty for pretraining), got {self.task!r}")
        if self.rerank_k < 0 or self.beam < 1 or self.max_len < 2:
            raise ConfigError("finetune.rerank_k >= 0, finetune.beam >= 1 and finetune.max_len >= 2 are required")


@dataclass
class TrainConfig:
    steps: int = 1000  # optimizer steps in total
    batch_size: int = 32  # clips per step per process
    lr: float = 5e-4  # peak learning rate (AdamW)
    min_lr: float = 1e-5  # floor of the cosine decay
    warmup_steps: int = 100  # linear warm-up steps
    weight_decay: float = 0.05  # AdamW decoupled weight decay (not on norms, biases, embeddings)
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping
    seed: int = 0  # seeds data order, frame sampling, masks and init
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast; fp16 uses a grad scaler)
    device: str = "auto"  # auto | cpu | cuda
    log_every: int = 10  # steps between metric rows
    ckpt_every: int = 200  # steps between checkpoints (and one at the end)
    eval_every: int = 0  # steps between retrieval evaluations on the test split; 0 = only at the end
    time_limit_min: float = 0.0  # stop (with a checkpoint) after this many minutes on rank 0's clock; 0 = no limit
    # stop (with a checkpoint, then the evaluation) at this step of the train.steps schedule, whose learning
    # rates are unchanged: the first part of a long run, continued by `--resume RUN train.stop_at=0`; 0 = none
    stop_at: int = 0
    dist_timeout_min: float = 30.0  # a collective (or the ranks building the teacher cache) waited on longer fails
    # on CUDA: TF32 matmuls and convolutions for the fp32 parts (Ampere and later); contrastive logits and
    # ClusterSTM's Grams stay float32 (vidmask.precision)
    tf32: bool = True
    compile: bool = False  # torch.compile the student's video encoder (in place: checkpoints keep their names)
    hard_batches: int = 0  # k > 0: each clip shares its batch with one of its k nearest clips by caption similarity

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError("train.steps and train.batch_size must be >= 1")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ConfigError(f"train.precision must be fp32, bf16 or fp16, got {self.precision!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"train.device must be auto, cpu or cuda, got {self.device!r}")
        if self.warmup_steps < 0:
            raise ConfigError(f"train.warmup_steps must be >= 0, got {self.warmup_steps}")
        _require("train.lr", self.lr, 0, strict=True)
        _require("train.min_lr", self.min_lr, 0)
        if self.min_lr > self.lr:
            raise ConfigError(f"train.min_lr ({self.min_lr}) must not exceed train.lr ({self.lr}): "
                              "the cosine schedule decays from train.lr down to train.min_lr")
        _require("train.weight_decay", self.weight_decay, 0)
        _require("train.grad_clip", self.grad_clip, 0, note=" (0 = no clipping)")
        _require("train.time_limit_min", self.time_limit_min, 0, note=" (0 = no limit)")
        if not 0 <= self.stop_at <= self.steps:
            raise ConfigError(f"train.stop_at must be between 0 (no stop) and train.steps ({self.steps}), "
                              f"got {self.stop_at}")
        for key in ("log_every", "ckpt_every"):
            if getattr(self, key) < 1:
                raise ConfigError(f"train.{key} must be >= 1, got {getattr(self, key)}")
        if self.eval_every < 0:
            raise ConfigError(f"train.eval_every must be >= 0 (0 = only at the end), got {self.eval_every}")
        if self.hard_batches < 0:
            raise ConfigError(f"train.hard_batches must be >= 0 (0 = random batches), got {self.hard_batches}")
        if self.seed < 0:
            raise ConfigError(f"train.seed must be >= 0, got {self.seed}")


@dataclass
class Config:
    run_dir: str = ""  # where the run is written; empty = runs/<name>-<timestamp>
    name: str = "pretrain"  # a short label for the run folder
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    mask: MaskConfig = field(default_factory=MaskConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self):
        if self.data.num_frames % self.model.tubelet:
            raise ConfigError(f"data.num_frames ({self.data.num_frames}) must be a multiple of model.tubelet "
                              f"({self.model.tubelet}): each token covers that many frames")
        missing = self.loss.needs_teacher()
        if missing and not self.teacher.name:
            raise ConfigError(f"loss.{missing[0]} > 0 needs a teacher: set teacher.name (lit-effnet or hf-clip)")
        if self.data.shards and self.teacher.cache:
            raise ConfigError("teacher.cache holds features of the frames of data.train_anno's files; "
                              "set teacher.cache='' to train from data.shards (the teacher then runs every step)")
        if self.data.shards and self.finetune.task not in ("", "retrieval"):
            raise ConfigError(f"data.shards feeds pretraining and retrieval fine-tuning; finetune.task="
                              f"{self.finetune.task} reads data.train_anno: set data.shards=''")
        if self.teacher.cache and self.data.hflip_p > 0 and not self.teacher.cache_mirror:
            raise ConfigError("teacher.cache stores the features of unflipped frames; set data.hflip_p=0, "
                              "teacher.cache='' (run the teacher every step), or teacher.cache_mirror=true "
                              "(flipped clips get their cached features mirrored: an approximation)")
        if self.teacher.cache and self.data.crop_scale < 1.0:
            raise ConfigError(f"teacher.cache stores the features of the centre crop; data.crop_scale="
                              f"{self.data.crop_scale} crops elsewhere: set data.crop_scale=1 or teacher.cache='' "
                              "(run the teacher every step, on the crop)")
        if self.model.pool != "mean" and self.finetune.method == "mascot":
            raise ConfigError(f"finetune.method=mascot pools its video tokens its own way (frame tokens, WTI); "
                              f"model.pool={self.model.pool} would train a head it never reads: set model.pool=mean")
        if 0 < self.teacher.cache_frames_per_video < self.data.num_frames:
            raise ConfigError(f"teacher.cache_frames_per_video={self.teacher.cache_frames_per_video} is below "
                              f"data.num_frames={self.data.num_frames}: cache at least as many frames per video "
                              "as a clip samples, or 0 (every frame)")


# ---------------------------------------------------------------- loading

def _is_dataclass_type(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check (and gently convert) a YAML value against a field's annotated type."""
    origin = typing.get_origin(tp)
    if tp is LossConfig:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {type(value).__name__}")
        return LossConfig(**value)
    if _is_dataclass_type(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {type(value).__name__}")
        return from_dict(tp, value, prefix=key)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for arm in typing.get_args(tp):
            if arm is type(None) and value is None:
                return None
            try:
                return _coerce(value, arm, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: {value!r} matches none of {tp}")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if tp in (int, float, str) and (not isinstance(value, tp) or isinstance(value, bool)):
        raise ConfigError(f"{key} must be {tp.__name__}, got {value!r}")
    if (tp is dict or origin is dict) and not isinstance(value, dict):
        raise ConfigError(f"{key} must be a mapping, got {value!r}")
    if (tp is list or origin is list) and not isinstance(value, list):
        raise ConfigError(f"{key} must be a list, got {value!r}")
    return value


def from_dict(cls, data: dict, prefix: str = ""):
    """Build dataclass `cls` from a nested dict, rejecting unknown keys."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else k
        if k not in names:
            raise ConfigError(f"unknown config key {key!r}; valid keys here: {', '.join(sorted(names))}")
        kwargs[k] = _coerce(v, hints[k], key)
    return cls(**kwargs)


def to_dict(cfg) -> dict:
    """A config as plain nested dicts (what config.yaml and run.json hold)."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, LossConfig):
            out[f.name] = value.to_dict()
        elif dataclasses.is_dataclass(value):
            out[f.name] = to_dict(value)
        else:
            out[f.name] = copy.deepcopy(value)
    return out


# Keys of the flat `loss` section before objectives had sections of their own (run folders
# written before then hold them): old key -> new dotted keys.
LEGACY_KEYS = {
    "loss.mlm_prob": ("loss.mlm.prob",),
    "loss.align_layers": ("loss.align.layers",),
    "loss.relevance_window": ("loss.relevance.window",),
    "loss.decoder_dim": ("loss.relevance.decoder_dim", "loss.stm-guided.decoder_dim"),
    "loss.fusion_depth": ("model.fusion_depth",),
}


# Fields only the `stm` loss section had before vidmask's own STM reading became `stm-guided` and
# `stm` the official STM: a section holding one of them is the old one.
STM_GUIDED_FIELDS = ("decoder_dim", "positions")


def migrate_legacy(tree: dict) -> list[str]:
    """Rewrite the keys of :data:`LEGACY_KEYS` in a config tree in place; returns those found.

    Also a config written when ``stm`` was vidmask's own STM reading (a run folder's config.yaml holds
    every loss section, so its ``loss.stm`` has ``decoder_dim`` and ``positions``; a flat loss section
    predates the official one too): its ``loss.stm`` becomes ``loss.stm-guided`` and a ``mask.strategy``
    of ``stm`` becomes ``stm-guided``, so the old run trains and loads as the method it ran."""
    found = []
    for old, new in LEGACY_KEYS.items():
        section, key = old.split(".")
        holder = tree.get(section)
        if not isinstance(holder, dict) or key not in holder:
            continue
        value = holder.pop(key)
        found.append(old)
        for dotted in new:
            _set_dotted(tree, dotted, value)
    loss, mask = tree.get("loss"), tree.get("mask")
    old_stm = isinstance(loss, dict) and isinstance(loss.get("stm"), dict) and any(
        k in loss["stm"] for k in STM_GUIDED_FIELDS)
    if old_stm or (found and isinstance(loss, dict)):
        if isinstance(loss, dict) and "stm" in loss:
            moved = loss.get("stm-guided", {})  # loss.decoder_dim may have put a field there already
            loss["stm-guided"] = {**_as_section(loss.pop("stm")), **(moved if isinstance(moved, dict) else {})}
            found.append("loss.stm")
        if isinstance(mask, dict) and mask.get("strategy") == "stm":
            mask["strategy"] = "stm-guided"
            found.append("mask.strategy")
    return found


def _as_section(value: Any) -> Any:
    """A loss section given as a bare number is its weight: 1.0 -> {"weight": 1.0}."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return {"weight": value}
    return value


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for i, p in enumerate(parts[:-1]):
        if i == 1 and parts[0] == "loss" and not isinstance(node.get(p, {}), dict):
            node[p] = _as_section(node[p])  # loss.relevance=1.0 then loss.relevance.window=1
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {p!r} is not a section")
    node[parts[-1]] = value


def _deep_merge(base: dict, extra: dict, path: str = "") -> dict:
    out = dict(base)
    for k, v in extra.items():
        if path == "loss" and (isinstance(v, dict) or isinstance(out.get(k), dict)):
            v, out[k] = _as_section(v), _as_section(out.get(k, {}))  # a weight merges with a section
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "params":
            out[k] = _deep_merge(out[k], v, f"{path}.{k}" if path else k)
        else:
            out[k] = v
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults <- YAML file (optional; may `base: other.yaml` or a list of files) <- dotted overrides."""
    tree: dict = {}
    if path is not None:
        tree = _read_yaml(Path(path))
        migrate_legacy(tree)  # a run folder's config.yaml written before objectives had sections
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        k, v = item.split("=", 1)
        try:
            parsed = _parse_yaml(v) if v != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({e})") from None
        key = k.strip()
        if key in LEGACY_KEYS:
            raise ConfigError(f"{key} is now {' and '.join(LEGACY_KEYS[key])}")
        _set_dotted(tree, key, parsed)
    return from_dict(Config, tree)


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, line: int):
        super().__init__(f"key {key!r} appears twice in one mapping (line {line})")


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *anchor` entries may be overridden by the mapping's own keys
                key = self.construct_object(key_node, deep=True)
                try:
                    if key in seen:
                        raise _DuplicateKey(key, key_node.start_mark.line + 1)
                    seen.add(key)
                except TypeError:
                    pass  # an unhashable key: the base class names it
        return super().construct_mapping(node, deep)


# YAML 1.2's floats without a dot ("1e-3", "5E-4"), which PyYAML (YAML 1.1) reads as strings: train.lr=1e-3
# on the command line or in a file is the number a user means
_UniqueKeyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def _parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_UniqueKeyLoader)


def config_tree(path: str | Path) -> dict:
    """A config file's settings with its ``base:`` files merged in, before defaults and overrides
    (what identifies a recipe: a file that extends another changes when that one does)."""
    return _read_yaml(Path(path))


def _read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    """A config file's tree with its ``base:`` files merged in; ``chain``: the files that extend it."""
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        data = _parse_yaml(path.read_text()) or {}
    except _DuplicateKey as e:
        raise ConfigError(f"config file {path}: {e}; keep one of them") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    chain = (*chain, path.resolve())
    base = data.pop("base", None)
    if base is not None:
        bases = [base] if isinstance(base, str) else base
        if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
            raise ConfigError(f"config file {path}: base must be a file name or a list of file names, got {base!r}")
        # a recipe names the file(s) it extends, relative to itself; later ones win
        merged: dict = {}
        for b in bases:
            parent = (path.parent / b).resolve()
            if parent in chain:
                cycle = " -> ".join(str(p) for p in chain[chain.index(parent):] + (parent,))
                raise ConfigError(f"config files extend each other in a cycle: {cycle}; "
                                  "remove one of these base: entries")
            if not parent.is_file():
                raise ConfigError(f"config file {path}: base file {b!r} not found (looked for {parent})")
            merged = _deep_merge(merged, _read_yaml(parent, chain))
        data = _deep_merge(merged, data)
    return data


# Config fields that hold file or folder paths (or a keyword: model.text.init "minilm" / "random"; finetune.init
# may hold a folder after the HF_CLIP prefix)
PATH_FIELDS = ("data.corpus", "data.video_root", "data.shards_index", "teacher.path", "teacher.cache",
               "model.text.init", "model.text.feature_store", "finetune.init")


def rebase_paths(cfg: Config, base: str | Path) -> list[str]:
    """Make relative paths of ``cfg`` (:data:`PATH_FIELDS`, and the patterns of data.shards) that do
    not exist from the working folder but do from ``base`` (the folder a run was started from) point
    there; returns the keys changed. A run's config.yaml keeps paths as given, relative to where it
    was trained."""
    changed = []
    for dotted in PATH_FIELDS:
        holder = cfg
        for part in dotted.split(".")[:-1]:
            holder = getattr(holder, part)
        leaf = dotted.rsplit(".", 1)[1]
        value = getattr(holder, leaf)
        scheme = HF_CLIP if dotted == "finetune.init" and value.startswith(HF_CLIP) else ""
        value = value[len(scheme):]
        if not value or Path(value).is_absolute() or Path(value).exists():
            continue
        candidate = Path(base) / value
        if candidate.exists():
            setattr(holder, leaf, scheme + str(candidate))
            changed.append(dotted)
    shards = _rebase_shards(cfg.data.shards, base)
    if shards != cfg.data.shards:
        cfg.data.shards = shards
        changed.append("data.shards")
    return changed


def _rebase_shards(spec: str | list[str], base: str | Path) -> str | list[str]:
    """data.shards with each relative local pattern that names no file from the working folder but does
    from ``base`` made to point there (``pipe:`` commands run where they are; their paths stay as written)."""
    from vidmask.data.shards import names_local_file  # the shard reader, only when there are shards

    def rebased(pattern: str) -> str:
        if pattern.startswith("pipe:") or Path(pattern.strip()).is_absolute() or names_local_file(pattern):
            return pattern
        candidate = str(Path(base) / pattern.strip())
        return candidate if names_local_file(candidate) else pattern

    if not spec:
        return spec
    return rebased(spec) if isinstance(spec, str) else [rebased(p) for p in spec]


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
