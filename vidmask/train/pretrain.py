"""Wiring for `vidmask pretrain`: build everything from a Config, run the loop, save, evaluate."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from vidmask.config import Config, ConfigError, save_config, to_dict
from vidmask.data import BadSampleTracker, TooManyBadSamples, VideoTextDataset, collate_video_text, load_annotations
from vidmask.masking import build_masker
from vidmask.models.video_text import VideoTextModel
from vidmask.tasks.pretrain import PretrainTask
from vidmask.train import checkpoint as ckpt
from vidmask.train.distributed import DistInfo, barrier, init_distributed, teardown
from vidmask.train.engine import LoopSpec, train
from vidmask.train.evaluate import evaluate_retrieval, format_table
from vidmask.train.runlog import MetricsWriter, git_revision, setup_logging, write_json
from vidmask.train.schedule import epoch_batches, steps_per_epoch

log = logging.getLogger("vidmask")


def build_model(cfg: Config) -> VideoTextModel:
    return VideoTextModel(cfg.model, num_frames=cfg.data.num_frames, img_size=cfg.data.size)


def build_teacher_from(cfg: Config):
    if not cfg.teacher.name:
        return None
    from vidmask.teachers import build_teacher

    if cfg.teacher.path and not Path(cfg.teacher.path).exists():
        raise FileNotFoundError(f"teacher.path={cfg.teacher.path} does not exist "
                                "(lit-effnet: train one with `vidmask teacher train`; hf-clip: a local CLIPModel folder)")
    kw = {"path": cfg.teacher.path} if cfg.teacher.path else {}
    if cfg.teacher.name == "lit-effnet" and not cfg.teacher.path:
        log.warning("teacher lit-effnet without teacher.path: its heads are untrained (random)")
    return build_teacher(cfg.teacher.name, **kw)


def teacher_cache_for(cfg: Config, teacher, items, device: torch.device):
    """The per-frame teacher features of the training videos (`teacher.cache`), or None.

    Built once by rank 0 in `teacher.cache` (a file named by the teacher's
    weights, the videos and the frame size, so a stale one is never read),
    then loaded by every rank.
    """
    if teacher is None or not cfg.teacher.cache:
        return None
    from vidmask.teachers.cache import cached_or_built

    main = not dist.is_initialized() or dist.get_rank() == 0
    kw = dict(teacher=teacher, teacher_path=cfg.teacher.path or None, items=items, size=cfg.data.size)
    cache = cached_or_built(cfg.teacher.cache, device=device, progress=True, **kw) if main else None
    barrier()
    return cache if main else cached_or_built(cfg.teacher.cache, build=False, **kw)


def masker_from(cfg: Config, teacher=None):
    """cfg.mask's strategy; a ConfigError naming mask.strategy or mask.params when they are wrong."""
    params = dict(cfg.mask.params)
    if cfg.mask.strategy == "stm" and "dim" not in params:
        # stm looks at what the masker sees: teacher tokens, or pixel patches
        params["dim"] = teacher.token_dim if teacher is not None else cfg.model.patch * cfg.model.patch * 3
    try:
        return build_masker(cfg.mask.strategy, ratio=cfg.mask.ratio, **params)
    except KeyError as e:
        raise ConfigError(f"mask.strategy: {e.args[0]}") from None
    except TypeError as e:
        raise ConfigError(f"mask.params: {e}") from None


def build_task(cfg: Config, model: VideoTextModel, teacher=None, teacher_cache=None, masker=None) -> PretrainTask:
    masker = masker if masker is not None else masker_from(cfg, teacher)
    return PretrainTask(model, masker, cfg.loss, teacher, frames=cfg.data.num_frames,
                        grid=cfg.data.size // cfg.model.patch, teacher_cache=teacher_cache)


def param_groups(module: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No decay on biases, norms, position tables and the temperature."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.dim() < 2 or "pos_" in name or "logit_scale" in name else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_run_dir(cfg: Config, info: DistInfo) -> Path:
    name = cfg.run_dir or f"runs/{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    if info.enabled:
        box = [name]
        dist.broadcast_object_list(box, src=0)  # ranks may disagree on the clock
        name = box[0]
    run_dir = Path(name)
    if info.main:
        run_dir.mkdir(parents=True, exist_ok=True)
    barrier()
    return run_dir


def batch_stream(dataset, cfg: Config, info: DistInfo, start_step: int):
    """(step, batch) pairs from `start_step` on, epoch after epoch, in a resumable order."""
    spe = steps_per_epoch(len(dataset), cfg.train.batch_size, info.world)
    step = start_step
    while step < cfg.train.steps:
        epoch, skip = divmod(step, spe)
        dataset.set_epoch(epoch)
        batches = epoch_batches(len(dataset), cfg.train.batch_size, cfg.train.seed, epoch, info.rank, info.world)
        loader = DataLoader(
            dataset, batch_sampler=batches[skip:], num_workers=cfg.data.num_workers,
            collate_fn=collate_video_text, persistent_workers=False,
        )
        for batch in loader:
            yield step, batch
            step += 1
            if step >= cfg.train.steps:
                return


@dataclass
class Job:
    """What differs between pretraining and each fine-tuning task; the loop is shared."""

    task: nn.Module  # forward(batch, generator) -> (named *_loss terms, report)
    model: VideoTextModel
    items: list  # training VideoText items
    evaluate: Callable[[], dict]  # evaluation on the test split (rank 0)
    summary: Callable[[dict], str]  # a table for people
    short: Callable[[dict], dict]  # a few numbers for metrics.csv during training
    prepare: Callable[[dict], dict] = lambda batch: batch  # adds task fields (e.g. answer ids) to a batch
    eval_name: str = "eval_retrieval.json"
    masked: bool = True  # whether the task drops tokens by cfg.mask (QA and captioning see them all)


def pretrain_job(cfg: Config, device: torch.device, model: VideoTextModel | None = None,
                 evaluating: bool = False) -> Job:
    """Pretraining, or retrieval fine-tuning when given an initialised `model`; `evaluating`: only
    the evaluation is wanted (the training annotations are not read)."""
    model = model if model is not None else build_model(cfg).to(device)
    root = cfg.data.root()
    items = [] if evaluating else load_annotations(cfg.data.path(cfg.data.train_anno), root=root)
    teacher = build_teacher_from(cfg)
    if teacher is not None:
        teacher.to(device)
    masker = masker_from(cfg, teacher)  # a wrong mask setting stops the run before the teacher cache is built
    task = build_task(cfg, model, teacher, teacher_cache_for(cfg, teacher, items, device), masker).to(device)
    test_path = cfg.data.path(cfg.data.test_anno)
    # read before training, so a broken test file stops the run at once, not after it
    test = load_annotations(test_path, root=root) if cfg.data.test_anno else None
    return Job(
        task=task, model=model, items=items,
        evaluate=lambda: evaluate_retrieval(model, test_path, cfg, device, task=task, items=test),
        summary=format_table,
        short=lambda r: {"eval_t2v_R@1": r["t2v"]["R@1"], "eval_rsum": r["rsum"]},
    )


def run_pretrain(cfg: Config, resume: bool = False) -> Path:
    """Train (or resume) a run; returns its folder. Works under torchrun."""
    return run_job(cfg, resume, pretrain_job)


def run_job(cfg: Config, resume: bool, make_job: Callable[[Config, torch.device], Job]) -> Path:
    info = init_distributed(cfg.train.device)
    try:
        run_dir = _run(cfg, info, resume, make_job)
    except BaseException:
        teardown(clean=False)  # no barrier: the other ranks may never reach it
        raise
    # the model and optimiser died with _run's frame, before the group goes
    teardown()
    return run_dir


# At most this many training files are looked up at start (evenly spaced): enough to see a wrong
# media folder, without stat-ing millions of files (WebVid-10M) on every rank before step 1.
MEDIA_CHECK_MAX = 2000


def check_media_exist(items, cfg: Config) -> None:
    """Stop at once when more than data.max_bad_share of the training files do not exist (a wrong
    data.video_root or data.corpus), rather than after the first hundred bad samples; warn about a few.
    Large sets are judged on an even sample of ``MEDIA_CHECK_MAX`` files."""
    step = max(1, -(-len(items) // MEDIA_CHECK_MAX))  # ceil: at most MEDIA_CHECK_MAX looked up
    checked = items[::step]
    missing = [it.path for it in checked if not os.path.exists(it.path)]
    if not missing:
        return
    of = f"{len(checked)}" if step == 1 else f"{len(checked)} looked up (of {len(items)})"
    where = f"data.video_root={cfg.data.video_root}" if cfg.data.video_root else "the annotation file's folder"
    if len(missing) > cfg.data.max_bad_share * len(checked):
        raise ConfigError(f"{len(missing)} of {of} training media files do not exist (first: {missing[0]}); "
                          f"check data.video_root and data.corpus (paths are relative to {where})")
    log.warning("%d of %s training media files do not exist (first: %s); they are skipped as bad samples",
                len(missing), of, missing[0])


def _run(cfg: Config, info: DistInfo, resume: bool, make_job) -> Path:
    run_dir = make_run_dir(cfg, info)
    setup_logging(run_dir, info.main)
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank

    job = make_job(cfg, info.device)
    task, model, items = job.task, job.model, job.items
    steps_per_epoch(len(items), cfg.train.batch_size, info.world)  # too few samples: stop before any step
    check_media_exist(items, cfg)
    optimizer = torch.optim.AdamW(param_groups(task, cfg.train.weight_decay), lr=cfg.train.lr, betas=(0.9, 0.98))
    scaler = torch.amp.GradScaler(info.device.type) if cfg.train.precision == "fp16" else None

    start_step = 0
    latest = ckpt.latest_checkpoint(run_dir / "checkpoints") if resume else None
    if resume and latest is None:
        raise FileNotFoundError(f"--resume: no checkpoint in {run_dir / 'checkpoints'}")
    tracker = BadSampleTracker(cfg.data.max_bad_share)
    if latest is not None:
        ckpt.load_weights(task, latest)
        state = ckpt.load_state(latest)
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng_cpu"])
        if torch.cuda.is_available() and "rng_cuda" in state:
            torch.cuda.set_rng_state_all(list(state["rng_cuda"]))
        tracker.load_state_dict(state.get("bad_samples", {}))
        start_step = int(state["step"])
        log.info("resumed from %s at step %d", latest, start_step)

    dataset = VideoTextDataset(
        items, cfg.data.num_frames, cfg.data.size, train=True, seed=cfg.train.seed,
        hflip_p=cfg.data.hflip_p, cache_frames=cfg.data.cache_frames,
    )
    # frozen text tower: every caption's features once, before the clock starts
    model.text.warm_cache([c for it in items for c in it.captions])

    if info.main:
        save_config(cfg, run_dir / "config.yaml")
        write_json(run_dir / "run.json", {"git": git_revision(), "world_size": info.world,
                                          "device": str(info.device), "torch": torch.__version__,
                                          "train_samples": len(items), "config": to_dict(cfg),
                                          "cwd": os.getcwd()})  # what the config's relative paths are relative to
        n_params = sum(p.numel() for p in task.parameters() if p.requires_grad)
        mask = f"mask {cfg.mask.strategy} @ {cfg.mask.ratio:.2f}" if job.masked else "all tokens"
        log.info("run folder %s; %d training samples; %.2fM trainable parameters; %s",
                 run_dir, len(items), n_params / 1e6, mask)
    metrics = MetricsWriter(run_dir, resume_step=start_step) if info.main else None

    wrapped = task
    if info.enabled:
        wrapped = torch.nn.parallel.DistributedDataParallel(
            task, device_ids=[info.device.index] if info.device.type == "cuda" else None
        )

    def on_log(step: int, row: dict) -> None:
        if metrics is not None:
            metrics.write(step, row)

    def on_checkpoint(step: int) -> None:
        if info.main:
            state = {
                "step": step,
                "optimizer": optimizer.state_dict(),
                "rng_cpu": torch.get_rng_state(),
                "bad_samples": tracker.state_dict(),
            }
            if scaler is not None:
                state["scaler"] = scaler.state_dict()
            if torch.cuda.is_available():
                state["rng_cuda"] = torch.stack(torch.cuda.get_rng_state_all())
            path = ckpt.save_checkpoint(run_dir / "checkpoints", step, task, state)
            metrics.plot()
            log.info("checkpoint %s", path)
        barrier()

    def on_eval(step: int) -> None:
        if info.main:
            short = job.short(job.evaluate())
            metrics.write(step, short)
            log.info("step %d: %s", step, ", ".join(f"{k} {v:.2f}" for k, v in short.items()))
        barrier()

    def on_batch(batch: dict) -> None:
        try:
            tracker.update(len(batch["caption"]), batch["bad"])
        except TooManyBadSamples as e:
            raise TooManyBadSamples(f"{e} The allowed share is the config key data.max_bad_share "
                                    f"(now {cfg.data.max_bad_share}).") from None
        job.prepare(batch)

    spec = LoopSpec(
        total_steps=cfg.train.steps, peak_lr=cfg.train.lr, min_lr=cfg.train.min_lr, warmup=cfg.train.warmup_steps,
        grad_clip=cfg.train.grad_clip, seed=cfg.train.seed, precision=cfg.train.precision,
        log_every=cfg.train.log_every, ckpt_every=cfg.train.ckpt_every, eval_every=cfg.train.eval_every,
        time_limit_s=cfg.train.time_limit_min * 60.0, params=[p for p in task.parameters() if p.requires_grad],
    )
    t0 = time.time()
    last = train(wrapped, optimizer, scaler, batch_stream(dataset, cfg, info, start_step), start_step, spec,
                 info.device, info.rank, on_log, on_checkpoint, on_eval, on_batch, show_progress=info.main)
    if info.main:
        log.info("trained to step %d in %.1f min", last, (time.time() - t0) / 60)
        if last < cfg.train.steps:
            log.warning("stopped at step %d of %d by train.time_limit_min=%g; `--resume %s` continues it",
                        last, cfg.train.steps, cfg.train.time_limit_min, run_dir)
        if cfg.data.test_anno:
            res = job.evaluate()
            res["step"] = last
            res["complete"] = last >= cfg.train.steps
            write_json(run_dir / job.eval_name, res)
            print(job.summary(res), flush=True)
        metrics.close()
    return run_dir
