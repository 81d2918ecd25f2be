"""Masking strategies under one contract (see `vidmask.masking.base`)."""

from vidmask.masking.base import (
    MaskOut,
    Masker,
    build_masker,
    gather_tokens,
    keep_to_ids,
    list_maskers,
    masker_class,
    masker_params,
    register,
    strategy_ratio,
)
from vidmask.masking import random as _random  # noqa: F401  (registers random, tube, none)
from vidmask.masking import umt as _umt  # noqa: F401  (registers umt)
from vidmask.masking import mascot as _mascot  # noqa: F401  (registers mascot-high, mascot-low)
from vidmask.masking import stm as _stm  # noqa: F401  (registers stm: STM's official mask module)
from vidmask.masking import stm_guided as _stm_guided  # noqa: F401  (registers stm-guided: vidmask's variant)
from vidmask.masking import clusterstm as _clusterstm  # noqa: F401  (clusterstm, cluster-random, density-topk)
from vidmask.masking import motion as _motion  # noqa: F401  (registers motion-topk)
from vidmask.masking.inputs import masker_inputs, masker_token_dim
from vidmask.masking.mascot import replace_patches

__all__ = [
    "MaskOut",
    "Masker",
    "build_masker",
    "gather_tokens",
    "keep_to_ids",
    "list_maskers",
    "masker_class",
    "masker_inputs",
    "masker_params",
    "masker_token_dim",
    "register",
    "replace_patches",
    "strategy_ratio",
]
