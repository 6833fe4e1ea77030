"""The ``builtin`` scorer: VBench's temporal flickering and weight-free stand-ins (OpenCV).

No learned weights, only where VBench's own definition needs no model:

- ``temporal_flickering``: VBench's formula exactly (``vbench/temporal_flickering.py``):
  every frame as ``cv2.VideoCapture`` reads it (BGR uint8, native size), per consecutive
  pair the mean absolute difference in float32 over H x W x 3, video score
  ``(255 - mean) / 255``;
- ``dynamic_degree_farneback``: VBench's dynamic-degree rule (frames every
  ``max(1, round(fps / 8))``, per pair the mean of the top 5% flow magnitudes,
  ``thres = 6 * min(H, W) / 256``, dynamic when at least ``round(4 * n / 16)`` pairs exceed
  it) with OpenCV Farneback flow in place of RAFT, so it is **not** VBench's
  ``dynamic_degree`` and is named apart;
- ``motion_farneback``: the mean of those per-pair values, in pixels of a 256-pixel frame;
- ``sharpness_laplacian``: variance of the Laplacian of the grey frames, ``v / (v + 100)``;
- ``exposure_ok``: the fraction of pixels neither crushed (luma <= 5) nor blown (>= 250);
- ``static_flag``: 1 when no sampled pair moves more than 0.5 pixel (256-pixel frame).

Spec: ``builtin``. The total over these is ``curation/scores.py``.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from model.backends.protocols import CORE
from model.backends.registry import register
from model.backends.spec import BackendSpec

VERSION = "builtin-1"
BUILTIN_DIMENSIONS = (
    "temporal_flickering", "dynamic_degree_farneback", "motion_farneback",
    "sharpness_laplacian", "exposure_ok", "static_flag",
)  # fmt: skip


def read_bgr(path: str | Path) -> tuple[list[np.ndarray], float]:
    """Every frame as VBench reads it (cv2.VideoCapture, BGR uint8) and the fps."""
    cap = cv2.VideoCapture(str(path))
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames, fps


def temporal_flickering(frames: list[np.ndarray]) -> float:
    """VBench's per-video temporal flickering (NaN for fewer than two frames)."""
    if len(frames) < 2:
        return float("nan")
    diffs = [np.mean(cv2.absdiff(a.astype(np.float32), b.astype(np.float32)))
             for a, b in zip(frames[:-1], frames[1:], strict=True)]  # fmt: skip
    return (255.0 - float(np.mean(diffs))) / 255.0  # float32 mean, then float64 as VBench


def _top5_magnitude(flow: np.ndarray) -> float:
    rad = np.sqrt(flow[..., 0] ** 2 + flow[..., 1] ** 2).ravel()
    cut = int(rad.size * 0.05)
    return float(np.mean(np.sort(rad)[::-1][: max(cut, 1)]))


def farneback_motion(frames: list[np.ndarray], fps: float) -> dict[str, float]:
    """``dynamic_degree_farneback``, ``motion_farneback`` and ``static_flag`` (module doc)."""
    interval = max(1, round(fps / 8)) if fps > 0 else 1
    sub = frames[::interval]
    if len(sub) < 2:
        return {"dynamic_degree_farneback": float("nan"), "motion_farneback": float("nan"),
                "static_flag": float("nan")}  # fmt: skip
    grey = [cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in sub]
    scores = []
    for a, b in zip(grey[:-1], grey[1:], strict=True):
        flow = cv2.calcOpticalFlowFarneback(a, b, None, 0.5, 3, 15, 3, 5, 1.2, 0)
        scores.append(_top5_magnitude(flow))
    h, w = grey[0].shape
    scale = min(h, w)
    thres, count_num = 6.0 * scale / 256.0, round(4 * len(sub) / 16.0)
    count, dynamic = 0, False
    for s in scores:  # VBench's check_move
        count += s > thres
        if count >= count_num:
            dynamic = True
            break
    per256 = [s * 256.0 / scale for s in scores]
    return {
        "dynamic_degree_farneback": float(dynamic),
        "motion_farneback": float(np.mean(per256)),
        "static_flag": float(max(per256) < 0.5),
    }


def sharpness(frames: list[np.ndarray]) -> float:
    v = float(np.mean([cv2.Laplacian(cv2.cvtColor(f, cv2.COLOR_BGR2GRAY), cv2.CV_64F).var()
                       for f in frames]))  # fmt: skip
    return v / (v + 100.0)


def exposure_ok(frames: list[np.ndarray]) -> float:
    luma = np.stack([cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in frames])
    return float(1.0 - np.mean((luma <= 5) | (luma >= 250)))


def builtin_scores(frames: list[np.ndarray], fps: float) -> dict[str, float]:
    """Every builtin dimension of one video's BGR frames."""
    if not frames:
        raise ValueError("no decodable frame")
    return {
        "temporal_flickering": temporal_flickering(frames),
        **farneback_motion(frames, fps),
        "sharpness_laplacian": sharpness(frames),
        "exposure_ok": exposure_ok(frames),
    }


@register("scorer", "builtin")
class BuiltinScorer:
    environment = CORE
    family = "builtin"
    tiny_random = False
    model_id = VERSION
    version = VERSION

    def __init__(self, fps: float = 16.0):
        self.dimensions = BUILTIN_DIMENSIONS
        self.fps = fps

    @classmethod
    def from_spec(cls, spec: BackendSpec, fps: float = 16.0, **_: object) -> BuiltinScorer:
        return cls(fps)

    def score(self, video: str | os.PathLike[str] | np.ndarray) -> dict[str, float]:
        """A file is read as VBench reads it; RGB frames are taken at ``fps``."""
        if isinstance(video, np.ndarray):
            frames, fps = [np.ascontiguousarray(f[..., ::-1]) for f in video], self.fps
        else:
            frames, fps = read_bgr(video)
        return builtin_scores(frames, fps)
