"""Loading and validating camera trajectories safely (never with pickle)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from curation.stages.base import Reject

_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"  # .npz is a zip archive


class TrajectoryError(Reject):
    """A trajectory file that cannot be used; ``reason`` is the rejects-table code."""


def load_trajectory(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Read (extrinsic (N,4,4) camera-to-world, intrinsic (3,3) or None) from .npz or .npy.

    Sekai ships ``.npz`` with ``extrinsic`` and ``intrinsic``; Yume segments and bare
    trajectories are ``.npy`` arrays (N,4,4). Object arrays are refused (no pickle).
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise TrajectoryError("empty_file", f"{path.name} has zero bytes")
        with open(path, "rb") as f:
            magic = f.read(6)
        if magic[:4] != _ZIP_MAGIC and magic != _NPY_MAGIC:
            raise TrajectoryError("corrupt_file", f"{path.name} is neither .npy nor .npz data")
        data = np.load(path, allow_pickle=False)
        if isinstance(data, np.lib.npyio.NpzFile):
            with data:
                if "extrinsic" not in data.files:
                    raise TrajectoryError(
                        "missing_array", f"npz has no 'extrinsic' array (has {data.files})"
                    )
                extrinsic = data["extrinsic"]
                intrinsic = data["intrinsic"] if "intrinsic" in data.files else None
        else:
            extrinsic, intrinsic = data, None
    except TrajectoryError:
        raise
    except ValueError as e:
        if "pickle" in str(e):
            raise TrajectoryError("needs_pickle", "array needs pickle to load; refused") from e
        raise TrajectoryError("corrupt_file", f"cannot parse: {e}") from e
    except (zipfile.BadZipFile, EOFError, OSError, KeyError) as e:
        raise TrajectoryError("corrupt_file", f"cannot read: {type(e).__name__}: {e}") from e
    return extrinsic, intrinsic


def check_shape(
    extrinsic: np.ndarray, intrinsic: np.ndarray | None = None, *, min_frames: int = 2
) -> np.ndarray:
    """The cheap per-file checks (dtype, shape, length, intrinsic); returns float64 poses."""
    if extrinsic.dtype.kind not in "fiu":
        raise TrajectoryError("bad_dtype", f"extrinsic dtype {extrinsic.dtype} is not numeric")
    if extrinsic.ndim != 3 or extrinsic.shape[1:] != (4, 4):
        raise TrajectoryError("bad_shape", f"extrinsic shape {extrinsic.shape}, want (N, 4, 4)")
    n = extrinsic.shape[0]
    if n < min_frames:
        raise TrajectoryError("too_short", f"{n} frames, need at least {min_frames}")
    if intrinsic is not None and (intrinsic.shape != (3, 3) or not np.isfinite(intrinsic).all()):
        raise TrajectoryError("bad_intrinsic", f"intrinsic shape {intrinsic.shape} or non-finite")
    return extrinsic.astype(np.float64, copy=False)


def bad_poses(c2w: np.ndarray, rigid_tol: float = 1e-3) -> np.ndarray:
    """Per pose: True if it is non-finite, not homogeneous or not a rotation + translation.

    Works on any stack of poses, so a batch of files is checked in one pass.
    Orthonormality and det come from the columns' dot and cross products: much cheaper than
    N small matrix products, and exact enough for a tolerance check.
    """
    finite = np.isfinite(c2w).reshape(len(c2w), -1).all(axis=1)
    bottom = np.abs(c2w[:, 3] - np.array([0.0, 0.0, 0.0, 1.0])).max(axis=1)
    ortho, det = _rotation_errors(c2w)
    with np.errstate(invalid="ignore"):
        return (
            ~finite | (bottom > rigid_tol) | (ortho > rigid_tol) | (np.abs(det - 1.0) > rigid_tol)
        )


def _rotation_errors(c2w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c0, c1, c2 = c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2]
    gram = np.stack(
        [
            np.einsum("ni,ni->n", c0, c0) - 1.0,
            np.einsum("ni,ni->n", c1, c1) - 1.0,
            np.einsum("ni,ni->n", c2, c2) - 1.0,
            np.einsum("ni,ni->n", c0, c1),
            np.einsum("ni,ni->n", c0, c2),
            np.einsum("ni,ni->n", c1, c2),
        ]
    )
    return np.abs(gram).max(axis=0), np.einsum("ni,ni->n", c0, np.cross(c1, c2))


def validate_trajectory(
    extrinsic: np.ndarray,
    intrinsic: np.ndarray | None = None,
    *,
    min_frames: int = 2,
    rigid_tol: float = 1e-3,
) -> np.ndarray:
    """Return ``extrinsic`` as float64 (N,4,4) or raise TrajectoryError with the reason.

    Checks: numeric dtype, shape, length, finiteness, homogeneous bottom row, and that each
    rotation is orthonormal with det +1 within ``rigid_tol`` (float32 data is ~1e-6 off).
    """
    c2w = check_shape(extrinsic, intrinsic, min_frames=min_frames)
    n = len(c2w)
    finite = np.isfinite(c2w).reshape(n, -1).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise TrajectoryError("non_finite", f"NaN/Inf in {len(bad)} poses, first at frame {bad[0]}")
    bottom = np.abs(c2w[:, 3] - np.array([0.0, 0.0, 0.0, 1.0])).max(axis=1)
    if (bottom > rigid_tol).any():
        i = int(np.argmax(bottom))
        raise TrajectoryError("not_homogeneous", f"bottom row of frame {i} is {c2w[i, 3].tolist()}")
    ortho, det = _rotation_errors(c2w)
    bad = (ortho > rigid_tol) | (np.abs(det - 1.0) > rigid_tol)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise TrajectoryError(
            "not_rigid",
            f"{int(bad.sum())} poses are not rotations; frame {i}: "
            f"|R^T R - I|max={ortho[i]:.3g}, det={det[i]:.4g}",
        )
    return c2w
