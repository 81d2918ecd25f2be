"""MASCOT's interaction masks (eq. 3 and 4): who may attend to whom once some tokens are masked.

Both return attention masks in scaled_dot_product_attention's convention,
``allowed[b, i, j]`` True = query i may attend to key j (the paper's U = 1).
Masked tokens are erased in *replace* mode (random pixels), so they are still
encoded; the masks stop their noise from leaking into what is visible:

* spatial (eq. 3, the co-encoder, every layer): no token attends to a masked
  token other than itself. Masked tokens read the visible ones (and the CLS),
  visible tokens read only visible ones: completion flows one way.
* temporal (eq. 4, the reconstructor over frame tokens): a visible frame does
  not attend to masked frames; masked frames attend to all frames, masked ones
  included ("mutual attention among masked tokens").
"""

from __future__ import annotations

import torch
from torch import Tensor


def spatial_interaction(keep: Tensor, prefix: int = 1) -> Tensor:
    """Eq. 3. keep bool[B,N] (True = visible patch) -> allowed bool[B,M,M], M = prefix + N.

    ``prefix`` always-visible tokens (the CLS) come first, as in the encoder's input.
    """
    B, N = keep.shape
    M = prefix + N
    visible = torch.cat([keep.new_ones(B, prefix), keep.bool()], 1)  # (B, M)
    eye = torch.eye(M, dtype=torch.bool, device=keep.device)  # (M, M)
    return visible[:, None, :] | eye  # (B, M, M): key j visible, or j = i


def temporal_interaction(frame_masked: Tensor) -> Tensor:
    """Eq. 4. frame_masked bool[B,T] (True = the frame has masked patches) -> allowed bool[B,T,T]:
    U_t(i, j) = 0 exactly when frame i is visible and frame j masked."""
    m = frame_masked.bool()  # (B, T)
    return m[:, :, None] | ~m[:, None, :]  # (B, T, T)
