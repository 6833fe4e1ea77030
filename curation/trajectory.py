"""Loading and validating camera trajectories safely (never with pickle).

Sizes are checked before anything is allocated: the ``.npy`` header's declared shape, and in
an ``.npz`` each member's declared size and compression ratio, are compared against a limit
and against the bytes really there, so a hostile header or a zip bomb is a rejects row, not
a ``MemoryError`` (or the kernel's OOM killer) ending the worker.
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path
from typing import IO

import numpy as np
from numpy.lib import format as npy_format

from curation.stages.base import Reject

_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"  # .npz is a zip archive
DEFAULT_MAX_BYTES = 512 * 2**20
# Deflate peaks near 1032:1; real pose arrays compress far less. Above this (and past a few
# MiB, so tiny constant arrays pass) a member is treated as a zip bomb.
MAX_COMPRESS_RATIO = 200
_RATIO_FLOOR = 4 * 2**20
# What reading a malformed .npy/.npz may raise (zip, zlib, numpy header parsing, files).
_READ_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    OSError,
    KeyError,
    ValueError,
    NotImplementedError,  # an unsupported zip compression method
    RuntimeError,  # an encrypted zip member
)


class TrajectoryError(Reject):
    """A trajectory file that cannot be used; ``reason`` is the rejects-table code."""


def _read_npy(f: IO[bytes], available: int, max_bytes: int, what: str) -> np.ndarray:
    """One ``.npy`` stream, after checking its header's declared size (no pickle)."""
    version = npy_format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = npy_format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, fortran, dtype = npy_format.read_array_header_2_0(f)
    else:
        raise TrajectoryError("corrupt_file", f"{what}: unsupported .npy version {version}")
    if dtype.hasobject:
        raise TrajectoryError("needs_pickle", f"{what}: array needs pickle to load; refused")
    if any(d < 0 for d in shape):
        raise TrajectoryError("corrupt_file", f"{what}: header declares shape {shape}")
    # itemsize 0 (e.g. "S0") must not let a shape of 10**18 elements through
    declared = int(np.prod(shape, dtype=object)) * max(dtype.itemsize, 1)
    if declared > max_bytes:
        raise TrajectoryError(
            "too_large",
            f"{what}: header declares shape {shape} of {dtype} = {declared} bytes, "
            f"above the limit of {max_bytes} (max_trajectory_bytes)",
        )
    left = available - f.tell()
    if declared > left:
        raise TrajectoryError(
            "corrupt_file", f"{what}: header declares {declared} bytes, only {left} follow"
        )
    arr = np.empty(shape[::-1] if fortran else shape, dtype=dtype)
    raw, got = arr.reshape(-1).view(np.uint8), 0
    while got < raw.size:
        n = f.readinto(raw[got:])
        if not n:
            raise TrajectoryError("corrupt_file", f"{what}: truncated ({got} of {raw.size} B)")
        got += n
    return arr.T if fortran else arr


def _member_name(name: str) -> str:
    return name[:-4] if name.endswith(".npy") else name


def _read_npz(path: Path, max_bytes: int) -> tuple[np.ndarray, np.ndarray | None]:
    with zipfile.ZipFile(path) as zf:
        members = {_member_name(i.filename): i for i in zf.infolist() if not i.is_dir()}
        if "extrinsic" not in members:
            raise TrajectoryError(
                "missing_array", f"npz has no 'extrinsic' array (has {sorted(members)[:10]})"
            )
        wanted = [members[k] for k in ("extrinsic", "intrinsic") if k in members]
        total = sum(i.file_size for i in wanted)
        if total > max_bytes:
            raise TrajectoryError(
                "too_large",
                f"npz members decompress to {total} bytes, above the limit of {max_bytes} "
                "(max_trajectory_bytes)",
            )
        for i in wanted:
            ratio = i.file_size / max(i.compress_size, 1)
            if i.file_size > _RATIO_FLOOR and ratio > MAX_COMPRESS_RATIO:
                raise TrajectoryError(
                    "zip_bomb",
                    f"npz member {i.filename} expands {ratio:.0f}x "
                    f"({i.compress_size} -> {i.file_size} bytes)",
                )
        arrays = {}
        for i in wanted:
            with zf.open(i) as f:  # zipfile never yields more than the declared file_size
                arrays[_member_name(i.filename)] = _read_npy(
                    f, i.file_size, max_bytes, f"npz member {i.filename}"
                )
    return arrays["extrinsic"], arrays.get("intrinsic")


def load_trajectory(
    path: str | Path, max_bytes: int = DEFAULT_MAX_BYTES
) -> tuple[np.ndarray, np.ndarray | None]:
    """Read (extrinsic (N,4,4) camera-to-world, intrinsic (3,3) or None) from .npz or .npy.

    Sekai ships ``.npz`` with ``extrinsic`` and ``intrinsic``; Yume segments and bare
    trajectories are ``.npy`` arrays (N,4,4). Object arrays are refused (no pickle), and so
    is anything whose declared size is above ``max_bytes``.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if size == 0:
            raise TrajectoryError("empty_file", f"{path.name} has zero bytes")
        if size > max_bytes:  # also bounds an npz's central directory, read whole on open
            raise TrajectoryError(
                "too_large", f"{path.name} is {size} bytes, above the limit of {max_bytes}"
            )
        with open(path, "rb") as f:
            magic = f.read(6)
            if magic == _NPY_MAGIC:
                f.seek(0)
                return _read_npy(f, size, max_bytes, path.name), None
        if magic[:4] != _ZIP_MAGIC:
            raise TrajectoryError("corrupt_file", f"{path.name} is neither .npy nor .npz data")
        return _read_npz(path, max_bytes)
    except TrajectoryError:
        raise
    except FileNotFoundError as e:  # listed, then gone before it was read (moved, deleted)
        raise TrajectoryError("missing_trajectory", f"{path} no longer exists") from e
    except _READ_ERRORS as e:
        raise TrajectoryError("corrupt_file", f"cannot read: {type(e).__name__}: {e}") from e


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
    if intrinsic is not None and (
        intrinsic.dtype.kind not in "fiu"
        or intrinsic.shape != (3, 3)
        or not np.isfinite(intrinsic).all()
    ):
        raise TrajectoryError(
            "bad_intrinsic",
            f"intrinsic {intrinsic.dtype} {intrinsic.shape}: want finite numbers, shape (3, 3)",
        )
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
