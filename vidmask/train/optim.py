"""The optimiser's parameter groups, shared by every trainer (pretraining, fine-tuning, the teacher heads)."""

from __future__ import annotations

import torch

# parameter names (substrings) that are never decayed besides every 0-d / 1-d tensor
NO_DECAY = ("pos_", "logit_scale")


def param_groups(module: torch.nn.Module, weight_decay: float, no_decay: tuple[str, ...] = NO_DECAY) -> list[dict]:
    """Two AdamW groups: decay on matrices; none on biases, norms, and names containing a `no_decay` tag
    (position tables and the temperature by default). Frozen parameters are left out."""
    decay, rest = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (rest if p.dim() < 2 or any(tag in name for tag in no_decay) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
