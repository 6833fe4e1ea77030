"""Transcoding throughput of the clips stage against the ffmpeg command line doing the same work.

Work: a 1280x720 30 fps H.264 source (rendered here) -> 16 fps (nearest frame), centre crop
to the 544x960 aspect + bilinear resize, libx264 yuv420p. Both sides use the same codec settings
(libx264, preset, crf, yuv420p) and the same thread count for decoder and encoder; ffmpeg
is the static binary of the imageio-ffmpeg package. Best of REPEATS runs each, interleaved,
because the machine is shared. Target: ours >= 0.95x ffmpeg's output frames per second at
1 thread, the clips job's setting (it runs one video per CPU); 2 threads is reported too.
CPU seconds are recorded beside wall time. Like ffmpeg, ours decodes and scales in YUV
(PyAV's filter graph); it also lets the decoder drop unused non-reference frames.
"""

from __future__ import annotations

import resource
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from curation.render import render_clip
from curation.video import crop_box, resample_indices, transcode

SOURCE = (1280, 720)
FRAMES = 240
OUT = (544, 960)  # height, width
CRF, PRESET = 23, "veryfast"
THREADS = (1, 2)
TARGET_THREADS = 1
REPEATS = 5
TARGET = 0.95


def _source(path: Path) -> None:
    """A walk with a slow turn, so the encoder sees real motion."""
    c2w = np.tile(np.eye(4), (FRAMES, 1, 1))
    pos = np.zeros(3)
    for i in range(FRAMES):
        rot = Rotation.from_euler("y", 0.004 * i).as_matrix()
        c2w[i, :3, :3], c2w[i, :3, 3] = rot, pos
        pos = pos + rot @ [0.0, 0.0, 0.002]
    k = np.array([[1000.0, 0, 960], [0, 1000.0, 540], [0, 0, 1]])
    render_clip(c2w, k, path, size=SOURCE, crf=18)


def _ffmpeg_cmd(src: Path, dst: Path, threads: int) -> list[str]:
    import imageio_ffmpeg

    x, y, w, h = crop_box(*SOURCE, OUT[1], OUT[0])
    vf = f"fps=16,crop={w}:{h}:{x}:{y},scale={OUT[1]}:{OUT[0]}:flags=bilinear"
    return [
        imageio_ffmpeg.get_ffmpeg_exe(),
        "-v", "error", "-y", "-threads", str(threads), "-i", str(src),
        "-vf", vf, "-c:v", "libx264", "-preset", PRESET, "-crf", str(CRF),
        "-threads", str(threads), "-pix_fmt", "yuv420p", "-an", str(dst),
    ]  # fmt: skip


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> dict:
    result: dict = {
        "source": f"{SOURCE[0]}x{SOURCE[1]}@30 x{FRAMES}",
        "output": f"{OUT[0]}x{OUT[1]}@16",
    }
    result.update(codec=f"libx264 preset={PRESET} crf={CRF} yuv420p", targets_met={})
    frames = len(resample_indices(FRAMES, 30.0, 16.0))
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src.mp4"
        _source(src)
        for threads in THREADS:
            ours, ffmpeg, ours_cpu, ffmpeg_cpu = [], [], [], []
            for _ in range(REPEATS):
                t0, c0 = time.perf_counter(), time.process_time()
                out = transcode(src, 16.0, OUT, crf=CRF, preset=PRESET, threads=threads)
                ours.append(time.perf_counter() - t0)
                ours_cpu.append(time.process_time() - c0)
                assert out.frames == frames
                t0, c0 = time.perf_counter(), _children_cpu()
                subprocess.run(_ffmpeg_cmd(src, Path(tmp) / "ff.mp4", threads), check=True)
                ffmpeg.append(time.perf_counter() - t0)
                ffmpeg_cpu.append(_children_cpu() - c0)
            ratio = min(ffmpeg) / min(ours)
            result[f"threads{threads}"] = {
                "ours_fps": round(frames / min(ours), 1),
                "ffmpeg_fps": round(frames / min(ffmpeg), 1),
                "ratio": round(ratio, 3),
                "ours_cpu_s": round(min(ours_cpu), 2),
                "ffmpeg_cpu_s": round(min(ffmpeg_cpu), 2),
            }
            if threads == TARGET_THREADS:
                result["targets_met"][f"transcode_vs_ffmpeg>={TARGET}"] = ratio >= TARGET
    return result


if __name__ == "__main__":
    import json

    print(json.dumps(main(), indent=2))
