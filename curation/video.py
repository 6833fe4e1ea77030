"""Video decoding, frame-rate resampling, resize + centre crop, and H.264 encoding.

Decoding, turning upright and scaling use PyAV in YUV (as ffmpeg does; no RGB frames),
encoding PyAV's libx264 (yuv420p). The frame-rate mapping lives here because the clips stage
re-times action tokens with the very same indices.
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


# x264's AVX-512 code of its macroblock-tree rate control reads heap memory it never wrote
# (glibc filling new memory with a non-zero byte changes the output; asm=0, mbtree=0 or the
# AVX2 instruction set make it fixed), so the same frames gave other bytes depending on what
# the process had freed before. On a CPU with AVX-512 x264 is held to AVX2 and below (every
# such CPU has all of them), which keeps mbtree and its bit savings (mbtree=0: +63% bytes at
# the same crf). Other CPUs never take that path and keep x264's own choice.
_X264_AVX2 = "MMX2,SSE,SSE2,SSE3,SSSE3,SSE4.1,SSE4.2,AVX,LZCNT,BMI1,BMI2,FMA3,AVX2"


def _has_avx512() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return any(ln.startswith("flags") and " avx512f" in ln for ln in f)
    except OSError:  # not Linux: x264 decides
        return False


X264_DETERMINISTIC = f"asm={_X264_AVX2}" if _has_avx512() else ""


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
        self._time_base = 1 / _rate(fps)
        self._stream = self._container.add_stream("libx264", rate=_rate(fps))
        self._stream.width, self._stream.height = width, height
        self._stream.pix_fmt = "yuv420p"
        # x264's own ``threads`` option (0: auto); PyAV's thread_count did not limit x264.
        options = {"crf": str(crf), "preset": preset, "threads": str(threads)}
        if X264_DETERMINISTIC:
            options["x264-params"] = X264_DETERMINISTIC
        self._stream.options = options

    def write(self, frames: np.ndarray) -> None:
        """Encode ``frames`` (T,H,W,3) or (H,W,3) uint8 RGB."""
        frames = frames[None] if frames.ndim == 3 else frames
        self.write_i420(np.stack([to_i420(rgb) for rgb in frames]))

    def write_i420(self, frames: np.ndarray) -> None:
        """Encode planar I420 frames (T, H*3/2, W) uint8, as ``to_i420`` makes them."""
        self.write_frames(av.VideoFrame.from_ndarray(i420, format="yuv420p") for i420 in frames)

    def write_frames(self, frames: Iterable[av.VideoFrame]) -> None:
        """Encode yuv420p frames of the writer's size (a frame may repeat: it is re-stamped)."""
        for frame in frames:
            frame.pts, frame.time_base = self.frames, self._time_base
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

# A frame interval further than this fraction from the median one makes a video variable-rate.
VFR_TOLERANCE = 0.1


def _looks_like_video(path: Path) -> bool:
    """A container signature (mp4/mov ``ftyp``, Matroska/WebM) at the start of the file."""
    with open(path, "rb") as f:
        head = f.read(12)
    return head[4:8] == b"ftyp" or head[:4] == b"\x1a\x45\xdf\xa3"


def _open(path: Path):
    """Open ``path`` with PyAV, turning every failure into a ``VideoError``."""
    if not path.exists():
        raise VideoError("missing_video", f"{path} does not exist")
    if not path.is_file():
        raise VideoError("not_a_video", f"{path} is not a file")
    if path.stat().st_size == 0:
        raise VideoError("empty_video", f"{path} has zero bytes")
    try:
        return av.open(str(path))
    except Exception as e:  # av.error.InvalidDataError, EOFError, ...
        reason = "truncated_video" if _looks_like_video(path) else "not_a_video"
        raise VideoError(reason, f"cannot open {path.name}: {str(e).splitlines()[0]}") from e


def timestamp_indices(times: np.ndarray, out_fps: float) -> np.ndarray:
    """Source frame of every output frame when re-timing frames shown at ``times`` (seconds).

    Output frame ``j`` takes the source frame whose timestamp is nearest ``j / out_fps``
    (ties go to the later frame), for every ``j / out_fps`` before the last frame's time plus
    half a median frame interval. For evenly spaced times this is ``resample_indices``.
    """
    times = np.asarray(times, np.float64)
    if times.size == 0:
        return np.zeros(0, np.int64)
    step = float(np.median(np.diff(times))) if times.size > 1 else 1.0 / out_fps
    end = times[-1] + step / 2
    t = np.arange(int(np.ceil(end * out_fps)) + 1) / out_fps
    t = t[t < end - 1e-9]
    after = np.clip(np.searchsorted(times, t, side="left"), 0, times.size - 1)
    before = np.clip(after - 1, 0, times.size - 1)
    later = times[after] - t <= t - times[before] + 1e-9
    return np.where(later, after, before).astype(np.int64)


class SourceVideo:
    """A source video opened once, for checking and then decoding it.

    Probing reads only the packets' timestamps (nothing decoded): the frame count, the fps
    and whether the frame rate is variable come from them. ``transcode`` then decodes the
    same container front to back. One transcode per SourceVideo: the container is consumed.
    """

    def __init__(self, path: str | Path, threads: int = 0) -> None:
        self.path = Path(path)
        self.container = _open(self.path)
        if not self.container.streams.video:
            kinds = sorted({s.type for s in self.container.streams}) or ["no"]
            self.container.close()
            raise VideoError(
                "no_video_stream", f"{self.path.name} has {'/'.join(kinds)} streams only"
            )
        self.stream = stream = self.container.streams.video[0]
        stream.thread_type = "AUTO"  # frame and slice threads, thread_count of them
        stream.codec_context.thread_count = threads
        self.width, self.height = stream.codec_context.width, stream.codec_context.height
        sar = stream.sample_aspect_ratio or stream.codec_context.sample_aspect_ratio
        self.sar = Fraction(sar) if sar and sar > 0 else Fraction(1)
        try:
            pts = [p.pts for p in self.container.demux(stream) if p.pts is not None]
            self.container.seek(0)
        except Exception as e:  # a cut or damaged file fails while demuxing
            raise VideoError(
                "truncated_video", f"{self.path.name}: {str(e).splitlines()[0]}"
            ) from e
        base = float(stream.time_base or 0)
        self.pts = sorted(pts)  # display order
        self.times = (np.asarray(self.pts, np.float64) - min(pts, default=0)) * base
        self.num_frames = len(pts)
        rate = stream.average_rate or stream.guessed_rate
        self.fps = float(rate) if rate else 0.0
        if self.num_frames <= 0 or not np.isfinite(self.fps) or self.fps <= 0 or base <= 0:
            raise VideoError(
                "not_a_video", f"{self.path.name}: {self.num_frames} frames at {self.fps} fps"
            )
        gaps = np.diff(self.times)
        self.variable_rate = bool(
            gaps.size and np.abs(gaps - np.median(gaps)).max() > VFR_TOLERANCE * np.median(gaps)
        )

    @property
    def display_size(self) -> tuple[int, int]:
        """(w, h) as shown: the sample aspect ratio applied (rotation is known only decoding)."""
        return max(1, round(self.width * self.sar)), self.height

    def source_indices(self, out_fps: float, max_frames: int | None = None) -> np.ndarray:
        """Source frame of each output frame: by timestamps when the rate is variable."""
        n = self.num_frames if max_frames is None else min(self.num_frames, max_frames)
        if self.variable_rate:
            return timestamp_indices(self.times[:n], out_fps)
        return resample_indices(n, self.fps, out_fps)


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


# Display-matrix rotation (degrees counter-clockwise, as PyAV reports it) -> upright filters.
_UPRIGHT = {0: [], 90: [("transpose", "cclock")], 180: [("hflip", ""), ("vflip", "")],
            270: [("transpose", "clock")]}  # fmt: skip


def _graph(frame: av.VideoFrame, sar: Fraction, out_w: int, out_h: int) -> av.filter.Graph:
    """Turn upright, crop the output's aspect from the display size and scale, all in YUV."""
    rotation = round(frame.rotation / 90) * 90 % 360
    w, h = (frame.height, frame.width) if rotation in (90, 270) else (frame.width, frame.height)
    sar = 1 / sar if rotation in (90, 270) else sar  # pixels turn with the picture
    _, _, cw, ch = crop_box(max(1, round(w * sar)), h, out_w, out_h)
    cw = min(w, max(1, round(cw / sar)))  # display width -> stored pixels
    area = cw >= 2 * out_w or ch >= 2 * out_h  # averaging only where linear would alias
    graph = av.filter.Graph()
    nodes = [graph.add_buffer(width=frame.width, height=frame.height, format=frame.format.name,
                              time_base=Fraction(1, 1000))]  # fmt: skip
    steps = [*_UPRIGHT[rotation], ("crop", f"{cw}:{ch}:{(w - cw) // 2}:{(h - ch) // 2}"),
             ("scale", f"{out_w}:{out_h}:flags={'area' if area else 'bilinear'}"),
             ("setsar", "1"), ("format", "yuv420p")]  # fmt: skip
    for name, args in steps:
        nodes.append(graph.add(name, args))
    nodes.append(graph.add("buffersink"))
    graph.link_nodes(*nodes).configure()
    return graph


def _decode_chunks(
    src: SourceVideo, indices: np.ndarray, size: tuple[int, int], chunk: int
) -> Iterator[list[av.VideoFrame]]:
    """Yield lists of at most ``chunk`` output frames (YUV, upright, cropped and scaled).

    The source is decoded once, front to back, unused non-reference frames not at all (the
    decoder drops them); only the frames used are scaled, a frame used twice (up-sampling
    the frame rate) once.
    """
    out_h, out_w = size
    uses = np.bincount(indices, minlength=int(indices[-1]) + 1)
    index = {pts: k for k, pts in enumerate(src.pts)}
    ctx = src.stream.codec_context
    graph, batch, last = None, [], -1
    try:
        for packet in src.container.demux(src.stream):
            k = index.get(packet.pts, -1)
            # An unused frame that no other frame refers to need not be decoded at all.
            unused = k >= uses.size or (k >= 0 and not uses[k])
            ctx.skip_frame = "NONREF" if unused else "DEFAULT"
            for frame in packet.decode():
                last = k = index.get(frame.pts, last + 1)
                if k < uses.size and uses[k]:
                    graph = graph or _graph(frame, src.sar, out_w, out_h)
                    graph.vpush(frame)
                    batch += [graph.vpull()] * int(uses[k])
                    if len(batch) >= chunk:
                        yield batch
                        batch = []
            if last + 1 >= uses.size:  # the last frame used: nothing after it is decoded
                break
    except av.error.FFmpegError as e:
        raise VideoError(
            "truncated_video", f"{src.path.name}: decoding failed after frame {last}: {e}"
        ) from e
    finally:
        src.container.close()
    if last + 1 < uses.size:
        raise VideoError(
            "truncated_video", f"{src.path.name}: frames end at {last + 1} of {uses.size}"
        )
    if batch:
        yield batch


def _prefetch(items: Iterator[T]) -> Iterator[T]:
    """Compute ``items`` one step ahead in a background thread.

    Decoding, scaling and encoding all run in C with the GIL released, so a prefetched
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
    """Re-time, turn upright, resize + centre-crop to ``size`` = (height, width), encode H.264.

    Output frame ``j`` takes the source frame nearest ``j / out_fps`` (by the frames'
    timestamps when the rate is variable). The crop is taken from the display size (sample
    aspect ratio applied). Decoding and scaling stay in YUV, in a thread overlapping the
    encoder, ``chunk`` output frames at a time. Only the first ``max_source_frames`` source
    frames are used when given. ``threads`` is the decoder's and the encoder's thread count
    (0: automatic; a given SourceVideo keeps its decoder's). Raises ``VideoError`` for
    unusable input.
    """
    out_h, out_w = size
    if out_h % 2 or out_w % 2:
        raise ValueError(f"yuv420p needs an even size, got {out_h}x{out_w}")
    src = source if isinstance(source, SourceVideo) else SourceVideo(source, threads)
    indices = src.source_indices(out_fps, max_source_frames)
    if indices.size == 0:
        raise VideoError("not_a_video", f"{src.path.name}: no frames to use")
    chunks = _prefetch(_decode_chunks(src, indices, size, chunk))
    buf = io.BytesIO()
    with H264Writer(buf, out_fps, out_w, out_h, crf=crf, preset=preset, threads=threads) as out:
        for frames in chunks:
            out.write_frames(frames)
    return Transcoded(
        data=buf.getvalue(),
        frames=len(indices),
        fps=float(out_fps),
        width=out_w,
        height=out_h,
        source_indices=indices,
    )
