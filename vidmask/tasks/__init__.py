"""Tasks compose a model, a masker and losses; `forward` returns (losses, report)."""

from vidmask.tasks.pretrain import PretrainTask, masker_input

__all__ = ["PretrainTask", "masker_input"]
