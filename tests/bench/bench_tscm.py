"""TSCM cost per prediction block as history grows, on the paths the trainer and sampler run.

A prediction block is ``BLOCK_FRAMES`` = 4 latent frames (about 1 s of 16 fps video with the
Wan2.2 VAE's temporal stride 4); history is 1, 4, 8, 16, 32 such blocks (4 .. 128 frames).
Each variant builds the model's history input with the project's own functions, so the bench
measures what runs (``tests/test_bench_paths.py`` checks the inputs against a real training
step and a real sampler block):

- ``trainer``: ``Conditioner.batch`` (the window's N history frames: the top of its random
  draw) then ``flow_matching_loss`` without grad: the model gets every history frame plus
  ``history_keep=select_history(N)``, so attention sees the sampled frames and the channel
  path (z_linear) reads all N frames;
- ``trainer_step``: the same plus ``backward()`` (what a training step costs per block);
- ``sampler``: ``model.sampling.rollout`` (what ``yume-train sample`` calls) for one block
  after the image's latent frame and N frames of generated blocks (history 1 + N), with the
  sampler's few-step schedule (one block = 4 forwards): the same kind of history input as
  ``trainer``;
- ``full_context``: every history frame at (1,2,2) in attention, no channel branch (plain Wan
  on the concatenated tokens);
- ``reference_selected_only``: not run by the trainer or the sampler. The caller passes only
  the ``select_history`` frames, so z_linear reads those too: what the cost would be if the
  channel path read the sampled frames only.

Time: best-of-N call time: process CPU time with one thread on CPU (the machine is shared),
wall time on CUDA. Memory: peak CPU memory allocated by torch ops during one call, from
``torch.profiler`` with ``profile_memory=True`` (cumulative sum of per-op allocations and
frees in time order); on CUDA, ``torch.cuda.max_memory_allocated``. Targets are ratios within
this process (32 against 8 history blocks).

``gpu_benchmark()`` runs the same at Wan2.2-5B size in bf16 (random weights) at 544x960 and
704x1280 plus one training step at batch 1; it runs only when CUDA is available.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from model.configs import transformer_config
from model.sampling import autocast, few_step_sigmas, rollout
from model.text import ActionEmbeddingCache
from model.tscm import TSCMTransformer, select_history
from model.vae import STRIDE
from schemas.actions import KEYS, MOUSE
from training.conditioning import Conditioner
from training.config import SAMPLE_PRESETS, preset
from training.train_base import flow_matching_loss

BLOCK_FRAMES = 4
HISTORY_BLOCKS = (1, 4, 8, 16, 32)
VARIANTS = ("trainer", "trainer_step", "sampler", "full_context", "reference_selected_only")
# what each variant's time covers
UNITS = {
    "trainer": "one training forward (no grad)",
    "trainer_step": "one training forward + backward",
    "sampler": "one sampler block (its few-step schedule: 4 forwards)",
    "full_context": "one forward",
    "reference_selected_only": "one forward",
}
CPU_LATENT_HW = (16, 32)  # 256x512 video at VAE stride 16: 128 prediction tokens per frame
VAE_STRIDE = STRIDE[1]


class LongestHistory:
    """Stands in for the trainer's numpy generator in ``Conditioner.batch``: its draw of the
    history length returns the largest value, so a window with N history frames passes all N
    (the trainer draws uniformly up to N; the bench measures each N)."""

    def integers(self, low: int, high: int) -> int:
        return high - 1


def build_models(config_name: str, device: str, dtype: torch.dtype) -> dict[str, TSCMTransformer]:
    """The TSCM model (every variant but full_context) and a full-context model of the same size."""
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
    return {v: full if v == "full_context" else tscm for v in VARIANTS}


def trainer_call(
    model: TSCMTransformer, config_name: str, frames: int, hw: tuple[int, int], device: str
) -> Callable[[bool], torch.Tensor]:
    """The trainer's loss on one I2V window with ``frames`` history latent frames that start at
    the video's first frame: ``Conditioner.batch`` then ``flow_matching_loss``. Called with
    ``grad`` False (forward only) or True (forward and backward)."""
    cfg = preset(config_name, pred_latent_frames=BLOCK_FRAMES, max_history_latent_frames=frames)
    c, dim = model.config.in_channels, model.config.text_dim
    g = torch.Generator().manual_seed(frames)
    pixel_frames = 1 + STRIDE[0] * (frames + BLOCK_FRAMES - 1)
    sample = {
        "__key__": f"bench-{frames}",
        "latents": torch.randn(c, frames + BLOCK_FRAMES, *hw, generator=g),
        "history_latent_frames": frames,
        "history_starts_at_first_frame": True,
        "event_emb": torch.randn(cfg.event_len, dim, generator=g),
        "keys": np.zeros(pixel_frames, np.int64),
        "mouse": np.zeros(pixel_frames, np.int64),
        "tiny_random": True,
    }
    actions = ActionEmbeddingCache(
        torch.randn(len(KEYS), len(MOUSE), cfg.action_len, dim, generator=g), {}, built=True
    )
    batch = Conditioner(cfg, None, None, actions).batch([sample], "i2v", LongestHistory())
    if device == "meta":  # FLOP counting: the model reads the ids' values, meta has none
        batch = dataclasses.replace(batch.to(device), history_frame_ids=batch.history_frame_ids)
    else:
        batch = batch.to(device)
    gen = torch.Generator().manual_seed(0)

    def call(grad: bool) -> torch.Tensor:
        with torch.set_grad_enabled(grad):
            loss, _ = flow_matching_loss(model, batch, cfg, gen)
            if grad:
                loss.backward()
                model.zero_grad(set_to_none=True)
        return loss

    return call


def sampler_call(
    model: TSCMTransformer, config_name: str, frames: int, hw: tuple[int, int], device: str
) -> Callable[[], list]:
    """The sampler's next block after ``frames`` history latent frames: ``rollout`` (which
    ``training.sample.generate`` calls) with the frames as its context, the sampler's few-step
    schedule and autocast, so ``history_batch`` and ``select_history`` build the input."""
    cfg = dataclasses.replace(SAMPLE_PRESETS[config_name], pred_latent_frames=BLOCK_FRAMES)
    c, dim = model.config.in_channels, model.config.text_dim
    g = torch.Generator().manual_seed(frames)
    context = torch.randn(1, c, frames, *hw, generator=g).to(device)
    text = torch.randn(1, cfg.event_len + cfg.action_len, dim, generator=g).to(device)
    sigmas = few_step_sigmas(cfg.denoising_steps, cfg.shift, cfg.warp_denoising_steps)
    shape = (1, c, BLOCK_FRAMES, *hw)
    gen = torch.Generator().manual_seed(0)

    def call() -> list:
        with torch.no_grad(), autocast(device, cfg.mixed_precision):
            return rollout(model, context, [text], shape, sigmas, gen, tiny_random=True)

    return call


def direct_call(
    model: TSCMTransformer, variant: str, frames: int, hw: tuple[int, int], device: str, dtype
) -> Callable[[], tuple]:
    """A plain forward: every frame (full_context) or only the ``select_history`` frames
    (reference_selected_only), no ``history_keep``."""
    g = torch.Generator().manual_seed(frames)
    cfg = model.config
    history = torch.randn(1, cfg.in_channels, frames, *hw, generator=g).to(device, dtype)
    ids = torch.arange(frames, 0, -1)  # time order: the first frame is the farthest
    if variant == "reference_selected_only":
        keep = select_history(frames, g)
        history, ids = history[:, :, keep.to(device)], ids[keep]
    inputs = {
        "hidden_states": torch.randn(1, cfg.in_channels, BLOCK_FRAMES, *hw, generator=g).to(
            device, dtype
        ),
        "timestep": torch.tensor([500.0], device=device),
        "encoder_hidden_states": torch.randn(1, 96, cfg.text_dim, generator=g).to(device, dtype),
        "history": history,
        "history_frame_ids": ids,
    }

    def call() -> tuple:
        with torch.no_grad():
            return model(**inputs)

    return call


def variant_call(
    models: dict[str, TSCMTransformer],
    config_name: str,
    variant: str,
    frames: int,
    hw: tuple[int, int],
    device: str,
    dtype: torch.dtype,
) -> Callable[[], object]:
    """A no-argument callable running ``variant`` once after ``frames`` history latent frames."""
    model = models[variant]
    if variant in ("trainer", "trainer_step"):
        call = trainer_call(model, config_name, frames, hw, device)
        return lambda: call(variant == "trainer_step")
    if variant == "sampler":
        return sampler_call(model, config_name, frames, hw, device)
    return direct_call(model, variant, frames, hw, device, dtype)


def history_frames(variant: str, blocks: int) -> int:
    """History latent frames after ``blocks`` blocks: the sampler's history is the image's
    latent frame then the generated blocks (so never a multiple of the (8,4,4) channel patch,
    which makes ``_channel_tokens`` pad it); the others' is ``blocks`` whole blocks."""
    return blocks * BLOCK_FRAMES + (variant == "sampler")


def model_inputs(model: TSCMTransformer, call: Callable[[], object]) -> dict:
    """What the first forward of ``call`` hands ``model``: history frames, ``history_keep``,
    the first-frame flag, and the token counts its first block sees (self-attention sequence
    = history + prediction tokens; z_linear tokens of the channel branch)."""
    seen: dict = {}

    def forward(*args, **kwargs):
        if not seen:
            history, keep = kwargs.get("history"), kwargs.get("history_keep")
            seen.update(
                history_frames=0 if history is None else int(history.shape[2]),
                history_frame_ids=kwargs.get("history_frame_ids"),
                history_keep=keep,
                history_includes_first_frame=kwargs.get("history_includes_first_frame", True),
            )
        return original(*args, **kwargs)

    def first_block(_module, args) -> None:
        if "attention_tokens" not in seen:
            seen["attention_tokens"] = int(args[0].shape[1])
            seen["channel_tokens"] = 0 if args[5] is None else int(args[5].shape[1])

    original = model.forward
    model.forward = forward
    hook = model.blocks[0].register_forward_pre_hook(first_block)
    try:
        call()
    finally:
        hook.remove()
        del model.forward
    return seen


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def call_time_s(call: Callable[[], object], repeats: int, device: str) -> float:
    """Best of ``repeats`` call times (after one warm-up call).

    On CUDA: wall time. On CPU: process CPU time (``time.process_time``) with one intra-op
    thread, because the CPU is shared with other work and wall time there measures the load
    of the machine more than the model.
    """
    clock = time.perf_counter if device.startswith("cuda") else time.process_time
    call()  # warm-up
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = clock()
        call()
        _sync(device)
        times.append(clock() - t0)
    return min(times)


def call_peak_mb(call: Callable[[], object], device: str) -> float:
    """Peak memory torch allocates during one call, in MiB."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        call()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        call()
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
    variants: tuple[str, ...] = VARIANTS,
    max_full_context_tokens: int | None = None,
) -> list[dict]:
    """One row per (variant, history blocks): frames and tokens the model got, ms, peak MB."""
    models = build_models(config_name, device, dtype)
    rows = []
    jobs = [(v, b) for v in variants for b in history_blocks]
    for variant, blocks in tqdm(jobs, desc=f"bench_tscm {config_name} {hw}", leave=False):
        row = {
            "variant": variant,
            "history_blocks": blocks,
            "history_frames": history_frames(variant, blocks),
        }
        # full context attends to every frame at (1,2,2): count before running it
        full_tokens = (row["history_frames"] + BLOCK_FRAMES) * (hw[0] // 2) * (hw[1] // 2)
        if (
            variant == "full_context"
            and max_full_context_tokens
            and (full_tokens > max_full_context_tokens)
        ):
            rows.append(row | {"attention_tokens": full_tokens, "skipped": True})
            continue
        call = variant_call(models, config_name, variant, row["history_frames"], hw, device, dtype)
        seen = model_inputs(models[variant], call)  # also the first warm-up
        fast = seen["attention_tokens"] < 4000 and variant != "sampler"
        row |= {
            "model_history_frames": seen["history_frames"],
            "attention_history_frames": (
                seen["history_frames"]
                if seen["history_keep"] is None
                else len(seen["history_keep"])
            ),
            "attention_tokens": seen["attention_tokens"],
            "channel_tokens": seen["channel_tokens"],
            "ms": round(1000 * call_time_s(call, repeats if fast else 2, device), 2),
            "peak_mb": round(call_peak_mb(call, device), 1),
        }
        rows.append(row)
    return rows


def _at(rows: list[dict], variant: str, blocks: int, key: str) -> float:
    return next(r[key] for r in rows if r["variant"] == variant and r["history_blocks"] == blocks)


def _ratio(rows: list[dict], variant: str, key: str, num: int, den: int) -> float:
    return round(_at(rows, variant, num, key) / _at(rows, variant, den, key), 3)


def ratios(rows: list[dict], key: str = "ms") -> dict[str, float]:
    """Each measured variant's ``key`` at 32 history blocks over its value at 8."""
    return {
        v: _ratio(rows, v, key, 32, 8)
        for v in dict.fromkeys(r["variant"] for r in rows)
        if all(key in r for r in rows if r["variant"] == v and r["history_blocks"] in (8, 32))
    }


def flops_sweep(
    config_name: str,
    hw: tuple[int, int],
    variants: tuple[str, ...] = ("trainer", "sampler", "full_context"),
    history_blocks: tuple[int, ...] = HISTORY_BLOCKS,
) -> list[dict]:
    """Floating-point operations of each variant's call (``torch.utils.flop_counter``: matmuls,
    convolutions, attention) with the model on the meta device, so a Wan2.2-5B-size count
    needs neither its memory nor a GPU."""
    models = build_models(config_name, "meta", torch.float32)
    rows = []
    for variant in variants:
        for blocks in history_blocks:
            frames = history_frames(variant, blocks)
            call = variant_call(models, config_name, variant, frames, hw, "meta", torch.float32)
            with FlopCounterMode(display=False) as counter:
                call()
            rows.append(
                {
                    "variant": variant,
                    "history_blocks": blocks,
                    "history_frames": frames,
                    "tflops": round(counter.get_total_flops() / 1e12, 6),
                }
            )
    return rows


def flops_benchmark() -> dict:
    """FLOPs per block at Wan2.2-5B size (the sampler's 544x960, the trainer's 704x1280) and
    at the CPU sweep's tiny size, which says how much of the tiny time growth is compute."""
    out: dict = {"method": "torch.utils.flop_counter on the meta device"}
    sizes = (
        ("wan22-5b", 544, 960),
        ("wan22-5b", 704, 1280),
        ("tiny", CPU_LATENT_HW[0] * VAE_STRIDE, CPU_LATENT_HW[1] * VAE_STRIDE),
    )
    for config_name, height, width in sizes:
        rows = flops_sweep(config_name, (height // VAE_STRIDE, width // VAE_STRIDE))
        out[f"{config_name}_{height}x{width}"] = {
            "rows": rows,
            "flops_32_over_8": ratios(rows, "tflops"),
        }
    return out


def training_step(config_name: str, hw: tuple[int, int], blocks: int, device: str) -> dict:
    """One AdamW step on the trainer's path at batch 1 (bf16 weights and optimizer states,
    gradient checkpointing, the trainer's autocast)."""
    model = build_models(config_name, device, torch.bfloat16)["trainer"].train()
    model.enable_gradient_checkpointing()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
    loss = trainer_call(model, config_name, blocks * BLOCK_FRAMES, hw, device)

    def step() -> None:
        loss(True)
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up, allocates optimizer states (``loss`` zeroes the grads it made)
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
    gpu_variants = ("trainer", "sampler", "full_context")
    for height, width in ((544, 960), (704, 1280)):
        hw = (height // VAE_STRIDE, width // VAE_STRIDE)
        rows = sweep(
            "wan22-5b", hw, "cuda", torch.bfloat16, 3, variants=gpu_variants,
            max_full_context_tokens=60_000,
        )  # fmt: skip
        out[f"{height}x{width}"] = {
            "rows": rows,
            "time_32_over_8": ratios(rows, "ms"),
            "mem_32_over_8": ratios(rows, "peak_mb"),
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
    time_ratio = ratios(rows, "ms")
    result = {
        "config": "tiny (tiny-random weights)",
        "device": "cpu",
        "latent_hw": CPU_LATENT_HW,
        "block_latent_frames": BLOCK_FRAMES,
        "time_method": "best-of-N process CPU time per call, 1 intra-op thread",
        "memory_method": "torch.profiler profile_memory: peak of cumulative op allocations",
        "units": UNITS,
        "rows": rows,
        "time_32_over_8": time_ratio,
        "mem_32_over_8": ratios(rows, "peak_mb"),
        "full_context_over_trainer_at_32": round(
            _at(rows, "full_context", 32, "ms") / _at(rows, "trainer", 32, "ms"), 2
        ),
        "flops": flops_benchmark(),
        "gpu": gpu_benchmark(),
    }
    flops = result["flops"]["wan22-5b_704x1280"]["flops_32_over_8"]
    result["targets_met"] = {
        "trainer_32_within_1.2x_of_8": time_ratio["trainer"] <= 1.2,
        "trainer_step_32_within_1.2x_of_8": time_ratio["trainer_step"] <= 1.2,
        "sampler_32_within_1.2x_of_8": time_ratio["sampler"] <= 1.2,
        "full_context_grows": time_ratio["full_context"] > 2.0,
        "wan22_5b_trainer_flops_32_within_1.2x_of_8": flops["trainer"] <= 1.2,
        "wan22_5b_sampler_flops_32_within_1.2x_of_8": flops["sampler"] <= 1.2,
    }
    return result


if __name__ == "__main__":
    import json

    print(json.dumps(main(), indent=2, default=str))
