"""Actions benchmarks (issue 2).

1. Labelling: ``label_codes`` against the literal algorithm (one 4x4 inverse and one scipy
   Euler conversion per frame pair) on the same 1800-frame trajectories. Target >= 500x.
2. The whole actions job (``run_stage(ActionsStage, ...)``) on 2,000 1800-frame npz files
   (Sekai's per-file size) on this machine, Ray already started (its start-up is reported
   separately). Target >= 500 files/s.
   The same job on 18,208 files, the size of the Sekai-Real-Walking-HQ release, shows the
   rate once the job's fixed costs (Ray Data start, consolidation, plots) are amortised.
"""

from __future__ import annotations

import io
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from curation.actions import label_codes
from curation.sample_sekai import INTRINSIC_1080P, synth_trajectory

FRAMES = 1800


def literal_labels(c2w: np.ndarray, t: float = 1e-4, r: float = 1e-3) -> tuple[list, list]:
    """The per-pair loop the vectorised code replaces (same thresholds and conventions)."""
    keys, mouse = [], []
    for i in range(len(c2w) - 1):
        rel = np.linalg.inv(c2w[i]) @ c2w[i + 1]
        ax, ay, _ = Rotation.from_matrix(rel[:3, :3]).as_euler("xyz")
        x, z = rel[0, 3], rel[2, 3]
        keys.append((z > t, z < -t, x > t, x < -t))
        mouse.append((ax > r, ax < -r, ay > r, ay < -r))
    return keys, mouse


def bench_labelling(trajs: list[np.ndarray]) -> dict:
    t0 = time.perf_counter()
    for c in trajs[:3]:
        literal_labels(c.astype(np.float64))
    loop_s = (time.perf_counter() - t0) / 3
    reps = 50
    t0 = time.perf_counter()
    for _ in range(reps):
        for c in trajs:
            label_codes(c)
    vec_s = (time.perf_counter() - t0) / (reps * len(trajs))
    return {
        "frames": FRAMES,
        "loop_ms_per_trajectory": round(loop_s * 1e3, 3),
        "vectorised_ms_per_trajectory": round(vec_s * 1e3, 4),
        "speedup": round(loop_s / vec_s, 1),
    }


def bench_job(trajs: list[np.ndarray], files: int = 2000) -> dict:
    import ray

    from curation.stages.actions import ActionsConfig, ActionsStage
    from jobs.runner import RunOptions, run_stage
    from jobs.runtime import init_ray

    tmp = Path(tempfile.mkdtemp(prefix="bench-actions-"))
    try:
        src = tmp / "trajectories"
        src.mkdir()
        blobs = []
        for c in trajs:
            buf = io.BytesIO()
            np.savez(buf, intrinsic=INTRINSIC_1080P.astype(np.float32), extrinsic=c)
            blobs.append(buf.getvalue())
        for i in range(files):  # distinct names, content cycled from the synthetic set
            (src / f"benchclip{i:05d}_{i * 1800:07d}_{i * 1800 + FRAMES:07d}.npz").write_bytes(
                blobs[i % len(blobs)]
            )
        t0 = time.perf_counter()
        init_ray(num_cpus=2)
        ray_start_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        summary = run_stage(
            ActionsStage,
            ActionsConfig(trajectories=[src]),
            RunOptions(root=tmp / "out", batch_size=250, progress=False),
        )
        job_s = time.perf_counter() - t0
        ray.shutdown()
        assert summary["accepted"] == files, summary
        return {
            "files": files,
            "frames_per_file": FRAMES,
            "ray_start_s": round(ray_start_s, 2),
            "job_s": round(job_s, 2),
            "files_per_s": round(files / job_s, 1),
            "files_per_s_including_ray_start": round(files / (job_s + ray_start_s), 1),
            "segments": summary["segments"],
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> dict:
    rng = np.random.default_rng(0)
    trajs = [synth_trajectory(rng, FRAMES).c2w for _ in range(20)]
    labelling = bench_labelling(trajs)
    job = bench_job(trajs)
    hq = bench_job(trajs, files=18208)
    return {
        "labelling": labelling,
        "job": job,
        "job_hq_release_size": hq,
        "targets_met": {
            "labelling_speedup_ge_500x": labelling["speedup"] >= 500,
            "job_ge_500_files_per_s": job["files_per_s"] >= 500,
            "hq_release_under_a_minute": hq["job_s"] + hq["ray_start_s"] < 60,
        },
    }


if __name__ == "__main__":
    import json

    print(json.dumps(main(), indent=2))
