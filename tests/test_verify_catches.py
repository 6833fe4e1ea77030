"""`shards verify` catches what it claims to: wrong fps, undecodable or cut-off mp4s, wrong
resolution and member sizes that differ from the index.

Why: tests/test_shards.py corrupts whole shards (sha256, truncated tars, missing members), so
verify without its fps check, or without any decoding, passed it. Each case here writes a
real shard whose index is consistent with its bytes, so only the named check can flag it.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import av
import numpy as np
import pytest

from curation.shards import iter_shard, verify_dataset, write_shards
from tests.test_shards import make_sample

W, H, FRAMES = 64, 48, 12


def noisy_mp4(path: Path, fps: int = 16, faststart: bool = False) -> bytes:
    """An H.264 clip of random frames (every frame carries data, so a cut loses frames);
    faststart puts the container index first, so a cut-off file still opens."""
    rng = np.random.default_rng(0)
    options = {"movflags": "faststart"} if faststart else {}
    with av.open(str(path), mode="w", format="mp4", options=options) as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = W, H, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "12"}
        for _ in range(FRAMES):
            img = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path.read_bytes()


@pytest.fixture(scope="module")
def mp4(tmp_path_factory) -> bytes:
    return noisy_mp4(tmp_path_factory.mktemp("mp4") / "clip.mp4")


def verify_one(tmp_path: Path, mp4: bytes, **meta) -> list[str]:
    """Write one sample (``meta`` overrides its json) into a fresh shard; verify's errors."""
    sample = make_sample("clip", FRAMES, mp4=mp4, width=W, height=H)
    sample["json"] = json.dumps(json.loads(sample["json"]) | meta).encode()
    write_shards([("clip", sample)], tmp_path / "real", "real")
    report = verify_dataset(tmp_path / "real")
    assert report["samples_checked"] == 1
    assert report["ok"] == (not report["errors"])
    return report["errors"]


def test_a_consistent_sample_passes(tmp_path, mp4):
    assert verify_one(tmp_path, mp4) == []


@pytest.mark.parametrize(("real", "claimed"), [(16, 24), (24, 16)])
def test_fps_in_json_differing_from_the_mp4_is_flagged(tmp_path, real, claimed):
    mp4 = noisy_mp4(tmp_path / "clip.mp4", fps=real)
    errors = verify_one(tmp_path, mp4, fps=claimed)
    assert errors == [f"real-000000.tar:clip: mp4 is {real} fps, json says {claimed}"]


@pytest.mark.parametrize("keep", [0.5, 0.0])
def test_an_undecodable_mp4_is_flagged(tmp_path, mp4, keep):
    broken = mp4[: int(len(mp4) * keep)] if keep else b"not an mp4 at all"
    (error,) = verify_one(tmp_path, broken)
    assert error.startswith("real-000000.tar:clip: mp4 does not decode:")


def test_a_cut_off_stream_whose_index_survives_is_flagged(tmp_path):
    """The container index says 12 frames, the last frame's data is gone: decoding the
    last frame ("ends") catches what the header alone cannot."""
    mp4 = noisy_mp4(tmp_path / "fast.mp4", faststart=True)
    cut = mp4[: int(len(mp4) * 0.97)]
    (error,) = verify_one(tmp_path, cut)
    assert error.startswith("real-000000.tar:clip: mp4 does not decode:")
    assert verify_dataset(tmp_path / "real", decode="none")["ok"]  # header-only misses it


def test_a_resolution_mismatch_is_flagged(tmp_path, mp4):
    errors = verify_one(tmp_path, mp4, width=W * 2)
    assert errors == [f"real-000000.tar:clip: mp4 is {W}x{H}, json says {W * 2}x{H}"]


def test_a_member_whose_size_differs_from_the_index_is_flagged(tmp_path, mp4):
    """Replace the txt member by a longer one in the tar: the size check names both sizes
    (the sha256 comparison is only reached when the sizes agree)."""
    assert verify_one(tmp_path, mp4) == []
    tar = tmp_path / "real" / "real-000000.tar"
    ((key, members),) = list(iter_shard(tar))
    old = len(members["txt"])
    members["txt"] = members["txt"] + b" and more"
    with tarfile.open(tar, "w") as out:
        for ext, data in sorted(members.items()):
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
    errors = verify_dataset(tmp_path / "real")["errors"]
    assert errors == [f"real-000000.tar:clip: txt: {old + 9} bytes, index says {old}"]
