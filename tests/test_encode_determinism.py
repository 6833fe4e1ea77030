"""The same input encodes to the same mp4 bytes, in one process and across processes.

x264's macroblock-tree path read memory it never wrote, so an encode's bytes depended on what
the process had freed before. The fresh process runs with glibc's malloc filling new memory
with a non-zero byte (and no fresh zeroed pages for large blocks): on the old settings that
changed the bytes every time, instead of only now and then.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from curation.video import H264Writer, transcode, write_mp4

ROOT = Path(__file__).resolve().parents[1]
# Noise frames, moving: hard for the rate control, where the old settings differed.
SIZE, FRAMES = (272, 480), 30
PERTURBED = {"MALLOC_PERTURB_": "1", "MALLOC_MMAP_THRESHOLD_": "2000000000"}

_CHILD = """
import hashlib, io, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from tests.test_encode_determinism import encode_frames
from curation.video import transcode
print(hashlib.sha256(encode_frames()).hexdigest())
print(hashlib.sha256(transcode(Path(sys.argv[2]), size=(128, 224)).data).hexdigest())
"""


def frames() -> np.ndarray:
    """(FRAMES, H, W, 3) uint8 noise, shifted a little each frame."""
    base = np.random.default_rng(0).integers(0, 256, (*SIZE, 3), dtype=np.uint8)
    return np.stack([np.roll(base, 3 * i, axis=1) for i in range(FRAMES)])


def encode_frames(threads: int = 1) -> bytes:
    """``frames()`` through the project's writer into memory."""
    buf = io.BytesIO()
    with H264Writer(buf, 16, SIZE[1], SIZE[0], threads=threads) as out:
        out.write(frames())
    return buf.getvalue()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _source(path: Path) -> None:
    """A small 30 fps source video for ``transcode``."""
    write_mp4(path, frames()[:24, :, :, :], fps=30, width=SIZE[1], height=SIZE[0], crf=18)


def _child(source: Path) -> list[str]:
    env = {**os.environ, **PERTURBED}
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(ROOT), str(source)],
        env=env, cwd=ROOT, capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    return out.stdout.split()


def test_writer_and_transcode_are_byte_identical_across_runs_and_processes(tmp_path):
    ours = {_sha(encode_frames()) for _ in range(4)}
    assert len(ours) == 1, f"{len(ours)} different encodes of the same frames in one process"
    source = tmp_path / "src.mp4"
    _source(source)
    clips = {_sha(transcode(source, size=(128, 224)).data) for _ in range(3)}
    assert len(clips) == 1, f"{len(clips)} different transcodes of the same source"
    child = _child(source)
    assert child == [*ours, *clips], "a fresh process encoded the same input to other bytes"


def test_threaded_writer_is_byte_identical():
    """x264's own threads (the clips job may use more than one) keep the output fixed too."""
    assert len({_sha(encode_frames(threads=2)) for _ in range(3)}) == 1


def test_write_mp4_file_matches_the_in_memory_encode(tmp_path):
    """A path target muxes the same bytes as a file object (the same frames, the same writer)."""
    write_mp4(tmp_path / "a.mp4", frames(), fps=16, width=SIZE[1], height=SIZE[0])
    assert (tmp_path / "a.mp4").read_bytes() == encode_frames()
