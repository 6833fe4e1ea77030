"""Video decoding, frame-rate resampling, resize + centre crop, and H.264 encoding.

Decoding uses decord, encoding PyAV (libx264, yuv420p). The frame-rate mapping lives here
because the clips stage re-times action tokens with the very same function.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import av
import cv2
import numpy as np


class VideoError(ValueError):
    """A video cannot be used; ``reason`` is a short code for the rejects table."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


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
        self._stream.options = {"crf": str(crf), "preset": preset}
        self._stream.codec_context.thread_count = threads

    def write(self, frames: np.ndarray) -> None:
        """Encode ``frames`` (T,H,W,3) or (H,W,3) uint8 RGB."""
        frames = frames[None] if frames.ndim == 3 else frames
        for rgb in frames:
            i420 = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2YUV_I420)
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
