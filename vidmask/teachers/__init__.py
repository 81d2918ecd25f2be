"""Frozen teachers: per-token features, CLS-to-patch attention, a pooler, a text tower.

Public API::

    build_teacher(name, **kw) -> Teacher          # exact names: list_teachers()
    Teacher(video [B,T,3,H,W], grid=None) -> TeacherOut(tokens [B,T,N,D], attn [B,T,N], video [B,E])
    Teacher(video, return_layers=k, patch_embeds=True)   # + layers k x [B,T,N,D], patch_embeds [B,T,N,W]
    Teacher.pool(tokens [M,W,D]) -> [M,E]; Teacher.encode_text(captions) -> [B,E]
    resample_grid(tokens [B,T,n,D], N) -> [B,T,N,D]

Training the lit-effnet heads is the trainer's job: vidmask.train.teacher.train_lit_teacher.
"""

from vidmask.teachers.base import (
    FrameFeatures,
    Teacher,
    TeacherOut,
    build_teacher,
    list_teachers,
    register_teacher,
    resample_attn,
    resample_grid,
)
from vidmask.teachers.hf_clip import HfClipTeacher  # registers hf-clip
from vidmask.teachers.lit_effnet import LitEffnetConfig, LitEffnetTeacher  # registers lit-effnet

__all__ = [
    "FrameFeatures",
    "HfClipTeacher",
    "LitEffnetConfig",
    "LitEffnetTeacher",
    "Teacher",
    "TeacherOut",
    "build_teacher",
    "list_teachers",
    "register_teacher",
    "resample_attn",
    "resample_grid",
]
