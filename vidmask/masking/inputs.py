"""What a strategy ranks or clusters: one function prepares a masker's inputs, for training and pictures.

With a teacher: its per-token features (L2-normalised) and its CLS-to-patch
attention. Without one: per-patch normalised pixels and the colour-contrast
stand-in for attention (`vidmask.masking.saliency`). The task and
`vidmask masks` both call :func:`masker_inputs`, so a strategy sees the same
thing in a picture as in training.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from vidmask.masking.saliency import colour_saliency, pixel_tokens


def masker_inputs(patches: Tensor | None = None, teacher_out=None) -> tuple[Tensor, Tensor]:
    """(tokens float[B,T,N,C], attn float[B,T,N]) in float32.

    patches: pixel patches float[B,T,N,p*p*3] (``patchify(video)``), used when
    ``teacher_out`` (a TeacherOut with ``tokens`` [B,T,N,D] and ``attn`` [B,T,N]) is None.
    """
    if teacher_out is not None:
        tokens = F.normalize(teacher_out.tokens.float(), dim=-1)  # (B, T, N, D)
        return tokens, teacher_out.attn.float()  # (B, T, N, D), (B, T, N)
    if patches is None:
        raise ValueError("masker_inputs needs pixel patches or a teacher's output")
    patches = patches.float()  # (B, T, N, P)
    return pixel_tokens(patches), colour_saliency(patches)  # (B, T, N, P), (B, T, N)


def masker_token_dim(patch: int, teacher=None) -> int:
    """Channels C of the tokens a masker sees: the teacher's token width, or p*p*3 pixels."""
    return int(teacher.token_dim) if teacher is not None else patch * patch * 3
