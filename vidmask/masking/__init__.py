"""Masking strategies under one contract (see `vidmask.masking.base`)."""

from vidmask.masking.base import MaskOut, Masker, build_masker, gather_tokens, keep_to_ids, list_maskers, register
from vidmask.masking import random as _random  # noqa: F401  (registers random, tube, none)

__all__ = ["MaskOut", "Masker", "build_masker", "gather_tokens", "keep_to_ids", "list_maskers", "register"]
