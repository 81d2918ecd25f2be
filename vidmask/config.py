"""Typed run configuration: nested dataclasses, YAML files, dotted overrides.

A YAML file holds only what differs from the defaults below; command-line
overrides are ``section.key=value`` (values parsed as YAML, so ``0.9``,
``true``, ``[1, 2]`` work). Unknown keys are rejected with the list of valid
ones, and every section validates itself in ``__post_init__``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config file or override that cannot be applied."""


@dataclass
class DataConfig:
    corpus: str = "corpus"  # corpus folder; annotation paths below are relative to it unless absolute
    train_anno: str = "train.json"  # UMT/VINDLU-format training annotations
    test_anno: str = "test_retrieval.json"  # zero-shot retrieval evaluation annotations
    video_root: str = ""  # folder the annotations' `video` paths are relative to; empty = the annotation file's folder
    num_frames: int = 8  # frames sampled per clip (T)
    size: int = 128  # square input resolution in pixels
    num_workers: int = 2  # DataLoader worker processes
    cache_frames: bool = False  # decode every video once and sample frames from memory
    hflip_p: float = 0.0  # horizontal flip probability; captions get left/right swapped when > 0
    max_bad_share: float = 0.05  # stop training when more than this share of samples is unreadable

    def __post_init__(self):
        if self.num_frames < 1:
            raise ConfigError(f"data.num_frames must be >= 1, got {self.num_frames}")
        if self.size < 16 or self.size % 16:
            raise ConfigError(f"data.size must be a positive multiple of 16, got {self.size}")
        if not 0.0 <= self.hflip_p <= 1.0:
            raise ConfigError(f"data.hflip_p must be in [0, 1], got {self.hflip_p}")
        if not 0.0 <= self.max_bad_share < 1.0:
            raise ConfigError(f"data.max_bad_share must be in [0, 1), got {self.max_bad_share}")

    def path(self, name: str) -> Path:
        p = Path(name)
        return p if p.is_absolute() else Path(self.corpus) / p

    def root(self) -> Path | None:
        """Media root for load_annotations (None: next to the annotation file)."""
        return Path(self.video_root) if self.video_root else None


@dataclass
class TextConfig:
    init: str = "minilm"  # "minilm" (packaged all-MiniLM-L6-v2), "random" (tests), or a local HF BERT folder
    trainable_layers: int = 0  # last BERT layers trained; 0 = frozen tower with cached caption features
    max_len: int = 32  # tokens per caption
    random_layers: int = 2  # depth of the randomly initialised tower (init="random" only)

    def __post_init__(self):
        if self.trainable_layers < 0:
            raise ConfigError("model.text.trainable_layers must be >= 0")
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
    text: TextConfig = field(default_factory=TextConfig)

    def __post_init__(self):
        if self.dim % self.heads:
            raise ConfigError(f"model.dim ({self.dim}) must be divisible by model.heads ({self.heads})")
        if self.patch < 1 or self.depth < 1:
            raise ConfigError("model.patch and model.depth must be >= 1")
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
    # folder of per-frame teacher features of every training frame, built on first use and reused
    # (vidmask.teachers.cache); "" = run the teacher's trunk every step. Needs data.hflip_p=0.
    cache: str = ""

    def __post_init__(self):
        if self.name and self.name not in ("lit-effnet", "hf-clip"):
            raise ConfigError(f"teacher.name must be '', 'lit-effnet' or 'hf-clip', got {self.name!r}")
        if self.name == "hf-clip" and not self.path:
            raise ConfigError("teacher.name=hf-clip needs teacher.path=/path/to/a/local/CLIPModel/folder")


@dataclass
class LossConfig:
    vtc: float = 1.0  # video-text contrastive weight
    vtm: float = 0.0  # video-text matching (fusion layers, one hard negative per sample)
    mlm: float = 0.0  # masked language modelling through the fusion layers
    align: float = 0.0  # UMT unmasked-teacher alignment of the last student layers (needs a teacher)
    relevance: float = 0.0  # ClusterSTM video-text relevance reconstruction (needs a teacher)
    stm: float = 0.0  # STM decoder: masked teacher tokens from kept tokens + text (needs a teacher)
    mlm_prob: float = 0.5  # share of caption tokens masked for MLM (UMT uses 0.5)
    align_layers: int = 1  # last k student blocks aligned to the teacher
    relevance_window: int = 3  # sliding window of relevance generation (the supplement compares 1 and 3)
    fusion_depth: int = 2  # cross-attention fusion layers over the text tower (vtm, mlm)
    decoder_dim: int = 128  # width of the relevance and STM decoders

    def __post_init__(self):
        for k in ("vtc", "vtm", "mlm", "align", "relevance", "stm"):
            if getattr(self, k) < 0:
                raise ConfigError(f"loss.{k} must be >= 0")
        if not 0.0 < self.mlm_prob < 1.0:
            raise ConfigError("loss.mlm_prob must be in (0, 1)")
        if self.relevance_window < 1 or self.relevance_window % 2 == 0:
            raise ConfigError("loss.relevance_window must be odd (1, 3, 5, ...)")
        if self.align_layers < 1:
            raise ConfigError("loss.align_layers must be >= 1")

    def needs_teacher(self) -> list[str]:
        return [k for k in ("align", "relevance", "stm") if getattr(self, k) > 0]


@dataclass
class FinetuneConfig:
    task: str = ""  # "" = pretraining; retrieval | qa | caption (set by `vidmask finetune TASK`)
    init: str = ""  # pretrained run folder, checkpoint folder or .safetensors; "" = train from scratch
    answer_list: str = "answer_list.json"  # QA answer vocabulary, relative to data.corpus unless absolute
    rerank_k: int = 128  # retrieval: re-rank each query's top-k with the matching head (UMT uses 128)
    beam: int = 3  # captioning: beam size (1 = greedy)
    max_len: int = 20  # captioning: longest generated caption in tokens
    paragraph: bool = False  # retrieval: join all captions of a video into one query (DiDeMo, ActivityNet)
    dsl: bool = False  # retrieval: also report dual-softmax re-weighted scores

    def __post_init__(self):
        if self.task not in ("", "retrieval", "qa", "caption"):
            raise ConfigError(f"finetune.task must be retrieval, qa or caption, got {self.task!r}")
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
    time_limit_min: float = 0.0  # stop (with a checkpoint) after this many minutes; 0 = no limit

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1:
            raise ConfigError("train.steps and train.batch_size must be >= 1")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ConfigError(f"train.precision must be fp32, bf16 or fp16, got {self.precision!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"train.device must be auto, cpu or cuda, got {self.device!r}")
        if self.warmup_steps < 0 or self.lr <= 0:
            raise ConfigError("train.warmup_steps must be >= 0 and train.lr > 0")


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
        missing = self.loss.needs_teacher()
        if missing and not self.teacher.name:
            raise ConfigError(f"loss.{missing[0]} > 0 needs a teacher: set teacher.name (lit-effnet or hf-clip)")
        if self.teacher.cache and self.data.hflip_p > 0:
            raise ConfigError("teacher.cache stores the features of unflipped frames; set data.hflip_p=0 "
                              "or teacher.cache='' (run the teacher every step)")


# ---------------------------------------------------------------- loading

def _is_dataclass_type(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check (and gently convert) a YAML value against a field's annotated type."""
    origin = typing.get_origin(tp)
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
    return dataclasses.asdict(cfg)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {p!r} is not a section")
    node[parts[-1]] = value


def _deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "params":
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults <- YAML file (optional; may `base: other.yaml` or a list of files) <- dotted overrides."""
    tree: dict = {}
    if path is not None:
        tree = _read_yaml(Path(path))
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        k, v = item.split("=", 1)
        try:
            parsed = yaml.safe_load(v) if v != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({e})") from None
        _set_dotted(tree, k.strip(), parsed)
    return from_dict(Config, tree)


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    base = data.pop("base", None)
    if base is not None:
        # a recipe names the file(s) it extends, relative to itself; later ones win
        merged: dict = {}
        for b in [base] if isinstance(base, str) else list(base):
            merged = _deep_merge(merged, _read_yaml((path.parent / b).resolve()))
        data = _deep_merge(merged, data)
    return data


# Config fields that hold file or folder paths (or a keyword: model.text.init "minilm" / "random")
PATH_FIELDS = ("data.corpus", "data.video_root", "teacher.path", "teacher.cache", "model.text.init", "finetune.init")


def rebase_paths(cfg: Config, base: str | Path) -> list[str]:
    """Make relative paths of ``cfg`` (:data:`PATH_FIELDS`) that do not exist from the working
    folder but do from ``base`` (the folder a run was started from) point there; returns the
    keys changed. A run's config.yaml keeps paths as given, relative to where it was trained."""
    changed = []
    for dotted in PATH_FIELDS:
        holder = cfg
        for part in dotted.split(".")[:-1]:
            holder = getattr(holder, part)
        leaf = dotted.rsplit(".", 1)[1]
        value = getattr(holder, leaf)
        if not value or Path(value).is_absolute() or Path(value).exists():
            continue
        candidate = Path(base) / value
        if candidate.exists():
            setattr(holder, leaf, str(candidate))
            changed.append(dotted)
    return changed


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
