"""Bad trajectory files are refused with a precise reason, never loaded with pickle."""

from __future__ import annotations

import io

import numpy as np
import pytest

from curation.sekai import parse_clip_name
from curation.trajectory import TrajectoryError, load_trajectory, validate_trajectory


def _walk(n=40):
    c2w = np.tile(np.eye(4), (n, 1, 1))
    c2w[:, 2, 3] = np.arange(n) * 1e-3
    return c2w


def _save_npz(path, **arrays):
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.write_bytes(buf.getvalue())
    return path


def _reason(fn, *args, **kwargs) -> str:
    with pytest.raises(TrajectoryError) as e:
        fn(*args, **kwargs)
    return e.value.reason


def test_good_npz_and_npy_load(tmp_path):
    ext, k = load_trajectory(_save_npz(tmp_path / "a.npz", extrinsic=_walk(), intrinsic=np.eye(3)))
    assert ext.shape == (40, 4, 4) and k.shape == (3, 3)
    np.save(tmp_path / "b.npy", _walk())
    ext, k = load_trajectory(tmp_path / "b.npy")
    assert ext.shape == (40, 4, 4) and k is None
    assert validate_trajectory(ext).dtype == np.float64


def test_unreadable_files(tmp_path):
    (tmp_path / "empty.npz").write_bytes(b"")
    assert _reason(load_trajectory, tmp_path / "empty.npz") == "empty_file"
    good = _save_npz(tmp_path / "g.npz", extrinsic=_walk()).read_bytes()
    (tmp_path / "trunc.npz").write_bytes(good[: len(good) // 2])
    assert _reason(load_trajectory, tmp_path / "trunc.npz") == "corrupt_file"
    (tmp_path / "junk.npy").write_bytes(b"this is not numpy at all" * 10)
    assert _reason(load_trajectory, tmp_path / "junk.npy") == "corrupt_file"
    _save_npz(tmp_path / "obj.npz", extrinsic=np.array([{"evil": 1}], dtype=object))
    assert _reason(load_trajectory, tmp_path / "obj.npz") == "needs_pickle"
    _save_npz(tmp_path / "other.npz", poses=_walk())
    assert _reason(load_trajectory, tmp_path / "other.npz") == "missing_array"


def test_invalid_poses():
    nan = _walk()
    nan[7, 1, 3] = np.inf
    assert _reason(validate_trajectory, nan) == "non_finite"
    assert _reason(validate_trajectory, _walk()[:, :3]) == "bad_shape"
    assert _reason(validate_trajectory, _walk(5), min_frames=33) == "too_short"
    skew = _walk()
    skew[3, :3, :3] = np.diag([1.0, 1.0, 1.2])
    assert _reason(validate_trajectory, skew) == "not_rigid"
    mirror = _walk()
    mirror[3, :3, :3] = np.diag([1.0, 1.0, -1.0])  # orthonormal but det -1
    assert _reason(validate_trajectory, mirror) == "not_rigid"
    bottom = _walk()
    bottom[2, 3, 0] = 0.5
    assert _reason(validate_trajectory, bottom) == "not_homogeneous"
    assert _reason(validate_trajectory, np.array([["a"] * 16] * 3).reshape(3, 4, 4)) == "bad_dtype"


def test_clip_names_with_underscores_in_the_youtube_id():
    assert parse_clip_name("ab_c-D_e_0001800_0003600.mp4") == ("ab_c-D_e", 1800, 3600)
    for bad in ("nounderscore.mp4", "x_10_5.mp4", "x_a_b.mp4", "_1_2x"):
        with pytest.raises(ValueError):
            parse_clip_name(bad)
