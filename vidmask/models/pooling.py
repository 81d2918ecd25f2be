"""Order-aware pooling of the video tokens: the means of consecutive time segments (``model.pool=segments``).

The joint-space video feature is a Linear on the mean kept token. A mean is blind
to the order of the frames: whatever the encoder did not fold into each token,
"present in the first frames, gone in the last" and "absent first, present last"
pool to the same vector. On the motion-shapes corpus that is where the motion
control's twins fail (``runs/lb-motion/motion-s1`` on the training split: enters
against leaves 61 % of 90 captions; up/down, left/right and grow/shrink 90-98 %): an
object that enters from the top and one that leaves toward the bottom move the
same way in every frame; only *when* the object is in view differs.

``model.pool=segments`` adds to the mean's projection a second Linear (zero at
initialisation, so a new model starts as the mean-pooled one) on how each of
``model.pool_segments`` consecutive segments of the tokens differs from their
mean: TSN's segments (Wang et al., ECCV 2016), concatenated in order as in TRN
(Zhou et al., ECCV 2018) instead of averaged. The kept tokens arrive in
ascending flat order (``keep_to_ids``; time is the outer axis), so consecutive
runs of them are consecutive stretches of the clip: with the same count kept in
every frame (``motion-topk``, ``model.eval_tokens=motion``, every token) a
segment is exactly ``T / segments`` frames; with counts that vary per frame
(random masking) it is the same share of the kept tokens, in time order.
"""

from __future__ import annotations

import torch
from torch import Tensor


def segment_means(tokens: Tensor, segments: int) -> Tensor:
    """tokens float[B,K,C] in time order -> the means of ``segments`` consecutive runs of them, float[B,S,C].

    Runs are as equal as K allows (``torch.tensor_split``: the first K mod S runs one token longer)."""
    K = tokens.shape[1]
    if K < segments:
        raise ValueError(f"model.pool=segments: {K} tokens cannot fill {segments} segments; "
                         f"lower model.pool_segments or keep more tokens")
    return torch.stack([run.mean(1) for run in torch.tensor_split(tokens, segments, dim=1)], 1)  # (B, S, C)


def segment_offsets(tokens: Tensor, segments: int) -> Tensor:
    """tokens float[B,K,C] -> each segment's mean minus the mean of all, flattened in order: float[B,S*C]."""
    means = segment_means(tokens, segments)  # (B, S, C)
    return (means - tokens.mean(1, keepdim=True)).flatten(1)  # (B, S*C)
