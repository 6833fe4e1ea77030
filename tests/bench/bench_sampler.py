"""Block sampler latency (tiny config, CPU, random weights): per block as blocks accumulate
(1..32) with TSCM history compression against full-context history on the same weights, and
4-step against 50-step sampling per block. Ratios within this run, no absolute timings as
targets.

Latency is what ``training.sample.generate`` (the ``yume-train sample`` path) reports per
block: wall time, so one intra-op thread and the minimum over ``REPEATS`` runs keep a shared
CPU's load out of it. Block ``k`` (1-based) sees ``1 + 2 (k - 1)`` history latent frames (the
image, then 2 per earlier block); the TSCM run passes them all with ``history_keep =
select_history(...)``, as the sampler does (``bench_tscm``'s ``sampler`` variant is the same
path at larger latents)."""

from __future__ import annotations

import statistics

import torch

from model.configs import transformer_config
from model.sampling import few_step_sigmas
from model.text import ActionEmbeddingCache, TextEncoder
from model.tscm import TSCMTransformer
from training.config import SAMPLE_PRESETS
from training.sample import generate, parse_plan

BLOCKS = 32
REPEATS = 3


def _latencies(model, cfg, text, cache, plan, context, select: bool, sigmas=None) -> list[float]:
    """Per-block seconds, the minimum over REPEATS runs (less noise from a shared CPU)."""
    runs = [
        generate(cfg, model, text, cache, plan, context=context, select=select, sigmas=sigmas)[1]
        for _ in range(REPEATS)
    ]
    return [min(ts) for ts in zip(*runs, strict=True)]


def _window(ts: list[float], block: int) -> float:
    """Median latency of blocks block-1 .. block+1 (1-based), robust to one slow block."""
    return statistics.median(ts[max(block - 2, 0) : block + 1])


def main() -> dict:
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _measure()
    finally:
        torch.set_num_threads(threads)


def _measure() -> dict:
    cfg = SAMPLE_PRESETS["tiny"]  # 128x224 px -> 8x14 latents, 2 latent frames per block
    tscm = TSCMTransformer.from_config_name("tiny").eval()
    # full context: every history frame in attention at the full (1,2,2) rate
    full_cfg = transformer_config("tiny") | {"history_patch_bounds": (10**9, 10**9)}
    full = TSCMTransformer(**full_cfg).eval()
    full.load_state_dict(tscm.state_dict())
    text = TextEncoder.tiny(event_len=cfg.event_len, action_len=cfg.action_len)
    cache = ActionEmbeddingCache.build(text)
    plan = parse_plan("W,W+A,←,W", cfg.prompt, BLOCKS)
    context = torch.randn(1, 48, 1, cfg.height // 16, cfg.width // 16)  # I2V start

    t_tscm = _latencies(tscm, cfg, text, cache, plan, context, select=True)
    t_full = _latencies(full, cfg, text, cache, plan, context, select=False)
    few = few_step_sigmas(cfg.denoising_steps, cfg.shift)
    many = few_step_sigmas(tuple(range(1000, 0, -20)), cfg.shift)  # 50 steps
    short = plan[:4]
    t4 = _latencies(tscm, cfg, text, cache, short, context, select=True, sigmas=few)
    t50 = _latencies(tscm, cfg, text, cache, short, context, select=True, sigmas=many)

    growth_tscm = _window(t_tscm, 32) / _window(t_tscm, 8)
    growth_full = _window(t_full, 32) / _window(t_full, 8)
    steps_ratio = statistics.mean(t50) / statistics.mean(t4)
    pick = [1, 2, 4, 8, 16, 24, 32]
    return {
        "config": f"tiny TSCM, {cfg.height}x{cfg.width} px, {cfg.pred_latent_frames} latent "
        f"frames per block, I2V, CPU {torch.get_num_threads()} threads, random weights",
        "history_latent_frames": {b: 1 + cfg.pred_latent_frames * (b - 1) for b in pick},
        "tscm_block_ms": {b: round(1000 * t_tscm[b - 1], 2) for b in pick},
        "full_context_block_ms": {b: round(1000 * t_full[b - 1], 2) for b in pick},
        "tscm_32nd_over_8th": round(growth_tscm, 3),
        "full_context_32nd_over_8th": round(growth_full, 3),
        "4_step_block_ms": round(1000 * statistics.mean(t4), 2),
        "50_step_block_ms": round(1000 * statistics.mean(t50), 2),
        "50_over_4_step_time": round(steps_ratio, 2),
        "targets_met": {
            "tscm_32nd_within_1.2x_of_8th": growth_tscm <= 1.2,
            "4_step_10x_faster_than_50": steps_ratio >= 10,
        },
    }


if __name__ == "__main__":
    import json

    print(json.dumps(main(), indent=2))
