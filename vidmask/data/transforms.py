"""Frames ``uint8[T,H,W,3]`` -> clip ``uint8[T,3,S,S]``, one crop for all T frames; then, on the
device, ``float[...,3,S,S]`` normalised by :func:`normalize_video`.

The host's part (crop, resize, flip: :meth:`VideoTransform.pixels`) runs in the DataLoader
workers and stays in bytes, a quarter of the float clip on its way to the device; the
per-channel ``(x / 255 - mean) / std`` runs where the batch lands (``vidmask.data.transfer``).
A resized pixel is rounded to the nearest of the 256 levels, within half a level (0.5 / 255
of the [0, 1] range, 0.0075 after CLIP's std) of the float resize; an unresized one is exact.

The default, for training and evaluation alike, is "resize the shorter side
to S, centre crop S x S". A random crop is available for training but off by
default: it can cut away the object a caption names, and the caption then
lies. Horizontal flip is off by default too, because a mirrored clip of
something "moving left" moves right; when it is enabled, the caption's
left/right words are swapped with the pixels (:func:`swap_left_right`).

The same crop box and the same flip apply to every frame of a clip: a box
that moved from frame to frame would add motion that is not in the video.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

# OpenAI CLIP's normalisation, what UMT/VINDLU's CLIP-initialised encoders expect
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

Box = tuple[int, int, int, int]  # (top, left, height, width) in input pixels


def center_square_box(H: int, W: int) -> Box:
    """The centred square of side min(H, W).

    Cropping this square and resizing it to S x S is "resize the shorter side
    to S, centre crop S x S", done in the cheaper order: only the pixels that
    survive are interpolated.
    """
    s = min(H, W)
    return (H - s) // 2, (W - s) // 2, s, s


def random_resized_crop_box(
    H: int,
    W: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
) -> Box:
    """torchvision's RandomResizedCrop box: area share in ``scale``, aspect in
    ``ratio`` (log-uniform); after 10 misses, the centre square."""
    area = H * W
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        u = torch.rand(4, generator=generator, dtype=torch.float64).tolist()
        target = area * (scale[0] + u[0] * (scale[1] - scale[0]))
        aspect = math.exp(log_ratio[0] + u[1] * (log_ratio[1] - log_ratio[0]))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= W and 0 < h <= H:
            top = min(int(u[2] * (H - h + 1)), H - h)
            left = min(int(u[3] * (W - w + 1)), W - w)
            return top, left, h, w
    return center_square_box(H, W)


def crop_resize(frames: Tensor, box: Box, size: int) -> Tensor:
    """Crop ``box`` from every frame and resize it to size x size.

    frames: uint8[T,H,W,3] -> uint8[T,3,size,size]. Bilinear with antialias
    (a large downscale without it aliases; bilinear never overshoots as
    bicubic does), computed in float and rounded to the nearest level, so a
    pixel is within half a level of the float result: torch's own uint8
    kernel is faster but rounds its fixed-point weights, one level off on a
    fifth of the pixels.
    """
    top, left, h, w = box
    x = frames[:, top : top + h, left : left + w].permute(0, 3, 1, 2)  # (T, 3, h, w)
    if (h, w) != (size, size):
        y = F.interpolate(x.float().div_(255.0), size=(size, size), mode="bilinear", antialias=True,
                          align_corners=False)  # (T, 3, S, S) in [0, 1]
        x = y.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8)  # (T, 3, S, S)
    return x.contiguous()  # (T, 3, S, S)


def normalize_video(video: Tensor, mean: tuple[float, ...] = CLIP_MEAN,
                    std: tuple[float, ...] = CLIP_STD) -> Tensor:
    """Pixels uint8[..., 3, H, W] (a clip [T,3,H,W] or a batch [B,T,3,H,W]) -> float32
    ``(x / 255 - mean) / std`` per channel, on the pixels' device.

    Float32 whatever the autocast: the model's input was float32 before this ran on the
    device, and autocast casts at its layers as it did then. A float input is refused: it
    has been normalised already, and twice would be wrong without an error.
    """
    if video.dtype != torch.uint8 or video.dim() < 3 or video.shape[-3] != 3:
        raise ValueError(f"normalize_video expects uint8 pixels [..., 3, H, W], got {video.dtype}{list(video.shape)}; "
                         "a float video has been normalised already")
    m = torch.tensor(mean, dtype=torch.float32, device=video.device).view(3, 1, 1)  # (3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=video.device).view(3, 1, 1)  # (3, 1, 1)
    return (video.float().div_(255.0) - m) / s  # (..., 3, H, W)


def hflip(video: Tensor) -> Tensor:
    """Mirror every frame left-right: [T,3,H,W] -> [T,3,H,W], any dtype."""
    return video.flip(-1)  # (T, 3, H, W)


# --- caption side of a horizontal flip ------------------------------------

_MIRROR = {
    "left": "right",
    "right": "left",
    "leftward": "rightward",
    "rightward": "leftward",
    "leftwards": "rightwards",
    "rightwards": "leftwards",
    "leftmost": "rightmost",
    "rightmost": "leftmost",
    "lefthand": "righthand",
    "righthand": "lefthand",
    # a mirror reverses the sense of rotation too
    "clockwise": "counterclockwise",
    "counterclockwise": "clockwise",
    "counter-clockwise": "clockwise",
    "anticlockwise": "clockwise",
    "anti-clockwise": "clockwise",
}
_WORD = re.compile(
    r"\b(counter-?clockwise|anti-?clockwise|clockwise|leftwards?|rightwards?|leftmost|rightmost"
    r"|lefthand|righthand|left|right)\b",
    re.IGNORECASE,
)
_PREV_WORD = re.compile(r"([A-Za-z']+)[^A-Za-z']*$")
_NEXT_WORD = re.compile(r"^[^A-Za-z']*([A-Za-z']+)")

# "left" and "right" are not always directions ("he left the room", "right
# now"). Without a parser, the neighbouring words decide: a word before them
# that makes them a direction wins ("the left", "turns right", "her left");
# otherwise these neighbours mark the other sense and the word is kept.
_DIRECTION_BEFORE = frozenset(
    "the to on from at his her their its my your our a far upper lower top bottom "
    "turn turns turned turning move moves moved moving go goes going went look looks "
    "looking looked swipe swipes pan pans panning head heads heading veer veers veering".split()
)
_VERB_LEFT_BEFORE = frozenset(
    "he she they it we i you who which that has have had having was were is are be been "
    "being just already gets got get".split()
)
_VERB_LEFT_AFTER = frozenset(
    "the a an him her them it me us behind alone over out home for without by with "
    "after early unattended untouched".split()
)
_ADVERB_RIGHT_BEFORE = frozenset("all that's thats it's you're quite exactly is are was were".split())
_ADVERB_RIGHT_AFTER = frozenset(
    "now away after before here there behind next into through then off in up down "
    "above below beside under over across along toward towards".split()
)


def side_is_direction(word: str, prev: str | None, nxt: str | None) -> bool:
    """Whether ``word`` (lower case) between the words ``prev`` and ``nxt`` is a direction or a
    side; only "left" and "right" can be something else ("he left the room", "right now")."""
    if word not in ("left", "right"):
        return True
    if prev in _DIRECTION_BEFORE:
        return True
    if word == "left":
        return prev not in _VERB_LEFT_BEFORE and nxt not in _VERB_LEFT_AFTER
    return prev not in _ADVERB_RIGHT_BEFORE and nxt not in _ADVERB_RIGHT_AFTER


def match_case(src: str, dst: str) -> str:
    if src.isupper() and len(src) > 1:
        return dst.upper()
    if src[0].isupper():
        return dst[0].upper() + dst[1:]
    return dst


def swap_left_right(caption: str) -> str:
    """The caption of the mirrored clip: left <-> right, leftward(s) <->
    rightward(s), leftmost <-> rightmost, clockwise <-> counterclockwise.

    Case is kept ("Left" -> "Right"). "left"/"right" used in another sense
    ("she left the room", "right now", "all right") are kept, by a heuristic
    on the neighbouring words; a caption it misreads should have flip off.
    """

    def repl(m: re.Match) -> str:
        word = m.group(0).lower()
        before = _PREV_WORD.search(caption[: m.start()])
        after = _NEXT_WORD.search(caption[m.end() :])
        prev = before.group(1).lower() if before else None
        nxt = after.group(1).lower() if after else None
        if not side_is_direction(word, prev, nxt):
            return m.group(0)
        return match_case(m.group(0), _MIRROR[word])

    return _WORD.sub(repl, caption)


# --- the whole transform -----------------------------------------------------


@dataclass
class VideoTransform:
    """Crop, resize, (flip): the only per-clip randomness after frame choice.

    :meth:`pixels` gives the uint8 clip (what the datasets return); calling the transform gives
    it normalised by ``mean`` / ``std`` on the host (:func:`normalize_video`), for callers
    that feed one clip to a model directly (the teacher cache, ``vidmask masks``).
    """

    size: int = 224  # output side S; frames come out S x S
    train: bool = False  # False: never random, whatever the options below say
    # training RandomResizedCrop area range, e.g. (0.8, 1.0); None = centre crop
    random_crop_scale: tuple[float, float] | None = None
    random_crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # aspect range of that crop
    hflip_p: float = 0.0  # training flip probability; the caption is mirrored with the clip
    # training time-reversal probability: the clip played backwards, its caption reversed with it
    # (vidmask.data.reversal; a caption naming an action with no reverse keeps its clip forward)
    reverse_p: float = 0.0
    mean: tuple[float, float, float] = CLIP_MEAN  # per-channel mean of [0,1] pixels (what normalises the clips)
    std: tuple[float, float, float] = CLIP_STD  # per-channel std of [0,1] pixels

    def __post_init__(self):
        if self.size < 1:
            raise ValueError(f"size must be >= 1, got {self.size}")
        if self.random_crop_scale is not None:
            lo, hi = self.random_crop_scale
            if not 0 < lo <= hi <= 1:
                raise ValueError(f"random_crop_scale must satisfy 0 < lo <= hi <= 1, got {self.random_crop_scale}")
        if not 0 < self.random_crop_ratio[0] <= self.random_crop_ratio[1]:
            raise ValueError(f"random_crop_ratio must be 0 < lo <= hi, got {self.random_crop_ratio}")
        if not 0.0 <= self.hflip_p <= 1.0:
            raise ValueError(f"hflip_p must be in [0, 1], got {self.hflip_p}")
        if not 0.0 <= self.reverse_p <= 1.0:
            raise ValueError(f"reverse_p must be in [0, 1], got {self.reverse_p}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("mean and std need 3 values each, std > 0")

    @property
    def is_random(self) -> bool:
        return self.train and (self.random_crop_scale is not None or self.hflip_p > 0 or self.reverse_p > 0)

    def pixels(
        self, frames: Tensor, caption: str | None = None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, str | None]:
        """frames: uint8[T,H,W,3] -> (uint8[T,3,S,S], caption, mirrored when the clip was)."""
        video, caption, _ = self.pixels_mirrored(frames, caption, generator)
        return video, caption  # (T, 3, S, S) uint8

    def pixels_mirrored(
        self, frames: Tensor, caption: str | None = None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, str | None, bool]:
        """:meth:`pixels`, and whether the clip was flipped (a teacher cache mirrors its features with it)."""
        if frames.dtype != torch.uint8 or frames.dim() != 4 or frames.shape[-1] != 3:
            raise ValueError(f"expected uint8[T,H,W,3], got {frames.dtype}{list(frames.shape)}")
        if self.is_random and generator is None:
            raise ValueError("a random training transform needs an explicit generator")
        _, H, W, _ = frames.shape
        if self.train and self.random_crop_scale is not None:
            box = random_resized_crop_box(H, W, self.random_crop_scale, self.random_crop_ratio, generator)
        else:
            box = center_square_box(H, W)
        video = crop_resize(frames, box, self.size)  # (T, 3, S, S) uint8
        mirrored = False
        if self.train and self.hflip_p > 0:
            if float(torch.rand((), generator=generator)) < self.hflip_p:
                video, mirrored = hflip(video), True  # (T, 3, S, S)
                caption = None if caption is None else swap_left_right(caption)
        return video, caption, mirrored  # (T, 3, S, S) uint8

    def draw_reverse(self, caption: str | None, generator: torch.Generator | None) -> bool:
        """Whether this training clip is to be played backwards: one draw when ``reverse_p`` > 0 (after
        the crop and the flip, so turning it on leaves their draws alone), False for a caption that
        names an action with no reverse (:func:`vidmask.data.reversal.reversible`)."""
        if not (self.train and self.reverse_p > 0):
            return False
        if generator is None:
            raise ValueError("a random training transform needs an explicit generator")
        from vidmask.data.reversal import reversible

        hit = float(torch.rand((), generator=generator)) < self.reverse_p
        return hit and (caption is None or reversible(caption))

    def __call__(
        self, frames: Tensor, caption: str | None = None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, str | None]:
        """frames: uint8[T,H,W,3] -> (float[T,3,S,S] normalised, caption): :meth:`pixels`, then
        :func:`normalize_video` on the host."""
        video, caption = self.pixels(frames, caption, generator)  # (T, 3, S, S) uint8
        return normalize_video(video, self.mean, self.std), caption  # (T, 3, S, S)
