"""The optimiser's parameter groups, shared by every trainer (pretraining, fine-tuning, the teacher heads)."""

from __future__ import annotations

import torch

# parameter names (substrings) that are never decayed besides every 0-d / 1-d tensor
NO_DECAY = ("pos_", "logit_scale")


def param_groups(module: torch.nn.Module, weight_decay: float, no_decay: tuple[str, ...] = NO_DECAY,
                 lr_scales: dict[str, float] | None = None) -> list[dict]:
    """AdamW groups: decay on matrices; none on biases, norms, and names containing a `no_decay` tag
    (position tables and the temperature by default). Frozen parameters are left out.

    ``lr_scales``: parameter-name prefix -> learning-rate multiplier (a task's new modules learning
    faster than the pretrained encoders, as MASCOT's); each group carries ``lr_scale``, which the
    training loop multiplies into the scheduled rate. Without it: two groups at scale 1.
    """
    lr_scales = lr_scales or {}
    groups: dict[tuple[bool, float], list] = {}
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        decay = not (p.dim() < 2 or any(tag in name for tag in no_decay))
        scale = next((v for k, v in lr_scales.items() if name.startswith(k)), 1.0)
        groups.setdefault((decay, scale), []).append(p)
    if not lr_scales:  # the two groups every run had before scales (an old optimizer state still loads)
        groups.setdefault((True, 1.0), [])
        groups.setdefault((False, 1.0), [])
    order = sorted(groups, key=lambda k: (k[1], not k[0]))  # scale 1 first, decay before no decay
    return [{"params": groups[k], "weight_decay": weight_decay if k[0] else 0.0, "lr_scale": k[1]} for k in order]
