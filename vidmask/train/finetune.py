"""Wiring for `vidmask finetune retrieval|qa|caption` and their evaluations.

Fine-tuning shares everything with pretraining (run folders, checkpoints,
exact resume, DDP, logging: `pretrain.run_job`); a task only says how to
build its head, what its batches need and how it is evaluated.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from vidmask.config import Config
from vidmask.data import VideoText, load_annotations
from vidmask.metrics.caption import caption_metrics
from vidmask.metrics.qa import qa_accuracy
from vidmask.models.fusion import FusionEncoder
from vidmask.models.qa import UNANSWERABLE, answer_ids, load_answer_list
from vidmask.models.video_text import VideoTextModel
from vidmask.tasks.caption import CaptionTask
from vidmask.tasks.qa import QATask
from vidmask.train import checkpoint as ckpt
from vidmask.train.evaluate import eval_loader
from vidmask.train.pretrain import Job, build_model, pretrain_job

log = logging.getLogger("vidmask")

# annotation files of each task in a motion-shapes corpus (MSR-VTT / MSVD style)
TASK_FILES = {
    "retrieval": ("train.json", "test_retrieval.json"),
    "qa": ("train_qa.json", "test_qa.json"),
    "caption": ("train_caption.json", "test_caption.json"),
}


# ---------------------------------------------------------------- data

def qa_items(path: Path, root) -> list[VideoText]:
    """QA entries as VideoText items whose one 'caption' is the question."""
    items = load_annotations(path, root=root, require_caption=False)
    out = []
    for i, it in enumerate(items):
        if "question" not in it.meta or "answer" not in it.meta:
            raise ValueError(f"{path}: entry {i} needs `question` and `answer` keys (MSRVTT-QA format)")
        out.append(VideoText(path=it.path, captions=[str(it.meta["question"])], is_image=it.is_image, meta=it.meta))
    return out


# ---------------------------------------------------------------- step adapters

class QAStep(nn.Module):
    """Adapts QATask to the loop's (batch, generator) call."""

    def __init__(self, qa: QATask):
        super().__init__()
        self.qa = qa

    def forward(self, batch: dict, generator=None):
        return self.qa(batch["video"], batch["caption"], batch["answer_id"])


class CaptionStep(nn.Module):
    def __init__(self, cap: CaptionTask):
        super().__init__()
        self.cap = cap

    def forward(self, batch: dict, generator=None):
        return self.cap(batch["video"], batch["caption"])


# ---------------------------------------------------------------- evaluation

@torch.no_grad()
def eval_qa(qa: QATask, items, answers: list[str], cfg: Config, device) -> dict:
    qa.eval()
    preds = []
    for batch in eval_loader(items, cfg):
        idx = qa.predict(batch["video"].to(device), batch["caption"]).cpu()  # (b,)
        preds += [answers[i] for i in idx.tolist()]
    gold = [str(it.meta["answer"]) for it in items]
    types = [str(it.meta["type"]) for it in items] if all("type" in it.meta for it in items) else None
    return {"n": len(items), **qa_accuracy(preds, gold, types),
            "samples": [{"video": str(it.path.name), "question": it.captions[0], "answer": g, "predicted": p}
                        for it, g, p in list(zip(items, gold, preds))[:50]]}


@torch.no_grad()
def eval_caption(cap: CaptionTask, items, cfg: Config, device) -> dict:
    cap.eval()
    cands = {}
    for batch in eval_loader(items, cfg):
        tokens = cap.encode(batch["video"].to(device))  # (b, K, C)
        if cfg.finetune.beam > 1:
            texts = cap.beam_search(tokens, beam=cfg.finetune.beam, max_len=cfg.finetune.max_len)
        else:
            texts = cap.greedy(tokens, max_len=cfg.finetune.max_len)
        for i, t in zip(batch["index"].tolist(), texts):
            cands[i] = t
    refs = {i: it.captions for i, it in enumerate(items)}
    return {"n": len(items), **caption_metrics(cands, refs),
            "samples": [{"video": items[i].path.name, "generated": cands[i], "references": refs[i]}
                        for i in range(min(50, len(items)))]}


def qa_table(r: dict) -> str:
    lines = [f"QA top-1 accuracy {r['acc']:.2f} % over {r['n']} questions"]
    for t, a in sorted(r.get("per_type", {}).items()):
        lines.append(f"  {t:18s} {a:6.2f} %")
    return "\n".join(lines)


def caption_table(r: dict) -> str:
    names = [m for m in ("CIDEr", "BLEU-4", "ROUGE-L", "METEOR") if m in r]
    return f"captioning on {r['n']} videos: " + ", ".join(f"{m} {r[m]:.2f}" for m in names)


# ---------------------------------------------------------------- jobs

def init_model(cfg: Config, device, evaluating: bool = False) -> VideoTextModel:
    model = build_model(cfg)
    if cfg.finetune.init:
        ckpt.load_model_weights(model, cfg.finetune.init)
        log.info("initialised from %s", cfg.finetune.init)
    elif not evaluating:
        log.info("no finetune.init: training from scratch")
    return model.to(device)


def finetune_job(cfg: Config, device: torch.device, evaluating: bool = False) -> Job:
    """evaluating: the job only evaluates weights loaded afterwards (no "from scratch" message)."""
    task_name = cfg.finetune.task
    model = init_model(cfg, device, evaluating)
    train_path, test_path = cfg.data.path(cfg.data.train_anno), cfg.data.path(cfg.data.test_anno)
    root = cfg.data.root()
    if task_name == "retrieval":
        return pretrain_job(cfg, device, model, evaluating)  # the pretraining task, on the fine-tuning data
    if task_name == "qa":
        answer_path = cfg.data.path(cfg.finetune.answer_list)
        if not answer_path.is_file():
            raise FileNotFoundError(f"finetune.answer_list: {answer_path} not found (a JSON list of answers, "
                                    "relative to data.corpus unless absolute)")
        answers = load_answer_list(answer_path)
        fusion = FusionEncoder(model.text.width, model.visual.dim, depth=cfg.loss.fusion_depth)
        qa = QATask(model, fusion, len(answers)).to(device)
        items, test = [] if evaluating else qa_items(train_path, root), qa_items(test_path, root)
        ids = answer_ids([str(it.meta["answer"]) for it in items], answers)
        table = torch.tensor(ids, dtype=torch.long)  # (n,) answer index per training question
        if items and bool((table == UNANSWERABLE).all()):
            raise ValueError(f"{train_path}: no answer is in {cfg.finetune.answer_list}")

        def prepare(batch: dict) -> dict:
            batch["answer_id"] = table[batch["index"]]  # (B,)
            return batch

        return Job(task=QAStep(qa), model=model, items=items, prepare=prepare, summary=qa_table,
                   evaluate=lambda: eval_qa(qa, test, answers, cfg, device),
                   short=lambda r: {"eval_qa_acc": r["acc"]}, eval_name="eval_qa.json", masked=False)
    if task_name == "caption":
        cap = CaptionTask(model).to(device)
        items = [] if evaluating else load_annotations(train_path, root=root)
        test = load_annotations(test_path, root=root)
        return Job(task=CaptionStep(cap), model=model, items=items, summary=caption_table,
                   evaluate=lambda: eval_caption(cap, test, cfg, device),
                   short=lambda r: {"eval_CIDEr": r["CIDEr"]}, eval_name="eval_caption.json", masked=False)
    raise ValueError(f"unknown fine-tuning task {task_name!r}")


def run_finetune(cfg: Config, resume: bool = False) -> Path:
    from vidmask.train.pretrain import run_job

    return run_job(cfg, resume, finetune_job)


def evaluate_run(cfg: Config, weights, device, anno: Path | None = None) -> tuple[dict, str]:
    """Evaluate a fine-tuned (or pretrained, for retrieval) run's weights on its test file (or `anno`)."""
    if anno is not None:
        cfg.data.test_anno = str(Path(anno).resolve())  # a command-line path is relative to the working folder
    cfg.finetune.init = ""  # the weights below replace whatever the model starts from
    cfg.teacher.cache = ""  # evaluation never runs the teacher on training frames
    job = finetune_job(cfg, device, evaluating=True)
    ckpt.load_weights(job.task, weights, strict=True)
    log.info("evaluating the weights of %s", weights)
    return job.evaluate(), job.summary
