"""TSCM cost per prediction block as history grows: TSCM vs spatial-only vs full context.

A prediction block is ``BLOCK_FRAMES`` = 4 latent frames (about 1 s of 16 fps video with the
Wan2.2 VAE's temporal stride 4); history is 1, 4, 8, 16, 32 such blocks (4 .. 128 frames).
Variants, all batch 1, same latent size:
- ``tscm``: the caller passes the ``select_history`` frames (the nearest 6, the first, 1 in
  32 of the rest); attention tokens at the distance schedule, z_linear from the same frames;
- ``tscm_full_channel``: all history passed with ``history_keep=select_history(...)``: the
  same attention tokens, but z_linear reads every frame (linear in history, cheap per token);
- ``spatial_only``: the same model without temporal sampling (every frame at the schedule);
- ``full_context``: every history frame at (1,2,2), no channel branch (plain Wan on the
  concatenated tokens).
Time: best-of-N forward time (no grad): process CPU time with one thread on CPU (the
machine is shared), wall time on CUDA. Memory: peak CPU memory allocated by torch ops
during one forward, from ``torch.profiler`` with ``profile_memory=True`` (cumulative sum of
per-op allocations and frees in time order); on CUDA, ``torch.cuda.max_memory_allocated``.
Targets are ratios within this process: TSCM at 32 blocks within 1.2x of TSCM at 8 blocks,
while full context grows.

``gpu_benchmark()`` runs the same at Wan2.2-5B size in bf16 (random weights) at 544x960 and
704x1280 plus one training step at batch 1; it runs only when CUDA is available.
"""

from __future__ import annotations

import time

import torch
from torch.profiler import ProfilerActivity, profile
from tqdm import tqdm

from model.configs import transformer_config
from model.tscm import TSCMTransformer, select_history

BLOCK_FRAMES = 4
HISTORY_BLOCKS = (1, 4, 8, 16, 32)
VARIANTS = ("tscm", "tscm_full_channel", "spatial_only", "full_context")
CPU_LATENT_HW = (16, 32)  # 256x512 video at VAE stride 16: 128 prediction tokens per frame
VAE_STRIDE = 16


def build_models(config_name: str, device: str, dtype: torch.dtype) -> dict[str, TSCMTransformer]:
    """The TSCM model (used by tscm and spatial_only) and a full-context model of the same size."""
    cfg = transformer_config(config_name)
    full_cfg = cfg | {
        "history_patch_bounds": (),
        "history_patch_sizes": ((1, 2, 2),),
        "first_frame_patch_size": None,
        "linear_channels": 0,
    }
    with torch.device(device):
        tscm = TSCMTransformer(**cfg).cast_parameters(dtype).eval()
        full = TSCMTransformer(**full_cfg).cast_parameters(dtype).eval()
    return {"tscm": tscm, "tscm_full_channel": tscm, "spatial_only": tscm, "full_context": full}


def make_inputs(
    model: TSCMTransformer, variant: str, blocks: int, hw: tuple[int, int], device: str, dtype
) -> dict:
    g = torch.Generator().manual_seed(blocks)
    cfg = model.config
    frames = blocks * BLOCK_FRAMES
    shape = (1, cfg.in_channels)
    history = torch.randn(*shape, frames, *hw, generator=g).to(device, dtype)
    ids = torch.arange(frames, 0, -1)  # time order: the first frame is the farthest
    keep = select_history(frames, g) if variant.startswith("tscm") else None
    if variant == "tscm":
        history, ids, keep = history[:, :, keep.to(device)], ids[keep], None
    return {
        "hidden_states": torch.randn(*shape, BLOCK_FRAMES, *hw, generator=g).to(device, dtype),
        "timestep": torch.tensor([500.0], device=device),
        "encoder_hidden_states": torch.randn(1, 64, cfg.text_dim, generator=g).to(device, dtype),
        "history": history,
        "history_frame_ids": ids,
        "history_keep": keep,
    }


def attention_tokens(model: TSCMTransformer, inputs: dict) -> int:
    """Self-attention sequence length: compressed history tokens + prediction tokens."""
    history, ids, keep = inputs["history"], inputs["history_frame_ids"], inputs["history_keep"]
    keep = keep if keep is not None else torch.arange(history.shape[2])
    with torch.no_grad():
        kept = history[:, :, keep.to(history.device)]
        # The bench's history always starts at the video's first frame (select_history keeps it).
        hist, _ = model._temporal_spatial_tokens(kept, ids[keep], oldest_is_first_frame=True)
    _, ph, pw = model.config.patch_size
    pred = BLOCK_FRAMES * (history.shape[3] // ph) * (history.shape[4] // pw)
    return hist.shape[1] + pred


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def forward_time_s(model: TSCMTransformer, inputs: dict, repeats: int, device: str) -> float:
    """Best of ``repeats`` forward times.

    On CUDA: wall time. On CPU: process CPU time (``time.process_time``) with one intra-op
    thread, because the CPU is shared with other work and wall time there measures the load
    of the machine more than the model.
    """
    clock = time.perf_counter if device.startswith("cuda") else time.process_time
    times = []
    with torch.no_grad():
        model(**inputs)  # warm-up
        for _ in range(repeats):
            _sync(device)
            t0 = clock()
            model(**inputs)
            _sync(device)
            times.append(clock() - t0)
    return min(times)


def forward_peak_mb(model: TSCMTransformer, inputs: dict, device: str) -> float:
    with torch.no_grad():
        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            model(**inputs)
            return (torch.cuda.max_memory_allocated() - base) / 2**20
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            model(**inputs)
    current = peak = 0
    for event in sorted(prof.events(), key=lambda e: e.time_range.start):
        current += event.self_cpu_memory_usage
        peak = max(peak, current)
    return peak / 2**20


def sweep(
    config_name: str,
    hw: tuple[int, int],
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    repeats: int = 3,
    history_blocks: tuple[int, ...] = HISTORY_BLOCKS,
    max_full_context_tokens: int | None = None,
) -> list[dict]:
    """One row per (variant, history blocks): tokens, forward ms, peak MB."""
    models = build_models(config_name, device, dtype)
    rows = []
    jobs = [(v, b) for v in VARIANTS for b in history_blocks]
    for variant, blocks in tqdm(jobs, desc=f"bench_tscm {config_name} {hw}", leave=False):
        model = models[variant]
        inputs = make_inputs(model, variant, blocks, hw, device, dtype)
        tokens = attention_tokens(model, inputs)
        if (
            variant == "full_context"
            and max_full_context_tokens
            and tokens > max_full_context_tokens
        ):
            rows.append(
                {"variant": variant, "history_blocks": blocks, "tokens": tokens, "skipped": True}
            )
            continue
        rows.append(
            {
                "variant": variant,
                "history_blocks": blocks,
                "history_frames": blocks * BLOCK_FRAMES,
                "tokens": tokens,
                "forward_ms": round(
                    1000 * forward_time_s(model, inputs, repeats if tokens < 4000 else 2, device), 2
                ),
                "peak_mb": round(forward_peak_mb(model, inputs, device), 1),
            }
        )
    return rows


def _at(rows: list[dict], variant: str, blocks: int, key: str) -> float:
    return next(r[key] for r in rows if r["variant"] == variant and r["history_blocks"] == blocks)


def _ratio(rows: list[dict], variant: str, key: str, num: int, den: int) -> float:
    return round(_at(rows, variant, num, key) / _at(rows, variant, den, key), 3)


def training_step(config_name: str, hw: tuple[int, int], blocks: int, device: str) -> dict:
    """One AdamW step of TSCM at batch 1 (bf16 weights and optimizer states, checkpointing)."""
    model = build_models(config_name, device, torch.bfloat16)["tscm"].train()
    model.enable_gradient_checkpointing()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    inputs = make_inputs(model, "tscm", blocks, hw, device, torch.bfloat16)
    target = torch.randn_like(inputs["hidden_states"])

    def step() -> None:
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16):
            out = model(**inputs)[0]
        torch.nn.functional.mse_loss(out.float(), target.float()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up, allocates optimizer states
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    _sync(device)
    t0 = time.perf_counter()
    step()
    _sync(device)
    result = {"config": config_name, "latent_hw": hw, "history_blocks": blocks, "batch": 1}
    result["step_s"] = round(time.perf_counter() - t0, 3)
    if device.startswith("cuda"):
        result["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return result


def gpu_benchmark() -> dict:
    """Wan2.2-5B size, bf16, random weights, 544x960 and 704x1280 latents; CUDA only."""
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device on this machine; run on a GPU machine (H100/H200)"}
    out: dict = {"device": torch.cuda.get_device_name(), "dtype": "bfloat16"}
    for height, width in ((544, 960), (704, 1280)):
        hw = (height // VAE_STRIDE, width // VAE_STRIDE)
        rows = sweep("wan22-5b", hw, "cuda", torch.bfloat16, 3, max_full_context_tokens=60_000)
        out[f"{height}x{width}"] = {
            "rows": rows,
            "tscm_time_32_over_8": _ratio(rows, "tscm", "forward_ms", 32, 8),
            "tscm_mem_32_over_8": _ratio(rows, "tscm", "peak_mb", 32, 8),
        }
        torch.cuda.empty_cache()
    out["train_step_704x1280"] = training_step("wan22-5b", (44, 80), 8, "cuda")
    return out


def main() -> dict:
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = sweep("tiny", CPU_LATENT_HW, "cpu", torch.float32, repeats=5)
    finally:
        torch.set_num_threads(threads)
    result = {
        "config": "tiny (tiny-random weights)",
        "device": "cpu",
        "latent_hw": CPU_LATENT_HW,
        "block_latent_frames": BLOCK_FRAMES,
        "time_method": "best-of-N process CPU time per forward, 1 intra-op thread",
        "memory_method": "torch.profiler profile_memory: peak of cumulative op allocations",
        "rows": rows,
        "tscm_time_32_over_8": _ratio(rows, "tscm", "forward_ms", 32, 8),
        "tscm_mem_32_over_8": _ratio(rows, "tscm", "peak_mb", 32, 8),
        "tscm_full_channel_time_32_over_8": _ratio(rows, "tscm_full_channel", "forward_ms", 32, 8),
        "spatial_only_time_32_over_8": _ratio(rows, "spatial_only", "forward_ms", 32, 8),
        "full_context_time_32_over_8": _ratio(rows, "full_context", "forward_ms", 32, 8),
        "full_context_mem_32_over_8": _ratio(rows, "full_context", "peak_mb", 32, 8),
        "full_over_tscm_time_at_32": round(
            _at(rows, "full_context", 32, "forward_ms") / _at(rows, "tscm", 32, "forward_ms"), 2
        ),
        "gpu": gpu_benchmark(),
    }
    result["targets_met"] = {
        "tscm_32_within_1.2x_of_8": result["tscm_time_32_over_8"] <= 1.2,
        "full_context_grows": result["full_context_time_32_over_8"] > 2.0,
    }
    return result


if __name__ == "__main__":
    import json

    print(json.dumps(main(), indent=2, default=str))
