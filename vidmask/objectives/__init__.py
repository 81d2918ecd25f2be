"""Pretraining objectives: a registry of named losses (see `vidmask.objectives.base`).

Importing this package registers every objective, in the order below: the
order they are built, computed and summed.
"""

from vidmask.objectives.base import (
    Objective,
    ObjectiveConfig,
    ObjectiveEnv,
    StepContext,
    build_objective,
    list_objectives,
    objective_class,
    register_objective,
)
from vidmask.objectives.vtc import gather_with_grad, vtc_loss  # registers vtc
from vidmask.objectives import vtm as _vtm  # noqa: F401  (vtm)
from vidmask.objectives import mlm as _mlm  # noqa: F401  (mlm)
from vidmask.objectives import align as _align  # noqa: F401  (align)
from vidmask.objectives import relevance as _relevance  # noqa: F401  (relevance)
from vidmask.objectives import stm_decoder as _stm_decoder  # noqa: F401  (stm: STM's official decoders)
from vidmask.objectives import stm_guided as _stm_guided  # noqa: F401  (stm-guided: vidmask's variant)
from vidmask.objectives import recon as _recon  # noqa: F401  (recon)
from vidmask.objectives import reverse as _reverse  # noqa: F401  (reverse)
from vidmask.objectives import arrow as _arrow  # noqa: F401  (arrow)
from vidmask.objectives import swap as _swap  # noqa: F401  (swap)
from vidmask.objectives import clauses as _clauses  # noqa: F401  (clauses)

__all__ = [
    "Objective",
    "ObjectiveConfig",
    "ObjectiveEnv",
    "StepContext",
    "build_objective",
    "gather_with_grad",
    "list_objectives",
    "objective_class",
    "register_objective",
    "vtc_loss",
]
