"""Open-ended video QA over a fixed answer list (MSRVTT-QA style).

The question's token states go through the fusion encoder, which
cross-attends to the video tokens; the fused [CLS] state is classified over
the answers of ``answer_list.json``.

vidmask uses a **classifier over the answer list**, not what UMT does
(generate with a text decoder, then rank every answer in the list by its
generation likelihood). The answer lists of MSRVTT-QA / MSVD-QA are small
(~1.5k answers, almost all one word), so a softmax over them covers the
task; it costs one linear layer instead of a decoder pass per candidate
answer, and needs no decoder weights. What it gives up: answers outside the
list cannot be predicted (they count as wrong), and answer words share no
parameters with the text vocabulary.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch.nn.functional as F
from torch import Tensor, nn

from vidmask.models.blocks import init_weights
from vidmask.models.fusion import FusionEncoder

UNANSWERABLE = -100  # the label of an answer that is not in the list (ignored by the loss)


def load_answer_list(path: str | Path) -> list[str]:
    """answer_list.json (a JSON list of strings) -> answers, normalised (lower-cased, stripped)."""
    answers = json.loads(Path(path).read_text())
    if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
        raise ValueError(f"{path} must hold a JSON list of answer strings")
    norm = [normalize_answer(a) for a in answers]
    if len(set(norm)) != len(norm):
        raise ValueError(f"{path} holds duplicate answers after lower-casing/stripping")
    return norm


def normalize_answer(answer: str) -> str:
    """The MSRVTT-QA comparison form: lower case, outer whitespace removed."""
    return answer.strip().lower()


def answer_ids(answers: list[str], answer_list: list[str]) -> list[int]:
    """Index of each answer in the list; -100 for one that is not there."""
    index = {a: i for i, a in enumerate(answer_list)}
    return [index.get(normalize_answer(a), UNANSWERABLE) for a in answers]


class AnswerHead(nn.Module):
    """The VQA-style classifier on the fused [CLS] state: W -> 2W -> GELU -> LayerNorm -> answers."""

    def __init__(self, width: int, num_answers: int):
        super().__init__()
        if num_answers < 2:
            raise ValueError(f"need at least 2 answers, got {num_answers}")
        self.fc1 = nn.Linear(width, 2 * width)
        self.norm = nn.LayerNorm(2 * width)
        self.fc2 = nn.Linear(2 * width, num_answers)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.norm(F.gelu(self.fc1(x))))  # (B, A)


def answer_logits(fusion: FusionEncoder, head: AnswerHead, question_states: Tensor, question_mask: Tensor,
                  video_tokens: Tensor) -> Tensor:
    """question_states [B,S,W], question_mask [B,S], video_tokens [B,K,C] -> logits [B,A]."""
    fused = fusion(question_states, question_mask, video_tokens)  # (B, S, W)
    return head(fused[:, 0])  # (B, A)
