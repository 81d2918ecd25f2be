"""Counterfactual captions: each caption with one motion word turned into its opposite, as a negative of its clip.

A contrastive batch rarely holds two captions that differ only in how
something moves, so the video feature is never asked for the direction: the
colour and shape words already pick the clip. Verb-focused contrastive
learning (VFC, Momeni et al., ICCV 2023, which has a language model write
captions with the verb changed) and NegCLIP (Yuksekgonul et al., ICLR 2023,
which reorders a caption's words) add such hard-negative captions; here,
without a language model, each caption is rewritten with one word swapped
for its counterpart ("moves left" -> "moves right", "grows" -> "shrinks",
"enters from the top" -> "enters from the bottom") and joins its own
clip's candidates in the video-to-text softmax. The caption and its swap share
every appearance word, so only a feature that holds the motion can tell them
apart. The swap is a word from a fixed English lexicon of opposites
(:data:`DEFAULT_PAIRS`, ``loss.swap.pairs``), never the corpus's twin list or
ground truth; a caption with none of its words has no extra candidate.

Which word: one occurrence, drawn with the step's seed, so that a caption
of several moving objects yields a negative that differs in a single word.
``loss.swap.count=N`` gives each caption up to N such negatives, each with
another of its words turned (the drawn one, then the next ones in the
caption, cyclically; 0 = one per swappable word): a caption of three moving
objects then has a negative for each object's motion, not one of them.

Attributes have no opposite: ``loss.swap.groups`` lists words that may stand
for each other ("red|green|blue": any member turns into another one, drawn
with the same seed), as SVLC (Doveh et al., CVPR 2023) replaces a colour word
with another colour from a fixed list. :data:`COLOURS` is the basic English
colour terms; with it in ``loss.swap.groups`` (written out) a caption's colour words join
its motion words as candidates, so the feature must keep which object has
which colour too. Empty by default.

Cost: the text side only (B, or up to count x B, more captions through the text
tower, cached for a frozen one); the video encoder does no more work, and the step does not wait
on the device (the word is drawn on the host, :func:`host_generator`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from vidmask.config import ConfigError
from vidmask.lexicon import WORD, pair_table
from vidmask.objectives.base import Objective, ObjectiveConfig, ObjectiveEnv, StepContext, register_objective
from vidmask.objectives.vtc import drop_same_video
from vidmask.precision import float32_math

# "a:b" swaps both ways, "a>b" only a into b (b has another counterpart). English opposites of
# direction, size and motion verbs, as a caption of any video-text set would use them.
DEFAULT_PAIRS = (
    "left:right", "leftward:rightward", "leftwards:rightwards", "up:down", "upward:downward",
    "upwards:downwards", "top:bottom", "above:below", "rises:sinks", "rise:sink", "rising:sinking",
    "falls>rises", "fall>rise", "falling>rising", "grows:shrinks", "grow:shrink", "growing:shrinking",
    "bigger:smaller", "larger>smaller", "expands:contracts", "expand:contract", "enters:leaves",
    "enter:leave", "entering:leaving", "exits>enters", "forward:backward", "forwards:backwards",
    "opens:closes", "open:close", "opening:closing", "clockwise:counterclockwise", "before:after",
    "pushes:pulls", "push:pull", "appears:disappears", "starts:stops", "start:stop",
)

# Basic colour terms of English (Berlin and Kay's eleven, and cyan), one spelling each: a synonym in the same
# group ("grey|gray") would make a "negative" that is the caption itself.
COLOURS = "red|orange|yellow|green|cyan|blue|purple|pink|brown|black|white|grey"


def swap_table(pairs: list[str] | tuple[str, ...],
               groups: list[str] | tuple[str, ...] = ()) -> dict[str, str | tuple[str, ...]]:
    """``["a:b", "c>d"]`` -> ``{"a": "b", "b": "a", "c": "d"}`` (lower case); each of ``groups``
    (``"x|y|z"``) adds ``{"x": ("y", "z"), "y": ("x", "z"), ...}``: a word and what it may turn into.
    Raises ValueError on a malformed entry or a word given two counterparts
    (:func:`vidmask.lexicon.pair_table`), a group of fewer than two words, or a word in two places."""
    table: dict[str, str | tuple[str, ...]] = dict(pair_table(pairs, source="loss.swap.pairs"))
    for entry in groups:
        words = [w.strip().lower() for w in str(entry).split("|")]
        if len(words) < 2 or not all(WORD.fullmatch(w) for w in words) or len(set(words)) != len(words):
            raise ValueError(f"loss.swap.groups: {entry!r} is not two or more different words joined by '|' "
                             f"(as {COLOURS!r})")
        for w in words:
            if w in table:
                raise ValueError(f"loss.swap.groups: {w!r} (in {entry!r}) is already in loss.swap.pairs or "
                                 f"another group: give each word one place")
            table[w] = tuple(x for x in words if x != w)
    return table


def swap_candidates(caption: str, table: dict[str, str | tuple[str, ...]]) -> list[re.Match]:
    """The words of ``caption`` that ``table`` can swap, in order."""
    return [m for m in WORD.finditer(caption) if m.group().lower() in table]


def swap_word(caption: str, table: dict[str, str | tuple[str, ...]], choice: float) -> str | None:
    """``caption`` with one swappable word (the one at ``choice`` in [0, 1) of its candidates) turned into
    its counterpart, capitalised as the original; None when it has none."""
    out = swap_words(caption, table, choice, 1)
    return out[0] if out else None


def swap_words(caption: str, table: dict[str, str | tuple[str, ...]], choice: float, count: int = 1) -> list[str]:
    """Up to ``count`` (0: every) copies of ``caption``, each with one swappable word turned into its
    counterpart (capitalised as the original): the one at ``choice`` in [0, 1) of its candidates, then the
    candidates after it, cyclically. A word of a group turns into the member that the rest of ``choice``
    picks (where it falls within the drawn candidate's share of [0, 1)). ``[]`` when the caption has no
    swappable word."""
    found = swap_candidates(caption, table)
    if not found:
        return []
    first = min(int(choice * len(found)), len(found) - 1)
    within = min(max(choice * len(found) - first, 0.0), 1.0 - 1e-9)  # uniform in [0, 1) again
    out = []
    for j in range(len(found) if count == 0 else min(count, len(found))):
        m = found[(first + j) % len(found)]
        word = table[m.group().lower()]
        if isinstance(word, tuple):  # a group: one of the other members
            word = word[int(within * len(word))]
        if m.group()[0].isupper():
            word = word[0].upper() + word[1:]
        out.append(caption[: m.start()] + word + caption[m.end():])
    return out


def host_generator(generator: torch.Generator | None, salt: int = 0) -> torch.Generator | None:
    """A CPU generator with ``generator``'s seed plus ``salt`` (its seed is a host value: nothing is read from
    the device; another salt, another stream); None for None (the global CPU generator)."""
    if generator is None:
        return None
    return torch.Generator().manual_seed((generator.initial_seed() + salt) % 2**64)


@dataclass
class SwapConfig(ObjectiveConfig):
    pairs: list[str] = field(default_factory=lambda: list(DEFAULT_PAIRS))  # "a:b" both ways, "a>b" one way
    groups: list[str] = field(default_factory=list)  # "x|y|z": each member turns into another (COLOURS)
    negative_weight: float = 1.0  # the swapped caption's logit is shifted by log(negative_weight)
    count: int = 1  # swapped captions per caption, each with another word turned; 0 = one per swappable word

    def __post_init__(self):
        try:
            swap_table(self.pairs, self.groups)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        if not (math.isfinite(self.negative_weight) and self.negative_weight > 0):
            raise ConfigError(f"loss.swap.negative_weight must be a finite number > 0, got {self.negative_weight}")
        if isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 0:
            raise ConfigError(f"loss.swap.count must be a whole number >= 0 (0 = every swappable word), "
                              f"got {self.count!r}")


@register_objective("swap", SwapConfig)
class Swap(Objective):
    """Video-to-text contrast with each clip's caption, one motion word swapped (per negative), as extra
    negatives."""

    def __init__(self, cfg: SwapConfig, env: ObjectiveEnv):
        super().__init__()
        self.table, self.log_weight, self.count = (swap_table(cfg.pairs, cfg.groups), math.log(cfg.negative_weight),
                                                   cfg.count)

    def forward(self, ctx: StepContext) -> dict[str, Tensor]:
        video_feat, text_feat, model = ctx.video_feat, ctx.text_feat, ctx.model  # (B, E), (B, E)
        B, device = video_feat.shape[0], video_feat.device
        # one draw per caption, made on the host (the strings are rewritten there): a CPU generator seeded as
        # this step's, so the draw is a pure function of (seed, step, rank) and never waits for the device
        # (reading back a draw of a GPU generator would block until the step's queued work is done)
        choice = torch.rand(B, generator=host_generator(ctx.generator)).tolist()
        swapped = [swap_words(c, self.table, u, self.count) for c, u in zip(ctx.captions, choice)]
        # one entry per swapped caption: its clip, its slot among that clip's extra candidates
        rows = [i for i, s in enumerate(swapped) for _ in s]
        slots = [k for s in swapped for k in range(len(s))]
        width = max(map(len, swapped), default=0) or 1  # extra candidate columns (one -inf column when none)
        scale = model.temperature_scale()
        with float32_math(device.type):
            logits = scale.float() * video_feat.float() @ text_feat.float().T  # (B, B): clip i, caption j
            logits = drop_same_video(logits, ctx.pair_ids)  # another caption of one video is no negative
            negative = torch.full((B, width), float("-inf"), device=device)  # (B, W): no extra candidate
            if rows:
                at = torch.tensor(rows, device=device)  # (n,) the clip of each swapped caption
                slot = torch.tensor(slots, device=device)  # (n,)
                feats = model.encode_text([c for s in swapped for c in s]).float()  # (n, E)
                own = scale.float() * (video_feat.float()[at] * feats).sum(-1) + self.log_weight  # (n,)
                negative = negative.index_put((at, slot), own)  # (B, W)
            logits = torch.cat([logits, negative], 1)  # (B, B+W)
            loss = F.cross_entropy(logits, torch.arange(B, device=device))
            # share of swapped captions that score below their clip's own caption; 0 when no caption has one
            # (swap_share says how many had)
            acc = torch.zeros((), device=device)
            if rows:
                # the similarities themselves, before the negative's log-weight shift
                beaten = logits.diagonal()[at] > logits[at, B + slot] - self.log_weight  # (n,)
                acc = 100.0 * beaten.float().mean().detach()
        with_swap = sum(1 for s in swapped if s)  # clips with at least one swapped caption
        return {"swap_loss": loss, "swap_acc": acc, "swap_share": torch.tensor(100.0 * with_swap / B)}
