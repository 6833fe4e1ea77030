"""A small synthetic Sekai release with known motion, for the demo and end-to-end tests.

Each clip is a program of motion primitives (walk forward, strafe, turn, tilt, stand still
and combinations), integrated in the camera frame, re-anchored to identity every 300 frames
like Sekai, with pose noise well below the labelling thresholds. The primitive of each frame
pair is the ground truth the labeller must recover (``ground_truth.parquet``).
"""

from __future__ import annotations

import io
import json
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
from numpy.lib import format as npy_format
from scipy.spatial.transform import Rotation

from curation.manifest import atomic_write_bytes, write_table
from schemas.actions import KEY_CODE, KEYS, MOUSE, MOUSE_CODE

GROUND_TRUTH_SCHEMA = pa.schema(
    [
        pa.field("clip_id", pa.string(), nullable=False),
        pa.field("keys", pa.list_(pa.uint8()), nullable=False),  # per pair, codes into KEYS
        pa.field("mouse", pa.list_(pa.uint8()), nullable=False),
        pa.field("resets", pa.list_(pa.int32()), nullable=False),  # pair indices
    ]
)

RESET_EVERY = 300
INTRINSIC_1080P = np.array([[1000.0, 0.0, 960.0], [0.0, 1000.0, 540.0], [0.0, 0.0, 1.0]])
_ID_CHARS = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"))
_SCENES = ["street", "plaza", "park", "old town", "waterfront"]
_WEATHER = ["sunny", "cloudy", "overcast", "rainy"]
_TIME = ["morning", "noon", "afternoon", "evening", "night"]
_CROWD = ["empty", "sparse", "moderate", "crowded"]


@dataclass(frozen=True)
class SampleClip:
    clip_id: str
    c2w: np.ndarray  # (N, 4, 4) float32, re-anchored every RESET_EVERY frames
    keys: np.ndarray  # (N-1,) uint8 ground-truth codes per pair
    mouse: np.ndarray  # (N-1,)
    resets: np.ndarray  # pair indices that are re-anchorings


def _axis_signs(label: str, pos: str, neg: str) -> int:
    return 1 if pos in label else (-1 if neg in label else 0)


def synth_trajectory(
    rng: np.random.Generator, num_frames: int, clip_id: str = "clip"
) -> SampleClip:
    """One walk of random motion primitives (each 40-140 frames) with its per-pair labels.

    Like a person filming while walking: the camera moves horizontally in its heading frame
    and turns about the vertical axis; tilts change a bounded pitch. Seen from the camera,
    W/S/D/A and the arrows keep their sign, so the primitive's label is the ground truth.
    """
    heading = np.zeros(num_frames)  # yaw about world y
    pitch = np.zeros(num_frames)  # about the camera x axis
    move = np.zeros((num_frames - 1, 3))  # (side, bob, forward) in the heading frame
    keys = np.zeros(num_frames - 1, dtype=np.uint8)
    mouse = np.zeros(num_frames - 1, dtype=np.uint8)
    i, last = 0, None
    while i < num_frames - 1:
        n = int(rng.integers(40, 141))
        label = last
        while label == last:  # neighbouring primitives differ, so runs are unambiguous
            label = (KEYS[rng.integers(len(KEYS))], MOUSE[rng.integers(len(MOUSE))])
        k, m = label
        if abs(pitch[i]) > 0.1 and (("↑" in m) == (pitch[i] > 0)) and m[0] in "↑↓":
            m = ("↓" if m[0] == "↑" else "↑") + m[1:]  # tilt back towards level
        label = last = (k, m)
        sl = slice(i, min(i + n, num_frames - 1))
        cnt = sl.stop - sl.start
        speed = rng.uniform(1.5e-3, 3e-3)
        fwd = _axis_signs(k, "W", "S") * speed
        side = _axis_signs(k, "D", "A") * speed
        d_pitch = _axis_signs(m, "↑", "↓") * rng.uniform(2e-3, 3e-3)
        d_yaw = _axis_signs(m, "→", "←") * rng.uniform(3e-3, 8e-3)
        move[sl] = np.stack(
            [
                np.full(cnt, side) + rng.normal(0, 1e-5, cnt),
                3e-5 * np.sin(np.arange(cnt) * 0.4),  # walking bob, in world y
                np.full(cnt, fwd) + rng.normal(0, 1e-5, cnt),
            ],
            axis=1,
        )
        idx = np.arange(sl.start, sl.stop)
        heading[idx + 1] = heading[sl.start] + np.cumsum(d_yaw + rng.normal(0, 1e-4, cnt))
        pitch[idx + 1] = pitch[sl.start] + np.cumsum(d_pitch + rng.normal(0, 1e-4, cnt))
        keys[sl], mouse[sl] = KEY_CODE[k], MOUSE_CODE[m]
        i = sl.stop

    # Camera orientation Ry(heading) Rx(pitch): +pitch looks up (y points down), +yaw right.
    rot = (
        Rotation.from_euler("y", heading[:, None]).as_matrix()
        @ Rotation.from_euler("x", pitch[:, None]).as_matrix()
    )
    heading_rot = Rotation.from_euler("y", heading[:-1, None]).as_matrix()
    steps = np.einsum("nij,nj->ni", heading_rot, move)
    world = np.tile(np.eye(4), (num_frames, 1, 1))
    world[:, :3, :3] = rot
    world[1:, :3, 3] = np.cumsum(steps, axis=0)
    anchors = (np.arange(num_frames) // RESET_EVERY) * RESET_EVERY
    anchored = np.linalg.inv(world[anchors]) @ world
    scale = max(1.0, float(np.abs(anchored[:, :3, 3]).max()))
    anchored[:, :3, 3] /= scale
    resets = np.arange(RESET_EVERY - 1, num_frames - 1, RESET_EVERY, dtype=np.int32)
    return SampleClip(clip_id, anchored.astype(np.float32), keys, mouse, resets)


def _youtube_id(rng: np.random.Generator) -> str:
    chars = rng.choice(_ID_CHARS, 11)
    chars[int(rng.integers(1, 10))] = "_"  # ids may contain '_': the parser must cope
    return "".join(chars)


def _npz_bytes(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def write_sample_release(
    out: str | Path,
    clips: int = 8,
    frames: int = 600,
    seed: int = 0,
    video: bool = False,
    video_size: tuple[int, int] = (384, 216),
    corrupt: bool = False,
) -> dict:
    """Write ``sekai.csv``, ``trajectories/*.npz``, optional ``videos/*.mp4`` and the ground truth.

    With ``corrupt`` also writes one input of each bad kind (and CSV rows for them), which
    the actions job must reject with a reason while finishing the rest.
    """
    out = Path(out)
    rng = np.random.default_rng(seed)
    rows, truth = [], []
    for c in range(clips):
        yt = _youtube_id(rng)
        start = int(rng.integers(0, 200)) * 1800
        clip_id = f"{yt}_{start:07d}_{start + frames:07d}"
        clip = synth_trajectory(rng, frames, clip_id)
        atomic_write_bytes(
            out / "trajectories" / f"{clip_id}.npz",
            _npz_bytes(intrinsic=INTRINSIC_1080P.astype(np.float32), extrinsic=clip.c2w),
        )
        if video:
            from curation.render import render_clip

            render_clip(
                clip.c2w,
                INTRINSIC_1080P,
                out / "videos" / f"{clip_id}.mp4",
                fps=30.0,
                size=video_size,
            )
        rows.append(
            {
                "videoFile": f"{clip_id}.mp4",
                "caption": f"A first-person walk through a synthetic {_SCENES[c % len(_SCENES)]} "
                "of coloured pillars on a grid.",
                "location": "procedural",
                "scene": _SCENES[c % len(_SCENES)],
                "crowdDensity": _CROWD[c % len(_CROWD)],
                "weather": _WEATHER[c % len(_WEATHER)],
                "timeOfDay": _TIME[c % len(_TIME)],
                "sampleSeed": str(seed),
                "generator": "yume-data sample-sekai (procedural render)",
            }
        )
        truth.append(
            {"clip_id": clip_id, "keys": clip.keys, "mouse": clip.mouse, "resets": clip.resets}
        )
    expected_bad = _write_corrupt(out, rows) if corrupt else {}
    csv = pd.DataFrame(rows).to_csv(index=False) + (_RAGGED_ROW if corrupt else "")
    atomic_write_bytes(out / "sekai.csv", csv.encode())
    gt = pa.table(
        {
            "clip_id": [t["clip_id"] for t in truth],
            "keys": [t["keys"].tolist() for t in truth],
            "mouse": [t["mouse"].tolist() for t in truth],
            "resets": [t["resets"].tolist() for t in truth],
        }
    )
    write_table(gt, out / "ground_truth.parquet", GROUND_TRUTH_SCHEMA)
    info = {
        "clips": clips,
        "frames": frames,
        "seed": seed,
        "video": video,
        "expected_rejects": expected_bad,
    }
    atomic_write_bytes(
        out / "sample_info.json", json.dumps(info, indent=2, allow_nan=False).encode()
    )
    return info


# A CSV line with fewer fields than the header (pandas would quietly pad it).
_RAGGED_ROW = "badragged_0000000_0000060.mp4,a row with two fields\n"


def _huge_header_npy() -> bytes:
    """A .npy whose header declares 128 GB of poses, followed by a few bytes."""
    buf = io.BytesIO()
    header = {"descr": "<f8", "fortran_order": False, "shape": (10**9, 4, 4)}
    npy_format.write_array_header_1_0(buf, header)
    return buf.getvalue() + bytes(64)


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _write_corrupt(out: Path, rows: list[dict]) -> dict[str, int]:
    """One bad input of each kind; returns {reason: count}.

    Besides the bad trajectories (with CSV rows naming them): a repeated CSV row, a second
    copy of a clip's npz in another folder, an empty CSV, and (appended by the caller) a
    ragged CSV line.
    """
    good = np.tile(np.eye(4, dtype=np.float32), (60, 1, 1))
    good[:, 2, 3] = np.arange(60) * 2e-3
    bad: dict[str, bytes | None] = {}
    nan = good.copy()
    nan[10, 0, 3] = np.nan
    bad["badnan_0000000_0000060"] = _npz_bytes(extrinsic=nan)
    skew = good.copy()
    skew[5, :3, :3] *= 1.5
    bad["badrigid_0000000_0000060"] = _npz_bytes(extrinsic=skew)
    bad["badshape_0000000_0000060"] = _npz_bytes(extrinsic=good[:, :3, :])
    bad["badshort_0000000_0000010"] = _npz_bytes(extrinsic=good[:10])
    bad["badtrunc_0000000_0000060"] = _npz_bytes(extrinsic=good)[:100]
    bad["badpickle_0000000_0000060"] = _npz_bytes(extrinsic=np.array([{"a": 1}], dtype=object))
    bad["badmissing_0000000_0000060"] = None  # CSV row whose npz does not exist
    bad["badhuge_0000000_0000060"] = _zip_bytes({"extrinsic.npy": _huge_header_npy()})
    zeros = io.BytesIO()
    np.save(zeros, np.zeros((2**16, 4, 4)))  # 8 MiB of zeros deflate to ~8 KB
    bad["badbomb_0000000_0000060"] = _zip_bytes({"extrinsic.npy": zeros.getvalue()})
    bad["badmember_0000000_0000060"] = _zip_bytes({"extrinsic.npy": b"not numpy data"})
    bad["badintrinsic_0000000_0000060"] = _npz_bytes(extrinsic=good, intrinsic=np.full((3, 3), "f"))
    far = good.astype(np.float64)
    far[:, 2, 3] = np.where(np.arange(60) % 2, 1.5e308, -1.5e308)  # steps overflow to inf
    bad["badfar_0000000_0000060"] = _npz_bytes(extrinsic=far)
    reasons = {
        "badnan_0000000_0000060": "non_finite",
        "badrigid_0000000_0000060": "not_rigid",
        "badshape_0000000_0000060": "bad_shape",
        "badshort_0000000_0000010": "too_short",
        "badtrunc_0000000_0000060": "corrupt_file",
        "badpickle_0000000_0000060": "needs_pickle",
        "badmissing_0000000_0000060": "missing_trajectory",
        "not-a-clip-name.mp4": "bad_video_file_name",
        "badhuge_0000000_0000060": "too_large",
        "badbomb_0000000_0000060": "zip_bomb",
        "badmember_0000000_0000060": "corrupt_file",
        "badintrinsic_0000000_0000060": "bad_intrinsic",
        "badfar_0000000_0000060": "non_finite_values",
    }
    for clip_id, data in bad.items():
        if data is not None:
            atomic_write_bytes(out / "trajectories" / f"{clip_id}.npz", data)
        rows.append({"videoFile": f"{clip_id}.mp4", "caption": "corrupt sample"})
    rows.append({"videoFile": "not-a-clip-name.mp4", "caption": "unparseable name"})
    rows.append(dict(rows[0]))  # the same clip listed twice
    first = rows[0]["videoFile"][: -len(".mp4")]
    copy = (out / "trajectories" / f"{first}.npz").read_bytes()
    atomic_write_bytes(out / "copies" / f"{first}.npz", copy)  # same clip id, other folder
    atomic_write_bytes(out / "empty.csv", b"")
    counts = Counter(reasons.values())
    counts.update(["duplicate_key", "duplicate_clip_id", "bad_csv", "bad_csv_row"])
    return dict(counts)
