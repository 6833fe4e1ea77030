"""Builtin scorer frames per second against VBench's own temporal_flickering, same videos.

Six H.264 videos with known properties (static, flickering, moving; 65 frames, 256x256,
two seeds each) are scored by

- the builtin scorer's ``temporal_flickering`` alone (decode + formula), and the whole
  builtin scorer (all six dimensions, Farneback flow included), in this process;
- VBench 0.1.5's ``temporal_flickering`` function, timed inside the vbench venv after its
  import (decode + formula, nothing else);
- the ``vbench:<python>`` backend end to end (process start, ``import vbench``, request).

Targets: the builtin value equals VBench's to 1e-6 on every video, and the builtin
temporal_flickering is not slower than VBench's own (>= 0.9x its frames per second; the two
decode with the same OpenCV call). Needs ``make vbench-env``; without it, a note and no targets.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
VBENCH_PYTHON = ROOT / ".venv-vbench" / "bin" / "python"
FRAMES, SIZE, SEEDS = 65, 256, 2
# Runs in the vbench venv: VBench's own function, timed after the import.
TIMED = """
import json, sys, time
from vbench.temporal_flickering import temporal_flickering
paths = sys.argv[1:]
t0 = time.perf_counter()
_, per_video = temporal_flickering(paths)
s = time.perf_counter() - t0
print(json.dumps({"s": s, "scores": {r["video_path"]: r["video_results"] for r in per_video}}))
"""


def _videos(folder: Path) -> list[Path]:
    from curation.stages.synth_generate import write_video
    from tests.test_synth import known_videos

    paths = []
    for seed in range(SEEDS):
        frames = known_videos(n=FRAMES, h=SIZE, w=SIZE)
        for name in ("static", "flickering", "moving"):
            video = np.roll(frames[name], 17 * seed, axis=2)  # a second, different texture
            paths.append(folder / f"{name}-{seed}.mp4")
            write_video(paths[-1], video, 16.0, "{}", 18)
    return paths


def _fps(frames: int, seconds: float) -> float:
    return round(frames / seconds, 1)


def main() -> dict:
    from curation.stages.synth_score import scorer_spec
    from model.backends import load
    from model.backends.scorer_builtin import read_bgr, temporal_flickering
    from model.backends.vbench_env import check

    if check(VBENCH_PYTHON) is None:
        return {"skipped": f"no vbench env at {VBENCH_PYTHON.parent.parent} (make vbench-env)",
                "targets_met": {}}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bench-vbench-") as work:
        paths = _videos(Path(work))
        frames = sum(len(read_bgr(p)[0]) for p in paths)

        t0 = time.perf_counter()
        ours = {str(p): temporal_flickering(read_bgr(p)[0]) for p in paths}
        ours_s = time.perf_counter() - t0
        builtin = load("scorer", scorer_spec("builtin"))
        t0 = time.perf_counter()
        for p in paths:
            builtin.score(p)
        builtin_all_s = time.perf_counter() - t0

        proc = subprocess.run([str(VBENCH_PYTHON), "-c", TIMED, *map(str, paths)],
                              capture_output=True, text=True, check=True)  # fmt: skip
        timed = json.loads(proc.stdout.strip().splitlines()[-1])
        vbench = load("scorer", f"vbench:{VBENCH_PYTHON}", device="cpu", timeout_s=900)
        t0 = time.perf_counter()
        got = vbench.score_many([str(p) for p in paths], ["temporal_flickering"])
        backend_s = time.perf_counter() - t0

    theirs = timed["scores"]
    diff = max(abs(ours[p] - theirs[p]) for p in ours)
    backend_diff = max(abs(ours[p] - got[p]["temporal_flickering"]) for p in ours)
    ratio = timed["s"] / ours_s
    return {
        "videos": len(paths), "frames": frames, "size": f"{SIZE}x{SIZE}",
        "vbench_version": vbench.version,
        "builtin_temporal_flickering_fps": _fps(frames, ours_s),
        "builtin_all_dimensions_fps": _fps(frames, builtin_all_s),
        "vbench_temporal_flickering_fps": _fps(frames, timed["s"]),
        "vbench_backend_end_to_end_fps": _fps(frames, backend_s),
        "vbench_backend_end_to_end_s": round(backend_s, 2),
        "builtin_over_vbench_speed": round(ratio, 2),
        "max_abs_diff": diff, "max_abs_diff_via_backend": backend_diff,
        "targets_met": {"equal_to_1e-6": max(diff, backend_diff) <= 1e-6,
                        "not_slower_than_vbench": ratio >= 0.9},
    }  # fmt: skip


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
