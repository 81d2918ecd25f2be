"""`mascot-high` / `mascot-low`: MASCOT's attention-based tube masks (section 3.2).

MASCOT (Mask to reconstruct, "Cooperative Semantics Completion") takes the
CLS-to-patch attention of the vision transformer, averages it over a random
temporal interval ``[start, end)`` of the clip, and masks ``k = floor(ratio*N)``
patches, the same spatial positions in every frame of the interval (a tube):

* ``mascot-high`` masks the k *highest*-attention patches (high-informed mask,
  the paper's ``r_H = 0.7``): the salient, text-related content is hidden;
* ``mascot-low`` masks the k *lowest*-attention patches (low-informed mask,
  ``r_L = 0.5``): the background is hidden.

Frames outside the interval are not masked at all, so a clip keeps
``T*N - length*floor(ratio*N)`` tokens: less than ``ratio`` of the clip is
masked whenever the interval is shorter than the clip.

Interval: ``interval=None`` draws the length uniformly from ``1..T`` **once per
batch** (then a start per clip uniformly from ``0..T-length``), so every clip
keeps the same count and drop mode works; an int fixes the length. It is
returned as ``extra["interval"]``, long[B, 2] of (start, end), end exclusive.
Ties in the averaged attention go to the lowest index.

MASCOT itself applies the mask in *replace* mode: :func:`replace_patches`
fills masked patches with random pixels and every patch is still encoded.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from vidmask.masking.base import Masker, MaskOut, register, topk_keep


def sample_interval(
    B: int, T: int, length: int | None, generator: torch.Generator | None, device
) -> tuple[int, Tensor]:
    """One tube length for the batch and a start per clip: -> (length, start long[B])."""
    if length is None:
        length = int(torch.randint(1, T + 1, (1,), generator=generator, device=device))
    elif not 1 <= length <= T:
        raise ValueError(f"mascot: interval length must be in [1, T={T}], got {length}")
    start = torch.randint(0, T - length + 1, (B,), generator=generator, device=device)  # (B,)
    return length, start


def mascot_keep(attn: Tensor, ratio: float, high: bool, length: int, start: Tensor) -> tuple[Tensor, Tensor]:
    """Tube mask over [start, start+length) of the top (high) / bottom k = floor(ratio*N) averaged attention.

    attn: float[B,T,N]; start: long[B]. Returns (keep bool[B,T,N], averaged attention float[B,N]).
    """
    B, T, N = attn.shape
    k = math.floor(ratio * N + 1e-9)
    frames = torch.arange(T, device=attn.device)  # (T,)
    inside = (frames >= start.unsqueeze(1)) & (frames < (start + length).unsqueeze(1))  # (B, T)
    mean_attn = (attn.float() * inside.unsqueeze(-1)).sum(1) / length  # (B, N)
    masked = topk_keep(mean_attn if high else -mean_attn, k)  # (B, N), True = masked position
    keep = ~(inside.unsqueeze(-1) & masked.unsqueeze(1))  # (B, T, N)
    return keep, mean_attn


def replace_patches(
    patches: Tensor,
    keep: Tensor,
    generator: torch.Generator | None = None,
    low: float = 0.0,
    high: float = 1.0,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> Tensor:
    """MASCOT's erasure: masked patches get uniformly random pixel values in [low, high].

    Two shape conventions:

    * patches ``[B,T,N,D]`` (e.g. ``VideoViT.patchify``'s ``p*p*3`` values per patch);
    * pixels ``[B,T,3,H,W]``: the patch size is ``sqrt(H*W/N)`` for the N of
      ``keep``, patches in row-major order over an ``(H/p) x (W/p)`` grid.

    keep: bool[B,T,N], True = left as is. Returns a new tensor of the input's
    shape and dtype; the noise is drawn for the whole input from ``generator``.
    ``mean``/``std`` (pixels only): the input is normalised per channel, so the
    random pixels are normalised the same way, ``(noise - mean) / std``.
    """
    B, T, N = keep.shape
    noise = torch.rand(patches.shape, generator=generator, device=patches.device, dtype=torch.float32)
    noise = low + (high - low) * noise
    if mean is not None or std is not None:
        if patches.dim() != 5:
            raise ValueError("replace_patches: mean/std apply to pixels [B,T,3,H,W] only")
        m = torch.tensor(mean if mean is not None else (0.0,) * 3, device=patches.device).view(1, 1, -1, 1, 1)
        s = torch.tensor(std if std is not None else (1.0,) * 3, device=patches.device).view(1, 1, -1, 1, 1)
        noise = (noise - m) / s  # (B, T, 3, H, W)
    noise = noise.to(patches.dtype)
    if patches.dim() == 4:
        if patches.shape[:3] != (B, T, N):
            raise ValueError(f"replace_patches: patches {tuple(patches.shape)} do not match keep {tuple(keep.shape)}")
        return torch.where(keep.unsqueeze(-1), patches, noise)
    if patches.dim() == 5:
        H, W = patches.shape[-2:]
        p = math.isqrt(H * W // N) if N else 0
        if patches.shape[:2] != (B, T) or p == 0 or p * p * N != H * W or H % p or W % p:
            raise ValueError(f"replace_patches: pixels {tuple(patches.shape)} do not split into N={N} square patches")
        gh, gw = H // p, W // p
        grid = keep.view(B, T, 1, gh, 1, gw, 1)  # (B, T, 1, gh, 1, gw, 1)
        pixel_keep = grid.expand(B, T, 1, gh, p, gw, p).reshape(B, T, 1, H, W)  # (B, T, 1, H, W)
        return torch.where(pixel_keep, patches, noise)
    raise ValueError(f"replace_patches: expected [B,T,N,D] patches or [B,T,3,H,W] pixels, got {tuple(patches.shape)}")


class _MascotMasker(Masker):
    needs_attn = True
    stochastic = True
    modes = ("replace", "drop")
    high = True

    def __init__(self, ratio: float = 0.7, interval: int | None = None):
        super().__init__(ratio)
        if interval is not None and int(interval) < 1:
            raise ValueError(f"{self.name}: interval must be None or a length >= 1, got {interval}")
        self.interval = None if interval is None else int(interval)

    def kept_per_frame(self, num_tokens: int) -> None:
        """None: frames inside the tube's interval keep N - floor(ratio * N), the others all N."""
        return None

    def __call__(self, tokens, *, attn=None, generator=None) -> MaskOut:
        self._check(tokens, attn)
        B, T, N, _ = tokens.shape
        with torch.autocast(tokens.device.type, enabled=False):
            attn = attn.to(tokens.device).float()
            length, start = sample_interval(B, T, self.interval, generator, tokens.device)
            keep, mean_attn = mascot_keep(attn, self.ratio, self.high, length, start)
        interval = torch.stack([start, start + length], dim=1)  # (B, 2)
        return MaskOut(
            keep=keep,
            ids_keep=self.kept_ids(keep),  # no count per frame: the clips' counts are read
            saliency=mean_attn.unsqueeze(1).expand(B, T, N),
            extra={"interval": interval, "length": length, "masked_per_frame": math.floor(self.ratio * N + 1e-9)},
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(ratio={self.ratio}, interval={self.interval})"


@register("mascot-high")
class MascotHighMasker(_MascotMasker):
    """MASCOT high-informed tube mask: the most-attended patches are hidden over the interval."""

    high = True


@register("mascot-low")
class MascotLowMasker(_MascotMasker):
    """MASCOT low-informed tube mask: the least-attended patches are hidden over the interval."""

    high = False
