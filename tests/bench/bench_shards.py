"""Shard benchmark: writing vs `tar -cf`, and reader decoding vs plain decord.

(a) write_shards_from_dir over staged, already-encoded mp4 samples against `tar -cf` of the
    same files (both from a warm page cache); target >= 0.8x tar's bytes/s. Our writer also
    validates every json, hashes every member and fsyncs every shard.
(b) frames/s through make_window_dataset against decord decoding the same frames of the
    same mp4 files (one thread each); target >= 0.8x.
"""

from __future__ import annotations

import io
import json
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import av
import decord
import numpy as np

from curation.shard_reader import make_window_dataset
from curation.shards import write_shards_from_dir
from tests.test_shards import make_meta

# 10 s clips of ~7 MB: per-sample sizes like real clips, so per-sample costs weigh as in use.
FRAMES, HEIGHT, WIDTH = 160, 272, 480
CLIPS, SAMPLES, READ_SAMPLES, SHARD_SAMPLES = 4, 32, 8, 8
PRED = FRAMES  # a t2v window of the whole clip: the same frames plain decord decodes


def _clip(seed: int) -> bytes:
    """A noisy moving clip: the encoder spends bits and the decoder has work."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (HEIGHT, WIDTH + FRAMES * 4, 3), dtype=np.uint8)
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as c:
        s = c.add_stream("libx264", rate=16)
        s.width, s.height, s.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        s.options = {"preset": "ultrafast", "crf": "18"}
        for i in range(FRAMES):
            noise = rng.integers(0, 32, (HEIGHT, WIDTH, 3), dtype=np.uint8)
            img = np.ascontiguousarray(base[:, i * 4 : i * 4 + WIDTH] ^ noise)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return buf.getvalue()


def _stage(staging: Path) -> int:
    staging.mkdir(parents=True)
    clips = [_clip(i) for i in range(CLIPS)]
    total = 0
    for i in range(SAMPLES):
        key = f"bench_{i:04d}"
        meta = make_meta(key, FRAMES, WIDTH, HEIGHT)
        for ext, data in (
            ("mp4", clips[i % CLIPS]),
            ("txt", f"caption {i}".encode()),
            ("json", json.dumps(meta).encode()),
        ):
            (staging / f"{key}.{ext}").write_bytes(data)
            total += len(data)
    return total


def _cpu_s(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _timed(fn, cpu: list | None = None, who: int = resource.RUSAGE_SELF) -> float:
    """Wall seconds of ``fn()``; its CPU seconds (``who``: this process or children) to cpu."""
    subprocess.run(["sync"], check=True)  # start each run with no dirty pages to flush
    c0, t0 = _cpu_s(who), time.perf_counter()
    fn()
    wall = time.perf_counter() - t0
    if cpu is not None:
        cpu.append(_cpu_s(who) - c0)
    return wall


def bench_write(work: Path, staging: Path, nbytes: int, repeats: int = 6) -> dict:
    files = sorted(p.name for p in staging.iterdir())
    for f in files:  # warm the page cache for both
        (staging / f).read_bytes()

    def tar() -> None:
        subprocess.run(["tar", "-cf", str(work / "baseline.tar"), *files], cwd=staging, check=True)

    def ours() -> None:
        write_shards_from_dir(staging, work / "shards", "bench", max_samples=SHARD_SAMPLES)

    tar_s, ours_s, tar_cpu, ours_cpu = [], [], [], []
    for _ in range(repeats):  # interleaved, fresh outputs, best of each
        (work / "baseline.tar").unlink(missing_ok=True)
        shutil.rmtree(work / "shards", ignore_errors=True)
        tar_s.append(_timed(tar, tar_cpu, resource.RUSAGE_CHILDREN))
        ours_s.append(_timed(ours, ours_cpu))
    return {
        "write_bytes": nbytes,
        "tar_MBps": round(nbytes / min(tar_s) / 1e6, 1),
        "writer_MBps": round(nbytes / min(ours_s) / 1e6, 1),
        "write_ratio": round(min(tar_s) / min(ours_s), 3),
        # CPU seconds over all threads: the writer also sha256-hashes every byte, validates
        # every json and fsyncs every shard, none of which tar does
        "tar_cpu_s": round(min(tar_cpu), 3),
        "writer_cpu_s": round(min(ours_cpu), 3),
    }


def bench_read(work: Path, staging: Path, repeats: int = 4) -> dict:
    shards = sorted(str(p) for p in (work / "shards").glob("*.tar"))[
        : READ_SAMPLES // SHARD_SAMPLES
    ]
    keys = [f"bench_{i:04d}" for i in range(READ_SAMPLES)]

    def plain() -> None:
        for key in keys:
            vr = decord.VideoReader(str(staging / f"{key}.mp4"), ctx=decord.cpu(0), num_threads=1)
            vr.get_batch(list(range(FRAMES))).asnumpy()

    def reader() -> None:
        ds = make_window_dataset(shards, 0, PRED, shuffle=0, tasks=("t2v",))
        got = sum(it["video"].shape[0] for it in ds)
        assert got == READ_SAMPLES * FRAMES, got

    frames = READ_SAMPLES * FRAMES
    plain_s, reader_s = [], []
    for _ in range(repeats):  # interleaved, best of each: the machine's load drifts
        plain_s.append(_timed(plain))
        reader_s.append(_timed(reader))
    plain_s, reader_s = min(plain_s), min(reader_s)
    return {
        "read_frames": frames,
        "decord_fps": round(frames / plain_s, 1),
        "reader_fps": round(frames / reader_s, 1),
        "read_ratio": round(plain_s / reader_s, 3),
    }


def main() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        nbytes = _stage(work / "staging")
        result = {
            **bench_write(work, work / "staging", nbytes),
            **bench_read(work, work / "staging"),
        }
    result["targets_met"] = {
        "write>=0.8x_tar": result["write_ratio"] >= 0.8,
        "read>=0.8x_decord": result["read_ratio"] >= 0.8,
    }
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
