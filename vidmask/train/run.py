"""The runner: any registered task from a Config to a finished run folder.

Pretraining and every fine-tuning task share it (run folders, checkpoints,
exact resume, DDP, logging); a task only says, through its registry entry
(`vidmask.tasks`), what it trains, on which files and how it is evaluated.
The step loop itself is `vidmask.train.engine.train`.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from vidmask.config import Config, ConfigError, save_config, to_dict
from vidmask.data import BadSampleTracker, TooManyBadSamples, VideoTextDataset, collate_video_text
from vidmask.data.shards import ShardError, ShardStream
from vidmask.data.transfer import loader_options
from vidmask.models.whiten import WhitenedHead, fit_whitening
from vidmask.tasks import Job, task_info
from vidmask.train import checkpoint as ckpt
from vidmask.train import runlock
from vidmask.train.distributed import DistInfo, barrier, init_distributed, teardown
from vidmask.train.engine import LoopSpec, cpu_half_is_native, train
from vidmask.train.hard_batches import run_neighbours
from vidmask.train.optim import param_groups
from vidmask.train.runlog import MetricsWriter, git_revision, setup_logging, write_json
from vidmask.train.schedule import epoch_batches, shard_steps_per_epoch, steps_per_epoch
from vidmask.train.wiring import annotation_store, caption_store_for, init_model

log = logging.getLogger("vidmask")

# At most this many training files are looked up at start (evenly spaced): enough to see a wrong
# media folder, without stat-ing millions of files (WebVid-10M) on every rank before step 1.
MEDIA_CHECK_MAX = 2000


def task_name(cfg: Config) -> str:
    """The registered task a config trains: finetune.task, or pretraining when it is empty."""
    return cfg.finetune.task or "pretrain"


def make_job(cfg: Config, device: torch.device, evaluating: bool = False) -> Job:
    """The model (from finetune.init when set) and the task's job around it."""
    model = init_model(cfg, device, evaluating)
    return task_info(task_name(cfg)).build(cfg, model, device, evaluating)


def run_training(cfg: Config, resume: bool = False) -> Path:
    """Train (or resume) a run of cfg's task; returns its folder. Works under torchrun.

    SIGTERM (what a cluster scheduler sends before it kills a job) saves a checkpoint at the next
    step boundary, on every rank together, and returns normally: ``--resume`` continues it."""
    info = init_distributed(cfg.train.device, cfg.train.dist_timeout_min)
    stop = StopRequest()
    previous = signal.signal(signal.SIGTERM, stop.handle)
    try:
        run_dir = _run(cfg, info, resume, stop)
    except BaseException:
        teardown(clean=False)  # no barrier: the other ranks may never reach it
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    # the model and optimiser died with _run's frame, before the group goes
    teardown()
    return run_dir


def evaluate_run(cfg: Config, weights, device, anno: Path | None = None) -> tuple[dict, Callable[[dict], str]]:
    """Evaluate a run's weights on its test file (or `anno`): (result, its table function)."""
    if anno is not None:
        cfg.data.test_anno = str(Path(anno).resolve())  # a command-line path is relative to the working folder
    cfg.finetune.init = ""  # the weights below replace whatever the model starts from
    cfg.teacher.cache = ""  # evaluation never runs the teacher on training frames
    job = make_job(cfg, device, evaluating=True)
    ckpt.load_weights(job.task, weights, strict=True)
    log.info("evaluating the weights of %s", weights)
    return job.evaluate(), job.table


# ---------------------------------------------------------------- pieces of a run

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


class StopRequest:
    """Set by SIGTERM; the loop reads it at the next step and every rank stops there together."""

    def __init__(self):
        self.requested = False

    def handle(self, signum, frame) -> None:
        if not self.requested:
            log.warning("SIGTERM: saving a checkpoint at the next step and stopping")
        self.requested = True


def _ignore_sigterm(worker_id: int) -> None:
    # a scheduler signals the whole process group: loader workers stay up until the main
    # process has written its checkpoint and shuts them down
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def batch_stream(dataset, cfg: Config, info: DistInfo, start_step: int, neighbours=None):
    """(step, batch) pairs from `start_step` on, epoch after epoch, in a resumable order
    (``neighbours``: train.hard_batches' caption neighbours, int64[n,k]). The batches hold uint8
    clips, pinned when the device is CUDA (`loader_options`); the loop normalises them there."""
    if isinstance(dataset, ShardStream):
        yield from shard_batch_stream(dataset, cfg, info, start_step)
        return
    spe = steps_per_epoch(len(dataset), cfg.train.batch_size, info.world)
    step = start_step
    while step < cfg.train.steps:
        epoch, skip = divmod(step, spe)
        dataset.set_epoch(epoch)
        batches = epoch_batches(len(dataset), cfg.train.batch_size, cfg.train.seed, epoch, info.rank, info.world,
                                neighbours)
        loader = DataLoader(
            dataset, batch_sampler=batches[skip:], collate_fn=collate_video_text, persistent_workers=False,
            worker_init_fn=_ignore_sigterm,
            **loader_options(info.device, cfg.data.num_workers, cfg.data.prefetch_factor),
        )
        for batch in loader:
            yield step, batch
            step += 1
            if step >= cfg.train.steps:
                return


def shard_batch_stream(stream: ShardStream, cfg: Config, info: DistInfo, start_step: int):
    """(step, batch) pairs from tar shards: one DataLoader per epoch, started at the step's place in
    it (`ShardStream.set_position`). A shard that cannot be read (a missing file, a failed pipe:
    command) ends the stream with a batch carrying the error, which `Hooks.prepare` raises: every
    rank then stops at that step with its message, rather than the others waiting for this one."""
    step = start_step
    while step < cfg.train.steps:
        stream.set_position(step)
        loader = DataLoader(stream, batch_size=cfg.train.batch_size, collate_fn=collate_video_text,
                            persistent_workers=False, worker_init_fn=_ignore_sigterm,
                            **loader_options(info.device, cfg.data.num_workers, cfg.data.prefetch_factor))
        first = step
        for batch in loader:
            yield step, batch
            if batch.get("error"):
                return
            step += 1
            if step >= cfg.train.steps or step % stream.steps_per_epoch == 0:
                break
        if step == first:  # never loop on a loader that yields nothing
            raise RuntimeError(f"the shard stream gave no batch at step {step}")


def training_stream(job: Job, cfg: Config, info: DistInfo, trainer: "Trainer", resume: bool):
    """The dataset the loop reads: loose files (`VideoTextDataset`) or tar shards (`ShardStream`,
    whose position goes into every checkpoint and is checked on resume)."""
    saved = trainer.saved_data or {}
    # frozen text towers (the student's; the teacher's when an objective reads its caption features every
    # step), model.text.feature_store: the training captions' features from a memory-mapped store (built on
    # first use, each rank its share; two towers with one identity share one store), loose files and shards
    towers = frozen_caption_towers(job)
    stores = [caption_store_for(cfg, tower) for tower in towers]
    for tower, store in zip(towers, stores):
        tower.use_store(store)
    if not cfg.data.shards:
        if resume and saved.get("source") == "shards":
            raise ConfigError("--resume: the run was trained from tar shards; keep its data.shards setting")
        dataset = VideoTextDataset(job.items, cfg.data.num_frames, cfg.data.size, train=True, seed=cfg.train.seed,
                                   random_crop_scale=cfg.data.random_crop(), hflip_p=cfg.data.hflip_p,
                                   reverse_p=cfg.data.reverse_p, cache_frames=cfg.data.cache_frames)
        from vidmask.train.distributed import all_gather_rows

        for tower, store in zip(towers, stores):
            if store is None:
                # frozen text tower without a store: up to model.text.cache_captions captions' features once,
                # before the clock starts (from shards: as they come), each rank encoding its share
                tower.warm_cache((c for it in job.items for c in it.captions), rank=info.rank,
                                 world=info.world, gather=all_gather_rows)
        fit_text_head(job, cfg, info)
        return dataset
    fit_text_head(job, cfg, info)
    shards = job.items
    if shards.resize_short and shards.resize_short < cfg.data.size and info.main:
        log.warning("data.shards were re-encoded to a short side of %d px, below data.size=%d: frames are "
                    "scaled up", shards.resize_short, cfg.data.size)
    stream = ShardStream(shards, cfg.data.num_frames, cfg.data.size, batch_size=cfg.train.batch_size,
                         seed=cfg.train.seed, rank=info.rank, world=info.world, num_workers=cfg.data.num_workers,
                         buffer=cfg.data.shuffle_buffer, random_crop_scale=cfg.data.random_crop(),
                         hflip_p=cfg.data.hflip_p, reverse_p=cfg.data.reverse_p)
    if resume:
        check_stream_position(stream.position(trainer.start_step), saved)
    trainer.position = stream.position
    return stream


def frozen_caption_towers(job: Job) -> list:
    """The frozen text towers of a job whose caption features its steps read (the task's own list when it
    has one, e.g. a pretraining task with a teacher's text side; else the student's tower when frozen)."""
    towers = getattr(job.task, "frozen_caption_towers", None)
    if towers is not None:
        return towers()
    return [job.model.text] if job.model.text.frozen else []


def fit_text_head(job: Job, cfg: Config, info: DistInfo) -> None:
    """model.proj_head=whitened: fit the locked text head on the training captions (data.train_anno's,
    with shards too) unless its statistics came with the weights (a resumed run, finetune.init)."""
    head = job.model.text_proj
    if not isinstance(head, WhitenedHead) or head.fitted:
        return
    items = job.items if not cfg.data.shards else annotation_store(cfg)
    texts = items.texts if hasattr(items, "texts") else [c for it in items for c in it.captions]

    def all_reduce(t: torch.Tensor) -> torch.Tensor:
        on = t.to(info.device) if dist.get_backend() == "nccl" else t
        dist.all_reduce(on)
        return on.cpu()

    used = fit_whitening(head, lambda caps: job.model.text(caps).float().cpu(), texts, cfg.model.whiten_captions,
                         cfg.model.whiten_eps, rank=info.rank, world=info.world, all_reduce=all_reduce)
    log.info("whitened text head fitted on %d training captions (top %d directions)", used, cfg.model.embed_dim)


# what each recorded part of a shard stream's position is set by, for the resume check's message
POSITION_KEYS = {"shards": "data.shards (their names and counts)", "workers": "data.num_workers",
                 "batch_size": "train.batch_size", "seed": "train.seed", "world": "the number of processes",
                 "steps_per_epoch": "the steps per epoch", "epoch": "the epoch", "batch": "the batch"}


def check_stream_position(now: dict, saved: dict) -> None:
    """A ConfigError unless the resumed stream puts the checkpoint's step where the interrupted
    run was (the same shards, workers, batch size and seed)."""
    if not saved:
        raise ConfigError("--resume: the checkpoint records no place in a shard stream (the run trained from "
                          "data.train_anno's files); resume it without data.shards")
    differ = [k for k in POSITION_KEYS if k in saved and saved[k] != now.get(k)]
    if differ:
        what = "; ".join(f"{POSITION_KEYS[k]}: {saved[k]} then, {now.get(k)} now" for k in differ)
        raise ConfigError(f"--resume: the shard stream would not continue where the run stopped ({what}); "
                          "resume with the run's own settings")


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


@dataclass
class Trainer:
    """The optimisation state of a run: what a checkpoint's state.pt restores."""

    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    tracker: BadSampleTracker
    start_step: int = 0
    position: Callable[[int], dict] | None = None  # a shard stream's place at a step, saved in checkpoints
    saved_data: dict | None = None  # the place the resumed checkpoint recorded

    @classmethod
    def build(cls, task: torch.nn.Module, cfg: Config, device: torch.device) -> "Trainer":
        # the fused kernel on a GPU (one launch for all parameters); the reference loop elsewhere
        groups = param_groups(task, cfg.train.weight_decay, lr_scales=getattr(task, "lr_scales", None))
        optimizer = torch.optim.AdamW(groups, lr=cfg.train.lr, betas=(0.9, 0.98),
                                      fused=device.type == "cuda")
        scaler = torch.amp.GradScaler(device.type) if cfg.train.precision == "fp16" else None
        return cls(optimizer, scaler, BadSampleTracker(cfg.data.max_bad_share))

    def resume(self, task: torch.nn.Module, run_dir: Path, info: DistInfo) -> None:
        latest, state = ckpt.load_latest(run_dir / "checkpoints", task)
        saved_world = int(state.get("world_size", info.world))
        if saved_world != info.world:
            raise ConfigError(f"--resume {run_dir}: the run was trained with {saved_world} processes and is resumed "
                              f"with {info.world}; the data order and each rank's random state depend on it. "
                              f"Resume with {saved_world} processes (torchrun --nproc_per_node ...)")
        self.start_step = ckpt.restore_trainer_state(state, self.optimizer, self.scaler, self.tracker,
                                                     rank=info.rank)
        self.saved_data = state.get("data")
        log.info("resumed from %s at step %d", latest, self.start_step)

    def save(self, task: torch.nn.Module, run_dir: Path, step: int, info: DistInfo) -> Path | None:
        """Every rank calls it (each rank's random state is gathered); rank 0 writes."""
        rng = ckpt.rng_states_of_all_ranks()
        if not info.main:
            return None
        state = ckpt.trainer_state(step, self.optimizer, self.scaler, self.tracker, rng_ranks=rng,
                                   world_size=info.world, data=self.position(step) if self.position else None)
        return ckpt.save_checkpoint(run_dir / "checkpoints", step, task, state)


def _describe_run(cfg: Config, run_dir: Path, info: DistInfo, job: Job) -> None:
    """config.yaml, run.json and the opening log line (rank 0)."""
    save_config(cfg, run_dir / "config.yaml")
    write_json(run_dir / "run.json", {"git": git_revision(), "world_size": info.world,
                                      "device": str(info.device), "torch": torch.__version__,
                                      "train_samples": len(job.items), "config": to_dict(cfg),
                                      "cwd": os.getcwd()})  # what the config's relative paths are relative to
    n_params = sum(p.numel() for p in job.task.parameters() if p.requires_grad)
    mask = f"mask {cfg.mask.strategy} @ {cfg.mask.ratio:.2f}" if job.masked else "all tokens"
    log.info("run folder %s; %d training samples; %.2fM trainable parameters; %s",
             run_dir, len(job.items), n_params / 1e6, mask)


class Hooks:
    """What the loop calls back into: logging, checkpoints, evaluation, per-batch bookkeeping."""

    def __init__(self, cfg: Config, run_dir: Path, info: DistInfo, job: Job, trainer: Trainer,
                 metrics: MetricsWriter | None, stop: StopRequest):
        self.cfg, self.run_dir, self.info, self.job, self.trainer, self.metrics = cfg, run_dir, info, job, trainer, metrics
        self.stop = stop
        # the checkpoint a non-finite loss would fall back to: the one resumed from, until a newer one
        start = trainer.start_step
        self.checkpoint = str(run_dir / "checkpoints" / ckpt.checkpoint_name(start)) if start else "none yet"

    def on_log(self, step: int, row: dict) -> None:
        if self.metrics is not None:
            self.metrics.write(step, row)

    def on_checkpoint(self, step: int) -> None:
        path = self.trainer.save(self.job.task, self.run_dir, step, self.info)
        if self.info.main:
            self.metrics.plot()
            log.info("checkpoint %s", path)
        self.checkpoint = str(self.run_dir / "checkpoints" / ckpt.checkpoint_name(step))
        barrier()

    def last_checkpoint(self) -> str:
        return self.checkpoint

    def stop_requested(self) -> bool:
        return self.stop.requested

    def on_eval(self, step: int) -> None:
        short = self.job.short(self.job.evaluate())  # every rank evaluates its share of the clips
        if self.info.main:
            self.metrics.write(step, short)
            log.info("step %d: %s", step, ", ".join(f"{k} {v:.2f}" for k, v in short.items()))

    def prepare(self, batch: dict) -> None:
        if batch.get("error"):  # the data stream failed on this rank (shard_batch_stream)
            raise ShardError(batch["error"])
        if len(batch["caption"]):
            self.job.prepare(batch)

    def count_samples(self, good: int, bad: int, local_bad: list) -> None:
        """Every rank counts the samples of all ranks, so every rank stops at the same step."""
        try:
            self.trainer.tracker.update(good, local_bad, total_bad=bad)
        except TooManyBadSamples as e:
            raise TooManyBadSamples(f"{e} The allowed share is the config key data.max_bad_share "
                                    f"(now {self.cfg.data.max_bad_share}).") from None


def _loop_spec(cfg: Config, task: torch.nn.Module, device: torch.device, dataset) -> LoopSpec:
    """The loop's settings; ``dataset``'s uint8 clips are normalised on the device with its transform's mean/std."""
    t = cfg.train
    return LoopSpec(total_steps=t.steps, peak_lr=t.lr, min_lr=t.min_lr, warmup=t.warmup_steps,
                    grad_clip=t.grad_clip, seed=t.seed, precision=t.precision, log_every=t.log_every,
                    ckpt_every=t.ckpt_every, eval_every=t.eval_every, time_limit_s=t.time_limit_min * 60.0,
                    stop_at=t.stop_at,
                    params=[p for p in task.parameters() if p.requires_grad],
                    check_every_step=device.type == "cpu",  # a host read per step costs nothing on a CPU
                    video_mean=dataset.transform.mean, video_std=dataset.transform.std)


def speed_settings(cfg: Config, model: torch.nn.Module, device: torch.device) -> None:
    """TF32 on CUDA (train.tf32) and torch.compile of the video encoder (train.compile); a warning when
    train.precision asks a CPU for a half precision it has no instructions for."""
    if device.type == "cpu" and cfg.train.precision != "fp32" and not cpu_half_is_native(cfg.train.precision):
        log.warning("train.precision=%s: this CPU (torch capability %s) has no %s instructions (AVX-512 BF16 or "
                    "AMX; AVX-512 FP16), so autocast emulates them and every step takes many times as long as in "
                    "fp32 (a bf16 matmul 50-200x on an AVX2 CPU): set train.precision=fp32 here",
                    cfg.train.precision, torch.backends.cpu.get_cpu_capability(), cfg.train.precision)
    if device.type == "cuda" and cfg.train.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if cfg.train.compile:
        model.visual.compile_blocks()  # in place: parameter names, and so checkpoints, are unchanged


def _finish(cfg: Config, run_dir: Path, job: Job, last: int, seconds: float, stopped: bool, main: bool) -> None:
    """The closing log lines (rank 0) and the final evaluation (every rank its share; rank 0 writes it)."""
    if main:
        log.info("trained to step %d in %.1f min", last, seconds / 60)
    if stopped:
        if main:
            log.warning("stopped at step %d of %d by SIGTERM; `--resume %s` continues it",
                        last, cfg.train.steps, run_dir)
        return  # the scheduler's kill follows: no evaluation
    if main and last < cfg.train.steps:
        why = (f"train.stop_at={cfg.train.stop_at}" if cfg.train.stop_at and last >= cfg.train.stop_at
               else f"train.time_limit_min={cfg.train.time_limit_min:g}")
        more = " train.stop_at=0" if cfg.train.stop_at else ""
        log.warning("stopped at step %d of %d by %s; `--resume %s%s` continues it", last, cfg.train.steps, why,
                    run_dir, more)
    if cfg.data.test_anno:
        res = job.evaluate()
        if main:
            res["step"] = last
            res["complete"] = last >= cfg.train.steps
            write_json(run_dir / job.result_file, res)
            print(job.table(res), flush=True)


def _setup(cfg: Config, info: DistInfo, resume: bool, run_dir: Path) -> tuple[Job, Trainer]:
    setup_logging(run_dir, info.main)
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    job = make_job(cfg, info.device)
    if info.rank:
        torch.manual_seed(cfg.train.seed + 1_000_003 * info.rank)  # each rank its own dropout draws
    # too few samples: stop before any step
    if cfg.data.shards:  # the shards were found when opened (`training_items`)
        shard_steps_per_epoch(len(job.items), cfg.train.batch_size, info.world, cfg.data.num_workers)
    else:
        steps_per_epoch(len(job.items), cfg.train.batch_size, info.world)
        check_media_exist(job.items, cfg)
    speed_settings(cfg, job.model, info.device)
    trainer = Trainer.build(job.task, cfg, info.device)
    if resume:
        trainer.resume(job.task, run_dir, info)
    return job, trainer


def _run(cfg: Config, info: DistInfo, resume: bool, stop: StopRequest) -> Path:
    run_dir = make_run_dir(cfg, info)
    fresh = info.main and not resume and not any(run_dir.iterdir())
    lock = take_run_lock(run_dir, info, resume, cfg)
    try:
        return _run_locked(cfg, info, resume, stop, run_dir, fresh)
    finally:
        if lock is not None:
            lock.release()


def take_run_lock(run_dir: Path, info: DistInfo, resume: bool, cfg: Config) -> runlock.RunLock | None:
    """Rank 0 locks the run folder (:mod:`vidmask.train.runlock`); every rank raises the same ConfigError
    when another process holds it, or when a fresh start would train over a run's checkpoints."""
    lock, why = None, ""
    if info.main:
        lock, why = runlock.acquire(run_dir)
        done = ckpt.latest_checkpoint_name(run_dir / "checkpoints") if not why and not resume else ""
        if done:
            lock.release()
            command = f"finetune {cfg.finetune.task}" if cfg.finetune.task else "pretrain"
            lock, why = None, (f"run folder {run_dir} already holds a run (checkpoint {done}): `vidmask "
                               f"{command} --resume {run_dir}` continues it; pick another run_dir (or remove "
                               "that folder) to start afresh")
    if info.enabled:
        box = [why]
        dist.broadcast_object_list(box, src=0)
        why = box[0]
    if why:
        raise ConfigError(why)
    return lock


def _run_locked(cfg: Config, info: DistInfo, resume: bool, stop: StopRequest, run_dir: Path, fresh: bool) -> Path:
    try:
        job, trainer = _setup(cfg, info, resume, run_dir)
    except BaseException:
        if fresh:  # a start that failed leaves no empty run folder behind
            logging.getLogger("vidmask").handlers.clear()
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    dataset = training_stream(job, cfg, info, trainer, resume)
    neighbours = None
    if cfg.train.hard_batches:
        if cfg.data.shards:
            raise ConfigError("train.hard_batches composes batches from data.train_anno's clips; tar shards are "
                              "read in stream order: set train.hard_batches=0 or data.shards=''")
        neighbours = run_neighbours(job.model.text, job.items, cfg.train.hard_batches, run_dir, info.main)
    if info.main:
        _describe_run(cfg, run_dir, info, job)
    metrics = MetricsWriter(run_dir, resume_step=trainer.start_step) if info.main else None
    wrapped = job.task
    if info.enabled:
        wrapped = torch.nn.parallel.DistributedDataParallel(
            job.task, device_ids=[info.device.index] if info.device.type == "cuda" else None)
    hooks = Hooks(cfg, run_dir, info, job, trainer, metrics, stop)
    t0 = time.time()
    last = train(wrapped, trainer.optimizer, trainer.scaler,
                 batch_stream(dataset, cfg, info, trainer.start_step, neighbours),
                 trainer.start_step, _loop_spec(cfg, job.task, info.device, dataset), info.device, info.rank, hooks,
                 show_progress=info.main)
    _finish(cfg, run_dir, job, last, time.time() - t0, stop.requested, info.main)
    if info.main:
        metrics.close()
    return run_dir
