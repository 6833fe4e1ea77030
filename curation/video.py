"""Video decoding, frame-rate resampling, resize + centre crop, and H.264 encoding.

Decoding uses decord, encoding PyAV (libx264, yuv420p). The frame-rate mapping lives here
because the clips stage re-times action tokens with the very same function.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO, TypeVar

import av
import cv2
import numpy as np

from curation.stages.base import Reject

T = TypeVar("T")

# libx264 speed presets, fastest first.
X264_PRESETS: tuple[str, ...] = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium",
                                  "slow", "slower", "veryslow", "placebo")  # fmt: skip


class VideoError(Reject):
    """A video cannot be used; ``reason`` is a short code for the rejects table."""


def to_i420(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB -> (H*3/2, W) planar YUV 4:2:0 (BT.601), the encoder's input."""
    return cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2YUV_I420)


def _rate(fps: float) -> Fraction:
    """An exact frame rate for the container (29.97 -> 30000/1001)."""
    return Fraction(fps).limit_denominator(1001)


class H264Writer:
    """Append RGB frames to an H.264 yuv420p mp4 (a path or a seekable binary file).

    Frames are converted to I420 with OpenCV, which is faster than PyAV's own reformat.
    """

    def __init__(
        self,
        file: str | Path | BinaryIO,
        fps: float,
        width: int,
        height: int,
        crf: int = 23,
        preset: str = "veryfast",
        threads: int = 0,
    ):
        if width % 2 or height % 2:
            raise ValueError(f"yuv420p needs even sizes, got {width}x{height}")
        self.width, self.height = width, height
        self.frames = 0
        self._container = av.open(file if not isinstance(file, Path) else str(file), "w", "mp4")
        self._stream = self._container.add_stream("libx264", rate=_rate(fps))
        self._stream.width, self._stream.height = width, height
        self._stream.pix_fmt = "yuv420p"
        # x264's own ``threads`` option (0: auto); PyAV's thread_count did not limit x264.
        self._stream.options = {"crf": str(crf), "preset": preset, "threads": str(threads)}

    def write(self, frames: np.ndarray) -> None:
        """Encode ``frames`` (T,H,W,3) or (H,W,3) uint8 RGB."""
        frames = frames[None] if frames.ndim == 3 else frames
        self.write_i420(np.stack([to_i420(rgb) for rgb in frames]))

    def write_i420(self, frames: np.ndarray) -> None:
        """Encode planar I420 frames (T, H*3/2, W) uint8, as ``to_i420`` makes them."""
        for i420 in frames:
            frame = av.VideoFrame.from_ndarray(i420, format="yuv420p")
            self._container.mux(self._stream.encode(frame))
            self.frames += 1

    def close(self) -> None:
        self._container.mux(self._stream.encode(None))
        self._container.close()

    def __enter__(self) -> H264Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_mp4(
    path: str | Path,
    frames: Iterable[np.ndarray],
    fps: float,
    width: int,
    height: int,
    crf: int = 23,
    preset: str = "veryfast",
    threads: int = 1,
) -> None:
    """Encode RGB frames (each (H, W, 3) or (T, H, W, 3)) to ``path``, which appears atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with H264Writer(tmp, fps, width, height, crf=crf, preset=preset, threads=threads) as out:
            for frame in frames:
                out.write(frame)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


# ---- frame-rate resampling --------------------------------------------------------------


def resample_indices(num_source: int, source_fps: float, out_fps: float) -> np.ndarray:
    """Source frame index of every output frame when re-timing ``source_fps`` to ``out_fps``.

    Output frame ``j`` shows time ``t = j / out_fps`` and takes the nearest source frame,
    ``i_j = floor(j * source_fps / out_fps + 0.5)`` (halves round up), for every ``j`` with
    ``i_j <= num_source - 1``. 30 -> 16 fps gives 0, 2, 4, 6, 8, 9, 11, 13, ... Action tokens
    are re-timed with this same function, so frame j's tokens are those of source frame i_j.
    """
    if num_source <= 0:
        return np.zeros(0, np.int64)
    if source_fps <= 0 or out_fps <= 0:
        raise ValueError(f"fps must be positive, got {source_fps} -> {out_fps}")
    ratio = source_fps / out_fps
    count = int(np.ceil((num_source - 0.5) / ratio)) + 1
    idx = np.floor(np.arange(count) * ratio + 0.5).astype(np.int64)
    return idx[idx <= num_source - 1]


# ---- resize + centre crop -----------------------------------------------------------------


def _cover_scale(src_w: int, src_h: int, out_w: int, out_h: int) -> float:
    """The one scale, aspect kept, at which the source just covers the output."""
    return max(out_w / src_w, out_h / src_h)


def cover_size(src_w: int, src_h: int, out_w: int, out_h: int) -> tuple[int, int]:
    """(w, h) of the source scaled to just cover ``out_w x out_h``, aspect kept.

    Resizing to this size and centre-cropping (``centre_crop``) is the other order of
    ``resize_crop``, for decoders that resize while decoding (decord in the shard reader).
    """
    scale = _cover_scale(src_w, src_h, out_w, out_h)
    return max(out_w, round(src_w * scale)), max(out_h, round(src_h * scale))


def centre_crop(frames: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """The central ``out_h x out_w`` of (..., H, W, C) frames (a view, no copy)."""
    h, w = frames.shape[-3:-1]
    y, x = (h - out_h) // 2, (w - out_w) // 2
    return frames[..., y : y + out_h, x : x + out_w, :]


def crop_box(src_w: int, src_h: int, out_w: int, out_h: int) -> tuple[int, int, int, int]:
    """The central (x, y, w, h) box of the source with the output's aspect ratio.

    Cropping this box and resizing it to ``out_w x out_h`` equals resizing the frame to
    cover the output (aspect kept) and centre-cropping, to within a pixel of rounding.
    """
    scale = _cover_scale(src_w, src_h, out_w, out_h)
    w, h = min(src_w, round(out_w / scale)), min(src_h, round(out_h / scale))
    return (src_w - w) // 2, (src_h - h) // 2, w, h


def resize_crop(frame: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Resize (H, W, 3) to cover ``out_h x out_w`` with aspect kept, then centre crop."""
    x, y, w, h = crop_box(frame.shape[1], frame.shape[0], out_w, out_h)
    box = frame[y : y + h, x : x + w]
    if (w, h) == (out_w, out_h):
        return np.ascontiguousarray(box)
    # Area averaging only where linear would alias (shrinking 2x or more); it is ~4x slower.
    interp = cv2.INTER_AREA if w >= 2 * out_w else cv2.INTER_LINEAR
    return cv2.resize(box, (out_w, out_h), interpolation=interp)


def parse_resolution(text: str) -> tuple[int, int]:
    """Parse ``"544x960"`` (height x width) into ``(544, 960)``; sizes must be even."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError as e:
        raise ValueError(f"resolution must look like 544x960 (HxW), got {text!r}") from e
    if h <= 0 or w <= 0 or h % 2 or w % 2:
        raise ValueError(f"resolution must be positive and even (yuv420p), got {text!r}")
    return h, w


# ---- probing and decoding -----------------------------------------------------------------


def _looks_like_video(path: Path) -> bool:
    """A container signature (mp4/mov ``ftyp``, Matroska/WebM) at the start of the file."""
    with open(path, "rb") as f:
        head = f.read(12)
    return head[4:8] == b"ftyp" or head[:4] == b"\x1a\x45\xdf\xa3"


def _open(path: Path, width: int = -1, height: int = -1, threads: int = 0):
    """Open ``path`` with decord, turning every failure into a ``VideoError``."""
    import decord

    if not path.exists():
        raise VideoError("missing_video", f"{path} does not exist")
    if not path.is_file():
        raise VideoError("not_a_video", f"{path} is not a file")
    if path.stat().st_size == 0:
        raise VideoError("empty_video", f"{path} has zero bytes")
    try:
        return decord.VideoReader(str(path), width=width, height=height, num_threads=threads)
    except Exception as e:  # decord raises DECORDError, RuntimeError, ...
        reason = "truncated_video" if _looks_like_video(path) else "not_a_video"
        raise VideoError(reason, f"cannot open {path.name}: {str(e).splitlines()[0]}") from e


class SourceVideo:
    """A source video opened once, for checking and then decoding it.

    The frame count and fps come from the container, with nothing decoded; ``transcode``
    then decodes it front to back with the same reader, so each source is opened once and
    decoded once. One transcode per SourceVideo: the reader is consumed.
    """

    def __init__(self, path: str | Path, threads: int = 0) -> None:
        self.path = Path(path)
        self.reader = _open(self.path, threads=threads)
        self.num_frames, self.fps = len(self.reader), float(self.reader.get_avg_fps())
        if self.num_frames <= 0 or not np.isfinite(self.fps) or self.fps <= 0:
            raise VideoError(
                "not_a_video", f"{self.path.name}: {self.num_frames} frames at {self.fps} fps"
            )


# ---- transcoding --------------------------------------------------------------------------


@dataclass
class Transcoded:
    """An encoded clip and how it maps to its source."""

    data: bytes  # the mp4
    frames: int
    fps: float
    width: int
    height: int
    source_indices: np.ndarray  # source frame of each output frame (see resample_indices)


def _decode_chunks(vr, indices: np.ndarray, chunk: int, name: str) -> Iterator[list[np.ndarray]]:
    """Yield lists of at most ``chunk`` RGB source frames, one per output frame, in order.

    The source is read once, front to back: unused frames are skipped without RGB
    conversion, and a frame used twice (when up-sampling the frame rate) is decoded once.
    """
    position, frame, batch = 0, None, []
    for target in indices:
        try:
            if target >= position:
                if target > position:
                    vr.skip_frames(int(target - position))
                frame = vr.next().asnumpy()
                position = target + 1
        except Exception as e:  # decord raises DECORDError / StopIteration past a cut
            raise VideoError(
                "truncated_video", f"{name}: decoding failed at frame {int(target)}: {e!r}"
            ) from e
        batch.append(frame)
        if len(batch) == chunk:
            yield batch
            batch = []
    if batch:
        yield batch


def _prefetch(items: Iterator[T]) -> Iterator[T]:
    """Compute ``items`` one step ahead in a background thread.

    Decoding, resizing and encoding all run in C with the GIL released, so a prefetched
    stage overlaps with the consumer the way ffmpeg's threaded pipeline does.
    """
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(next, items, None)
        while (item := pending.result()) is not None:
            pending = pool.submit(next, items, None)
            yield item


def transcode(
    source: str | Path | SourceVideo,
    out_fps: float = 16.0,
    size: tuple[int, int] = (544, 960),
    crf: int = 23,
    preset: str = "veryfast",
    threads: int = 0,
    max_source_frames: int | None = None,
    chunk: int = 16,
) -> Transcoded:
    """Re-time, resize + centre-crop to ``size`` = (height, width), and encode to H.264.

    The source is decoded once, front to back, ``chunk`` output frames at a time (at most
    two chunks in memory); decoding and resizing overlap with encoding in threads. Only the
    first ``max_source_frames`` source frames are used when given. ``threads`` is the
    decoder's and the encoder's thread count (0: automatic; a given SourceVideo keeps the
    decoder threads it was opened with). Raises ``VideoError`` for unusable input.
    """
    out_h, out_w = size
    if out_h % 2 or out_w % 2:
        raise ValueError(f"yuv420p needs an even size, got {out_h}x{out_w}")
    src = source if isinstance(source, SourceVideo) else SourceVideo(source, threads)
    n = src.num_frames if max_source_frames is None else min(src.num_frames, max_source_frames)
    indices = resample_indices(n, src.fps, out_fps)
    if indices.size == 0:
        raise VideoError("not_a_video", f"{src.path.name}: no frames to use")

    def convert(frames: list[np.ndarray]) -> np.ndarray:  # RGB -> (T, H*3/2, W) I420
        return np.stack([to_i420(resize_crop(f, out_h, out_w)) for f in frames])

    # Two overlapped stages: decode + resize + colour conversion | encode. (A third thread
    # for resizing measured slower on a busy 2-core machine.)
    chunks = _prefetch(map(convert, _decode_chunks(src.reader, indices, chunk, src.path.name)))
    buf = io.BytesIO()
    with H264Writer(buf, out_fps, out_w, out_h, crf=crf, preset=preset, threads=threads) as out:
        for frames in chunks:
            out.write_i420(frames)
    return Transcoded(
        data=buf.getvalue(),
        frames=len(indices),
        fps=float(out_fps),
        width=out_w,
        height=out_h,
        source_indices=indices,
    )
