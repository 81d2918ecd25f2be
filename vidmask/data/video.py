"""Reading T frames of a video (or an image) as ``uint8[T,H,W,3]`` RGB.

Frame choice follows UMT/VINDLU's ``get_frame_indices``: the video is cut
into T uniform segments and one frame is taken from each, a random one for
training (``rand``) and the middle one for evaluation (``middle``). Two
deliberate differences from UMT:

* UMT's ``rand`` draws from ``range(start, end - 1)``, so the last frame of a
  segment is never picked; here every frame of the segment can be.
* A video with fewer than T frames: UMT pads with copies of the last frame,
  which over-weights the end. Here the n frames are spread evenly over the T
  slots (n=3, T=8 -> 0,0,0,1,1,2,2,2), in both modes, so time still runs
  forward at a uniform rate.

Decoding keeps only the frames it needs and stops after the last one, so a
long video never sits in memory whole. Short videos are decoded in order
from the start. A long one (``SEEK_MIN_FRAMES`` or more) whose packets give
a trustworthy frame index seeks to the key frame before each sampled frame
instead, as decord does, and decodes only from there: the same frames, a
fraction of the decoding (``bench/decode_seek.py``). A container that does
not store its frame count (mkv, webm) is counted from its packets, one
shown frame each, as decord counts; only a file whose packets cannot be
trusted (no timestamps) is counted by decoding it. Every failure raises
:class:`VideoError` naming the file; nothing is substituted. (A damaged
stretch of a long video that seeking jumps over is never decoded, so such a
file can still give its sampled frames; decoding it whole stops there, and
``vidmask anno check`` reports it when its middle frames cross it.)

A container's count can also be larger than its frames without any loss: a
variable-frame-rate AVI (OpenCV's ``tree.avi``: 444 in the header, 68
frames) counts time slots, and a slot that repeats the previous picture is
an empty chunk, which is no packet. Such a file is told from a truncated one
by its packets (:func:`packet_index`): when the file's own packet table
(the AVI ``idx1``) lists exactly the packets read, every packet has a
timestamp and the demuxer finds the file as long as its header says, the
packets are the whole video and their count is its frame count, for
sampling and for the checks (decoding must then give that many frames,
within ``FRAME_COUNT_SLACK``, as it must give the header's count). A truncated
file keeps the header's count and is refused: it has lost its table (kept at
the end of an AVI) or the table lists packets that are not there (an mp4 cut
after its ``moov``).

Frames are turned upright as the container's display matrix says (a phone
held upright records landscape pixels and a -90 degree rotation), as the
``ffmpeg`` command line does by default; decord and PyAV return the stored
pixels unrotated. Only quarter turns are applied; a mirrored matrix is not.
A stream whose frame size changes part-way (allowed in H.264 at a key
frame) is read at its first frame's size: frames of another size are resized
to it, with a warning naming the file.
"""

from __future__ import annotations

import io
import logging
from bisect import bisect_right
from pathlib import Path
from typing import Iterator, Literal, NamedTuple

import av
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

log = logging.getLogger(__name__)

SampleMode = Literal["rand", "middle"]
Generator = torch.Generator | np.random.Generator

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})

# A container's frame count (mp4 ``stts``) can exceed what the decoder yields
# by a frame or two (edit lists trim priming frames). A shortfall up to this
# share is tolerated: sampled indices past the end use the last decoded frame.
# Anything larger means a truncated or damaged file.
FRAME_COUNT_SLACK = 0.05

# What the reader makes of a file: bumped whenever a change makes some file
# decode to other pixels or frame numbers (2: display rotation applied,
# resolution changes resized), so per-frame caches keyed on it
# (vidmask.teachers.cache) are rebuilt rather than silently reused.
READER_VERSION = 2

# Seeking is tried for videos of at least this many frames, and used to jump
# over at least SEEK_MIN_SKIP frames: a seek restarts decoding at a key
# frame, so a short jump is cheaper decoded through.
SEEK_MIN_FRAMES = 256
SEEK_MIN_SKIP = 32


class VideoError(RuntimeError):
    """A video or image that cannot be read; the message names the file."""

    def __init__(self, path: str | Path, reason: str | None = None):
        if reason is None:
            # one argument: DataLoader re-raising a worker's error as
            # VideoError(message); keep the type, the message names the file
            self.path, self.reason = "", str(path)
            super().__init__(str(path))
            return
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):
        # the default reduce would call VideoError(message) and lose `reason`;
        # DataLoader workers and multiprocessing pickle exceptions
        return (type(self), (self.path, self.reason))


def sample_indices(n: int, T: int, mode: SampleMode, generator: Generator | None = None) -> list[int]:
    """T frame indices in [0, n), ascending: one per uniform segment.

    ``rand`` picks a uniformly random frame of each segment (training) and
    needs an explicit ``generator`` (torch or numpy): no global RNG, so a
    sample is reproducible from its seed. ``middle`` picks each segment's
    middle frame (evaluation). With n < T, frames repeat evenly (see module
    docstring).
    """
    if n < 1:
        raise ValueError(f"a video needs at least one frame, got n={n}")
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    if mode not in ("rand", "middle"):
        raise ValueError(f"unknown sampling mode {mode!r}; use 'rand' or 'middle'")
    if mode == "rand" and generator is None:
        raise ValueError("mode='rand' needs an explicit generator (no global RNG)")
    k = np.arange(T)  # (T,)
    if n < T:
        # segments are shorter than a frame: take the frame under each
        # segment's centre, (k + 1/2) * n / T, in exact integer arithmetic
        return ((2 * k + 1) * n // (2 * T)).tolist()
    start = k * n // T  # (T,) integer boundaries, as np.linspace(...).astype(int)
    end = (k + 1) * n // T  # (T,) exclusive; end > start because n >= T
    if mode == "middle":
        return ((start + end - 1) // 2).tolist()
    if isinstance(generator, torch.Generator):
        u = torch.rand(T, generator=generator, dtype=torch.float64).numpy()  # (T,)
    else:
        u = generator.random(T)  # (T,)
    offset = np.minimum((u * (end - start)).astype(np.int64), end - start - 1)  # (T,)
    return (start + offset).tolist()


class MemoryMedia(NamedTuple):
    """A media file's bytes held in memory (a member of a tar shard), read as a file on disk is.

    ``name`` (``SHARD.tar:KEY.mp4``) is what errors and warnings name; its suffix tells a
    video from an image. Every reader here that takes a path takes one of these too.
    """

    name: str
    data: bytes

    def __str__(self) -> str:
        return self.name


def _as_source(path) -> Path | MemoryMedia:
    return path if isinstance(path, MemoryMedia) else Path(path)


def _check_file(path: Path | MemoryMedia) -> None:
    if isinstance(path, MemoryMedia):
        if not path.data:
            raise VideoError(path, "empty member (0 bytes); rewrite the shard or leave it out")
        return
    if not path.exists():
        raise VideoError(path, "file not found (check the media root and the annotation's path)")
    if not path.is_file():
        raise VideoError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise VideoError(path, "empty file (0 bytes); re-download or remove it from the annotations")


def is_image_path(path: str | Path) -> bool:
    """True for still-image files, which are read as a 1-frame video."""
    return Path(str(path)).suffix.lower() in IMAGE_SUFFIXES


def load_image(path: str | Path) -> np.ndarray:
    """One still image as ``uint8[1,H,W,3]`` RGB (greyscale, palette, alpha converted)."""
    from PIL import Image, UnidentifiedImageError

    path = _as_source(path)
    _check_file(path)
    try:
        with Image.open(io.BytesIO(path.data) if isinstance(path, MemoryMedia) else path) as im:
            rgb = np.array(im.convert("RGB"))  # (H, W, 3), a writable copy
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise VideoError(path, f"corrupt or unreadable image ({e})") from e
    return rgb[None]  # (1, H, W, 3)


def video_stream(container):
    """The stream a video's frames come from: the first video stream that is not a cover
    picture (``attached_pic``, what yt-dlp's ``--embed-thumbnail`` adds); None if there is none."""
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    return None


def _open_video(path: Path):
    _check_file(path)
    try:
        container = av.open(io.BytesIO(path.data) if isinstance(path, MemoryMedia) else str(path))
    except av.error.FFmpegError as e:
        raise VideoError(path, f"not a readable video, corrupt or truncated ({e})") from e
    stream = video_stream(container)
    if stream is None:
        what = "only a cover picture" if container.streams.video else "no video stream"
        container.close()
        raise VideoError(path, f"{what} in the file")
    # One decoding thread: DataLoader workers are the parallelism. FFmpeg's
    # own threads oversubscribe the cores under several workers and, on short
    # clips, add wake-up latency (median 4 ms vs 0.9 ms for a 16-frame 128px
    # clip on the 2-core development machine).
    stream.thread_type = "NONE"
    stream.thread_count = 1
    return container


def count_frames(path: str | Path) -> int:
    """Frames in the video stream (:func:`video_stream`): the container's count when it has one
    (mp4, mov, avi) and its packets do not prove it a count of time slots
    (see the module docstring), otherwise (mkv, webm, such an avi) its
    packets, or, when those carry no usable timestamps, counted by decoding:
    the ``n`` that :func:`decode_frames` samples from."""
    path = _as_source(path)
    if is_image_path(path):
        load_image(path)
        return 1
    container = _open_video(path)
    try:
        n, _, _, container = _count(container, path, want_index=False)
        return n
    finally:
        container.close()


def _count(container, path: Path, want_index: bool):
    """(n, listed, index, container) for a freshly opened video.

    n: its frames (the container's count, else its packets, else counted by
    a decoding pass; the packets also where the container counts time slots,
    :func:`_may_count_slots`); listed: the count the container or its packets give
    (0 when decoding had to count: nothing to check the decode against);
    index: its :class:`PacketIndex` when ``want_index`` or the count came
    from the packets (None when untrustworthy); container: ready to decode
    from the start (reopened when reading the packets or counting used it).
    """
    stream = video_stream(container)
    declared = stream.frames
    index = None
    if want_index or declared <= 0 or _may_count_slots(stream):
        index = packet_index(container)
        container = _reopen(container, path)
    # a trusted index has the declared count, or proved the declared one a count of time slots
    listed = len(index.pts) if index is not None else max(declared, 0)
    if listed > 0:
        return listed, listed, index, container
    # no count anywhere: count by a first decoding pass that keeps no pixels,
    # then decode again for the chosen frames (reopening is simpler and safer
    # than seeking back in every format)
    try:
        n = _decode(container, path, None)[1]
    except VideoError:
        container.close()  # the caller's handle may be the one closed before this reopened copy
        raise
    return n, 0, None, _reopen(container, path)


def decode_through(path: str | Path) -> int:
    """Decode every frame of a video (keeping none) and return how many there are.

    Raises :class:`VideoError` where :func:`decode_all_frames` would (a
    damaged packet anywhere, fewer frames than the container lists) without
    holding the frames: the whole-file check of ``vidmask anno check --whole``.
    """
    if is_image_path(path):
        return len(load_image(path))
    container = _open_video(Path(path))
    try:
        listed, container = _listed_count(container, Path(path))
        n = _decode(container, Path(path), None)[1]
    finally:
        container.close()
    _check_count(Path(path), listed, n)
    return n


def _may_count_slots(stream) -> bool:
    """Whether the container's count may be of time slots rather than frames (a variable-frame-rate
    AVI): its own packet table, read when the file was opened, lists fewer packets than it counts.
    Free to ask; :func:`packet_index` then reads the packets to decide."""
    return 0 < len(stream.index_entries) < stream.frames


def _listed_count(container, path: Path) -> tuple[int, object]:
    """(the count a whole decode is checked against, the container ready to decode from the start).

    The container's count, or its packets' where they prove that count one of
    time slots (module docstring); 0 when it has none.
    """
    stream = video_stream(container)
    if not _may_count_slots(stream):
        return max(stream.frames, 0), container
    index = packet_index(container)
    return (len(index.pts) if index is not None else stream.frames), _reopen(container, path)


def _check_count(path: Path, declared: int, decoded: int) -> None:
    """A :class:`VideoError` when far fewer frames decode than the container lists (``FRAME_COUNT_SLACK``)."""
    if declared > 0 and decoded < declared * (1 - FRAME_COUNT_SLACK):
        raise VideoError(path, f"truncated or corrupt: the container lists {declared} frames but only {decoded} decode")


def _upright_rgb(frame: av.VideoFrame) -> np.ndarray:
    """A decoded frame as ``uint8[H,W,3]`` RGB, rotated by its display matrix.

    ``frame.rotation`` is FFmpeg's ``av_display_rotation_get``: the
    counter-clockwise angle the matrix rotates the stored picture by for
    display; ``np.rot90`` turns counter-clockwise too.
    """
    rgb = frame.to_ndarray(format="rgb24")  # (H, W, 3) as stored
    quarter_turns = _quarter_turns(frame)
    if quarter_turns:
        rgb = np.ascontiguousarray(np.rot90(rgb, quarter_turns))  # (W, H, 3) for odd turns
    return rgb


def _upright_size(frame: av.VideoFrame) -> tuple[int, int]:
    """(H, W) of :func:`_upright_rgb`'s output, without converting the frame."""
    turned = _quarter_turns(frame) % 2
    return (frame.width, frame.height) if turned else (frame.height, frame.width)


def _quarter_turns(frame: av.VideoFrame) -> int:
    """Counter-clockwise quarter turns (0-3) the frame's display matrix asks for."""
    return round(frame.rotation / 90) % 4


def _decode(
    container, path: Path, wanted: set[int] | None
) -> tuple[dict[int, np.ndarray], int, tuple[int, int]]:
    """Decode in order; convert to RGB only the frames in ``wanted`` (None: count only).

    Returns (frames by index, number of frames decoded, (H, W) of the first
    frame). Stops after the largest wanted index, so a long video is never
    held whole.
    """
    stream = video_stream(container)
    last = max(wanted) if wanted else None
    frames: dict[int, np.ndarray] = {}
    n = 0
    last_frame = None
    first_size = (0, 0)
    try:
        for frame in container.decode(stream):
            if n == 0:
                first_size = _upright_size(frame)
            if wanted is not None and n in wanted:
                frames[n] = _upright_rgb(frame)  # (H, W, 3)
            last_frame = frame
            n += 1
            if last is not None and n > last:
                break
    except av.error.FFmpegError as e:
        raise VideoError(path, f"corrupt or truncated video: decoding failed after {n} frames ({e})") from e
    if n == 0:
        raise VideoError(path, "no decodable frames")
    if wanted is not None and last_frame is not None and (n - 1) not in frames:
        # kept so that indices past a short container count can fall back to it
        frames[n - 1] = _upright_rgb(last_frame)  # (H, W, 3)
    return frames, n, first_size


_warned_size_change: set[str] = set()


def _stack(path: Path, frames: list[np.ndarray], size: tuple[int, int]) -> Tensor:
    """list of uint8[H,W,3] -> uint8[n,H,W,3], every frame at ``size`` = (H, W) of the video's first frame.

    Frames of another size (the stream changed resolution) are resized to it
    (bilinear, antialiased); the first time per file, a warning says so.
    """
    sizes = {f.shape[:2] for f in frames}
    if sizes == {size}:
        return torch.from_numpy(np.stack(frames))  # (n, H, W, 3)
    if str(path) not in _warned_size_change:
        _warned_size_change.add(str(path))
        log.warning("%s: the frame size changes within the video (%s); frames are resized to the first "
                    "frame's %dx%d (W x H)", path, ", ".join(f"{w}x{h}" for h, w in sorted(sizes)), size[1], size[0])
    return torch.stack([_resize(torch.from_numpy(f), size) for f in frames])  # (n, H, W, 3)


def _resize(frame: Tensor, size: tuple[int, int]) -> Tensor:
    """uint8[h,w,3] -> uint8[H,W,3] at ``size`` = (H, W); unchanged when it already is."""
    if tuple(frame.shape[:2]) == size:
        return frame
    x = frame.permute(2, 0, 1)[None].float()  # (1, 3, h, w)
    x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)  # (1, 3, H, W)
    return x[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8)  # (H, W, 3)


class PacketIndex(NamedTuple):
    """Where every frame of a video stream sits, read from its packets without decoding."""

    pts: list[int]  # presentation timestamp of frame i, ascending: frame i is the i-th shown
    key_pts: list[int]  # timestamps of the key frames (where decoding can restart), ascending


def packet_index(container) -> PacketIndex | None:
    """The video stream's :class:`PacketIndex`; None when it cannot be trusted for seeking.

    Frame i is the packet with the i-th smallest timestamp, which is what
    sequential decoding returns as frame i only if every packet is one shown
    frame: so a packet without a timestamp, a repeated timestamp, a packet
    the demuxer marks to discard (edit lists) or a count other than the
    container's declared one (when it declares one) all give None (decode in
    order instead). The one count accepted below the declared one is that of
    a complete variable-frame-rate file, whose header counts time slots
    (:func:`_counts_slots`). Consumes the container's packets: pass it freshly
    opened, and reopen it to decode.
    """
    stream = video_stream(container)
    # the packet table the demuxer read at opening (avi idx1, mp4 sample
    # tables); demuxing may add to it (a file without one is indexed as read)
    tabled = len(stream.index_entries)
    pts: list[int] = []
    key_pts: list[int] = []
    try:
        for packet in container.demux(stream):
            if not packet.size:
                continue  # the demuxer's end-of-stream packet
            if packet.pts is None or packet.is_discard:
                return None
            pts.append(packet.pts)
            if packet.is_keyframe:
                key_pts.append(packet.pts)
    except av.error.FFmpegError:
        return None  # the in-order decode reports the damage, naming the file
    pts.sort()
    key_pts.sort()
    if len(set(pts)) != len(pts) or not key_pts:
        return None
    if stream.frames > 0 and len(pts) != stream.frames and not _counts_slots(stream, tabled, len(pts)):
        return None
    return PacketIndex(pts, key_pts)


def _counts_slots(stream, tabled: int, packets: int) -> bool:
    """Whether the declared count, larger than the ``packets`` read, counts the time slots of a
    complete variable-frame-rate file rather than frames lost to truncation.

    Truncation loses the end of a file, and with it either the packet table
    (an AVI's ``idx1`` follows its packets: the demuxer then indexes as it
    reads, ``tabled`` is what it probed) or packets the table lists (an mp4
    whose ``moov`` comes first). So the table read at opening must list
    exactly the packets read. And the file must be as long as its header
    says: FFmpeg's AVI demuxer shortens the stream's duration (in slots)
    below the count when the RIFF header runs past the end of the file,
    which also refuses a cut file whose probing read every packet left.
    """
    return (
        packets < stream.frames
        and tabled == packets
        and stream.duration is not None
        and stream.duration >= stream.frames
    )


def _decode_seeking(container, index: PacketIndex, indices: list[int]) -> dict[int, np.ndarray] | None:
    """The frames at ``indices`` by seeking to the key frame before each (when that skips
    ``SEEK_MIN_SKIP`` frames or more) and decoding from there; frames are matched to
    indices by timestamp. None if any frame is not found as the index promised, or a
    frame's size is not the stream's (the caller then decodes in order).
    """
    stream = video_stream(container)
    coded = (stream.codec_context.height, stream.codec_context.width)  # the first frame's, as stored
    rank = {p: i for i, p in enumerate(index.pts)}  # timestamp -> frame index
    wanted = set(indices)
    frames: dict[int, np.ndarray] = {}
    decoding = None  # the frame iterator, restarted after every seek
    at = -1  # index of the last frame decoded
    try:
        for i in sorted(wanted):
            k = bisect_right(index.key_pts, index.pts[i]) - 1  # the last key frame at or before frame i
            key = rank[index.key_pts[k]] if k >= 0 else 0
            if decoding is None or key - at > SEEK_MIN_SKIP:
                if key > 0:
                    container.seek(index.key_pts[k], stream=stream, backward=True, any_frame=False)
                decoding = container.decode(stream)
                at = -1
            while at < i:
                frame = next(decoding, None)
                if frame is None or frame.pts not in rank:
                    return None
                if (frame.height, frame.width) != coded:
                    return None  # a resolution change: decoding in order sizes frames by the first
                at = rank[frame.pts]
                if at in wanted:
                    frames[at] = _upright_rgb(frame)  # (H, W, 3)
            if i not in frames:
                return None  # the seek landed after frame i
    except av.error.FFmpegError:
        return None
    return frames


def decode_frames(
    path: str | Path,
    T: int,
    mode: SampleMode = "middle",
    generator: Generator | None = None,
) -> Tensor:
    """T frames of a video as ``uint8[T,H,W,3]`` RGB, chosen by :func:`sample_indices`.

    Images (jpg, png, ...) are a 1-frame video: the frame is repeated T times.
    Raises :class:`VideoError` for a missing, empty, truncated or corrupt
    file, one with no video stream, or one with no decodable frame.
    """
    return decode_sampled(path, T, mode, generator)[0]


def decode_sampled(
    path: str | Path,
    T: int,
    mode: SampleMode = "middle",
    generator: Generator | None = None,
) -> tuple[Tensor, list[int]]:
    """:func:`decode_frames` and the indices of the frames it returned (an image: all 0).

    The indices are those of :func:`decode_all_frames`' output, so per-frame
    features computed from that (:mod:`vidmask.teachers.cache`) can be looked up.
    """
    path = _as_source(path)
    if is_image_path(path):
        image = torch.from_numpy(load_image(path))  # (1, H, W, 3)
        return image.expand(T, -1, -1, -1).contiguous(), [0] * T  # (T, H, W, 3)
    container = _open_video(path)
    try:
        n, listed, index, container = _count(container, path, video_stream(container).frames >= SEEK_MIN_FRAMES)
        indices = sample_indices(n, T, mode, generator)
        if index is not None and n >= SEEK_MIN_FRAMES:
            found = _decode_seeking(container, index, indices)
            if found is not None:
                size = found[indices[0]].shape[:2]  # the first frame's: _decode_seeking checks
                return _stack(path, [found[i] for i in indices], size), indices  # (T, H, W, 3)
            container = _reopen(container, path)  # the index misled: decode in order
        frames, decoded, first_size = _decode(container, path, set(indices))
    finally:
        container.close()
    if decoded <= indices[-1]:
        # the decoder ran out before the container's count
        _check_count(path, listed, decoded)
        indices = [min(i, decoded - 1) for i in indices]
    return _stack(path, [frames[i] for i in indices], first_size), indices  # (T, H, W, 3)


def _reopen(container, path: Path):
    """A fresh container on ``path`` in place of ``container`` (closed), read from the start."""
    container.close()
    return _open_video(path)


def decode_all_frames(path: str | Path) -> Tensor:
    """Every frame of a (short) video as ``uint8[n,H,W,3]``; an image gives n=1.

    For the in-memory cache: sampling then happens on this array.
    """
    path = _as_source(path)
    if is_image_path(path):
        return torch.from_numpy(load_image(path))  # (1, H, W, 3)
    container = _open_video(path)
    try:
        listed, container = _listed_count(container, path)
        out: list[np.ndarray] = []
        try:
            for frame in container.decode(video_stream(container)):
                out.append(_upright_rgb(frame))  # (H, W, 3)
        except av.error.FFmpegError as e:
            raise VideoError(
                path, f"corrupt or truncated video: decoding failed after {len(out)} frames ({e})"
            ) from e
    finally:
        container.close()
    if not out:
        raise VideoError(path, "no decodable frames")
    _check_count(path, listed, len(out))
    return _stack(path, out, out[0].shape[:2])  # (n, H, W, 3)


def iter_frames(path: str | Path | MemoryMedia, short_side: int = 0) -> Iterator[np.ndarray]:
    """Every frame of a video in order, upright, one at a time: ``uint8[H,W,3]``.

    ``short_side`` > 0 scales each frame (FFmpeg's area filter, before the RGB conversion)
    so that its shorter upright side has that many pixels; 0 keeps the stored size. For
    re-encoding a whole video (``vidmask shards make``) without holding it in memory.
    Raises :class:`VideoError` as :func:`decode_all_frames` does.
    """
    path = _as_source(path)
    container = _open_video(path)
    n = 0
    try:
        for frame in container.decode(video_stream(container)):
            turns = _quarter_turns(frame)
            if short_side > 0:
                H, W = _upright_size(frame)
                h, w = scaled_size(H, W, short_side)
                if turns % 2:
                    h, w = w, h  # the stored picture is the upright one on its side
                frame = frame.reformat(width=w, height=h, interpolation="AREA")
            rgb = frame.to_ndarray(format="rgb24")  # (h, w, 3) as stored
            yield np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb  # (H, W, 3) upright
            n += 1
    except av.error.FFmpegError as e:
        raise VideoError(path, f"corrupt or truncated video: decoding failed after {n} frames ({e})") from e
    finally:
        container.close()
    if n == 0:
        raise VideoError(path, "no decodable frames")


def scaled_size(H: int, W: int, short_side: int) -> tuple[int, int]:
    """(h, w) with the shorter side ``short_side`` and the aspect ratio kept, both even (what
    H.264's 4:2:0 sampling needs)."""
    scale = short_side / min(H, W)
    return max(2, round(H * scale / 2) * 2), max(2, round(W * scale / 2) * 2)
