"""Words for a scene: paraphrased captions and one-word-answer questions.

Both are pure functions of a :class:`~vidmask.corpus.scene.Scene` and a
seeded generator. Two rules make the text learnable from the pixels:

* every caption names every object with its colour, shape and motion, so a
  mask that drops an object (or the frames that show its motion) loses part
  of the caption; sizes are named most of the time, backgrounds sometimes;
* one scene attribute always maps to the same words up to a fixed synonym
  list, and nothing is named that cannot be seen (no size word for an object
  that grows or shrinks, no spin direction, never the clutter).

Questions follow MSRVTT-QA (one-word answers from a closed list) and are only
asked when they have one answer in the scene: "what shape is the blue
object" needs one blue object (colours are distinct in a scene), "what colour
is the star" needs one star, "does the square move" is skipped for motions
where "move" is debatable (rotate, grow, shrink).
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from vidmask.corpus.scene import COLOURS, MOTIONS, SHAPES, TRANSLATIONS, Obj, Scene

SHAPE_WORDS = {
    "circle": ("circle", "ball", "disc"),
    "square": ("square", "box", "block"),
    "triangle": ("triangle",),
    "star": ("star",),
    "cross": ("cross", "plus sign"),
    "arrow": ("arrow",),
    "l-shape": ("L shape", "L-shaped block"),
    "half-moon": ("half moon", "half circle", "semicircle"),
}
SIZE_WORDS = {"small": ("small", "little"), "large": ("large", "big")}
BACKGROUND_WORDS = {
    "noise": ("textured", "mottled"),
    "stripes": ("striped",),
    "checker": ("checkered", "checkerboard"),
    "gradient": ("shaded", "gradient"),
}
SIDE_WORDS = {"left": "the left", "right": "the right", "top": "the top", "bottom": "the bottom"}
# Verb phrases per motion; the first is the canonical one questions use.
MOTION_WORDS = {
    "left": ("moves left", "slides to the left", "moves to the left", "travels leftward", "goes left"),
    "right": ("moves right", "slides to the right", "moves to the right", "travels rightward", "goes right"),
    "up": ("moves up", "rises", "slides upward", "goes up", "moves upward"),
    "down": ("moves down", "sinks", "slides downward", "goes down", "moves downward"),
    "rotate": ("rotates", "spins", "turns around", "rotates in place"),
    "grow": ("grows", "gets bigger", "expands", "grows larger"),
    "shrink": ("shrinks", "gets smaller", "becomes smaller", "gets tinier"),
    "still": ("stays still", "does not move", "sits still", "remains in place", "stays put"),
    "bounce": ("bounces", "bounces up and down", "hops up and down"),
    "enter": ("enters from {side}", "comes in from {side}", "moves into view from {side}"),
    "leave": ("leaves toward {side}", "exits toward {side}", "moves out of view toward {side}"),
}
assert set(MOTION_WORDS) == set(MOTIONS) and set(SHAPE_WORDS) == set(SHAPES)

COUNT_WORDS = {1: "one", 2: "two", 3: "three"}
# Which way an object travels, when it travels one way.
DIRECTION = {"left": "left", "right": "right", "up": "up", "down": "down"}
ENTER_DIRECTION = {"left": "right", "right": "left", "top": "down", "bottom": "up"}
LEAVE_DIRECTION = {"left": "left", "right": "right", "top": "up", "bottom": "down"}
ACTION = {"rotate": "rotating", "grow": "growing", "shrink": "shrinking", "bounce": "bouncing",
          "enter": "entering", "leave": "leaving"}
QUESTION_TYPES = ("count", "colour_of_motion", "shape_of_colour", "colour_of_shape",
                  "direction", "moves", "action", "size")
# Every answer any question can have (MSRVTT-QA's answer_list.json).
ANSWERS = tuple(sorted(
    set(COLOURS) | set(SHAPES) | set(DIRECTION.values()) | set(COUNT_WORDS.values())
    | {"yes", "no", "small", "large"} | set(ACTION.values())
))


def _pick(rng: np.random.Generator, options) -> str:
    return str(options[int(rng.integers(len(options)))])


def _article(phrase: str) -> str:
    # "an L shape" is read "an el shape".
    return "an" if phrase[0] in "aeiou" or phrase.startswith(("L ", "L-")) else "a"


def motion_phrase(obj: Obj, variant: int = 0) -> str:
    """A verb phrase for the object's motion ("slides to the left")."""
    options = MOTION_WORDS[obj.motion]
    return options[variant % len(options)].format(side=SIDE_WORDS.get(obj.side, ""))


def motion_key(obj: Obj) -> str:
    """Motion plus side: what must differ for two motions to look different."""
    return f"{obj.motion}:{obj.side}"


def _noun(rng: np.random.Generator, obj: Obj, with_size: bool) -> str:
    words = []
    if with_size and obj.motion not in ("grow", "shrink"):
        words.append(_pick(rng, SIZE_WORDS[obj.size]))
    words += [obj.colour, _pick(rng, SHAPE_WORDS[obj.shape])]
    return " ".join(words)


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _caption(rng: np.random.Generator, scene: Scene) -> str:
    objects = [scene.objects[i] for i in rng.permutation(len(scene.objects))]  # varied order
    nouns = [_noun(rng, o, with_size=rng.random() < 0.75) for o in objects]
    verbs = [motion_phrase(o, int(rng.integers(len(MOTION_WORDS[o.motion])))) for o in objects]
    bg = _pick(rng, BACKGROUND_WORDS[scene.background.kind])
    clauses = [f"{_article(n)} {n} {v}" for n, v in zip(nouns, verbs)]
    relatives = [f"{_article(n)} {n} that {v}" for n, v in zip(nouns, verbs)]
    if len(objects) == 1:
        templates = [
            clauses[0],
            f"{clauses[0]} in front of {_article(bg)} {bg} background",
            f"on {_article(bg)} {bg} background, {clauses[0]}",
            f"the {nouns[0]} {verbs[0]}",
            f"there is {relatives[0]}",
            f"a video of {relatives[0]}",
        ]
    else:
        count = COUNT_WORDS[len(objects)]
        thing = _pick(rng, ("shapes", "objects"))
        templates = [
            _join(clauses),
            f"on {_article(bg)} {bg} background, {_join(clauses)}",
            f"there are {count} {thing}: {_join(relatives)}",
            f"{count} {thing} on {_article(bg)} {bg} background: {_join(clauses)}",
            f"{_join(clauses)} in front of {_article(bg)} {bg} background",
        ]
        if len(objects) == 2:
            templates.append(f"{clauses[0]} while {clauses[1]}")
    return _pick(rng, templates)


def captions(rng: np.random.Generator, scene: Scene, low: int = 3, high: int = 5) -> list[str]:
    """``low``..``high`` distinct paraphrases of the scene."""
    want = int(rng.integers(low, high + 1))
    out: list[str] = []
    for _ in range(50 * want):
        text = _caption(rng, scene)
        if text not in out:
            out.append(text)
        if len(out) == want:
            break
    return out


def _reference(scene: Scene, i: int) -> str:
    """How a question names object i: by shape if unique, else colour + shape."""
    obj = scene.objects[i]
    shape = SHAPE_WORDS[obj.shape][0]
    unique = sum(o.shape == obj.shape for o in scene.objects) == 1
    return f"the {shape}" if unique else f"the {obj.colour} {shape}"


def all_questions(scene: Scene) -> list[tuple[str, str, str]]:
    """Every unambiguous (type, question, answer) for the scene, in a fixed order."""
    objs = scene.objects
    shapes = Counter(o.shape for o in objs)
    motions = Counter(motion_key(o) for o in objs)
    out = [("count", "how many shapes are there?", COUNT_WORDS[len(objs)])]
    for i, o in enumerate(objs):
        ref = _reference(scene, i)
        if motions[motion_key(o)] == 1:
            out.append(("colour_of_motion", f"what colour is the object that {motion_phrase(o)}?", o.colour))
        out.append(("shape_of_colour", f"what shape is the {o.colour} object?", o.shape))
        if shapes[o.shape] == 1:
            out.append(("colour_of_shape", f"what colour is the {SHAPE_WORDS[o.shape][0]}?", o.colour))
        way = (DIRECTION.get(o.motion) if o.motion in DIRECTION
               else ENTER_DIRECTION[o.side] if o.motion == "enter"
               else LEAVE_DIRECTION[o.side] if o.motion == "leave" else None)
        if way is not None:
            out.append(("direction", f"which way does {ref} move?", way))
        if o.motion in TRANSLATIONS or o.motion == "still":
            out.append(("moves", f"does {ref} move?", "no" if o.motion == "still" else "yes"))
        if o.motion in ACTION:
            out.append(("action", f"what is {ref} doing?", ACTION[o.motion]))
        if o.motion not in ("grow", "shrink"):
            out.append(("size", f"is {ref} small or large?", o.size))
    return out


def questions(rng: np.random.Generator, scene: Scene, most: int = 5) -> list[tuple[str, str, str]]:
    """Up to ``most`` questions, always including the count, in a fixed type order."""
    pool = all_questions(scene)
    keep = sorted([0] + [1 + int(j) for j in rng.permutation(len(pool) - 1)[: most - 1]])
    return [pool[j] for j in keep]
