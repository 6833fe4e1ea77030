"""Sample first-person images for demos and tests: ``python -m curation.sample_images OUT N``.

Each image is one frame of the procedural street of ``curation/render.py``, seen from a
seeded eye-level pose (a position on the ground grid, a heading, a small pitch), written as
an RGB JPEG. They stand in for the first-person photographs of the events stage when no
real ones are at hand (``make demo``); they are renders, not photographs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
from scipy.spatial.transform import Rotation

from curation.manifest import atomic_write_bytes
from curation.render import iter_render_frames
from curation.sample_sekai import INTRINSIC_1080P


def sample_pose(rng: np.random.Generator) -> np.ndarray:
    """A 4x4 camera-to-world pose at eye level: random place, heading and slight pitch."""
    c2w = np.eye(4)
    c2w[:3, :3] = Rotation.from_euler("yx", [rng.uniform(-np.pi, np.pi),
                                            rng.uniform(-0.08, 0.08)]).as_matrix()  # fmt: skip
    c2w[:3, 3] = [rng.uniform(-1.0, 1.0), 0.0, rng.uniform(-1.0, 1.0)]
    return c2w


def write_sample_images(
    out: str | Path, n: int, seed: int = 0, size: tuple[int, int] = (640, 360)
) -> list[Path]:
    """``n`` JPEGs ``fpv_sample_<i>.jpg`` of ``size`` (width, height) in ``out``; their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    poses = np.stack([sample_pose(rng) for _ in range(n)]) if n else np.zeros((0, 4, 4))
    paths = []
    for i, rgb in enumerate(iter_render_frames(poses, INTRINSIC_1080P, size)):
        ok, jpg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR),
                               [cv2.IMWRITE_JPEG_QUALITY, 92])  # fmt: skip
        if not ok:
            raise RuntimeError("JPEG encoding failed")
        path = out / f"fpv_sample_{i:04d}.jpg"
        atomic_write_bytes(path, jpg.tobytes())
        paths.append(path)
    return paths


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[1].isdigit():
        print("usage: python -m curation.sample_images OUT N", file=sys.stderr)
        return 2
    paths = write_sample_images(argv[0], int(argv[1]))
    print(f"wrote {len(paths)} images to {argv[0]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
