"""Hostile or broken inputs to the actions stage: each is one rejects row, never a dead job.

Covers sizes checked before allocation (``.npy`` headers, zip members), ragged and empty
CSVs, undecodable labels, duplicate clip ids, ids too long to export, overflowing poses and
strict JSON. Every case runs the real loaders and the real stage ``process``/``discover``.
"""

from __future__ import annotations

import io
import json
import math
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from numpy.lib import format as npy_format

from curation.actions import segment_speeds_batch
from curation.dataroot import DataRoot
from curation.manifest import atomic_write_json
from curation.sample_sekai import write_sample_release
from curation.sekai import discover_segments, discover_sekai
from curation.stages.actions import ActionsConfig, ActionsStage
from curation.trajectory import TrajectoryError, check_shape, load_trajectory
from jobs.runner import RunOptions, run_stage

# Every reason a known bad input may get; ``unexpected_error`` is deliberately not one.
KNOWN = {
    "empty_file", "corrupt_file", "needs_pickle", "missing_array", "too_large", "zip_bomb",
    "bad_dtype", "bad_shape", "too_short", "bad_intrinsic", "non_finite", "not_homogeneous",
    "not_rigid", "non_finite_values", "clip_id_too_long", "bad_clip_id",
}  # fmt: skip


def _walk(n: int = 60, step: float = 2e-3) -> np.ndarray:
    c2w = np.tile(np.eye(4), (n, 1, 1))
    c2w[:, 2, 3] = np.arange(n) * step
    return c2w


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _header(shape: tuple, version: tuple = (1, 0), descr: str = "<f8") -> bytes:
    buf = io.BytesIO()
    d = {"descr": descr, "fortran_order": False, "shape": shape}
    write = npy_format.write_array_header_1_0 if version == (1, 0) else (
        npy_format.write_array_header_2_0)  # fmt: skip
    write(buf, d)
    return buf.getvalue()


def _zip(path: Path, members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", method) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _reason(path: Path, **kw) -> str:
    with pytest.raises(TrajectoryError) as e:
        ext, k = load_trajectory(path, **kw)
        check_shape(ext, k)
    return e.value.reason


def _stage(tmp: Path, **config) -> ActionsStage:
    return ActionsStage(ActionsConfig(min_frames=20, **config), DataRoot.at(tmp / "root"))


def _item(path: Path, clip_id: str | None = None) -> dict:
    clip_id = clip_id or path.stem
    return {"clip_id": clip_id, "key": clip_id, "path": str(path), "input": str(path)}


def _strict(text: str) -> object:
    def refuse(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


# ---- sizes checked before allocation -----------------------------------------------------------


def _size_cases(tmp: Path) -> dict[Path, str]:
    """Files that must be refused, each with its reason."""
    huge = (10**9, 4, 4)
    bomb = _npy(np.zeros((2**16, 4, 4)))  # 8 MiB of zeros, ~8 KB deflated
    cases = {
        "huge_v1.npy": (_header(huge) + bytes(64), "too_large"),
        "huge_v2.npy": (_header(huge, (2, 0)) + bytes(64), "too_large"),
        "huge_S0.npy": (_header((10**18,), descr="|S0") + bytes(8), "too_large"),
        "overflow_shape.npy": (_header((2**62, 2**62, 4, 4)), "too_large"),
        "negative_shape.npy": (_header((-5, 4, 4)), "corrupt_file"),
        "claims_more.npy": (_header((1000, 4, 4)) + bytes(64), "corrupt_file"),
        "junk_header.npy": (b"\x93NUMPY\x01\x00\x10\x00{'descr': 1}    \n", "corrupt_file"),
        "version9.npy": (b"\x93NUMPY\x09\x00" + bytes(60), "corrupt_file"),
        "object.npy": (_npy(np.array([{"a": 1}], dtype=object)), "needs_pickle"),
        "bool.npy": (_npy(np.ones((60, 4, 4), bool)), "bad_dtype"),
        "complex.npy": (_npy(_walk().astype(complex)), "bad_dtype"),
        "structured.npy": (_npy(np.zeros((60, 4, 4), [("a", "<f4")])), "bad_dtype"),
        "empty.npy": (b"", "empty_file"),
    }
    out = {}
    for name, (data, reason) in cases.items():
        (tmp / name).write_bytes(data)
        out[tmp / name] = reason
    zips = {
        "huge_member.npz": ({"extrinsic.npy": _header(huge) + bytes(64)}, "too_large"),
        "bomb.npz": ({"extrinsic.npy": bomb}, "zip_bomb"),
        "bomb_intrinsic.npz": ({"extrinsic.npy": _npy(_walk()), "intrinsic.npy": bomb},
                               "zip_bomb"),
        "text_member.npz": ({"extrinsic.npy": b"not numpy data at all"}, "corrupt_file"),
        "empty_member.npz": ({"extrinsic.npy": b""}, "corrupt_file"),
        "short_member.npz": ({"extrinsic.npy": _npy(_walk())[:-10]}, "corrupt_file"),
        "text_intrinsic.npz": ({"extrinsic.npy": _npy(_walk()), "intrinsic.npy": b"K"},
                               "corrupt_file"),
        "no_extrinsic.npz": ({"poses.npy": _npy(_walk())}, "missing_array"),
        "str_intrinsic.npz": ({"extrinsic.npy": _npy(_walk()),
                               "intrinsic.npy": _npy(np.full((3, 3), "1.0"))}, "bad_intrinsic"),
        "bytes_intrinsic.npz": ({"extrinsic.npy": _npy(_walk()),
                                 "intrinsic.npy": _npy(np.full((3, 3), b"x"))}, "bad_intrinsic"),
        "complex_intrinsic.npz": ({"extrinsic.npy": _npy(_walk()),
                                   "intrinsic.npy": _npy(np.eye(3) * 1j)}, "bad_intrinsic"),
        "object_intrinsic.npz": ({"extrinsic.npy": _npy(_walk()),
                                  "intrinsic.npy": _npy(np.array([None]))}, "needs_pickle"),
    }  # fmt: skip
    for name, (members, reason) in zips.items():
        out[_zip(tmp / name, members)] = reason
    truncated = _zip(tmp / "cut.npz", {"extrinsic.npy": _npy(_walk())})
    truncated.write_bytes(truncated.read_bytes()[:200])
    out[truncated] = "corrupt_file"
    return out


def test_size_and_format_cases_are_refused_with_their_reason(tmp_path):
    cases = _size_cases(tmp_path)
    got = {p.name: _reason(p) for p in cases}
    assert got == {p.name: r for p, r in cases.items()}


def test_hostile_headers_allocate_nothing_big(tmp_path):
    cases = [p for p, r in _size_cases(tmp_path).items() if r in ("too_large", "zip_bomb")]
    tracemalloc.start()
    try:
        for p in cases:
            _reason(p)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20, f"refusing {len(cases)} files allocated {peak} bytes"


def test_a_trajectory_gone_after_discovery_is_missing_not_corrupt(tmp_path):
    """Listed, then moved or deleted before a worker read it: its own reason."""
    path = tmp_path / "walk.npy"
    path.write_bytes(_npy(_walk(10)))
    path.unlink()
    with pytest.raises(TrajectoryError) as e:
        load_trajectory(path)
    assert e.value.reason == "missing_trajectory" and str(path) in e.value.detail


def test_the_limit_is_configurable_and_good_files_still_load(tmp_path):
    walk = _walk(5000)  # 640 KB of float64
    npy = tmp_path / "walk.npy"
    npy.write_bytes(_npy(walk))
    npz = _zip(
        tmp_path / "walk.npz", {"extrinsic.npy": _npy(walk), "intrinsic.npy": _npy(np.eye(3))}
    )
    stored = _zip(tmp_path / "stored.npz", {"extrinsic.npy": _npy(walk)}, zipfile.ZIP_STORED)
    for p in (npy, npz, stored):
        ext, _ = load_trajectory(p)
        assert np.array_equal(ext, walk)
        assert _reason(p, max_bytes=100_000) == "too_large"
    fortran = tmp_path / "fortran.npy"
    fortran.write_bytes(_npy(np.asfortranarray(walk)))
    big_endian = tmp_path / "be.npy"
    big_endian.write_bytes(_npy(walk.astype(">f4")))
    assert np.array_equal(load_trajectory(fortran)[0], walk)
    assert np.array_equal(load_trajectory(big_endian)[0], walk.astype(np.float32))
    with pytest.raises(ValueError):
        ActionsConfig(max_trajectory_bytes=0)


# ---- CSV, labels, duplicate ids ------------------------------------------------------------------


def _release(tmp: Path, csv_text: str | bytes, *stems: str) -> Path:
    root = tmp / "release"
    (root / "traj").mkdir(parents=True)
    for s in stems:
        (root / "traj" / f"{s}.npz").write_bytes(_zip_bytes_walk())
    data = csv_text.encode() if isinstance(csv_text, str) else csv_text
    (root / "sekai.csv").write_bytes(data)
    return root


def _zip_bytes_walk() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, extrinsic=_walk())
    return buf.getvalue()


def test_a_ragged_row_rejects_that_row_only(tmp_path):
    text = (
        "videoFile,caption,scene\n"
        "a_0_60.mp4,first,street\n"
        "b_0_60.mp4,too,many,fields\n"  # line 3
        '"c_0_60.mp4","a caption\nover two lines",park\n'  # lines 4-5
        "d_0_60.mp4,too few\n"  # line 6
        "\n"
        "e_0_60.mp4,last,plaza\n"
    )
    root = _release(tmp_path, text, "a_0_60", "b_0_60", "c_0_60", "d_0_60", "e_0_60")
    items, rejects = discover_sekai(root)
    bad = sorted((r["reason"], r["input"].rsplit(":", 1)[1]) for r in rejects)
    assert bad == [("bad_csv_row", "3"), ("bad_csv_row", "6")]
    by_id = {i["clip_id"]: i for i in items}
    assert by_id["c_0_60"]["caption"] == "a caption\nover two lines"
    assert by_id["e_0_60"]["scene"] == "plaza" and by_id["a_0_60"]["caption"] == "first"
    # the npz of a rejected row is still an input (orphan trajectory), so nothing is lost
    assert sorted(by_id) == ["a_0_60", "b_0_60", "c_0_60", "d_0_60", "e_0_60"]
    assert by_id["b_0_60"]["caption"] is None


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "bad_csv"),
        (b"\n\n", "bad_csv"),
        ("videoFile,caption\nx_0_60.mp4,caf\xe9\n".encode("latin-1"), "bad_csv"),
        (b"videoFile,caption\n", None),  # header only: nothing to reject
        ("\ufeffvideoFile,caption\nx_0_60.mp4,ok\n".encode(), None),  # BOM
        (b"videoFile,caption\nx_0_60.mp4,nul\x00byte\n", None),
        (b'videoFile,caption\nx_0_60.mp4,"unclosed\n', None),  # the quote runs to the end
        (b"videoFile,caption\nx_0_60.mp4,a,b\n", "bad_csv_row"),
    ],
)
def test_odd_csv_files_never_raise(tmp_path, data, reason):
    root = _release(tmp_path, data, "x_0_60")
    items, rejects = discover_sekai(root)
    assert [r["reason"] for r in rejects] == ([reason] if reason else [])
    assert [i["clip_id"] for i in items] == ["x_0_60"]  # the trajectory is still an input


def test_same_clip_id_in_two_folders_is_a_reject_naming_both(tmp_path):
    root = _release(tmp_path, "videoFile,caption\na_0_60.mp4,hi\n", "a_0_60", "b_0_60")
    (root / "more").mkdir()
    for s in ("a_0_60", "b_0_60"):
        (root / "more" / f"{s}.npz").write_bytes(_zip_bytes_walk())
    items, rejects = discover_sekai(root)
    assert sorted(i["clip_id"] for i in items) == ["a_0_60", "b_0_60"]
    assert [r["reason"] for r in rejects] == ["duplicate_clip_id"] * 2
    for r in rejects:
        stem = Path(r["input"]).stem
        assert str(root / "traj" / f"{stem}.npz") in r["detail"] and r["input"] in r["detail"]
    assert len(items) + len(rejects) == 4  # every file is accounted for


def test_label_files_that_cannot_be_read_are_rejects(tmp_path):
    folder = tmp_path / "Keys_W_Mouse_·"
    folder.mkdir()
    for name in ("latin", "dir", "good", "nolabel"):
        np.save(folder / f"{name}.npy", _walk())
    (folder / "latin.txt").write_bytes("Keys: W\nMouse: ·\nnote: caf\xe9\n".encode("latin-1"))
    (folder / "dir.txt").mkdir()
    (folder / "good.txt").write_text("Keys: W\nMouse: ·\n", encoding="utf-8")
    items, rejects = discover_segments(tmp_path)
    assert [i["clip_id"] for i in items] == ["good"]
    assert sorted((Path(r["input"]).stem, r["reason"]) for r in rejects) == [
        ("dir", "bad_label_file"),
        ("latin", "bad_label_file"),
        ("nolabel", "bad_label_file"),
    ]


# ---- through the stage: export names, finite and independent numbers ---------------------------


def test_ids_too_long_for_export_are_rejected_before_writing(tmp_path):
    # ".<id>_frames_00000-00059.npy.XXXXXXXX.tmp" is 37 bytes more than the id: 218 fits 255
    paths = []
    for n, ch in ((218, "a"), (219, "b"), (110, "é")):  # é is 2 bytes: 220 bytes
        p = tmp_path / "in" / f"{ch * n}.npy"
        p.parent.mkdir(exist_ok=True)
        np.save(p, _walk())
        paths.append(p)
    out = tmp_path / "yume"
    result = _stage(tmp_path, export_yume=out).process([_item(p) for p in paths])
    got = [(o.status, o.reason) for o in result.outcomes]
    assert got == [
        ("done", None),
        ("rejected", "clip_id_too_long"),
        ("rejected", "clip_id_too_long"),
    ]
    written = sorted(f.name for f in out.rglob("*") if f.is_file())
    assert written and all(name.startswith("a" * 218) for name in written)
    assert not list(out.rglob(".*.tmp"))


def test_a_huge_clip_does_not_change_other_clips_speeds(tmp_path):
    rng = np.random.default_rng(0)
    good = _walk(120)
    good[:, 0, 3] = np.cumsum(rng.uniform(-5e-5, 5e-5, 120))  # wobbles below the threshold
    np.save(tmp_path / "good.npy", good)
    far = _walk(120, step=1e30)  # finite, rigid, huge steps: huge speeds that fit float32
    np.save(tmp_path / "far.npy", far)
    np.save(tmp_path / "farther.npy", _walk(120, step=1e140))  # speeds beyond float32
    over = _walk(120)
    over[:, 2, 3] = np.where(np.arange(120) % 2, 1.5e308, -1.5e308)  # steps overflow
    np.save(tmp_path / "over.npy", over)
    stage = _stage(tmp_path)

    def segs(result) -> list[dict]:
        return [r for r in result.tables["actions"].to_pylist() if r["clip_id"] == "good"]

    alone = segs(stage.process([_item(tmp_path / "good.npy")]))
    names = ("far.npy", "farther.npy", "over.npy", "good.npy")
    batch = stage.process([_item(tmp_path / n) for n in names])
    assert alone and segs(batch) == alone
    assert [(o.key, o.status, o.reason) for o in batch.outcomes] == [
        ("far", "done", None),
        ("farther", "rejected", "non_finite_values"),
        ("over", "rejected", "non_finite_values"),
        ("good", "done", None),
    ]
    for row in batch.tables["actions"].to_pylist():
        speeds = (row["distance_speed"], row["turn_speed"], row["view_rotation_speed"])
        assert all(math.isfinite(v) for v in speeds)
        assert "nan" not in row["text_yume_speed"].lower() and "inf" not in row["text_yume_speed"]
    # the function itself: segments of a concatenation equal the segments alone
    both = np.concatenate([far, good])
    starts, ends = np.array([0, 120, 150]), np.array([119, 149, 200])
    mixed = segment_speeds_batch(both, starts, ends, 30.0)[1:]
    single = segment_speeds_batch(good, starts[1:] - 120, ends[1:] - 120, 30.0)
    assert np.array_equal(mixed, single) and np.isfinite(mixed).all()


def test_speeds_that_overflow_are_a_reject_not_inf(tmp_path):
    far = _walk(60, step=1e300)  # each step is finite; its norm over the segment is not
    far[:, 0, 3] = far[:, 2, 3]
    np.save(tmp_path / "far.npy", far)
    result = _stage(tmp_path).process([_item(tmp_path / "far.npy")])
    assert [(o.status, o.reason) for o in result.outcomes] == [("rejected", "non_finite_values")]
    assert result.tables["actions"].num_rows == 0


def test_known_bad_inputs_never_land_in_unexpected_error(tmp_path):
    files = tmp_path / "files"
    files.mkdir()
    expected = {p.name: r for p, r in _size_cases(files).items()}
    poses = {"nan": (10, 0, 3, np.nan), "skew": (5, 0, 0, 1.5), "bottom": (7, 3, 0, 0.5)}
    for name, (i, r, c, v) in poses.items():
        c2w = _walk()
        c2w[i, r, c] = v
        np.save(files / f"{name}.npy", c2w)
    np.save(files / "short.npy", _walk(5))
    over = _walk()
    over[::2, 2, 3], over[1::2, 2, 3] = 1.5e308, -1.5e308  # every step overflows to inf
    np.save(files / "over.npy", over)
    expected.update({"nan.npy": "non_finite", "skew.npy": "not_rigid",
                     "bottom.npy": "not_homogeneous", "short.npy": "too_short",
                     "over.npy": "non_finite_values"})  # fmt: skip
    stage = _stage(tmp_path)
    items = [_item(files / n) for n in sorted(expected)]
    result = stage.process(items)
    got = {Path(o.input).name: o.reason for o in result.outcomes}
    assert got == expected and set(got.values()) <= KNOWN
    # the one truly unexpected case still becomes a row, with the exception's type
    (odd,) = stage.process([{"clip_id": "x", "key": "x", "path": None, "input": "x"}]).outcomes
    assert odd.reason == "unexpected_error" and odd.detail.startswith("TypeError")


def test_non_finite_config_values_are_refused():
    for field in ("fps", "translation_threshold", "rotation_threshold"):
        with pytest.raises(ValueError):
            ActionsConfig(**{field: float("nan")})
    with pytest.raises(ValueError):
        ActionsConfig(translation_threshold=float("inf"))


# ---- strict JSON ---------------------------------------------------------------------------------


def test_reports_are_strict_json(tmp_path):
    atomic_write_json(tmp_path / "r.json", {"a": float("nan"), "b": [1.5, float("inf")], "c": 2})
    assert _strict((tmp_path / "r.json").read_text()) == {"a": None, "b": [1.5, None], "c": 2}
    # the stage's own report body, from a batch with a huge and an overflowing clip
    np.save(tmp_path / "good.npy", _walk(120))
    np.save(tmp_path / "far.npy", _walk(120, step=1e30))
    over = _walk(120)
    over[::2, 2, 3], over[1::2, 2, 3] = 1.5e308, -1.5e308
    np.save(tmp_path / "over.npy", over)
    stage = _stage(tmp_path)
    result = stage.process([_item(tmp_path / n) for n in ("far.npy", "over.npy", "good.npy")])
    atomic_write_json(tmp_path / "actions.json", stage.finalize(result.tables))
    report = _strict((tmp_path / "actions.json").read_text())
    assert report["segments"] == 2 and math.isfinite(report["segment_frames"]["mean"])


@pytest.mark.slow  # Ray start-up; the contract test runs the same release by default
def test_corrupt_release_end_to_end_on_ray(ray_local, tmp_path):
    info = write_sample_release(tmp_path / "sekai", clips=2, frames=120, seed=1, corrupt=True)
    _strict((tmp_path / "sekai" / "sample_info.json").read_text())
    opts = RunOptions(root=tmp_path / "root", batch_size=64, progress=False)
    summary = run_stage(
        ActionsStage, ActionsConfig(sekai=[tmp_path / "sekai"], min_frames=20), opts
    )
    assert summary["rejects_by_reason"] == info["expected_rejects"]
    assert "unexpected_error" not in summary["rejects_by_reason"]
    assert summary["accepted"] == 2 and summary["accounted"]
    for report in (tmp_path / "root" / "reports").glob("*.json"):
        _strict(report.read_text())
    rejects = pq.read_table(tmp_path / "root" / "manifests" / "actions.rejects.parquet")
    assert all(r["detail"] for r in rejects.to_pylist())
    segs = pq.read_table(tmp_path / "root" / "manifests" / "actions.parquet").to_pylist()
    assert segs and all(math.isfinite(s[c]) for s in segs for c in ("distance_speed", "turn_speed"))
