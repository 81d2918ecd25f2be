"""Video QA fine-tuning: the dual encoder's towers + fusion encoder + answer classifier.

See `vidmask.models.qa` for why answers are classified over the list rather
than generated. Answers outside the list are labelled -100: they add nothing
to the loss (and the report says how many there were), and at evaluation
they are simply wrong.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vidmask.config import Config
from vidmask.data import VideoText, eval_loader, load_annotations
from vidmask.data.shard import gather_ordered, my_share
from vidmask.metrics.qa import qa_accuracy
from vidmask.models.fusion import FusionEncoder
from vidmask.models.qa import UNANSWERABLE, AnswerHead, answer_ids, answer_logits, load_answer_list
from vidmask.models.video_text import VideoTextModel
from vidmask.tasks.base import Job, register_task


class QATask(nn.Module):
    """forward(batch) -> ({"qa_loss"}, report) on a batch with "video", "caption" (the questions)
    and "answer_id"; predict -> answer index."""

    def __init__(self, model: VideoTextModel, fusion: FusionEncoder, num_answers: int):
        super().__init__()
        if fusion.width != model.text.width:
            raise ValueError(f"fusion width {fusion.width} != text width {model.text.width}")
        self.model = model
        self.fusion = fusion
        self.head = AnswerHead(fusion.width, num_answers)

    def logits(self, video: Tensor, questions: list[str]) -> Tensor:
        """video [B,T,3,H,W], B questions -> answer logits [B,A]."""
        tokens = self.model.video_tokens(video)  # (B, K, C)
        states, mask = self.model.text.token_states(questions)  # (B, S, W), (B, S)
        return answer_logits(self.fusion, self.head, states, mask, tokens)  # (B, A)

    def forward(self, batch: dict, generator: torch.Generator | None = None):
        """batch["answer_id"] long[B]: index into the answer list, -100 for an answer not in it."""
        logits = self.logits(batch["video"], batch["caption"]).float()  # (B, A)
        target = torch.as_tensor(batch["answer_id"], dtype=torch.long, device=logits.device)  # (B,)
        answerable = target != UNANSWERABLE  # (B,)
        # mean over answerable questions; a batch with none gives a zero loss with a graph
        total = F.cross_entropy(logits, target, ignore_index=UNANSWERABLE, reduction="sum")
        loss = total / answerable.sum().clamp(min=1)
        correct = (logits.argmax(1) == target) & answerable  # (B,)
        report = {
            "qa_acc": 100.0 * correct.float().mean().detach(),  # unanswerable questions count as wrong
            "answerable": 100.0 * answerable.float().mean(),
        }
        return {"qa_loss": loss}, report

    @torch.no_grad()
    def predict(self, video: Tensor, questions: list[str]) -> Tensor:
        """-> long[B], the index of the best answer in the list."""
        return self.logits(video, questions).argmax(1)  # (B,)


def qa_items(path: Path, root) -> list[VideoText]:
    """QA entries as VideoText items whose one 'caption' is the question."""
    items = load_annotations(path, root=root, require_caption=False, unique=True, nonempty=True)
    out = []
    for i, it in enumerate(items):
        if "question" not in it.meta or "answer" not in it.meta:
            raise ValueError(f"{path}: entry {i} needs `question` and `answer` keys (MSRVTT-QA format)")
        out.append(VideoText(path=it.path, captions=[str(it.meta["question"])], is_image=it.is_image, meta=it.meta))
    return out


@torch.no_grad()
def evaluate_qa(qa: QATask, items, answers: list[str], cfg: Config, device) -> dict:
    """Top-1 accuracy over ``items`` (overall and per question type when every item has one)."""
    qa.eval()
    preds = []
    share = my_share(len(items))  # under torchrun each rank answers its share of the questions
    for batch in eval_loader([items[i] for i in share], cfg.data.num_frames, cfg.data.size, cfg.data.num_workers,
                             device=device):
        idx = qa.predict(batch["video"], batch["caption"]).cpu()  # (b,)
        preds += [answers[i] for i in idx.tolist()]
    preds = gather_ordered(preds, len(items))
    gold = [str(it.meta["answer"]) for it in items]
    types = [str(it.meta["type"]) for it in items] if all("type" in it.meta for it in items) else None
    return {"n": len(items), **qa_accuracy(preds, gold, types),
            "samples": [{"video": str(it.path.name), "question": it.captions[0], "answer": g, "predicted": p}
                        for it, g, p in list(zip(items, gold, preds))[:50]]}


def qa_table(r: dict) -> str:
    lines = [f"QA top-1 accuracy {r['acc']:.2f} % over {r['n']} questions"]
    for t, a in sorted(r.get("per_type", {}).items()):
        lines.append(f"  {t:18s} {a:6.2f} %")
    return "\n".join(lines)


@register_task("qa", help="open-ended video QA: a classifier over answer_list.json (MSRVTT-QA style)",
               files=("train_qa.json", "test_qa.json"),
               eval_help="video QA top-1 accuracy, overall and per question type")
def build_qa(cfg: Config, model: VideoTextModel, device, evaluating: bool = False) -> Job:
    answer_path = cfg.data.path(cfg.finetune.answer_list)
    if not answer_path.is_file():
        raise FileNotFoundError(f"finetune.answer_list: {answer_path} not found (a JSON list of answers, "
                                "relative to data.corpus unless absolute)")
    answers = load_answer_list(answer_path)
    # the retrieval projections and temperature feed no QA loss: frozen, so DDP waits for no gradient of theirs
    for part in (model.vision_proj, model.text_proj):
        part.requires_grad_(False)
    model.logit_scale.requires_grad_(False)
    fusion = FusionEncoder(model.text.width, model.visual.dim, depth=cfg.model.fusion_depth)
    qa = QATask(model, fusion, len(answers)).to(device)
    root = cfg.data.root()
    train_path, test_path = cfg.data.path(cfg.data.train_anno), cfg.data.path(cfg.data.test_anno)
    items, test = [] if evaluating else qa_items(train_path, root), qa_items(test_path, root)
    table = torch.tensor(answer_ids([str(it.meta["answer"]) for it in items], answers), dtype=torch.long)  # (n,)
    if items and bool((table == UNANSWERABLE).all()):
        raise ValueError(f"{train_path}: no answer is in {cfg.finetune.answer_list}")

    def prepare(batch: dict) -> dict:
        batch["answer_id"] = table[batch["index"]]  # (B,) answer index per training question
        return batch

    return Job(task=qa, model=model, items=items, prepare=prepare, table=qa_table,
               evaluate=lambda: evaluate_qa(qa, test, answers, cfg, device),
               short=lambda r: {"eval_qa_acc": r["acc"]}, result_file="eval_qa.json", masked=False)
