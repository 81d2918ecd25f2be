"""Drawing a :class:`~vidmask.corpus.scene.Scene` into RGB frames.

``render(scene) -> (frames uint8[F,H,W,3], boxes int[F,O,4])`` is a pure
function of the scene. Shapes are polygons in unit coordinates (inside a
circle of radius 0.5, so a rotating shape never leaves its fitted path),
scaled by the object's diameter, rotated and translated per frame. Drawing
happens at twice the resolution and is box-filtered down: edges of moving and
rotating shapes are anti-aliased, so a small rotation still changes pixels.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from vidmask.corpus.scene import COLOURS, Background, Scene, track

SUPERSAMPLE = 2
OUTLINE = (20, 20, 20)  # a dark rim separates an object from any background


def _regular(n: int, radius: float, start: float = -90.0) -> list[tuple[float, float]]:
    return [(radius * math.cos(math.radians(start + 360 * i / n)),
             radius * math.sin(math.radians(start + 360 * i / n))) for i in range(n)]


def _star() -> list[tuple[float, float]]:
    outer, inner = _regular(5, 0.5), _regular(5, 0.21, start=-54.0)
    return [p for pair in zip(outer, inner) for p in pair]


def _half_moon() -> list[tuple[float, float]]:
    # A half disc, flat side down, shifted so it turns about its middle.
    arc = [(0.5 * math.cos(math.radians(a)), 0.12 - 0.5 * math.sin(math.radians(a))) for a in range(0, 181, 10)]
    return arc


@lru_cache(maxsize=None)
def shape_polygon(shape: str) -> np.ndarray:
    """Unit polygon of a shape, float[P, 2] in (x, y), y down, max radius <= 0.5.

    The square and cross are never rotated, so they use their full 1x1 box;
    shapes that rotate are normalised to radius 0.5.
    """
    if shape == "circle":
        points = _regular(40, 0.5)
    elif shape == "square":
        points = [(-0.42, -0.42), (0.42, -0.42), (0.42, 0.42), (-0.42, 0.42)]
    elif shape == "triangle":
        points = [(0.0, -0.5), (0.5, 0.4), (-0.5, 0.4)]
    elif shape == "star":
        points = _star()
    elif shape == "cross":
        a, b = 0.16, 0.5
        points = [(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a), (a, b), (-a, b), (-a, a), (-b, a), (-b, -a), (-a, -a)]
    elif shape == "arrow":
        points = [(-0.5, -0.13), (0.05, -0.13), (0.05, -0.34), (0.5, 0.0), (0.05, 0.34), (0.05, 0.13), (-0.5, 0.13)]
    elif shape == "l-shape":
        points = [(-0.36, -0.5), (-0.08, -0.5), (-0.08, 0.2), (0.36, 0.2), (0.36, 0.48), (-0.36, 0.48)]
    elif shape == "half-moon":
        points = _half_moon()
    else:
        raise ValueError(f"unknown shape {shape!r}")
    poly = np.asarray(points, dtype=np.float64)  # (P, 2)
    if shape not in ("square", "cross"):
        poly *= 0.5 / np.hypot(poly[:, 0], poly[:, 1]).max()
    return poly


def render_background(background: Background, size: int) -> np.ndarray:
    """The static background with its clutter, uint8[H, W, 3]."""
    a = np.asarray(background.tone_a, dtype=np.float32)
    b = np.asarray(background.tone_b, dtype=np.float32)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)  # (H, W) each
    if background.kind == "noise":
        # Smooth noise: a coarse random grid upsampled bicubically.
        cells = int(np.random.default_rng(background.noise_seed).integers(4, 8))
        grid = np.random.default_rng(background.noise_seed + 1).random((cells, cells), dtype=np.float32)
        weight = np.asarray(Image.fromarray(grid, mode="F").resize((size, size), Image.BICUBIC))
        weight = np.clip(weight, 0.0, 1.0)
    elif background.kind == "stripes":
        theta = math.radians(background.angle)
        phase = (xx * math.cos(theta) + yy * math.sin(theta)) / background.period
        weight = (np.floor(phase) % 2).astype(np.float32)
    elif background.kind == "checker":
        weight = ((np.floor(xx / background.period) + np.floor(yy / background.period)) % 2).astype(np.float32)
    elif background.kind == "gradient":
        theta = math.radians(background.angle)
        proj = (xx - size / 2) * math.cos(theta) + (yy - size / 2) * math.sin(theta)
        weight = (proj - proj.min()) / max(float(proj.max() - proj.min()), 1e-6)
    else:
        raise ValueError(f"unknown background {background.kind!r}")
    image = a + (b - a) * weight[..., None]  # (H, W, 3)
    canvas = Image.fromarray(np.clip(image + 0.5, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for c in background.clutter:
        box = [c.x - c.r, c.y - c.r, c.x + c.r, c.y + c.r]
        if c.kind == "dot":
            draw.ellipse(box, fill=tuple(c.tone))
        elif c.kind == "ring":
            draw.ellipse(box, outline=tuple(c.tone), width=max(1, round(c.r / 3)))
        else:
            dx = c.r * 1.6 * math.cos(math.radians(c.angle))
            dy = c.r * 1.6 * math.sin(math.radians(c.angle))
            draw.line([c.x - dx, c.y - dy, c.x + dx, c.y + dy], fill=tuple(c.tone), width=max(1, round(c.r / 2)))
    return np.asarray(canvas)


def placed_polygon(shape: str, cx: float, cy: float, diameter: float, angle: float) -> np.ndarray:
    """The shape's polygon in frame px, float[P, 2]."""
    theta = math.radians(angle)
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    return shape_polygon(shape) @ rot.T * diameter + np.array([cx, cy])  # (P, 2)


def render(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """Draw every frame of the scene.

    Returns frames uint8[F, H, W, 3] and boxes int[F, O, 4] = (x0, y0, x1, y1)
    per object, in object order, clipped to the frame; an off-screen object
    (entering or leaving) has an empty box (x0 >= x1 or y0 >= y1).
    """
    size, frames, k = scene.size, scene.frames, SUPERSAMPLE
    poses = np.stack([track(o, frames, size) for o in scene.objects], axis=1)  # (F, O, 4)
    # Larger objects first, so a small one is never hidden behind a big one.
    order = sorted(range(len(scene.objects)), key=lambda i: -float(poses[:, i, 2].max()))
    background = Image.fromarray(render_background(scene.background, size)).resize((size * k, size * k), Image.NEAREST)
    outline = max(1, round(k * size / 128))
    out = np.empty((frames, size, size, 3), dtype=np.uint8)  # (F, H, W, 3)
    boxes = np.zeros((frames, len(scene.objects), 4), dtype=np.int64)  # (F, O, 4)
    for f in range(frames):
        canvas = background.copy()
        draw = ImageDraw.Draw(canvas)
        for i in order:
            obj = scene.objects[i]
            cx, cy, d, angle = poses[f, i]
            poly = placed_polygon(obj.shape, cx, cy, d, angle)  # (P, 2)
            draw.polygon([tuple(p) for p in poly * k], fill=COLOURS[obj.colour], outline=OUTLINE, width=outline)
            lo = np.clip(np.floor(poly.min(0)), 0, size)
            hi = np.clip(np.ceil(poly.max(0)), 0, size)
            boxes[f, i] = [lo[0], lo[1], hi[0], hi[1]]
        out[f] = np.asarray(canvas.reduce(k))
    return out, boxes
