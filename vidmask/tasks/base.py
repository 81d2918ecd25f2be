"""The task registry: what each job trains, on which files, and how it is evaluated.

A task module (``nn.Module``) takes a batch dict and returns ``(losses,
report)``: named ``*_loss`` terms the trainer sums, and values to log. A
registered task binds that module to the rest of a job through its build
function: its default annotation files, its head, its evaluation and its
result table, all in a :class:`Job`. The runner (`vidmask.train.run`) and the
commands know tasks only through this registry::

    @register_task("qa", help="open-ended video QA", files=("train_qa.json", "test_qa.json"))
    def build_qa(cfg, model, device, evaluating=False) -> Job: ...

``evaluating``: only the evaluation is wanted (the training annotations are
not read, the weights are loaded afterwards).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from torch import nn


def _same(batch: dict) -> dict:
    return batch


@dataclass
class Job:
    """A task as the runner sees it."""

    task: nn.Module  # forward(batch, generator) -> (named *_loss terms, report)
    model: nn.Module  # the dual encoder inside it (what fine-tuning starts from)
    items: list  # training VideoText items ([] when only evaluating)
    evaluate: Callable[[], dict]  # evaluation on the test split
    table: Callable[[dict], str]  # the evaluation as a table for people
    short: Callable[[dict], dict]  # a few numbers for metrics.csv during training
    prepare: Callable[[dict], dict] = _same  # adds task fields (e.g. answer ids) to a batch
    result_file: str = "eval_retrieval.json"  # where the final evaluation is written in the run folder
    masked: bool = True  # whether training drops tokens by cfg.mask (QA and captioning see them all)


@dataclass(frozen=True)
class EvalOption:
    """A command-line option of `vidmask eval <task>` that sets a config key of the evaluation."""

    flag: str  # e.g. "--beam"
    key: str  # the dotted config key it sets, e.g. "finetune.beam"
    help: str
    type: type = int  # int | float | str; bool makes a switch that turns the key on


@dataclass(frozen=True)
class TaskInfo:
    name: str
    help: str  # one line, for `vidmask finetune --help` and `vidmask eval --help`
    files: tuple[str, str]  # (train, test) annotation files in a corpus folder
    build: Callable[..., Job] = field(repr=False)
    finetune: bool = True  # offered by `vidmask finetune` and `vidmask eval` (pretraining is not)
    eval_help: str = ""  # what `vidmask eval <task>` reports, when it differs from `help`
    eval_options: tuple[EvalOption, ...] = ()  # the task's own `vidmask eval` options
    eval_as: str = ""  # the task whose evaluation a run of this one takes (pretraining: retrieval)


_REGISTRY: dict[str, TaskInfo] = {}


def register_task(name: str, *, help: str, files: tuple[str, str], finetune: bool = True, eval_help: str = "",
                  eval_options: tuple[EvalOption, ...] = (), eval_as: str = ""):
    """Decorator on a task's build function ``(cfg, model, device, evaluating=False) -> Job``."""

    def deco(build):
        if name in _REGISTRY:
            raise ValueError(f"task {name!r} registered twice")
        _REGISTRY[name] = TaskInfo(name, help, tuple(files), build, finetune, eval_help or help,
                                   tuple(eval_options), eval_as)
        return build

    return deco


def list_tasks(finetune: bool | None = None) -> list[str]:
    """Registered task names (only those `vidmask finetune` offers, with ``finetune=True``)."""
    return [k for k, v in _REGISTRY.items() if finetune is None or v.finetune == finetune]


def task_info(name: str) -> TaskInfo:
    if name not in _REGISTRY:
        raise KeyError(f"unknown task {name!r}; known: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]
