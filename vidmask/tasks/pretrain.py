"""Masked video-text pretraining: mask, encode the kept tokens, and sum the active objectives.

One task serves every recipe: the loss sections of the config pick the
objectives (`vidmask.objectives`, a registry), the masker picks the tokens.
The task computes once per step what every objective may read (a
:class:`~vidmask.objectives.StepContext`) and calls the active objectives in
turn; it knows none of them by name. A frozen teacher, when configured,
supplies what strategies and objectives consume from outside: its
CLS-to-patch attention and per-token features (or patch embeddings) for the
masker (`vidmask.masking.masker_inputs`), and the targets of the teacher
objectives. Without a teacher, strategies see per-patch normalised pixels
(or raw pixel patches) and a colour-contrast stand-in for attention.

One encoder pass over the kept tokens serves every objective, except for a
strategy whose ``video_text_set`` is ``"masked"`` (``stm``, as STM's code
runs it): the kept tokens feed the teacher objectives, and a second pass over
the complementary masked tokens feeds vtc, vtm, mlm and reverse. A learnable
strategy's straight-through weights multiply the tokens of both passes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from vidmask.config import Config, ConfigError, LossConfig
from vidmask.data import load_annotations
from vidmask.masking.base import Masker, keep_to_ids
from vidmask.masking.inputs import masker_inputs
from vidmask.models.fusion import FusionEncoder
from vidmask.models.video_text import VideoTextModel
from vidmask.objectives import ObjectiveEnv, StepContext, build_objective, objective_class
from vidmask.tasks.base import EvalOption, Job, register_task
from vidmask.tasks.retrieval import evaluate_retrieval, format_table
from vidmask.teachers.base import TeacherOut, mirror_frames, tubelet_mean


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
        self.masker = masker  # a learnable strategy (an nn.Module) trains and is saved with the model
        # learning-rate multipliers of a learnable strategy's parameters (Trainer.build reads `lr_scales`)
        self.lr_scales = {f"masker.{k}": v for k, v in getattr(masker, "lr_scales", {}).items()}
        self.loss_cfg = cfg = loss or LossConfig()
        # a list hides the frozen teacher from state_dict, the optimizer and DDP
        self._teacher = [teacher]
        active = cfg.active()  # an objective that needs a teacher and has none is refused when built
        # one fusion encoder over the text tower, shared by the objectives that read it (None: no reader)
        self.fusion = None
        if any(objective_class(name).uses_fusion for name in active):
            self.fusion = FusionEncoder(model.text.width, model.cfg.dim, depth=model.cfg.fusion_depth)
        env = ObjectiveEnv(model=model, teacher=teacher, frames=frames, grid=grid, fusion=self.fusion)
        self.objectives = nn.ModuleDict({name: build_objective(name, cfg[name], env) for name in active})
        for objective in self.objectives.values():  # one objective may read another's module
            objective.bind(dict(self.objectives))
        self.weights = {name: cfg.weight(name) for name in active}
        self.student_layers = max([o.student_layers() for o in self.objectives.values()], default=0)
        # the teacher's last layers the objectives read (UMT's per-layer targets); 1 = `tokens` alone
        self.teacher_layers = max([1, *(o.teacher_layers() for o in self.objectives.values())])
        if teacher_cache is not None:
            self.check_cache_allowed()
        self.teacher_cache = teacher_cache

    def check_cache_allowed(self) -> None:
        """A ConfigError when an objective reads more teacher layers than the cache holds (its last one),
        or the strategy reads patch embeddings the teacher has and the cache does not hold."""
        if self.masker.inputs == "patch_embeds" and getattr(self.teacher, "patch_dim", 0):
            raise ConfigError(f"mask.strategy={self.masker.name} reads the teacher's patch embeddings, which "
                              "teacher.cache does not hold: set teacher.cache= (the teacher then runs every step)")
        if self.teacher_layers > 1:
            wants = [n for n, o in self.objectives.items() if o.teacher_layers() > 1]
            raise ConfigError(f"loss.{wants[0]} reads the teacher's last {self.teacher_layers} layers but "
                              "teacher.cache holds its last layer only: set teacher.cache= (the teacher then "
                              "runs every step)")

    @property
    def teacher(self) -> nn.Module | None:
        return self._teacher[0]

    def frozen_caption_towers(self) -> list:
        """The frozen text towers whose caption features a step reads: the student's (when frozen) and the
        teacher's (:meth:`Teacher.caption_tower`) when an objective encodes captions with it every step.
        Training serves each from a caption store or a warmed cache (vidmask.train.run)."""
        towers = [self.model.text] if self.model.text.frozen else []
        teacher_text = any(o.reads_teacher_text for o in self.objectives.values())
        tower = self.teacher.caption_tower() if teacher_text and self.teacher is not None else None
        if tower is not None and tower.frozen and all(tower is not t for t in towers):
            towers.append(tower)
        return towers

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
                if "mirrored" in batch:  # flipped clips: their cached features mirrored (teacher.cache_mirror)
                    feats = mirror_frames(feats, batch["mirrored"])
                out = self.teacher.from_frames(feats, grid)  # tokens (B, T, N, D), attn (B, T, N)
            else:
                # tokens (B, T, N, D), attn (B, T, N), layers teacher_layers x (B, T, N, D); patch_embeds
                # (B, T, N, W) only when the strategy reads them
                ask = {"patch_embeds": True} if self.masker.inputs == "patch_embeds" else {}
                out = self.teacher(video, grid=grid, return_layers=self.teacher_layers, **ask)
            # on the student's token grid: a tubelet token holds k frames (tokens (B, T/k, N, D))
            return tubelet_mean(out, self.model.visual.tubelet)

    def choose_tokens(self, video: Tensor, generator: torch.Generator | None,
                      teacher_out: TeacherOut | None = None):
        """(MaskOut, TeacherOut | None): the mask is computed in float32, outside autocast.

        ``teacher_out``: the teacher's output on ``video``, if already computed."""
        if self.teacher is not None and teacher_out is None:
            teacher_out = self.run_teacher({"video": video})
        inputs = self.masker.inputs
        pixels = teacher_out is None or (inputs == "patch_embeds" and teacher_out.patch_embeds is None)
        with torch.autocast(video.device.type, enabled=False):
            patches = self.model.visual.patchify(video.float()) if pixels else None  # (B, T, N, P)
            tokens, attn = masker_inputs(patches, teacher_out, inputs)  # (B, T, N, C), (B, T, N)
            out = self.masker(tokens, attn=attn, generator=generator)
        if out.ids_keep is None:
            raise ValueError(f"mask strategy {self.masker.name!r} cannot drop tokens; pretraining needs drop mode")
        return out, teacher_out

    def forward(self, batch: dict, generator: torch.Generator | None = None):
        """batch: {"video": float[B,T,3,H,W], "caption": list of B str, ...} -> (losses, report)."""
        video, captions = batch["video"], batch["caption"]  # (B, T, 3, H, W)
        T, H = self.model.visual.token_frames(video.shape[1]), video.shape[3]  # token time steps (T/k)
        N = (H // self.model.visual.patch) ** 2
        out, t_out = self.choose_tokens(video, generator, self.run_teacher(batch))
        visual = self.model.visual
        embedded = visual.embed_kept(video, out.ids_keep)  # (B, K, C): only kept patches embedded
        enc = visual.forward_features(embedded, None, out.token_weight, return_layers=self.student_layers)
        video_ids, video_weight, video_tokens = out.ids_keep, out.token_weight, enc.tokens  # (B, K), (B, K), (B, K, C)
        if self.masker.video_text_set == "masked":  # STM: a second pass over the complementary masked set
            masked = T * N - out.ids_keep.shape[1]  # L - K, from the shapes: no host read
            video_ids, video_weight = keep_to_ids(~out.keep, masked), out.masked_weight  # (B, L-K), (B, L-K)
            embedded = visual.embed_kept(video, video_ids)  # (B, L-K, C)
            video_tokens = visual.forward_features(embedded, None, video_weight).tokens  # (B, L-K, C)
        pooled = self.model.text(captions)  # (B, W)
        ctx = StepContext(
            model=self.model, video=video, captions=captions, masking=out, feats=enc.tokens, layers=enc.layers,
            video_feat=self.model.project_video(video_tokens), text_feat=self.model.project_text(pooled),
            teacher_out=t_out, teacher=self.teacher, fusion=self.fusion, generator=generator,
            frames=T, tokens=N, video_tokens=video_tokens, video_ids=video_ids, video_weight=video_weight,
            text_pooled=pooled, pair_ids=batch.get("video_id"),
        )
        losses: dict[str, Tensor] = {}
        report: dict = {}
        for name, objective in self.objectives.items():
            for key, value in objective(ctx).items():
                if key.endswith("_loss"):
                    losses[key] = self.weights[name] * value
                else:
                    report[key] = value
        # tensors until the trainer's logging step reads them: no host sync in the step
        # encoder_tokens counts both of STM's passes: the cost a leaderboard compares at equal compute
        encoded = out.ids_keep.shape[1] + (video_ids.shape[1] if self.masker.video_text_set == "masked" else 0)
        report.update(kept_tokens=float(out.ids_keep.shape[1]), encoder_tokens=float(encoded),
                      scale=self.model.temperature_scale().detach())
        return losses, report

    def reranker(self):
        """``(text_states, text_mask, video_tokens) -> ScoreFn`` when an objective can re-score
        pairs (the matching head of `vtm`), else None. See `vidmask.tasks.rerank`."""
        for objective in self.objectives.values():
            make = objective.scorer(self.fusion)
            if make is not None:
                return make
        return None


def build_pretrain(cfg: Config, model: VideoTextModel, device, evaluating: bool = False) -> Job:
    """Masked pretraining of ``model`` by cfg.mask and the loss sections, evaluated by retrieval.

    Retrieval fine-tuning is the same job on the fine-tuning data from a pretrained model."""
    from vidmask.train.wiring import build_teacher_from, masker_from, teacher_cache_for, training_items

    if cfg.finetune.method:
        raise ConfigError(f"finetune.method={cfg.finetune.method} is a retrieval fine-tuning method: run it with "
                          "`vidmask finetune retrieval`, not pretraining")
    root = cfg.data.root()
    items = [] if evaluating else training_items(cfg)  # memory-mapped: nothing per entry in Python
    teacher = build_teacher_from(cfg)
    if teacher is not None:
        teacher.to(device)  # its weights already in train.precision's dtype (build_teacher_from)
    masker = masker_from(cfg, teacher)  # a wrong mask setting stops the run before the teacher cache is built
    task = PretrainTask(model, masker, cfg.loss, teacher, frames=cfg.data.num_frames // cfg.model.tubelet,
                        grid=cfg.data.size // cfg.model.patch).to(device)
    if cfg.teacher.cache and teacher is not None:
        task.check_cache_allowed()  # before the cache is built, not after
        task.teacher_cache = teacher_cache_for(cfg, teacher, items, device)
    test_path = cfg.data.path(cfg.data.test_anno)
    # read before training, so a broken test file stops the run at once, not after it
    test = load_annotations(test_path, root=root, unique=True, nonempty=True) if cfg.data.test_anno else None
    return Job(
        task=task, model=model, items=items,
        evaluate=lambda: evaluate_retrieval(model, test_path, cfg, device, reranker=task.reranker(), items=test),
        table=format_table,
        short=lambda r: {"eval_t2v_R@1": r["t2v"]["R@1"], "eval_rsum": r["rsum"]},
        result_file="eval_retrieval.json",
    )


register_task("pretrain", help="masked video-text pretraining, evaluated by zero-shot retrieval",
              files=("train.json", "test_retrieval.json"), finetune=False, eval_as="retrieval")(build_pretrain)
def build_retrieval(cfg: Config, model: VideoTextModel, device, evaluating: bool = False) -> Job:
    """Retrieval fine-tuning: the dual encoder with cfg.loss, or MASCOT with finetune.method=mascot."""
    if cfg.finetune.method == "mascot":
        from vidmask.tasks.mascot import build_mascot

        return build_mascot(cfg, model, device, evaluating)
    return build_pretrain(cfg, model, device, evaluating)


register_task("retrieval", help="text-video retrieval with vtc (+ vtm re-ranking when loss.vtm > 0), "
              "or MASCOT (finetune.method=mascot)",
              files=("train.json", "test_retrieval.json"),
              eval_help="text-to-video and video-to-text retrieval (R@1/5/10, MdR, MnR, Rsum, twin accuracy; "
                        "re-ranked with the matching head where the run has one)",
              eval_options=(
                  EvalOption("--dsl", "finetune.dsl", "also report dual-softmax (DSL) re-weighted scores", bool),
                  EvalOption("--paragraph", "finetune.paragraph", "join all captions of a video into one query "
                             "(DiDeMo / ActivityNet paragraph retrieval)", bool),
                  EvalOption("--rerank-k", "finetune.rerank_k", "re-rank each query's top-k with the matching head "
                             "(0: off)"),
                  EvalOption("--similarity", "finetune.similarity", "score by mean (pooled features), wti "
                             "(MASCOT runs: weighted token interaction) or clauses (each caption clause's best "
                             "token, averaged over its clauses)", str),
              ))(build_retrieval)
