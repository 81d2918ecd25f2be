"""The trainer: distributed set-up, the step loop, checkpoints, logs, evaluation runs.

It sits on top of the library (`vidmask.models`, `vidmask.masking`, ...);
the library never imports it.
"""
