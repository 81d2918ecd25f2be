"""Time reversal as a training augmentation: the clip played backwards, with the caption of what
it then shows.

A clip of something "moving left" played backwards moves right; something that "grows" shrinks,
something that "enters from the left" leaves toward the left. Where the caption can be rewritten
to match, the reversed clip is a new positive pair whose pixels differ from the original only in
their order, so appearance alone cannot tell the two captions apart. It is the positive side of
the time-reversal negatives of TACT ("Test of Time", Bagad et al. 2023), which pair a reversed
clip with its time-reversed caption, and the temporal counterpart of a horizontal flip with
left/right swapped (:func:`vidmask.data.transforms.swap_left_right`).

:func:`reverse_caption` rewrites a caption with a fixed English lexicon of time-reversal
opposites (:data:`REVERSE_PHRASES`): directions of travel, size changes, entering and leaving
(the side is kept: the object leaves where it came in), opening and closing, rotation sense.
Words of place are kept ("the cup on the left"), and so are symmetric motions ("bounces up and
down", "spins", "stays still"). It is off by default (``data.reverse_p``): captions of real video
name actions whose reversal has no word ("eats", "pours", "writes"), and a reversed clip under
its forward caption would teach the wrong thing. :func:`reversible` says whether a caption holds
such a word from :data:`IRREVERSIBLE`; the transform then keeps the clip forward.
"""

from __future__ import annotations

import re

from vidmask.data.transforms import match_case, side_is_direction
from vidmask.lexicon import pair_table

# "a:b" both ways, "a>b" one way (b already has a counterpart). Longer phrases win over their words.
REVERSE_PHRASES = (
    # direction of travel (left/right/up/down/top/bottom are handled by _direction_word, in context)
    "leftward:rightward", "leftwards:rightwards", "upward:downward", "upwards:downwards",
    "rises:sinks", "rise:sink", "rising:sinking", "falls>rises", "fall>rise", "falling>rising",
    "forward:backward", "forwards:backwards", "clockwise:counterclockwise", "anticlockwise>clockwise",
    "counter-clockwise>clockwise", "anti-clockwise>clockwise",
    # size change (a size word, "big" or "little", describes the object and is kept)
    "grows larger>shrinks", "grows bigger>shrinks", "grows:shrinks", "grow:shrink", "growing:shrinking",
    "gets bigger:gets smaller", "get bigger:get smaller", "getting bigger:getting smaller",
    "becomes bigger:becomes smaller", "gets larger>gets smaller", "gets tinier>gets bigger",
    "expands:contracts", "expand:contract", "expanding:contracting",
    # appearing and disappearing, opening and closing, starting and stopping
    "appears:disappears", "appear:disappear", "appearing:disappearing", "opens:closes", "open:close",
    "opening:closing", "starts:stops", "start:stop", "before:after", "speeds up:slows down",
    "accelerates:decelerates",
)
# verbs of entering and leaving, rewritten with their preposition and the side kept
# ("enters from the left" <-> "leaves toward the left")
ENTER_LEAVE = (
    "enters:leaves", "enter:leave", "entering:leaving", "exits>enters", "exit>enter", "exiting>entering",
    "comes in:goes out", "come in:go out", "coming in:going out",
    "moves into view:moves out of view", "move into view:move out of view",
    "moving into view:moving out of view",
)
# actions whose reversal English has no word for: a caption with one keeps its clip forward
IRREVERSIBLE = frozenset(
    "eats eat eating drinks drink drinking pours pour pouring writes write writing draws draw drawing "
    "cuts cut cutting breaks break breaking throws throw throwing catches catch catching".split()
)
# a side word after these is a place, not a direction ("on the left")
_PLACE_BEFORE = frozenset("on at in of".split())
_SIDES = {"left": "right", "right": "left", "up": "down", "down": "up", "top": "bottom", "bottom": "top"}
_SYMMETRIC = re.compile(r"\b(up and down|down and up|left and right|right and left|back and forth|to and fro)\b",
                        re.IGNORECASE)


_PHRASE = pair_table(REVERSE_PHRASES, source="vidmask.data.reversal.REVERSE_PHRASES", phrases=True)
_ENTER = pair_table(ENTER_LEAVE, source="vidmask.data.reversal.ENTER_LEAVE", phrases=True)
_PREPOSITION = {"from": "toward", "toward": "from", "towards": "from", "into": "out of"}


def _alternation(words) -> str:
    return "|".join(re.escape(w).replace(r"\ ", r"\s+") for w in sorted(words, key=len, reverse=True))


_PATTERN = re.compile(
    rf"\b(?P<enter>{_alternation(_ENTER)})"
    rf"(?:(?P<sp>\s+)(?P<prep>from|towards|toward)\b(?P<where>(?:\s+the)?\s+(?:left|right|top|bottom)\b)?)?\b"
    rf"|\b(?P<phrase>{_alternation(_PHRASE)})\b"
    rf"|\b(?P<side>left|right|up|down|top|bottom)\b",
    re.IGNORECASE,
)
_PREV_TWO = re.compile(r"([A-Za-z']+)\W+([A-Za-z']+)\W*$")
_PREV = re.compile(r"([A-Za-z']+)\W*$")


def _is_direction(caption: str, m: re.Match) -> bool:
    """Whether the side word ``m`` is a direction of travel, which reversal turns round: not a place
    ("on the left", "at the top", which reversal keeps), nor "left" or "right" in another sense ("he
    left", "right now": :func:`vidmask.data.transforms.side_is_direction`)."""
    before = _PREV_TWO.search(caption[: m.start()])
    if before and before.group(2).lower() == "the" and before.group(1).lower() in _PLACE_BEFORE:
        return False
    one = _PREV.search(caption[: m.start()])
    prev = one.group(1).lower() if one else None
    after = re.match(r"\W*([A-Za-z']+)", caption[m.end():])
    return side_is_direction(m.group(0).lower(), prev, after.group(1).lower() if after else None)


def reversible(caption: str) -> bool:
    """False when ``caption`` names an action from :data:`IRREVERSIBLE` (its reversal has no word)."""
    return not any(w in IRREVERSIBLE for w in re.findall(r"[a-z]+", caption.lower()))


def reverse_caption(caption: str) -> str:
    """The caption of the clip played backwards (see the module docstring). Symmetric phrases
    ("bounces up and down") and places ("on the left") are kept; case is kept on the first letter.

    >>> reverse_caption("a red ball moves left and a blue star enters from the top")
    'a red ball moves right and a blue star leaves toward the top'
    """
    protected = [m.span() for m in _SYMMETRIC.finditer(caption)]
    out, last = [], 0

    for m in _PATTERN.finditer(caption):
        if any(a <= m.start() < b for a, b in protected):
            continue
        word = m.group(0)
        if m.group("enter"):
            verb = re.sub(r"\s+", " ", m.group("enter").lower())
            new = match_case(word, _ENTER[verb])
            if m.group("prep"):  # the side after the preposition is where, not whither: kept
                new += m.group("sp") + _PREPOSITION[m.group("prep").lower()] + (m.group("where") or "")
            repl = new
        elif m.group("phrase"):
            repl = match_case(word, _PHRASE[re.sub(r"\s+", " ", word.lower())])
        else:
            repl = word if not _is_direction(caption, m) else match_case(word, _SIDES[word.lower()])
        out.append(caption[last:m.start()])
        out.append(repl)
        last = m.end()
    out.append(caption[last:])
    return "".join(out)
