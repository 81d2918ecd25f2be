"""Video QA fine-tuning: the dual encoder's towers + fusion encoder + answer classifier.

See `vidmask.models.qa` for why answers are classified over the list rather
than generated. Answers outside the list are labelled -100: they add nothing
to the loss (and the report says how many there were), and at evaluation
they are simply wrong.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vidmask.models.fusion import FusionEncoder
from vidmask.models.qa import UNANSWERABLE, AnswerHead, answer_logits
from vidmask.models.video_text import VideoTextModel


class QATask(nn.Module):
    """forward(video, questions, answer_ids) -> ({"qa_loss"}, report); predict -> answer index."""

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

    def forward(self, video: Tensor, questions: list[str], answer_ids: Tensor):
        """answer_ids long[B]: index into the answer list, -100 for an answer not in it."""
        logits = self.logits(video, questions).float()  # (B, A)
        target = torch.as_tensor(answer_ids, dtype=torch.long, device=logits.device)  # (B,)
        answerable = target != UNANSWERABLE  # (B,)
        # mean over answerable questions; a batch with none gives a zero loss with a graph
        total = F.cross_entropy(logits, target, ignore_index=UNANSWERABLE, reduction="sum")
        loss = total / answerable.sum().clamp(min=1)
        correct = (logits.argmax(1) == target) & answerable  # (B,)
        report = {
            "qa_acc": 100.0 * float(correct.float().mean()),  # unanswerable questions count as wrong
            "answerable": 100.0 * float(answerable.float().mean()),
        }
        return {"qa_loss": loss}, report

    @torch.no_grad()
    def predict(self, video: Tensor, questions: list[str]) -> Tensor:
        """-> long[B], the index of the best answer in the list."""
        return self.logits(video, questions).argmax(1)  # (B,)
