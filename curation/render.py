"""A procedural 3D street seen by a moving camera: test and demo videos for Sekai trajectories.

The scene is sized for Sekai's normalised translations (a walk moves ~1e-3..3e-3 per frame):
a checkered ground plane ``GROUND_Y`` below the identity camera, box pillars on a jittered
grid every ~0.12 units, and a sky with a sun and a hill line so that yaw and pitch are
visible even where no pillar is in view. World axes are OpenCV's (x right, y down, z forward).

The ground and sky are ray-cast per pixel with numpy; pillars are painted far to near with
OpenCV polygons, so a 320x180 frame takes a few milliseconds on one core.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from curation.video import write_mp4

GROUND_Y = 0.03  # ground plane height below the identity camera (y is down)
CELL = 0.05  # ground checker size
FOG = 0.6  # distance at which colours fade to ~37 % towards the horizon colour
MAX_DIST = 1.2  # pillars farther than this are not drawn (fully fogged)
NEAR = 0.004  # pillars with a corner closer than this in front of the camera are skipped
SOURCE_SIZE = (1920, 1080)  # the frame size the intrinsic is given for
BG_SCALE = 2  # ground and sky are ray-cast at half resolution, then upsampled

HORIZON = np.array([200, 210, 225], np.float32)
ZENITH = np.array([70, 120, 200], np.float32)
SUN = np.array([255, 240, 190], np.float32)
HILLS = np.array([110, 140, 120], np.float32)
GROUND_A = np.array([150, 140, 120], np.float32)
GROUND_B = np.array([95, 100, 95], np.float32)
SUN_DIR = (np.array([0.5, -0.3, 0.81]) / np.linalg.norm([0.5, -0.3, 0.81])).astype(np.float32)


def _palette() -> np.ndarray:
    """(4 * 256,) colours packed as RGBA uint32 (fast to gather): sky gradient, hills, and the two ground tones by fog."""
    t = np.linspace(0.0, 1.0, 256, dtype=np.float32)[:, None]
    sky = HORIZON + (ZENITH - HORIZON) * t
    hills = np.repeat(HILLS[None], 256, axis=0)
    ground = [HORIZON + (g - HORIZON) * t for g in (GROUND_A, GROUND_B)]
    rgb = np.concatenate([sky, hills, *ground]).round().astype(np.uint8)
    rgba = np.concatenate([rgb, np.zeros((len(rgb), 1), np.uint8)], axis=1)
    return np.ascontiguousarray(rgba).view(np.uint32).ravel()


_PALETTE = _palette()


def _pillars(seed: int = 7, extent: float = 1.8, spacing: float = 0.12) -> np.ndarray:
    """Pillar table (P, 8): x, z, half width, top y, r, g, b, unused; fixed by ``seed``."""
    rng = np.random.default_rng(seed)
    g = np.arange(-extent, extent + 1e-9, spacing)
    x, z = (a.ravel() for a in np.meshgrid(g, g))
    x = x + rng.uniform(-0.35, 0.35, x.size) * spacing
    z = z + rng.uniform(-0.35, 0.35, z.size) * spacing
    keep = rng.random(x.size) < 0.55
    n = int(keep.sum())
    half = rng.uniform(0.006, 0.014, n)
    top = GROUND_Y - rng.uniform(0.035, 0.12, n)
    rgb = rng.uniform(60, 240, (n, 3))
    return np.column_stack([x[keep], z[keep], half, top, rgb, np.zeros(n)]).astype(np.float64)


PILLARS = _pillars()
# Corner offsets of a box: (dx, y-is-top, dz) for the 8 corners.
_CORNERS = np.array(
    [
        [-1, 0, -1],
        [1, 0, -1],
        [1, 0, 1],
        [-1, 0, 1],
        [-1, 1, -1],
        [1, 1, -1],
        [1, 1, 1],
        [-1, 1, 1],
    ],
    np.float64,
)
# Side faces as corner indices, with their outward world normal axis/sign and a shade.
_FACES = (
    ((1, 2, 6, 5), 0, 1.0, 0.75),  # +x
    ((0, 3, 7, 4), 0, -1.0, 0.6),  # -x
    ((2, 3, 7, 6), 2, 1.0, 0.95),  # +z
    ((0, 1, 5, 4), 2, -1.0, 0.85),  # -z
)
_TOP = (4, 5, 6, 7)


def scale_intrinsic(intrinsic: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Scale a 3x3 intrinsic given for a 1920x1080 frame to ``size`` = (width, height)."""
    k = np.asarray(intrinsic, np.float64).copy()
    k[0] *= size[0] / SOURCE_SIZE[0]
    k[1] *= size[1] / SOURCE_SIZE[1]
    return k


class _Renderer:
    def __init__(self, intrinsic: np.ndarray, size: tuple[int, int]):
        self.w, self.h = size
        self.k = scale_intrinsic(intrinsic, size)
        # The smooth background is ray-cast at 1/BG_SCALE resolution and upsampled.
        self.bw, self.bh = max(self.w // BG_SCALE, 1), max(self.h // BG_SCALE, 1)
        k = scale_intrinsic(intrinsic, (self.bw, self.bh))
        fx, fy, cx, cy = k[0, 0], k[1, 1], k[0, 2], k[1, 2]
        u, v = np.meshgrid(np.arange(self.bw) + 0.5, np.arange(self.bh) + 0.5)
        d = np.stack([(u - cx) / fx, (v - cy) / fy, np.ones_like(u)], -1).reshape(-1, 3)
        self.rays = (d / np.linalg.norm(d, axis=1, keepdims=True)).astype(np.float32)  # (HW, 3)

    def background(self, rot: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """Ray-cast ground and sky: (H, W, 3) uint8.

        Each pixel gets a kind (sky, hill, two ground tones) and a 0..255 level (sky
        gradient or fog), looked up in ``_PALETTE``; the small sun disc is blended after.
        """
        d = self.rays @ rot.T.astype(np.float32)  # (HW, 3) unit world directions
        dy = d[:, 1]
        px, py, pz = (float(v) for v in pos)  # Python floats keep the maths in float32
        height = np.float32(GROUND_Y - py)
        # Sky: gradient by elevation, a hill line by azimuth.
        elev = -dy
        level = np.clip(elev * 765.0, 0.0, 255.0)
        az = np.arctan2(d[:, 0], d[:, 2])
        hill = 0.04 + 0.03 * np.sin(3 * az) + 0.02 * np.sin(7 * az + 1.0)
        kind = np.where(elev < hill, 1, 0)
        # Ground: a checker where the ray hits the plane y = GROUND_Y, fogged by distance.
        hit = dy > 1e-4 if height > 0 else dy < -1e-4
        s = height / np.where(hit, dy, np.float32(1.0))
        gx = np.floor((px + s * d[:, 0]) * (1 / CELL)).astype(np.int32)
        gz = np.floor((pz + s * d[:, 2]) * (1 / CELL)).astype(np.int32)
        kind = np.where(hit, 2 + ((gx + gz) & 1), kind)
        level = np.where(hit, 255.0 * np.exp(-s / FOG), level)
        rgba = np.take(_PALETTE, kind * 256 + level.astype(np.int32))  # (HW,) packed uint32
        img = rgba.view(np.uint8).reshape(-1, 4)[:, :3].copy()  # (HW, 3)
        sun = (d @ SUN_DIR - 0.995) * 200.0
        lit = np.nonzero((sun > 0) & ~hit)[0]
        if lit.size:
            w = np.minimum(sun[lit], 1.0)[:, None]
            img[lit] = img[lit] + (SUN - img[lit]) * w
        img = img.reshape(self.bh, self.bw, 3)
        return cv2.resize(img, (self.w, self.h), interpolation=cv2.INTER_LINEAR)

    def frame(self, c2w: np.ndarray) -> np.ndarray:
        rot, pos = c2w[:3, :3], c2w[:3, 3]
        img = self.background(rot, pos)
        # Cull pillars by distance and by a loose frustum test on their centres.
        rel = np.column_stack([PILLARS[:, 0], (GROUND_Y + PILLARS[:, 3]) / 2, PILLARS[:, 1]]) - pos
        cam = rel @ rot  # world -> camera: R^T (p - t), row-vector form
        dist = np.linalg.norm(rel, axis=1)
        margin = 0.15
        ok = (dist < MAX_DIST) & (cam[:, 2] > NEAR)
        ok &= np.abs(cam[:, 0]) < cam[:, 2] * (self.w / self.k[0, 0]) + margin
        ok &= np.abs(cam[:, 1]) < cam[:, 2] * (self.h / self.k[1, 1]) + margin
        idx = np.nonzero(ok)[0]
        if idx.size == 0:
            return img
        p = PILLARS[idx]
        # Corners (n, 8, 3) in world, then camera coordinates.
        cx = p[:, None, 0] + _CORNERS[None, :, 0] * p[:, None, 2]
        cz = p[:, None, 1] + _CORNERS[None, :, 2] * p[:, None, 2]
        cy = np.where(_CORNERS[None, :, 1] > 0, p[:, None, 3], GROUND_Y)
        corners = np.stack([cx, cy, cz], -1) - pos
        cc = corners @ rot  # (n, 8, 3)
        front = (cc[..., 2] > NEAR).all(axis=1)
        uv = cc[..., :2] / np.maximum(cc[..., 2:], NEAR) * [self.k[0, 0], self.k[1, 1]]
        uv += [self.k[0, 2], self.k[1, 2]]
        pts = np.round(np.clip(uv, -1e4, 1e4) * 16).astype(np.int32)  # 4 fractional bits
        for i in np.argsort(-dist[idx]):
            if not front[i]:
                continue
            x, z, half, top = p[i, :4]
            fog = np.exp(-dist[idx[i]] / FOG)
            base = p[i, 4:7] * fog + HORIZON * (1 - fog)
            for face, axis, sign, shade in _FACES:
                centre = (x, z)[axis // 2] + sign * half
                if (pos[axis] - centre) * sign <= 0:  # back face
                    continue
                colour = (base * shade + HORIZON * (1 - fog) * (1 - shade)).tolist()
                cv2.fillConvexPoly(img, pts[i, list(face)], colour, cv2.LINE_8, 4)
            if pos[1] < top:  # camera above the top
                cv2.fillConvexPoly(
                    img, pts[i, list(_TOP)], (base * 1.1).clip(0, 255).tolist(), cv2.LINE_8, 4
                )
        return img


def iter_render_frames(
    c2w: np.ndarray, intrinsic: np.ndarray, size: tuple[int, int] = (320, 180)
) -> Iterator[np.ndarray]:
    """Yield one (H, W, 3) uint8 RGB frame per camera pose in ``c2w`` (N, 4, 4)."""
    c2w = np.asarray(c2w, np.float64)
    if c2w.ndim != 3 or c2w.shape[1:] != (4, 4):
        raise ValueError(f"c2w must be (N, 4, 4), got {c2w.shape}")
    renderer = _Renderer(np.asarray(intrinsic, np.float64), size)
    for pose in c2w:
        yield renderer.frame(pose)


def render_clip(
    c2w: np.ndarray,
    intrinsic: np.ndarray,
    path: str | Path,
    fps: float = 30.0,
    size: tuple[int, int] = (320, 180),
    crf: int = 23,
    preset: str = "veryfast",
) -> None:
    """Render the camera path ``c2w`` (N, 4, 4, OpenCV camera-to-world) to an H.264 mp4.

    ``intrinsic`` is 3x3 in pixels for a 1920x1080 frame and is scaled to ``size`` (w, h).
    The file appears atomically (written under a temporary name, then renamed).
    """
    frames = iter_render_frames(c2w, intrinsic, size)
    write_mp4(path, frames, fps, size[0], size[1], crf=crf, preset=preset)
