"""Building a run's parts from its config: the model, the teacher and its cache, the caption store, the masker.

Shared by every task's build function (`vidmask.tasks`), the commands and the
benchmarks; the config's mistakes become :class:`ConfigError`s naming the key.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.distributed as dist

from vidmask.config import HF_CLIP, Config, ConfigError
from vidmask.masking import build_masker, masker_token_dim
from vidmask.models.video_text import VideoTextModel
from vidmask.train import checkpoint as ckpt
from vidmask.train.distributed import barrier, wait_for_ranks

log = logging.getLogger("vidmask")


def build_model(cfg: Config) -> VideoTextModel:
    return VideoTextModel(cfg.model, num_frames=cfg.data.num_frames, img_size=cfg.data.size)


def clip_init_folder(cfg: Config) -> Path | None:
    """The CLIP folder of ``finetune.init=hf-clip:FOLDER``, or None when finetune.init is something else."""
    init = cfg.finetune.init
    return Path(init[len(HF_CLIP):].strip()) if init.startswith(HF_CLIP) else None


def init_run_config(init: str) -> Path | None:
    """The config.yaml of the vidmask run that ``finetune.init`` points into (the run folder, one of its
    checkpoint folders or a weights file in one), or None (a bare .safetensors, hf-clip:, nothing)."""
    if not init or init.startswith(HF_CLIP):
        return None
    p = Path(init)
    folder = p.parent if p.is_file() else p  # a weights file -> its checkpoint (or run) folder
    for candidate in (folder, folder.parent.parent):  # RUN, or RUN/checkpoints/step_N
        if (candidate / "config.yaml").is_file():
            return candidate / "config.yaml"
    return None


def _flat(tree: dict, prefix: str) -> dict[str, object]:
    """{"prefix.KEY": value} of a nested config dict, sections flattened ("model.text.init")."""
    out: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}.{key}"))
        else:
            out[f"{prefix}.{key}"] = value
    return out


def resolve_init(cfg: Config, explicit: tuple[str, ...] | list[str] = ()) -> list[str]:
    """Set the model keys that ``finetune.init`` fixes (in place); returns each key it changed, as
    ``model.KEY: OLD -> NEW``. What the training commands do with a fresh config (a resumed run's
    config.yaml holds the values already).

    - ``hf-clip:FOLDER``: the keys that CLIP's architecture fixes; a ConfigError naming the folder when it is
      no CLIPModel, or naming a key set to something CLIP cannot hold.
    - a vidmask run (its folder, a checkpoint folder or a weights file in one): the run's whole ``model``
      section (architecture, text head, evaluation tokens), so that ``vidmask finetune --init RUN`` builds
      the model that RUN trained; a key named in ``explicit`` (the command line's ``model.KEY=VALUE``
      overrides) keeps its value. With ``finetune.method=mascot`` the run's ``model.pool`` is not taken
      (MASCOT pools frame tokens its own way; :func:`init_model` leaves a segment-pooled run's order head out).
    """
    folder = clip_init_folder(cfg)
    if folder is None:
        saved = init_run_config(cfg.finetune.init)
        if saved is None:
            return []
        from vidmask.config import _set_dotted, from_dict, load_config, to_dict

        try:
            theirs = _flat(to_dict(load_config(saved).model), "model")
        except ConfigError as e:
            raise ConfigError(f"finetune.init={cfg.finetune.init}: its run's {saved} does not load: {e}") from None
        tree = to_dict(cfg)
        ours = _flat(tree["model"], "model")
        changes = []
        if cfg.finetune.method == "mascot" and theirs.get("model.pool", "mean") != "mean":
            # MASCOT pools frame tokens its own way (WTI): the run's order head has no reader, so it stays out
            # (init_model leaves its weights behind) and the model keeps model.pool=mean
            changes.append(f"model.pool: kept mean, not the run's {theirs['model.pool']} (finetune.method=mascot "
                           f"pools frame tokens its own way; the run's order head is not loaded)")
            theirs = {k: v for k, v in theirs.items() if k not in ("model.pool", "model.pool_segments")}
        for key, want in theirs.items():
            if key in explicit or ours.get(key) == want:
                continue
            changes.append(f"{key}: {ours.get(key)} -> {want}")
            _set_dotted(tree, key, want)
        if changes:  # rebuilt, so every check of the config runs on the new model keys (model.tubelet ...)
            cfg.model = from_dict(Config, tree).model
        return changes
    from vidmask.models.hf_clip import clip_mismatches, clip_model_config, read_clip_config

    clip = read_clip_config(folder)
    changes = [f"{key}: {have} -> {want}" for key, have, want in clip_mismatches(cfg.model, clip, folder)]
    cfg.model = clip_model_config(clip, cfg.model, folder)
    if cfg.data.size % cfg.model.patch:
        raise ConfigError(f"data.size={cfg.data.size} is no multiple of the patch size {cfg.model.patch} of the CLIP "
                          f"at {folder}: set data.size to one (CLIP's own: {clip.vision_config.image_size})")
    return changes


def init_model(cfg: Config, device, evaluating: bool = False) -> VideoTextModel:
    """The dual encoder, started from ``finetune.init`` when it is set (a run, checkpoint or .safetensors, or
    ``hf-clip:FOLDER``: a local CLIPModel, whose architecture cfg.model must hold: :func:`resolve_init`)."""
    folder = clip_init_folder(cfg)
    if folder is not None:
        from vidmask.models.hf_clip import clip_mismatches, load_clip, read_clip_config

        wrong = clip_mismatches(cfg.model, read_clip_config(folder), folder)
        if wrong:
            what = "; ".join(f"{key}={have} (set {key}={want})" for key, have, want in wrong)
            raise ConfigError(f"finetune.init={cfg.finetune.init}: the model config does not hold that CLIP: {what}. "
                              "`vidmask finetune` and `vidmask pretrain` set these keys from the CLIP; in Python "
                              "call vidmask.train.wiring.resolve_init(cfg) after load_config")
    model = build_model(cfg)
    if folder is not None:
        load_clip(model, folder)
        log.info("initialised from the CLIP at %s (ViT patch %d, width %d, %d layers; text width %d; "
                 "joint space %d)", folder, cfg.model.patch, cfg.model.dim, cfg.model.depth, model.text.width,
                 cfg.model.embed_dim)
    elif cfg.finetune.init:
        # a MASCOT fine-tune of a run pooled by segments: the order head is left behind (resolve_init)
        leave = ("order_proj.",) if cfg.finetune.method == "mascot" and model.order_proj is None else ()
        ckpt.load_model_weights(model, cfg.finetune.init, leave=leave)
        log.info("initialised from %s", cfg.finetune.init)
    elif cfg.finetune.task and not evaluating:
        log.info("no finetune.init: training from scratch")
    return model.to(device)


def build_teacher_from(cfg: Config):
    """The frozen teacher a config names (None without ``teacher.name``), its weights in the dtype
    ``train.precision`` runs in (:meth:`~vidmask.teachers.base.Teacher.autocast_weights`: hf-clip holds
    bf16 / fp16 weights, cast once). Every command builds it here, so a teacher cache the ``vidmask
    teacher cache`` command builds carries the key pretraining looks for."""
    if not cfg.teacher.name:
        return None
    from vidmask.teachers import build_teacher

    if cfg.teacher.path and not Path(cfg.teacher.path).exists():
        raise FileNotFoundError(f"teacher.path={cfg.teacher.path} does not exist "
                                "(lit-effnet: train one with `vidmask teacher train`; hf-clip: a local CLIPModel folder)")
    kw = {"path": cfg.teacher.path} if cfg.teacher.path else {}
    if cfg.teacher.trunk_scale:  # lit-effnet's alone (TeacherConfig checks)
        kw["trunk_scale"] = cfg.teacher.trunk_scale
    if cfg.teacher.name == "lit-effnet" and not cfg.teacher.path:
        log.warning("teacher lit-effnet without teacher.path: its heads are untrained (random)")
    try:
        teacher = build_teacher(cfg.teacher.name, **kw)
    except ValueError as e:
        if "trunk scale" not in str(e):
            raise
        raise ConfigError(f"teacher.trunk_scale: {e}") from None
    from vidmask.train.engine import autocast_dtype

    teacher.autocast_weights(autocast_dtype(cfg.train.precision))
    return teacher


def training_items(cfg: Config):
    """The training annotations as a memory-mapped store (`vidmask.data.load_store`): every rank and
    loader worker shares its pages instead of holding a Python list. Rank 0 builds or refreshes the
    store beside the file while the other ranks wait, then they open it.

    With data.shards, the shards and their counts instead (`vidmask.data.shards.ShardSet`: its
    length is the number of samples; the runner streams it)."""
    if cfg.data.shards:
        return training_shards(cfg)
    return annotation_store(cfg)


def annotation_store(cfg: Config):
    """data.train_anno as a memory-mapped `AnnoStore`: rank 0 builds or refreshes it, the others wait."""
    from vidmask.data import load_store

    path, root = cfg.data.path(cfg.data.train_anno), cfg.data.root()
    main = not dist.is_initialized() or dist.get_rank() == 0
    store = load_store(path, root=root) if main else None
    barrier()
    return store if main else load_store(path, root=root)


def training_shards(cfg: Config):
    """data.shards opened against their index; a missing or unlisted shard is a ConfigError naming it."""
    from vidmask.data.shards import ShardError, open_shards

    try:
        return open_shards(cfg.data.shards, cfg.data.shards_index or None)
    except (ShardError, FileNotFoundError, ValueError) as e:
        hint = "; data.shards_index names the index" if str(e).startswith(("shard index", "pipe:")) else ""
        raise ConfigError(f"data.shards: {e}{hint}") from None


def teacher_cache_for(cfg: Config, teacher, items, device: torch.device):
    """The per-frame teacher features of the training videos (`teacher.cache`), or None.

    Built on first use in `teacher.cache` (a folder named by the teacher's
    weights, the videos, the frame size and the frame grid, so a stale one is
    never read): its projected size is logged first and a build above
    `teacher.cache_max_gb` refused; each rank encodes its contiguous share of
    the videos into a part, the ranks wait for each other (up to
    `train.dist_timeout_min`), and every rank memory-maps the parts.
    """
    if teacher is None or not cfg.teacher.cache:
        return None
    from vidmask.teachers.cache import cached_or_built

    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    return cached_or_built(cfg.teacher.cache, teacher, cfg.teacher.path or None, items, cfg.data.size,
                           grid_frames=cfg.teacher.cache_frames_per_video, max_gb=cfg.teacher.cache_max_gb,
                           rank=rank, world=world, device=device, progress=True,
                           barrier=lambda: wait_for_ranks("the teacher cache", cfg.train.dist_timeout_min))


def caption_store_for(cfg: Config, text):
    """The frozen caption features of data.train_anno's captions through ``text`` (a TextEncoder) from
    `model.text.feature_store`, or None when it is "".

    Built on first use in a folder named by the tower's identity and the caption set (another tower or
    annotation file gets another store): its projected size is logged, each rank encodes its share of
    the distinct captions, the ranks wait for each other (up to `train.dist_timeout_min`), and every
    rank memory-maps the parts. With data.shards the captions come from data.train_anno too (the
    annotation file the shards were written from); the shards' captions it lacks are encoded on the fly.
    """
    if not cfg.model.text.feature_store:
        return None
    from vidmask.models.caption_store import cached_or_built

    path = cfg.data.path(cfg.data.train_anno) if cfg.data.train_anno else None
    if path is None or not path.is_file():
        raise ConfigError(f"model.text.feature_store is built from the captions of data.train_anno, and "
                          f"{path or 'data.train_anno=' + repr(cfg.data.train_anno)} is not a file: name the "
                          "annotation file of the training captions (with data.shards, the one the shards were "
                          "written from), or set model.text.feature_store=''")
    items = annotation_store(cfg)
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    return cached_or_built(cfg.model.text.feature_store, text.store_identity(), text.encode_frozen, text.width,
                           items.texts, rank=rank, world=world, progress=True,
                           barrier=lambda: wait_for_ranks("the caption store", cfg.train.dist_timeout_min))


def masker_from(cfg: Config, teacher=None):
    """cfg.mask's strategy; a ConfigError naming mask.strategy or mask.params when they are wrong."""
    try:
        return build_masker(cfg.mask.strategy, ratio=cfg.mask.ratio,
                            token_dim=masker_token_dim(cfg.model.patch, teacher, cfg.mask.strategy,
                                                       cfg.model.tubelet), **cfg.mask.params)
    except KeyError as e:
        raise ConfigError(f"mask.strategy: {e.args[0]}") from None
    except TypeError as e:
        raise ConfigError(f"mask.params: {e}") from None


def build_task(cfg: Config, model: VideoTextModel, teacher=None, teacher_cache=None, masker=None):
    """The pretraining task of ``cfg`` around ``model`` (the masker from cfg.mask unless given)."""
    from vidmask.tasks.pretrain import PretrainTask

    masker = masker if masker is not None else masker_from(cfg, teacher)
    return PretrainTask(model, masker, cfg.loss, teacher, frames=cfg.data.num_frames // cfg.model.tubelet,
                        grid=cfg.data.size // cfg.model.patch, teacher_cache=teacher_cache)
