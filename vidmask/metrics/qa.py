"""Open-ended QA accuracy, as MSRVTT-QA reports it.

An answer is right when it equals the gold answer exactly after lower-casing
and stripping outer whitespace (no further normalisation: MSRVTT-QA answers
are single words, and VQA's article/punctuation rules are not part of its
protocol). Accuracy is in percent; per-type accuracy (what / who / how /
when / where for MSRVTT-QA) is reported when question types are given.
"""

from __future__ import annotations

from vidmask.models.qa import normalize_answer


def qa_accuracy(pred: list[str], gold: list[str], types: list[str] | None = None) -> dict:
    """-> {"acc": %, "per_type": {type: %}, "n": number of questions}.

    An empty input gives acc = nan (no questions, no accuracy); "per_type" is
    empty when no types are given.
    """
    if len(pred) != len(gold) or (types is not None and len(types) != len(gold)):
        raise ValueError(f"lengths differ: {len(pred)} predictions, {len(gold)} answers"
                         + ("" if types is None else f", {len(types)} types"))
    right = [normalize_answer(p) == normalize_answer(g) for p, g in zip(pred, gold)]
    n = len(right)
    acc = 100.0 * sum(right) / n if n else float("nan")
    per_type: dict[str, float] = {}
    if types is not None:
        groups: dict[str, list[bool]] = {}
        for t, r in zip(types, right):
            groups.setdefault(t, []).append(r)
        per_type = {t: 100.0 * sum(rs) / len(rs) for t, rs in sorted(groups.items())}
    return {"acc": acc, "per_type": per_type, "n": n}
