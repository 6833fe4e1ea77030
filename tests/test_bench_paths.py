"""bench_tscm's ``trainer`` and ``sampler`` variants hand the model what a real training step
and a real sampler block hand it (history frames, ids, ``history_keep``, first-frame flag,
and the token counts the blocks see), so the benchmark cannot drift from the paths it times."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from model.text import ActionEmbeddingCache, TextEncoder
from model.tscm import TSCMTransformer, select_history
from tests.bench import bench_tscm
from training.conditioning import Conditioner
from training.config import SAMPLE_PRESETS, preset
from training.mixture import Stream
from training.sample import generate, parse_plan
from training.sources import memory_source
from training.train_base import train

HW = (4, 8)  # latents of 64x128 px
FP = bench_tscm.BLOCK_FRAMES


def signature(model: TSCMTransformer, kwargs: dict) -> dict:
    """What one forward receives, with random draws reduced to what is fixed by the path."""
    history, keep = kwargs.get("history"), kwargs.get("history_keep")
    frames = 0 if history is None else history.shape[2]
    recent = set(range(max(frames - 6, 0), frames)) | {0}
    return {
        "arguments": sorted(kwargs),
        "hidden_states": tuple(kwargs["hidden_states"].shape),
        "timestep": tuple(kwargs["timestep"].shape),
        "encoder_hidden_states": tuple(kwargs["encoder_hidden_states"].shape),
        "history": None if history is None else tuple(history.shape),
        "history_frame_ids": kwargs["history_frame_ids"].tolist() if frames else None,
        # select_history keeps the nearest 6 and the first frame, and one random frame per
        # window of far history: its length is fixed, the far members are not
        "keep_length": None if keep is None else len(keep),
        "keep_has_recent_and_first": None if keep is None else recent <= set(keep.tolist()),
        "first_frame": kwargs.get("history_includes_first_frame"),
    }


@pytest.fixture
def forwards(monkeypatch) -> list[dict]:
    """Every TSCMTransformer forward's signature plus the first block's token counts."""
    seen: list[dict] = []
    original = TSCMTransformer.forward

    def spy(self, *args, **kwargs):
        assert not args, "the paths call the model with keywords only"
        record = signature(self, kwargs)

        def tokens(_module, block_args) -> None:
            record["attention_tokens"] = block_args[0].shape[1]
            z_linear = block_args[5]
            record["channel_tokens"] = 0 if z_linear is None else z_linear.shape[1]

        hook = self.blocks[0].register_forward_pre_hook(tokens)
        try:
            out = original(self, **kwargs)
        finally:
            hook.remove()
        seen.append(record)
        return out

    monkeypatch.setattr(TSCMTransformer, "forward", spy)
    return seen


def latent_window(frames: int, cfg) -> dict:
    n = 1 + 4 * (frames + FP - 1)
    return {
        "__key__": f"w{frames}",
        "latents": torch.randn(48, frames + FP, *HW),
        "history_latent_frames": frames,
        "history_starts_at_first_frame": True,
        "event_emb": torch.randn(cfg.event_len, 32),
        "keys": np.zeros(n, np.int64),
        "mouse": np.zeros(n, np.int64),
        "task": "i2v",
        "source": "synthetic",
        "tiny_random": True,
    }


def test_trainer_variant_passes_what_a_training_step_passes(tmp_path, forwards, monkeypatch):
    frames = 40  # 10 blocks: two windows of far history are sampled
    cfg = preset(
        "tiny",
        out_dir=str(tmp_path / "run"),
        datasets={"synthetic": 1.0},
        tasks={"i2v": 1},
        latents=True,
        steps=2,
        batch_size=1,
        val_every=0,
        ckpt_every=1000,
        height=16 * HW[0],
        width=16 * HW[1],
        pred_latent_frames=FP,
        max_history_latent_frames=frames,
    )
    streams = {("synthetic", "i2v"): Stream(memory_source([latent_window(frames, cfg)]), 0)}
    # the real loop, with its history-length draw at the top of the range as in the bench
    real_batch = Conditioner.batch
    monkeypatch.setattr(
        Conditioner,
        "batch",
        lambda self, s, task, rng: real_batch(self, s, task, bench_tscm.LongestHistory()),
    )
    train(cfg, streams=streams)
    trained = list(forwards)
    assert len(trained) == 2 and trained[0]["history"][2] == frames
    forwards.clear()

    models = bench_tscm.build_models("tiny", "cpu", torch.float32)
    for variant in ("trainer", "trainer_step"):
        bench_tscm.variant_call(models, "tiny", variant, frames, HW, "cpu", torch.float32)()
    assert forwards == trained
    assert trained[0]["keep_length"] == len(select_history(frames)) < frames
    assert trained[0]["channel_tokens"] == frames // 8 * (HW[0] // 4) * (HW[1] // 4)


def test_sampler_variant_passes_what_a_sampler_block_passes(forwards):
    cfg = dataclasses.replace(
        SAMPLE_PRESETS["tiny"], pred_latent_frames=FP, height=16 * HW[0], width=16 * HW[1]
    )
    model = TSCMTransformer.from_config_name("tiny").eval()
    text = TextEncoder.tiny(event_len=cfg.event_len, action_len=cfg.action_len)
    plan = parse_plan("W,W+A,←,W", cfg.prompt, 4)
    context = torch.randn(1, 48, 1, *HW)  # I2V: the image's latent frame
    generate(cfg, model, text, ActionEmbeddingCache.build(text), plan, context=context)
    steps = len(cfg.denoising_steps)
    real = [forwards[k * steps : (k + 1) * steps] for k in range(len(plan))]
    forwards.clear()

    models = bench_tscm.build_models("tiny", "cpu", torch.float32)
    for k, block in enumerate(real):
        frames = 1 + FP * k  # the image then k generated blocks
        assert block[0]["history"][2] == frames and block[0]["keep_length"] is not None
        bench_tscm.variant_call(models, "tiny", "sampler", frames, HW, "cpu", torch.float32)()
        assert forwards == block, f"block {k}"
        forwards.clear()
    assert real[-1][0]["keep_length"] < real[-1][0]["history"][2]  # far history sampled


def test_sweep_rows_report_what_the_model_got() -> None:
    torch.set_num_threads(1)
    frames = 10 * FP
    sampled = len(select_history(frames))
    variants = ("trainer", "sampler", "reference_selected_only", "full_context")
    rows = bench_tscm.sweep("tiny", HW, repeats=1, history_blocks=(10,), variants=variants)
    got = {r["variant"]: (r["model_history_frames"], r["attention_history_frames"]) for r in rows}
    assert got == {
        "trainer": (frames, sampled),  # z_linear reads all frames, attention the sampled ones
        "sampler": (1 + frames, len(select_history(1 + frames))),  # the image, then blocks
        "reference_selected_only": (sampled, sampled),
        "full_context": (frames, frames),
    }
    tokens = {r["variant"]: (r["attention_tokens"], r["channel_tokens"]) for r in rows}
    assert tokens["full_context"] == ((frames + FP) * (HW[0] // 2) * (HW[1] // 2), 0)
    assert tokens["trainer"][1] == frames // 8 * (HW[0] // 4) * (HW[1] // 4)
    assert all(r["ms"] > 0 and r["peak_mb"] > 0 for r in rows)


def test_flop_count_on_meta_equals_the_count_of_a_real_run() -> None:
    """The Wan2.2-5B-size FLOPs come from the meta device: on the tiny model they must equal
    the count of the same calls run on the CPU. The CPU run uses the math attention kernel,
    whose matmuls the counter sees (it has no formula for the fused CPU kernel; meta runs
    the math one)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    meta = bench_tscm.flops_sweep("tiny", HW, history_blocks=(1, 10))
    models = bench_tscm.build_models("tiny", "cpu", torch.float32)
    for row in meta:
        frames = row["history_frames"]
        call = bench_tscm.variant_call(models, "tiny", row["variant"], frames, HW, "cpu", None)
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            call()
        assert row["tflops"] == round(counter.get_total_flops() / 1e12, 6) > 0, row
    full = {r["history_blocks"]: r["tflops"] for r in meta if r["variant"] == "full_context"}
    assert full[10] > 4 * full[1]  # attention over every history frame is counted
