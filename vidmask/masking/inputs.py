"""What a strategy ranks or clusters: one function prepares a masker's inputs, for training and pictures.

With a teacher: its per-token features (L2-normalised) and its CLS-to-patch
attention. Without one: per-patch normalised pixels and the colour-contrast
stand-in for attention (`vidmask.masking.saliency`). A strategy that reads
patch embeddings (``Masker.inputs = "patch_embeds"``: ``stm``) gets the
teacher's patch embeddings before its transformer (``TeacherOut.patch_embeds``,
as they are), or the raw pixel patches where the teacher gives none
(``lit-effnet``) or there is no teacher: a ViT's patch embedding is a linear
map of those pixels. The task and `vidmask masks` both call
:func:`masker_inputs`, so a strategy sees the same thing in a picture as in
training.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from vidmask.masking.saliency import colour_saliency, pixel_tokens


def masker_inputs(patches: Tensor | None = None, teacher_out=None, inputs: str = "features") -> tuple[Tensor, Tensor]:
    """(tokens float[B,T,N,C], attn float[B,T,N]) in float32.

    patches: pixel patches float[B,T,N,P] (``patchify(video)``), used when ``teacher_out`` (a
    TeacherOut with ``tokens`` [B,T,N,D], ``attn`` [B,T,N] and maybe ``patch_embeds`` [B,T,N,W]) is
    None, or when ``inputs="patch_embeds"`` and the teacher gave none. ``inputs``: the strategy's
    :attr:`~vidmask.masking.base.Masker.inputs`.
    """
    if inputs not in ("features", "patch_embeds"):
        raise ValueError(f"inputs must be 'features' or 'patch_embeds', got {inputs!r}")
    embeds = None if teacher_out is None else getattr(teacher_out, "patch_embeds", None)
    if inputs == "patch_embeds" and embeds is None:
        if patches is None:
            raise ValueError("masker_inputs: a strategy that reads patch embeddings needs the pixel patches "
                             "when the teacher gives no patch embeddings")
        patches = patches.float()  # (B, T, N, P)
        attn = colour_saliency(patches) if teacher_out is None else teacher_out.attn.float()
        return patches, attn  # (B, T, N, P), (B, T, N)
    if teacher_out is not None:
        tokens = embeds.float() if inputs == "patch_embeds" else F.normalize(teacher_out.tokens.float(), dim=-1)
        return tokens, teacher_out.attn.float()  # (B, T, N, C), (B, T, N)
    if patches is None:
        raise ValueError("masker_inputs needs pixel patches or a teacher's output")
    patches = patches.float()  # (B, T, N, P)
    return pixel_tokens(patches), colour_saliency(patches)  # (B, T, N, P), (B, T, N)


def masker_token_dim(patch: int, teacher=None, strategy: str | None = None, tubelet: int = 1) -> int:
    """Channels C of the tokens strategy ``strategy`` sees: the teacher's token width, or
    ``tubelet * patch * patch * 3`` pixels; for a strategy that reads patch embeddings, the teacher's
    patch-embedding width (``Teacher.patch_dim``) or, where the teacher has none, the pixels'."""
    from vidmask.masking.base import list_maskers, masker_class

    pixels = tubelet * patch * patch * 3
    # an unknown name is left to build_masker, which names the known ones
    if strategy in list_maskers() and masker_class(strategy).inputs == "patch_embeds":
        return int(getattr(teacher, "patch_dim", 0) or 0) or pixels
    return int(teacher.token_dim) if teacher is not None else pixels
