"""Figure II of the ClusterSTM supplement, for any strategy and any clip.

Row 1: the frames. Row 2: the clusters coloured (clustering strategies) or
the saliency the strategy ranked by (attention strategies). Row 3: the frames
with masked tokens dimmed and kept tokens marked "+".
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vidmask.masking.base import MaskOut


def _token_grid(values: np.ndarray, grid: int, patch: int) -> np.ndarray:
    """[N] per-token values -> [grid*patch, grid*patch] image (nearest upsampling)."""
    return np.kron(values.reshape(grid, grid), np.ones((patch, patch)))


def draw_masks(frames: np.ndarray, out: MaskOut, patch: int, title: str, path: str | Path) -> Path:
    """frames uint8[T,S,S,3] (the clip as the model saw it), out for one clip (B=1) -> PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    T, S = frames.shape[0], frames.shape[1]
    grid = S // patch
    keep = out.keep[0].cpu().numpy()  # (T, N)
    second = None
    if out.clusters is not None:
        second = ("clusters", out.clusters[0].cpu().numpy())  # (T, N)
    elif out.saliency is not None:
        second = ("saliency", out.saliency[0].float().cpu().numpy())  # (T, N)
    rows = 3 if second is not None else 2
    fig, axes = plt.subplots(rows, T, figsize=(1.6 * T, 1.7 * rows), squeeze=False)
    cmap = plt.get_cmap("tab20")
    for t in range(T):
        axes[0, t].imshow(frames[t])
        axes[0, t].set_title(f"frame {t}", fontsize=7)
        if second is not None:
            kind, vals = second
            if kind == "clusters":
                ids = vals[t].astype(int)
                colours = cmap(ids % 20)[:, :3]  # (N, 3)
                img = np.stack([_token_grid(colours[:, c], grid, patch) for c in range(3)], -1)
                axes[1, t].imshow(0.55 * img + 0.45 * frames[t] / 255.0)
            else:
                axes[1, t].imshow(frames[t])
                axes[1, t].imshow(_token_grid(vals[t], grid, patch), cmap="inferno", alpha=0.6)
        dim = frames[t].astype(np.float32) / 255.0
        shade = _token_grid(keep[t].astype(np.float32), grid, patch)[..., None]  # (S, S, 1)
        axes[-1, t].imshow(dim * (0.25 + 0.75 * shade))
        ys, xs = np.nonzero(keep[t].reshape(grid, grid))
        axes[-1, t].scatter(xs * patch + patch / 2 - 0.5, ys * patch + patch / 2 - 0.5, marker="+", s=28,
                            c="#00ff66", linewidths=1.2)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_ylabel("frames", fontsize=8)
    if second is not None:
        axes[1, 0].set_ylabel(second[0], fontsize=8)
    axes[-1, 0].set_ylabel(f"kept {int(keep.sum())}/{keep.size}", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def frames_for_model(video: torch.Tensor) -> np.ndarray:
    """Normalised float[T,3,S,S] (CLIP mean/std) back to uint8[T,S,S,3] for drawing."""
    from vidmask.data import CLIP_MEAN, CLIP_STD

    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    x = (video.float() * std + mean).clamp(0, 1)  # (T, 3, S, S)
    return (x.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
