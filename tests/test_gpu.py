"""The CUDA paths, each checked where it acts: bf16 autocast in a training step and in the
sampler, FSDP2 (``training.distributed.wrap``) on a 1-rank NCCL group through two optimiser
steps and a checkpoint round trip, ``torch.compile`` as ``yume-train sample --compile`` uses
it, and gradient checkpointing's peak memory.

Why: CPU runs take none of these branches (autocast and FSDP are CUDA-only by design, compile
is a GPU option), so a bug in any of them passed every other test. Tiny preset throughout:
the whole file takes about a minute on one GPU; ``make gpu-check`` runs it there, and on a
CPU machine each test is skipped with its reason.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.distributed as dist
from torch import nn

from model.sampling import Batch
from tests.test_training import streams, tiny_cfg
from training import distributed, train_base
from training import sample as sampler
from training.config import SAMPLE_PRESETS, preset
from training.train_base import Trainer, build_transformer, flow_matching_loss

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        not torch.cuda.is_available(),
        reason="needs CUDA: bf16 autocast, FSDP over NCCL and torch.compile are GPU paths "
        "(run `make gpu-check` on a GPU machine)",
    ),
]

CUDA = torch.device("cuda")


class DtypeProbe:
    """The dtypes every ``nn.Linear`` inside the DiT blocks sees in forward: its output and
    its weight as the forward reads it (autocast casts on the fly and leaves the weight; FSDP
    mixed precision swaps in a bf16 copy)."""

    def __init__(self, model: nn.Module) -> None:
        self.outputs: set[torch.dtype] = set()
        self.weights: set[torch.dtype] = set()
        for block in model.blocks:
            for module in block.modules():
                if isinstance(module, nn.Linear):
                    module.register_forward_hook(self._record)

    def _record(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        self.outputs.add(output.dtype)
        self.weights.add(module.weight.dtype)


def spy_on_losses(monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    """The loss of every training step, as the trainer's loop gets it."""
    losses: list[torch.Tensor] = []
    real = train_base.flow_matching_loss

    def spy(*args, **kwargs):
        loss, sigma = real(*args, **kwargs)
        losses.append(loss.detach())
        return loss, sigma

    monkeypatch.setattr(train_base, "flow_matching_loss", spy)
    return losses


@pytest.mark.parametrize(
    ("precision", "inside"), [("bf16", torch.bfloat16), ("fp32", torch.float32)]
)
def test_training_step_autocasts_the_block_matmuls_and_keeps_fp32_master_state(
    tmp_path, monkeypatch, precision, inside
):
    """mixed_precision=bf16: every Linear in the blocks (attention projections, FFN, channel
    fusion) computes in bf16 while the weights it reads, the gradients, the optimiser's
    parameters and the loss stay float32; fp32: the same step runs in float32 throughout."""
    trainer = Trainer(tiny_cfg(tmp_path, steps=2, mixed_precision=precision), streams=streams())
    assert trainer.ctx.device.type == "cuda"
    probe = DtypeProbe(trainer.model)
    losses = spy_on_losses(monkeypatch)
    at_step: set[tuple[torch.dtype, torch.dtype]] = set()

    def record_step(opt, args, kwargs) -> None:
        for group in opt.param_groups:
            at_step.update((p.dtype, p.grad.dtype) for p in group["params"] if p.grad is not None)

    trainer.opt.register_step_pre_hook(record_step)
    trainer.run()
    assert probe.outputs == {inside}
    assert probe.weights == {torch.float32}
    assert at_step == {(torch.float32, torch.float32)}
    assert [loss.dtype for loss in losses] == [torch.float32] * 2
    assert all(math.isfinite(loss.item()) for loss in losses)


@pytest.mark.parametrize(
    ("precision", "inside"), [("bf16", torch.bfloat16), ("fp32", torch.float32)]
)
def test_sampler_runs_the_blocks_in_bf16_and_returns_fp32_latents(
    tmp_path, monkeypatch, precision, inside
):
    """``yume-train sample`` on CUDA with bf16: the transformer's parameters are cast to bf16
    except Wan's float32 modules (norms, modulation tables, time embedder), the block Linears
    compute in bf16 under autocast, and the blocks come back as float32 latents; fp32 changes
    all of it to float32."""
    seen: list[tuple[nn.Module, DtypeProbe, list[torch.Tensor]]] = []
    real = sampler.generate

    def spy(cfg, model, *args, **kwargs):
        probe = DtypeProbe(model)
        blocks, times = real(cfg, model, *args, **kwargs)
        seen.append((model, probe, blocks))
        return blocks, times

    monkeypatch.setattr(sampler, "generate", spy)
    cfg = dataclasses.replace(
        SAMPLE_PRESETS["tiny"],
        height=64,
        width=128,
        actions="W,W+A",  # a T2V block, then one with history
        device="cuda",
        mixed_precision=precision,
        out=str(tmp_path / "s.mp4"),
    )
    summary = sampler.sample(cfg)
    assert len(summary["blocks"]) == 2
    ((model, probe, blocks),) = seen
    assert probe.outputs == {inside} and probe.weights == {inside}
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    fp32_modules = set(model._keep_in_fp32_modules)
    kept = {n for n in dtypes if set(n.split(".")) & fp32_modules}
    assert kept and {dtypes[n] for n in kept} == {torch.float32}
    assert {d for n, d in dtypes.items() if n not in kept} == {inside}
    assert all(b.dtype == torch.float32 and b.is_cuda and b.isfinite().all() for b in blocks)


@pytest.fixture
def nccl_rank(tmp_path):
    """This process as rank 0 of a 1-rank NCCL group, as a Ray Train GPU worker runs."""
    torch.cuda.set_device(0)
    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_fsdp_wrap_trains_in_bf16_and_resumes_from_its_checkpoint(tmp_path, nccl_rank):
    """parallel=fsdp: every parameter is a float32 DTensor shard between steps while the
    blocks' forward reads bf16 weights (the mixed precision policy); two optimiser steps
    change the weights, and a resumed trainer holds exactly the saved weights, AdamW moments
    and EMA, again as shards."""
    from torch.distributed.tensor import DTensor

    ctx = distributed.context("fsdp")
    assert ctx.fsdp and ctx.device.type == "cuda", f"parallel=fsdp on 1 rank gave {ctx}"
    cfg = tiny_cfg(tmp_path / "run", steps=2, ckpt_every=2, parallel="fsdp")
    first = Trainer(cfg, streams=streams())
    init = {n: distributed.full_tensor(p).clone() for n, p in first.model.named_parameters()}
    probe = DtypeProbe(first.model)
    summary = first.run()
    assert summary["steps"] == 2 and all(math.isfinite(x) for x in summary["losses"])
    assert probe.weights == {torch.bfloat16} and probe.outputs == {torch.bfloat16}

    params = dict(first.model.named_parameters())
    assert all(isinstance(p, DTensor) and p.dtype == torch.float32 for p in params.values())
    trained = {n: distributed.full_tensor(p) for n, p in params.items()}
    assert any(not torch.equal(trained[n], init[n]) for n in init)

    resumed = Trainer(cfg, streams=streams(), resume=True)
    assert resumed.step == 2
    for n, p in resumed.model.named_parameters():
        assert isinstance(p, DTensor), n
        assert torch.equal(distributed.full_tensor(p), trained[n]), n
        assert torch.equal(
            distributed.full_tensor(resumed.ema.shadow[n]),
            distributed.full_tensor(first.ema.shadow[n]),
        ), n
    pairs = zip(
        first.opt.param_groups[0]["params"], resumed.opt.param_groups[0]["params"], strict=True
    )
    for saved, loaded in pairs:
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(
                distributed.full_tensor(resumed.opt.state[loaded][key]),
                distributed.full_tensor(first.opt.state[saved][key]),
            )


def test_compiled_sampler_matches_eager_within_bf16_tolerance(tmp_path, monkeypatch):
    """``sample --compile`` (``torch.compile`` of the whole transformer, graph breaks allowed)
    gives the eager blocks to bf16 accuracy, a T2V block and a block with history alike."""
    outputs: list[list[torch.Tensor]] = []
    real = sampler.generate

    def spy(cfg, model, *args, **kwargs):
        blocks, times = real(cfg, model, *args, **kwargs)
        outputs.append(blocks)
        return blocks, times

    monkeypatch.setattr(sampler, "generate", spy)
    base = dataclasses.replace(
        SAMPLE_PRESETS["tiny"], height=64, width=128, actions="W,W+A", device="cuda"
    )
    for compile_ in (False, True):
        out = tmp_path / f"compile-{compile_}.mp4"
        sampler.sample(dataclasses.replace(base, compile=compile_, out=str(out)))
    eager, compiled = outputs
    for e, c in zip(eager, compiled, strict=True):
        assert ((c - e).norm() / e.norm()).item() < 3e-2


def test_one_block_compiles_as_one_graph(tmp_path):
    """Each DiT block, the sampler's heavy part, compiles with ``fullgraph=True`` (no graph
    break inside) and gives the eager block's output to bf16 accuracy under autocast."""
    torch.manual_seed(0)
    model = build_transformer(preset("tiny")).to(CUDA).eval()
    block = model.blocks[0]
    captured: dict = {}
    block.register_forward_pre_hook(
        lambda m, args, kwargs: captured.update(args=args, kwargs=kwargs), with_kwargs=True
    )
    batch = tiny_batch(batch_size=1, height=64, width=128, history_frames=3)
    with torch.no_grad():
        flow_matching_loss(model, batch, preset("tiny"), torch.Generator().manual_seed(0))
        assert captured["args"][4] > 0  # history tokens in the block's input
        compiled = torch.compile(block, fullgraph=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            want = block(*captured["args"], **captured["kwargs"])
            got = compiled(*captured["args"], **captured["kwargs"])
    assert ((got.float() - want.float()).norm() / want.float().norm()).item() < 2e-2


def tiny_batch(batch_size: int, height: int, width: int, history_frames: int = 0) -> Batch:
    """Random latents of the tiny preset's geometry at ``height x width`` pixels, on CUDA."""
    cfg = preset("tiny")
    shape = (batch_size, 48, cfg.pred_latent_frames, height // 16, width // 16)
    history = None
    if history_frames:
        history = torch.randn(*shape[:2], history_frames, *shape[3:], device=CUDA)
    return Batch(
        task="i2v" if history_frames else "t2v",
        prediction=torch.randn(shape, device=CUDA),
        history=history,
        history_frame_ids=torch.arange(history_frames, 0, -1) if history_frames else None,
        text=torch.randn(batch_size, cfg.event_len + cfg.action_len, 32, device=CUDA),
        tiny_random=True,
        history_first_frame=bool(history_frames),
    )


def peak_step_memory(checkpointing: bool, batch: Batch) -> int:
    """Bytes a bf16 training forward + backward adds at its peak, over model and inputs."""
    cfg = preset("tiny", gradient_checkpointing=checkpointing)
    torch.manual_seed(0)
    model = build_transformer(cfg).to(CUDA).train()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    loss, _ = flow_matching_loss(model, batch, cfg, torch.Generator().manual_seed(0))
    loss.backward()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def test_gradient_checkpointing_lowers_peak_memory():
    """Same batch, same weights: with checkpointing a block keeps only its input for backward
    and recomputes the rest, so the step's peak is well under the one without (the tiny
    model at 512x896 px: activations dominate its 1.5 MB of weights)."""
    batch = tiny_batch(batch_size=4, height=512, width=896)
    without = peak_step_memory(False, batch)
    with_ = peak_step_memory(True, batch)
    assert with_ < 0.75 * without, (with_, without)
