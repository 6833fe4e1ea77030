"""Recaption throughput: requests in flight against a fixed-latency server, and CPU
preparation per clip against the tiny model's time per caption.

1. The ``openai`` captioner against the recaption tests' OpenAI-compatible server
   (``tests/test_recaption.py`` run as a script) answering every request after a fixed
   100 ms, 32 requests in flight: with perfect overlap that is 320 requests/s. Target:
   >= 0.8 of it. Each request carries 8 frames as base64 JPEG data URLs (64x64 here, so the
   bench measures the client's concurrency, not JSON of megabytes; the 448 px number is
   reported beside it).
2. CPU preparation of one clip (decode once at tile size, only the 8 chosen frames, JPEG +
   base64 for a server; normalised tiles for the in-process model) against one caption of
   the tiny-random InternVL on CPU. Reported, no target: with a real model the caption
   takes seconds and preparation runs in the actor's thread pool beside it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from curation.recaption import Window, build_prompt, choose_frames
from curation.stages.recaption import decode_at
from model.backends import load
from model.backends.launcher import ServerLauncher

DELAY = 0.1
IN_FLIGHT = 32
REQUESTS = 640
TARGET = 0.8
SERVER = Path(__file__).resolve().parents[1] / "test_recaption.py"


def _throughput(client, frames: np.ndarray, n: int) -> float:
    urls = client.prepare(frames)
    prompt = build_prompt(len(frames), "event-v1")
    client.model  # noqa: B018 (asked once, outside the timing)
    [f.result() for f in [client.submit(urls, prompt, i) for i in range(IN_FLIGHT)]]  # warm
    t0 = time.perf_counter()
    futures = [client.submit(urls, prompt, i) for i in range(n)]
    for f in futures:
        f.result()
    return n / (time.perf_counter() - t0)


def main() -> dict:
    from tests.test_shards import make_mp4

    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (8, 64, 64, 3), dtype=np.uint8)
    large = rng.integers(0, 255, (8, 448, 448, 3), dtype=np.uint8)
    command = [sys.executable, str(SERVER), "--port", "{port}", "--delay", str(DELAY)]
    with ServerLauncher(command, startup_timeout=60) as server:
        client = load("captioner", f"openai:{server.base_url}", max_in_flight=IN_FLIGHT,
                      timeout=30.0)  # fmt: skip
        rps = _throughput(client, small, REQUESTS)
        rps_448 = _throughput(client, large, REQUESTS // 4)
        client.close()
    ideal = IN_FLIGHT / DELAY

    mp4 = make_mp4(160, 640, 360)  # a 10 s clip at 16 fps
    shown = choose_frames(Window(0, 0, 159), 8)
    tiny = load("captioner", "tiny-random")
    openai_like = load("captioner", "openai:http://127.0.0.1:9")  # prepare() only, no request
    prep, prep_tiny = [], []
    for _ in range(5):
        t0 = time.perf_counter()
        frames = decode_at(mp4, shown, 448)
        openai_like.prepare(np.stack([frames[f] for f in shown]))
        prep.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        frames = decode_at(mp4, shown, tiny.image_size)
        payload = tiny.prepare(np.stack([frames[f] for f in shown]))
        prep_tiny.append(time.perf_counter() - t0)
    prompt = build_prompt(8, "event-v1")
    tiny.submit(payload, prompt, 0).result()  # warm
    gen = [tiny.submit(payload, prompt, i).result().seconds for i in range(3)]
    tiny.close()
    openai_like.close()
    return {
        "delay_s": DELAY,
        "in_flight": IN_FLIGHT,
        "requests": REQUESTS,
        "requests_per_s": round(rps, 1),
        "ideal_requests_per_s": ideal,
        "ratio_of_ideal": round(rps / ideal, 3),
        "requests_per_s_448px_frames": round(rps_448, 1),
        "ratio_of_ideal_448px_frames": round(rps_448 / ideal, 3),
        "prepare_s_per_clip_448px_jpeg": round(min(prep), 4),
        "prepare_s_per_clip_tiny_tiles": round(min(prep_tiny), 4),
        "tiny_model_s_per_caption": round(min(gen), 4),
        "prepare_over_tiny_caption": round(min(prep) / min(gen), 3),
        "targets_met": {"ratio_of_ideal_ge_0.8": rps / ideal >= TARGET},
    }


if __name__ == "__main__":
    import json

    print(json.dumps(main(), indent=2))
