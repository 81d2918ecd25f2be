"""Pretraining objectives; each returns a dict of named `*_loss` terms."""

from vidmask.objectives.vtc import gather_with_grad, vtc_loss

__all__ = ["gather_with_grad", "vtc_loss"]
