"""Tasks: a module that takes a batch and returns (losses, report), registered with its files,
its evaluation and its result table (`vidmask.tasks.base`). Importing this package registers
pretrain, retrieval, qa and caption."""

from vidmask.tasks.base import EvalOption, Job, TaskInfo, list_tasks, register_task, task_info
from vidmask.tasks.pretrain import PretrainTask  # registers pretrain, retrieval
from vidmask.tasks.qa import QATask  # registers qa
from vidmask.tasks.caption import CaptionTask  # registers caption

__all__ = ["CaptionTask", "EvalOption", "Job", "PretrainTask", "QATask", "TaskInfo", "list_tasks", "register_task", "task_info"]
