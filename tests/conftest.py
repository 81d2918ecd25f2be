"""Shared fixtures: a tiny hand-made video-text set (independent of the corpus generator)."""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
import torch

COLOURS = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 80, 230), "yellow": (240, 220, 40)}
MOVES = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}


def write_clip(path: Path, frames: np.ndarray, fps: int = 8) -> None:
    """uint8 [T,H,W,3] -> H.264 mp4."""
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        s.options = {"crf": "18", "preset": "ultrafast"}
        for f in frames:
            for pkt in s.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                out.mux(pkt)
        for pkt in s.encode():
            out.mux(pkt)


def make_tiny_set(root: Path, size: int = 32, frames: int = 8) -> Path:
    """16 clips (4 colours x 4 moves) of a square on grey; train.json and test.json."""
    (root / "videos").mkdir(parents=True, exist_ok=True)
    entries = []
    for ci, (cname, rgb) in enumerate(COLOURS.items()):
        for mi, (mname, (dx, dy)) in enumerate(MOVES.items()):
            clip = np.full((frames, size, size, 3), 90, np.uint8)
            s = size // 4
            for t in range(frames):
                cx = size // 2 - s // 2 + int(dx * (t - frames / 2) * size / (2 * frames))
                cy = size // 2 - s // 2 + int(dy * (t - frames / 2) * size / (2 * frames))
                clip[t, max(cy, 0) : cy + s, max(cx, 0) : cx + s] = rgb
            name = f"videos/{cname}_{mname}.mp4"
            write_clip(root / name, clip)
            entries.append({"video": name, "caption": [f"a {cname} square moves {mname}", f"the {cname} box goes {mname}"]})
    (root / "train.json").write_text(json.dumps(entries))
    (root / "test.json").write_text(json.dumps([{"video": e["video"], "caption": e["caption"][0]} for e in entries]))
    # captioning (MSVD style) and QA (MSRVTT-QA style) files of the same clips
    (root / "train_caption.json").write_text(json.dumps(entries))
    (root / "test_caption.json").write_text(json.dumps(entries))
    qa = []
    for e in entries:
        colour, move = e["video"].split("/")[1][:-4].split("_")
        qa.append({"video": e["video"], "question": "what colour is the square", "answer": colour, "type": "colour"})
        qa.append({"video": e["video"], "question": "which way does the square move", "answer": move, "type": "direction"})
    for i, q in enumerate(qa):
        q["question_id"] = i
    (root / "train_qa.json").write_text(json.dumps(qa))
    (root / "test_qa.json").write_text(json.dumps(qa))
    (root / "answer_list.json").write_text(json.dumps(sorted(set(COLOURS) | set(MOVES))))
    return root


@pytest.fixture(scope="session")
def tiny_set(tmp_path_factory) -> Path:
    return make_tiny_set(tmp_path_factory.mktemp("tiny_set"))


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    """A randomly initialised CLIPModel (patch 16, 64 px) with the MiniLM tokenizer saved beside it."""
    from transformers import AutoTokenizer, CLIPConfig, CLIPModel

    from vidmask.models.text import packaged_minilm_dir

    tok = AutoTokenizer.from_pretrained(packaged_minilm_dir())
    cfg = CLIPConfig(
        text_config=dict(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=40, eos_token_id=tok.sep_token_id,
                         bos_token_id=tok.cls_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=64, patch_size=16),
        projection_dim=24,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_clip")
    CLIPModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
