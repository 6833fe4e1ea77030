"""Block sampler on a GPU: the full Wan2.2-TI2V-5B + TSCM architecture with random weights,
bf16, 4 steps at 544x960 (34x60 latents, 8 latent frames = 32 video frames per block), I2V
from one frame, blocks accumulating through the TSCM history: frames per second and peak
memory. ``python -m tests.bench.gpu_sampler [--blocks 6] [--compile]``; without CUDA it says
so and exits 0. Random weights: speed and memory only, nothing about quality."""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--blocks", type=int, default=6)
    p.add_argument("--height", type=int, default=544)
    p.add_argument("--width", type=int, default=960)
    p.add_argument("--latent-frames", type=int, default=8)
    p.add_argument("--compile", action="store_true")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_sampler: no CUDA device here; skipped (run it on a GPU machine)")
        return {"skipped": "no CUDA"}

    from model.sampling import few_step_sigmas, rollout
    from model.tscm import TSCMTransformer

    dev = torch.device("cuda")
    torch.manual_seed(0)
    with torch.device(dev):
        model = TSCMTransformer.from_config_name("wan22-5b")
    model = model.cast_parameters(torch.bfloat16).eval().requires_grad_(False)
    params = sum(p.numel() for p in model.parameters())
    if args.compile:
        model = torch.compile(model)
    h, w, fp = args.height // 16, args.width // 16, args.latent_frames
    shape = (1, 48, fp, h, w)
    text = torch.randn(1, 512, 4096, device=dev, dtype=torch.bfloat16)  # 448 event + 64 action
    context = torch.randn(1, 48, 1, h, w, device=dev)
    sigmas = few_step_sigmas((1000, 750, 500, 250), 5.0)
    times: list[float] = []
    t0 = [time.perf_counter()]

    def tick(_k: int) -> None:
        torch.cuda.synchronize()
        now = time.perf_counter()
        times.append(now - t0[0])
        t0[0] = now

    torch.cuda.reset_peak_memory_stats()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        torch.cuda.synchronize()
        t0[0] = time.perf_counter()
        rollout(model, context, [text] * args.blocks, shape, sigmas, gen, on_block=tick)
    frames_per_block = 4 * fp
    steady = times[1:] or times  # the first block includes warm-up (and compilation)
    mean = sum(steady) / len(steady)
    result = {
        "device": torch.cuda.get_device_name(),
        "params_b": round(params / 1e9, 3),
        "resolution": f"{args.height}x{args.width}",
        "latent_frames_per_block": fp,
        "steps": 4,
        "block_s": [round(t, 3) for t in times],
        "video_fps_steady": round(frames_per_block / mean, 2),
        "last_over_second_block": round(times[-1] / times[1], 3) if len(times) > 2 else None,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        "compiled": args.compile,
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
