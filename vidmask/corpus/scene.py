"""What is in one motion-shapes video, as data: sampling scenes and twins.

A :class:`Scene` is a background plus 1-3 coloured shapes, each with a
motion. Everything here is a pure function of a seeded
``numpy.random.Generator`` and the corpus geometry (frame size, frame
count), so a video can be regenerated from its scene alone and a scene from
``(seed, scene_id)`` alone, whatever the worker count.

Geometry is written for 128 px frames and multiplied by ``size / 128``, so a
64 px corpus is the same corpus at half the resolution. The constants are
chosen for a tiny ViT with 16 px patches that sees 8 of the 16 frames:

* small objects are 18-24 px across and large ones 34-44 px, so even a small
  object covers most of a patch and the two sizes never overlap;
* a move covers 40-55 % of the frame (51-70 px at 128) in one direction and
  never wraps, so left/right/up/down are unambiguous from any 8 frames;
* rotation is 200-300 degrees over the clip, i.e. under 40 degrees between
  two sampled frames, and only for shapes without rotational symmetry
  (arrow, L, half-moon): a spinning circle looks still and a star aliases
  with its 72-degree symmetry.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

# Saturated, well separated colours: backgrounds are muted and darker, so
# every object stands out by hue and by brightness. Names are the only words
# captions use for colours (no synonyms), so the mapping stays learnable.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 30, 30),
    "orange": (255, 140, 0),
    "yellow": (255, 230, 20),
    "green": (30, 190, 50),
    "cyan": (0, 215, 235),
    "blue": (35, 75, 240),
    "purple": (160, 50, 215),
    "white": (245, 245, 245),
}
SHAPES = ("circle", "square", "triangle", "star", "cross", "arrow", "l-shape", "half-moon")
# Shapes whose rotation is visible in sampled frames: no rotational symmetry.
ASYMMETRIC = ("arrow", "l-shape", "half-moon")
SIZES = ("small", "large")
MOTIONS = ("left", "right", "up", "down", "rotate", "grow", "shrink", "still", "bounce", "enter", "leave")
SIDES = ("left", "right", "top", "bottom")
BACKGROUNDS = ("noise", "stripes", "checker", "gradient")

# Motions that change where the object is (used by "does it move?" questions).
TRANSLATIONS = ("left", "right", "up", "down", "bounce", "enter", "leave")
# The twin of a motion that reverses time: the same frames in reverse order
# for that object, the hardest negative for a model that ignores frame order.
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up",
            "grow": "shrink", "shrink": "grow", "enter": "leave", "leave": "enter"}

# Geometry at 128 px, scaled by size / 128 (see the module docstring).
REF_SIZE = 128
MARGIN = 2.0
SMALL_DIAMETER = (18.0, 24.0)
LARGE_DIAMETER = (34.0, 44.0)
GROW_DIAMETER = (14.0, 46.0)  # a growing object goes from the first to the second
TRAVEL_SHARE = (0.40, 0.55)  # of the frame side, for left/right/up/down
BOUNCE_SHARE = (0.34, 0.44)  # bounce height, of the frame side
SPIN_DEGREES = (200.0, 300.0)
ROTATE_SHARE = 0.3  # chance that an asymmetric shape rotates
ENTER_DEPTH = 0.35  # an entering object ends at least this share inside the frame
BOUNCES_PER_16_FRAMES = 2  # a bounce spans >= 4 sampled frames at stride 2


@dataclass
class Obj:
    """One coloured shape and how it moves.

    (x, y) is the anchor: where a still, rotating, growing or shrinking object
    sits, the midpoint of a left/right/up/down move or a bounce, the inside
    end of an enter/leave.
    """

    shape: str  # one of SHAPES
    colour: str  # one of COLOURS
    size: str  # "small" | "large"; not drawn for grow/shrink (the motion sets it)
    diameter: float  # px across at the corpus frame size
    motion: str  # one of MOTIONS
    x: float  # anchor, px from the left
    y: float  # anchor, px from the top
    angle: float = 0.0  # degrees at frame 0 (0 for symmetric shapes)
    travel: float = 0.0  # px covered by a move or enter/leave; bounce height
    spin: float = 0.0  # signed total degrees over the clip, rotate only
    side: str = ""  # edge an object enters from / leaves through


@dataclass
class Clutter:
    """A small static low-contrast mark on the background, never captioned."""

    kind: str  # "dot" | "bar" | "ring"
    x: float
    y: float
    r: float  # px radius (half-length for a bar)
    angle: float  # degrees, bars only
    tone: tuple[int, int, int]  # RGB, close to the background


@dataclass
class Background:
    """A textured background; ``tone_a``/``tone_b`` are muted RGB colours."""

    kind: str  # one of BACKGROUNDS
    tone_a: tuple[int, int, int]
    tone_b: tuple[int, int, int]
    period: float = 0.0  # px, stripes and checker
    angle: float = 0.0  # degrees, stripes and gradient direction
    noise_seed: int = 0  # seeds the smooth-noise grid (noise only)
    clutter: list[Clutter] = field(default_factory=list)


@dataclass
class Scene:
    """Everything needed to render one video."""

    size: int  # frame side in px
    frames: int
    background: Background
    objects: list[Obj]


def _scale(size: int) -> float:
    return size / REF_SIZE


def allowed_motions(shape: str) -> tuple[str, ...]:
    """Motions that are visible for this shape (rotation needs asymmetry)."""
    return MOTIONS if shape in ASYMMETRIC else tuple(m for m in MOTIONS if m != "rotate")


def extent(obj: Obj, size: int) -> float:
    """Largest diameter the object reaches during the clip, px."""
    if obj.motion in ("grow", "shrink"):
        return GROW_DIAMETER[1] * _scale(size)
    return obj.diameter


def sample_motion_name(rng: np.random.Generator, shape: str) -> str:
    """A motion for a new object; rotation is boosted for the shapes that may rotate.

    Only 3 of 8 shapes can rotate, so a uniform draw would make rotation the
    rarest motion by a factor of three.
    """
    if shape in ASYMMETRIC and rng.random() < ROTATE_SHARE:
        return "rotate"
    return str(rng.choice([m for m in MOTIONS if m != "rotate"]))


def fit(obj: Obj, size: int) -> Obj:
    """Move the anchor (and shorten a move) so the whole path stays in frame.

    Enter/leave are the exception: their outside end is off-screen by design.
    Called after sampling and after a twin changes the motion, so the other
    objects of a twin keep their exact layout.
    """
    m = MARGIN * _scale(size)
    r = extent(obj, size) / 2
    lo, hi = m + r, size - m - r  # where the centre of a still object may be
    x, y, travel = obj.x, obj.y, obj.travel
    if obj.motion in ("left", "right", "up", "down", "bounce"):
        travel = min(travel, hi - lo)
        span = travel / 2
        if obj.motion in ("left", "right"):
            x = float(np.clip(x, lo + span, hi - span))
            y = float(np.clip(y, lo, hi))
        else:
            x = float(np.clip(x, lo, hi))
            y = float(np.clip(y, lo + span, hi - span))
    elif obj.motion in ("enter", "leave"):
        deep = ENTER_DEPTH * size
        x, y = float(np.clip(x, lo, hi)), float(np.clip(y, lo, hi))
        if obj.side == "left":
            x = max(x, deep)
            travel = x + r + 1
        elif obj.side == "right":
            x = min(x, size - deep)
            travel = size + r + 1 - x
        elif obj.side == "top":
            y = max(y, deep)
            travel = y + r + 1
        else:
            y = min(y, size - deep)
            travel = size + r + 1 - y
    else:
        x, y = float(np.clip(x, lo, hi)), float(np.clip(y, lo, hi))
    return replace(obj, x=round(x, 2), y=round(y, 2), travel=round(travel, 2))


def track(obj: Obj, frames: int, size: int) -> np.ndarray:
    """Per-frame pose of an object: float[F, 4] = (cx, cy, diameter, angle)."""
    t = np.linspace(0.0, 1.0, frames)  # (F,)
    cx = np.full(frames, obj.x)
    cy = np.full(frames, obj.y)
    d = np.full(frames, obj.diameter)
    angle = np.full(frames, obj.angle)
    half = obj.travel / 2
    if obj.motion == "left":
        cx = obj.x + half - obj.travel * t
    elif obj.motion == "right":
        cx = obj.x - half + obj.travel * t
    elif obj.motion == "up":
        cy = obj.y + half - obj.travel * t
    elif obj.motion == "down":
        cy = obj.y - half + obj.travel * t
    elif obj.motion == "bounce":
        # |sin| hops off the ground (y + half); two hops per 16 frames.
        hops = max(1, round(BOUNCES_PER_16_FRAMES * frames / 16))
        cy = obj.y + half - obj.travel * np.abs(np.sin(np.pi * hops * t))
    elif obj.motion == "rotate":
        angle = obj.angle + obj.spin * t
    elif obj.motion in ("grow", "shrink"):
        small, large = (v * _scale(size) for v in GROW_DIAMETER)
        d = small + (large - small) * (t if obj.motion == "grow" else 1 - t)
    elif obj.motion in ("enter", "leave"):
        # u runs outside -> inside for enter, inside -> outside for leave.
        u = t if obj.motion == "enter" else 1 - t
        out = (1 - u) * obj.travel
        if obj.side == "left":
            cx = obj.x - out
        elif obj.side == "right":
            cx = obj.x + out
        elif obj.side == "top":
            cy = obj.y - out
        else:
            cy = obj.y + out
    return np.stack([cx, cy, d, angle], axis=1)  # (F, 4)


def sample_motion(rng: np.random.Generator, obj: Obj, motion: str, size: int) -> Obj:
    """Give ``obj`` a new motion with freshly sampled parameters, fitted."""
    s = size
    travel, spin, side = 0.0, 0.0, ""
    if motion in ("left", "right", "up", "down"):
        travel = rng.uniform(*TRAVEL_SHARE) * s
    elif motion == "bounce":
        travel = rng.uniform(*BOUNCE_SHARE) * s
    elif motion == "rotate":
        spin = rng.uniform(*SPIN_DEGREES) * rng.choice([-1.0, 1.0])
    elif motion in ("enter", "leave"):
        side = str(rng.choice(SIDES))
    new = replace(obj, motion=motion, travel=round(float(travel), 2), spin=round(float(spin), 2), side=side)
    return fit(new, size)


def _tone(hue: float, sat: float, val: float) -> tuple[int, int, int]:
    import colorsys

    r, g, b = colorsys.hsv_to_rgb(hue % 1.0, sat, float(np.clip(val, 0.0, 1.0)))
    return (round(r * 255), round(g * 255), round(b * 255))


def sample_background(rng: np.random.Generator, size: int) -> Background:
    """A muted, never blank background with a little static clutter.

    Values stay in 0.18-0.62 and saturation under 0.35 so the bright,
    saturated objects (and the white one) separate from it; the two tones
    differ by 0.10-0.18 in value, enough to read as texture, too little to
    look like an object edge.
    """
    k = _scale(size)
    kind = str(rng.choice(BACKGROUNDS))
    hue, sat = rng.uniform(0, 1), rng.uniform(0.10, 0.35)
    val = rng.uniform(0.30, 0.48)
    delta = rng.uniform(0.10, 0.18) * rng.choice([-1.0, 1.0])
    tone_a = _tone(hue, sat, val)
    tone_b = _tone(hue + rng.uniform(-0.06, 0.06), sat, float(np.clip(val + delta, 0.18, 0.62)))
    period = round(float(rng.uniform(10, 20) * k), 2) if kind in ("stripes", "checker") else 0.0
    angle = float(rng.choice([0.0, 45.0, 90.0, 135.0])) if kind == "stripes" else 0.0
    if kind == "gradient":
        angle = round(float(rng.uniform(0, 360)), 2)
    noise_seed = int(rng.integers(2**31)) if kind == "noise" else 0
    clutter = []
    for _ in range(int(rng.integers(4, 10))):
        # Grey-ish marks of the background hue, a little lighter or darker.
        c_val = val + rng.uniform(0.08, 0.14) * rng.choice([-1.0, 1.0])
        clutter.append(Clutter(
            kind=str(rng.choice(["dot", "bar", "ring"])),
            x=round(float(rng.uniform(0, size)), 2),
            y=round(float(rng.uniform(0, size)), 2),
            r=round(float(rng.uniform(2.0, 5.0) * k), 2),
            angle=round(float(rng.uniform(0, 180)), 2),
            tone=_tone(hue, sat * 0.5, c_val),
        ))
    return Background(kind, tone_a, tone_b, period, angle, noise_seed, clutter)


def sample_scene(rng: np.random.Generator, size: int, frames: int) -> Scene:
    """Sample a background and 1-3 objects with distinct colours.

    Distinct colours keep every caption and "what shape is the blue object"
    question unambiguous; shapes may repeat (then a caption tells them apart
    by colour). Anchors are re-drawn a few times to avoid starting on top of
    each other; moving objects may still cross (occlusion is allowed, and
    larger objects are drawn behind smaller ones so none is hidden for long).
    """
    k = _scale(size)
    background = sample_background(rng, size)
    count = int(rng.choice([1, 2, 3], p=[0.3, 0.4, 0.3]))
    colours = rng.choice(list(COLOURS), size=count, replace=False)
    objects: list[Obj] = []
    for colour in colours:
        shape = str(rng.choice(SHAPES))
        size_word = str(rng.choice(SIZES))
        lo_hi = SMALL_DIAMETER if size_word == "small" else LARGE_DIAMETER
        diameter = round(float(rng.uniform(*lo_hi) * k), 2)
        angle = round(float(rng.uniform(0, 360)), 2) if shape in ASYMMETRIC else 0.0
        motion = sample_motion_name(rng, shape)
        best, best_gap = None, -np.inf
        for _ in range(12):
            base = Obj(shape, str(colour), size_word, diameter, motion,
                       x=round(float(rng.uniform(0, size)), 2), y=round(float(rng.uniform(0, size)), 2),
                       angle=angle)
            candidate = sample_motion(rng, base, motion, size)
            # Gap to the nearest already placed object, in units of their radii.
            gap = min((np.hypot(candidate.x - o.x, candidate.y - o.y)
                       / (extent(candidate, size) / 2 + extent(o, size) / 2) for o in objects), default=np.inf)
            if gap > best_gap:
                best, best_gap = candidate, gap
            if gap >= 1.0:
                break
        objects.append(best)
    return Scene(size, frames, background, objects)


def make_twin(rng: np.random.Generator, scene: Scene) -> tuple[Scene, int, str]:
    """A counterfactual sibling: one attribute of one object changes.

    Returns (twin scene, object index, "motion" | "colour"). A motion twin is
    the reversed motion half of the time (left/right, up/down, grow/shrink,
    enter/leave through the same side): the same set of frames in another
    order, so only a model that reads temporal order can tell them apart. A
    rotation never changes only its direction, because captions do not name
    it. Everything else (background, clutter, other objects, this object's
    shape, size and the rest) is copied unchanged.
    """
    index = int(rng.integers(len(scene.objects)))
    obj = scene.objects[index]
    if rng.random() < 0.6:
        differs = "motion"
        opposite = OPPOSITE.get(obj.motion)
        if opposite is not None and rng.random() < 0.5:
            # Same anchor, travel and side: the object's path runs backwards.
            new = fit(replace(obj, motion=opposite), scene.size)
        else:
            choices = [m for m in allowed_motions(obj.shape) if m != obj.motion]
            new = sample_motion(rng, obj, str(rng.choice(choices)), scene.size)
    else:
        differs = "colour"
        used = {o.colour for o in scene.objects}
        new = replace(obj, colour=str(rng.choice([c for c in COLOURS if c not in used])))
    objects = list(scene.objects)
    objects[index] = new
    return replace(scene, objects=objects), index, differs
