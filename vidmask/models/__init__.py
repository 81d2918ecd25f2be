"""Models: the video ViT, the text tower, the dual encoder, shared blocks."""

from vidmask.models.blocks import Attention, Block, Mlp
from vidmask.models.text import TextEncoder
from vidmask.models.video_text import VideoTextModel
from vidmask.models.video_vit import VideoViT

__all__ = ["Attention", "Block", "Mlp", "TextEncoder", "VideoTextModel", "VideoViT"]
