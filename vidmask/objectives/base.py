"""The objective contract and registry: one file per pretraining loss, looked up by exact name.

An objective is an ``nn.Module`` built from its own typed config section
(``weight`` plus its parameters) and what the run offers it
(:class:`ObjectiveEnv`: the model, the teacher, the clip geometry, the shared
fusion encoder). Each step the pretraining task computes what every objective
may read once (:class:`StepContext`: the mask, the student's features, the
teacher's output, the text features) and calls the active objectives in turn;
each returns ``{"<name>_loss": tensor}`` (unweighted) plus optional report
values. The task multiplies each loss by its weight; the trainer sums the
``*_loss`` terms and knows no objective by name.

Adding an objective is one file::

    @dataclass
    class MyConfig(ObjectiveConfig):
        scale: float = 1.0  # what it does

    @register_objective("mine", MyConfig)
    class Mine(Objective):
        def __init__(self, cfg: MyConfig, env: ObjectiveEnv): ...
        def forward(self, ctx: StepContext) -> dict[str, Tensor]:
            return {"mine_loss": ...}

plus an import line in ``vidmask/objectives/__init__.py``; ``loss.mine=1.0``
(or ``loss: {mine: {weight: 1.0, scale: 2.0}}``) switches it on. The order of
registration is the order objectives are built (parameter initialisation draws
from the global RNG) and their terms are computed and summed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn


# the StepContext.shared key of the visual reconstruction decoder's trunk states: computed once a step,
# read by recon and by relevance when it decodes from the same trunk (loss.relevance.decoder=recon)
RECON_TRUNK = "recon.decoder"


@dataclass
class ObjectiveConfig:
    """Every objective's section has a weight; 0 switches the objective off.

    The loss config checks the weight (finite, >= 0); a section's own
    ``__post_init__`` checks its other fields and raises :class:`ConfigError`
    naming them in full (``loss.relevance.window must be odd ...``).
    """

    weight: float = 0.0  # multiplies the objective's loss; 0 = not built, not computed


@dataclass
class ObjectiveEnv:
    """What a run offers an objective when it is built."""

    model: nn.Module  # the VideoTextModel being trained
    teacher: nn.Module | None  # the frozen teacher (None without one)
    frames: int  # T: token time steps of the training clips (data.num_frames / model.tubelet)
    grid: int  # the student's patch grid side (N = grid * grid)
    fusion: nn.Module | None = None  # the shared cross-attention fusion encoder, for objectives that use it


@dataclass
class StepContext:
    """What every objective of one pretraining step may read; computed once by the task.

    Two token sets: the **kept** tokens (``masking.ids_keep``; ``feats`` and ``layers``), which the
    teacher objectives read (align, relevance, recon, stm, stm-guided), and the **video-text set**
    (``video_ids``; ``video_tokens`` and ``video_feat``), which vtc, vtm, mlm and reverse read. They are
    the same tokens and the same encoder pass for every strategy but ``stm``, whose video-text set is
    the complementary masked set, encoded in a second pass (``Masker.video_text_set``).
    """

    model: nn.Module  # the VideoTextModel
    video: Tensor  # float[B,T,3,H,W]
    captions: list[str]  # B captions
    masking: Any  # MaskOut: keep bool[B,T,N], ids_keep long[B,K]
    feats: Tensor  # float[B,K,C]: the student's final (normed) features of the kept tokens
    layers: list[Tensor]  # the raw outputs of the last k student blocks, k x [B,K,C] (k = most requested)
    video_feat: Tensor  # float[B,E] unit video features (joint space) of the video-text set
    text_feat: Tensor  # float[B,E] unit text features (joint space)
    teacher_out: Any  # TeacherOut (tokens float[B,T,N,D], attn float[B,T,N]) or None
    teacher: nn.Module | None  # the frozen teacher, for targets it computes (text features, pooling)
    fusion: nn.Module | None  # the shared fusion encoder (None when no objective uses it)
    generator: torch.Generator | None  # this step's generator (negatives, MLM masking)
    frames: int  # T: token time steps (frames / model.tubelet); video holds T*k frames
    tokens: int  # N per frame
    # the video-text set: float[B,K',C] final (normed) encoder features, long[B,K'] their flat indices
    # (ascending), float[B,K'] a learnable masker's straight-through weights on them (or None). The task
    # sets them; in one pass they are feats, masking.ids_keep and masking.token_weight
    video_tokens: Tensor | None = None
    video_ids: Tensor | None = None
    video_weight: Tensor | None = None
    text_pooled: Tensor | None = None  # float[B,W]: the text tower's pooled caption state, what its head projects
    # long[B] one id per video (batch['video_id']): pairs sharing one are positives in vtc, never negatives
    # in vtm (UMT's idx); None = every sample its own video
    pair_ids: Tensor | None = None
    _tokenized: dict | None = field(default=None, repr=False)
    _memo: dict = field(default_factory=dict, repr=False)

    def shared(self, key: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per step under ``key``, whichever objective asks first (one decoder trunk
        that two objectives read: ``loss.relevance.decoder=recon``)."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def tokenized(self) -> dict[str, Tensor]:
        """The captions tokenized once per step (input_ids, attention_mask long[B,S]), shared by objectives."""
        if self._tokenized is None:
            self._tokenized = self.model.text.tokenize(self.captions, self.video.device)
        return self._tokenized


class Objective(nn.Module):
    """Base of registered objectives.

    Subclasses set (through :func:`register_objective`) ``name`` and ``config``,
    may set ``needs_teacher`` (its targets come from the teacher),
    ``reads_teacher_text`` (it encodes the captions with the teacher's text
    side every step: training then serves them from the teacher's caption
    cache or store) and ``uses_fusion`` (it reads ``ctx.fusion``), and
    implement ``forward``.
    """

    name: str = ""
    config: type[ObjectiveConfig] = ObjectiveConfig
    needs_teacher: bool = False
    reads_teacher_text: bool = False
    uses_fusion: bool = False

    def student_layers(self) -> int:
        """How many of the student's last blocks this objective reads from ``ctx.layers``."""
        return 0

    def teacher_layers(self) -> int:
        """How many of the teacher's last layers this objective reads from ``ctx.teacher_out.layers``
        (0: it reads ``tokens`` only). The task asks the teacher for the most any objective needs."""
        return 0

    def bind(self, objectives: dict[str, "Objective"]) -> None:
        """Called once all of a run's active objectives are built (``objectives``: name -> objective), for
        one that reads another's module (keep such a reference out of the module tree, e.g. in a list,
        so it is trained and saved once). Raise :class:`~vidmask.config.ConfigError` when the one it needs
        is not active. The default reads nothing."""

    def scorer(self, fusion: nn.Module | None):
        """``(text_states [Nt,S,W], text_mask [Nt,S], video_tokens [Nv,K,C]) -> ScoreFn`` when the
        objective trains a head that can re-score retrieval pairs, else None (the default)."""
        return None

    def forward(self, ctx: StepContext) -> dict[str, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError


_REGISTRY: dict[str, type[Objective]] = {}


def register_objective(name: str, config: type[ObjectiveConfig] = ObjectiveConfig) -> Callable:
    """Class decorator: register an objective and its config section under an exact name."""

    def deco(cls):
        if name in _REGISTRY:
            raise ValueError(f"objective {name!r} registered twice")
        cls.name, cls.config = name, config
        _REGISTRY[name] = cls
        return cls

    return deco


def list_objectives() -> list[str]:
    """Registered objectives in registration order (the order they are built, computed and summed)."""
    return list(_REGISTRY)


def objective_class(name: str) -> type[Objective]:
    if name not in _REGISTRY:
        raise KeyError(f"unknown objective {name!r}; known: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def build_objective(name: str, cfg: ObjectiveConfig, env: ObjectiveEnv) -> Objective:
    """The objective ``name`` built from its section; a ValueError when it needs a teacher and has none."""
    cls = objective_class(name)
    if cls.needs_teacher and env.teacher is None:
        raise ValueError(f"loss.{name} needs a teacher: set teacher.name")
    return cls(cfg, env)
