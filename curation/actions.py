"""Camera trajectories to discrete keyboard/mouse action tokens (Yume's quantisation).

Per consecutive frame pair the relative motion in the current camera frame,
``T_rel = inv(T_i) @ T_{i+1}``, is quantised: translation to keys (W/S on camera z, D/A on
camera x), rotation to mouse arrows (Euler angle about y: left/right, about x: up/down).
Everything is vectorised over frames; callers concatenate many files into one array to
vectorise over files too (see ``label_codes``' ``pair_mask``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from schemas.actions import KEY_CODE, KEYS, MOUSE, MOUSE_CODE

# The action phrase sets and their text are a contract; re-exported from schemas.actions.
from schemas.actions import PHRASES as PHRASES
from schemas.actions import YUME5B_KEYS as YUME5B_KEYS
from schemas.actions import YUME5B_MOUSE as YUME5B_MOUSE
from schemas.actions import YUME_KEYS as YUME_KEYS
from schemas.actions import YUME_MOUSE as YUME_MOUSE
from schemas.actions import action_text as action_text

# The 3-axis sequences scipy's Rotation.as_euler takes (no axis twice in a row): lower case
# extrinsic, upper case intrinsic.
_EXTRINSIC = ("xyz", "xzy", "yxz", "yzx", "zxy", "zyx", "xyx", "xzx", "yxy", "yzy", "zxz", "zyz")
EULER_SEQUENCES: tuple[str, ...] = _EXTRINSIC + tuple(s.upper() for s in _EXTRINSIC)


@dataclass(frozen=True)
class LabelConfig:
    """Quantisation thresholds. The defaults reproduce the labels Yume published for Sekai."""

    translation_threshold: float = 1e-4  # per frame, in Sekai's normalised units
    rotation_threshold: float = 1e-3  # radians per frame
    stride: int = 1  # label frame i against frame i+stride; thresholds scale with it
    euler: str = "xyz"  # scipy sequence: lower case = extrinsic
    reset_identity_tol: float = 1e-5  # a pose this close to identity after one that is not
    reset_step_factor: float = 50.0  # or a step this many times the median step ...
    reset_min_translation: float = 0.05  # ... and at least this large (units per stride)
    reset_min_rotation: float = 0.3  # ... or a rotation at least this large (radians)

    def to_dict(self) -> dict:
        return asdict(self)


# Key code lookup: index = 3 * fwd + side, fwd/side in {0: none, 1: +, 2: -}.
# fwd: + is W (z > t), - is S; side: + is D (x > t), - is A.
_KEY_TABLE = np.array(
    [KEY_CODE[k] for k in ("None", "D", "A", "W", "W+D", "W+A", "S", "S+D", "S+A")],
    dtype=np.uint8,
)
# Mouse code lookup: index = 3 * vertical + horizontal, {0: none, 1: up / right, 2: down / left}.
_MOUSE_TABLE = np.array(
    [MOUSE_CODE[m] for m in ("·", "→", "←", "↑", "↑→", "↑←", "↓", "↓→", "↓←")],
    dtype=np.uint8,
)


def _ternary(v: np.ndarray, threshold: float) -> np.ndarray:
    """0 when |v| <= threshold, 1 when above +threshold, 2 when below -threshold."""
    return np.where(v > threshold, 1, np.where(v < -threshold, 2, 0)).astype(np.int64)


def relative_motion(c2w: np.ndarray, stride: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Relative translation (M, 3) and rotation (M, 3, 3) of frame i+stride seen from frame i.

    Uses the rigid inverse (R^T, -R^T p): the inputs are validated rigid transforms, so this
    equals ``inv(T_i) @ T_{i+stride}`` without a general 4x4 inverse per pair.
    """
    c2w = np.asarray(c2w, dtype=np.float64)
    a, b = c2w[:-stride], c2w[stride:]
    r_a_t = np.swapaxes(a[:, :3, :3], 1, 2)  # (M, 3, 3) R_i^T
    t_rel = np.einsum("nij,nj->ni", r_a_t, b[:, :3, 3] - a[:, :3, 3])  # (M, 3)
    r_rel = r_a_t @ b[:, :3, :3]  # (M, 3, 3)
    return t_rel, r_rel


def euler_xy(r_rel: np.ndarray, seq: str = "xyz") -> tuple[np.ndarray, np.ndarray]:
    """Angles about the camera x (pitch) and y (yaw) axes of each rotation, in radians.

    ``"xyz"`` (scipy extrinsic, R = Rz Ry Rx) has a closed form; any other scipy sequence
    goes through ``Rotation.as_euler``.
    """
    if seq == "xyz":
        ax = np.arctan2(r_rel[:, 2, 1], r_rel[:, 2, 2])
        ay = np.arcsin(np.clip(-r_rel[:, 2, 0], -1.0, 1.0))
        return ax, ay
    from scipy.spatial.transform import Rotation  # only other conventions need scipy

    angles = Rotation.from_matrix(r_rel).as_euler(seq)
    lower = seq.lower()
    return angles[:, lower.index("x")], angles[:, lower.index("y")]


def codes_from_motion(
    t_rel: np.ndarray, r_rel: np.ndarray, config: LabelConfig = LabelConfig()
) -> tuple[np.ndarray, np.ndarray]:
    """Quantise relative motions (from ``relative_motion``) to key and mouse codes."""
    ax, ay = euler_xy(r_rel, config.euler)
    t = config.translation_threshold * config.stride
    r = config.rotation_threshold * config.stride
    keys = _KEY_TABLE[3 * _ternary(t_rel[:, 2], t) + _ternary(t_rel[:, 0], t)]
    # Pitch about +x turns the view up (y points down), yaw about +y turns it right.
    mouse = _MOUSE_TABLE[3 * _ternary(ax, r) + _ternary(ay, r)]
    return keys, mouse


def label_codes(
    c2w: np.ndarray, config: LabelConfig = LabelConfig()
) -> tuple[np.ndarray, np.ndarray]:
    """Key and mouse codes (uint8 into KEYS / MOUSE) of each frame pair, length N - stride."""
    return codes_from_motion(*relative_motion(c2w, config.stride), config)


def label_frames(
    c2w: np.ndarray, config: LabelConfig = LabelConfig()
) -> tuple[list[str], list[str]]:
    """Keys and mouse labels (e.g. ``"W+A"``, ``"↑→"``) of each consecutive frame pair.

    ``c2w`` is (N, 4, 4) camera-to-world in OpenCV axes; the result has length N - 1
    (N - stride with a stride).
    """
    keys, mouse = label_codes(c2w, config)
    return [KEYS[k] for k in keys], [MOUSE[m] for m in mouse]


def detect_resets(c2w: np.ndarray, config: LabelConfig = LabelConfig()) -> np.ndarray:
    """Indices of frame pairs (i, i+stride) that are pose re-anchorings, not motion."""
    t_rel, r_rel = relative_motion(c2w, config.stride)
    return resets_from_features(*reset_features(c2w, t_rel, r_rel), config)


def reset_features(
    c2w: np.ndarray, t_rel: np.ndarray, r_rel: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per frame: distance from identity; per pair: step length and rotation angle.

    Vectorised over any stack of poses, so a batch of files is done in one pass.
    """
    off_identity = np.abs(np.asarray(c2w) - np.eye(4)).reshape(len(c2w), -1).max(axis=1)
    step = np.sqrt(np.einsum("ni,ni->n", t_rel, t_rel))
    angle = np.arccos(np.clip((np.trace(r_rel, axis1=1, axis2=2) - 1.0) / 2.0, -1.0, 1.0))
    return off_identity, step, angle


def resets_from_features(
    off_identity: np.ndarray,
    step: np.ndarray,
    angle: np.ndarray,
    config: LabelConfig = LabelConfig(),
) -> np.ndarray:
    """Reset pairs of one trajectory from its ``reset_features``.

    Sekai re-anchors poses to identity every 300 frames. A reset is a pose that snaps to
    identity after one that was not identity, or a step far beyond the trajectory's median
    step (and large in absolute terms, so a still camera's jitter never counts).
    """
    s, tol, f = config.stride, config.reset_identity_tol, config.reset_step_factor
    snap = (off_identity[s:] <= tol) & (off_identity[:-s] > tol)
    jump_t = step > max(f * float(np.median(step)), config.reset_min_translation * s)
    jump_r = angle > max(f * float(np.median(angle)), config.reset_min_rotation * s)
    return np.flatnonzero(snap | jump_t | jump_r)


@dataclass(frozen=True)
class Segment:
    """A maximal run of one label: frames start..end inclusive (trajectory frames)."""

    start: int
    end: int
    keys: int  # code into KEYS
    mouse: int  # code into MOUSE

    @property
    def num_frames(self) -> int:
        return self.end - self.start + 1


def segment_runs(
    keys: np.ndarray,
    mouse: np.ndarray,
    resets: np.ndarray | None = None,
    *,
    min_frames: int = 33,
    max_frames: int | None = None,
    stride: int = 1,
) -> list[Segment]:
    """Split per-pair labels into segments of one (keys, mouse) label.

    Pair i is the motion from frame i to frame i+stride (``relative_motion``), so a run of
    pairs i..j spans frames i..j+stride. Runs never cross a reset pair, are kept only when they span at
    least ``min_frames`` frames, and runs longer than ``max_frames`` are split evenly.
    """
    n = len(keys)
    if n == 0:
        return []
    label = keys.astype(np.int64) * len(MOUSE) + mouse.astype(np.int64)
    valid = np.ones(n, dtype=bool)
    if resets is not None and len(resets):
        valid[np.asarray(resets)] = False
    # A run starts where the label changes, or validity changes.
    change = np.ones(n, dtype=bool)
    change[1:] = (label[1:] != label[:-1]) | (valid[1:] != valid[:-1])
    starts = np.flatnonzero(change)
    ends = np.append(starts[1:], n) - 1
    out: list[Segment] = []
    for a, b in zip(starts.tolist(), ends.tolist(), strict=True):
        if not valid[a]:
            continue
        f0, f1 = a, b + stride
        if f1 - f0 + 1 < min_frames:
            continue
        for c0, c1 in _split_even(f0, f1, max_frames):
            out.append(Segment(c0, c1, int(keys[a]), int(mouse[a])))
    return out


def _split_even(f0: int, f1: int, max_frames: int | None) -> list[tuple[int, int]]:
    """Split frames f0..f1 into the fewest near-equal chunks of at most max_frames frames."""
    length = f1 - f0 + 1
    if max_frames is None or length <= max_frames:
        return [(f0, f1)]
    parts = -(-length // max_frames)
    bounds = np.linspace(f0, f1 + 1, parts + 1).round().astype(int)
    return [(int(bounds[i]), int(bounds[i + 1]) - 1) for i in range(parts)]


def _angles_deg(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Angles in degrees between row vectors, and whether each is defined (no zero vector)."""
    nu, nv = np.linalg.norm(u, axis=-1), np.linalg.norm(v, axis=-1)
    ok = (nu > 1e-12) & (nv > 1e-12)
    cos = np.einsum("...i,...i->...", u, v) / np.where(ok, nu * nv, 1.0)
    return np.where(ok, np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))), 0.0), ok


def _range_means(
    values: np.ndarray, valid: np.ndarray, lo: np.ndarray, hi: np.ndarray
) -> np.ndarray:
    """Mean of ``values[lo:hi]`` over valid entries, per range (0 if none).

    Each range is summed on its own (``np.add.reduceat``), not as a difference of prefix
    sums over everything: a huge or infinite value elsewhere in the array must not round
    another range's mean to 0 or turn it into ``inf - inf = NaN``.
    """
    n = len(values)
    lo, hi = np.clip(lo, 0, n), np.clip(hi, 0, n)
    if len(lo) == 0:
        return np.zeros(0)
    padded = np.append(np.where(valid, values, 0.0), 0.0)  # hi == n stays a valid index
    counted = np.append(valid.astype(np.int64), 0)
    bounds = np.stack([lo, hi], axis=1).reshape(-1)
    sums = np.add.reduceat(padded, bounds)[::2]
    counts = np.add.reduceat(counted, bounds)[::2]
    empty = hi <= lo  # reduceat gives the single element at lo for an empty range
    counts = np.where(empty, 0, counts)
    return np.where(counts > 0, np.where(empty, 0.0, sums) / np.maximum(counts, 1), 0.0)


def segment_speeds_batch(
    c2w: np.ndarray, starts: np.ndarray, ends: np.ndarray, fps: float
) -> np.ndarray:
    """Yume's speeds (M, 3) of many segments (frames starts[i]..ends[i]) of one trajectory.

    distance = mean |Δposition| × fps; turn = mean angle (degrees) between successive
    displacement vectors; view rotation = mean angle (degrees) between successive camera z axes.
    Each segment only reads its own frames, so segments of several trajectories concatenated
    into one array get the speeds they would get alone; overflowing poses give non-finite
    speeds (for the caller to reject), with no warning.
    """
    c2w = np.asarray(c2w, dtype=np.float64)
    starts, ends = np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64)
    with np.errstate(over="ignore", invalid="ignore"):
        d = np.diff(c2w[:, :3, 3], axis=0)  # (N-1, 3): d[j] = p[j+1] - p[j]
        step = np.linalg.norm(d, axis=1)
        turn, turn_ok = _angles_deg(d[:-1], d[1:])  # (N-2,)
        z = c2w[:, :3, 2]
        view, view_ok = _angles_deg(z[:-1], z[1:])  # (N-1,)
        distance = _range_means(step, np.ones_like(step, bool), starts, ends) * fps
        return np.stack(
            [
                distance,
                _range_means(turn, turn_ok, starts, ends - 1),
                _range_means(view, view_ok, starts, ends),
            ],
            axis=1,
        )


def segment_speeds(c2w: np.ndarray, start: int, end: int, fps: float) -> tuple[float, float, float]:
    """Yume's speeds of one segment, frames start..end (see ``segment_speeds_batch``)."""
    d, t, v = segment_speeds_batch(c2w, np.array([start]), np.array([end]), fps)[0]
    return float(d), float(t), float(v)
