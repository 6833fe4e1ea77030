"""Single process by default; several workers through Ray Train from the same entry point.

Inside a Ray Train worker ``torch.distributed`` is already initialised (NCCL on GPUs, gloo on
CPU). ``TrainConfig.parallel`` picks how the model is spread: ``fsdp`` shards it
(``fully_shard`` per DiT block, then the root; on CPU too, over gloo), ``ddp`` replicates
it, ``auto`` is FSDP on GPUs and DDP on CPU. A sharded run's checkpoints hold each rank's
shards (``training.sharded_checkpoint``), a replicated run's the full state dicts on rank 0;
both resume with another number of workers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from training import sharded_checkpoint
from training.config import PARALLEL, TrainConfig


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    device: torch.device
    fsdp: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def context(parallel: str = "auto") -> DistContext:
    """This process's place in the run (rank 0 of 1 when not distributed); ``fsdp`` says
    whether the model is sharded (``parallel``: see ``TrainConfig.parallel``)."""
    if parallel not in PARALLEL:
        raise ValueError(f"parallel {parallel!r}: choose one of {', '.join(PARALLEL)}")
    if torch.cuda.is_available():
        local = torch.cuda.current_device()
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if not (dist.is_available() and dist.is_initialized()) or (
        dist.get_world_size() == 1 and parallel != "fsdp"  # an explicit fsdp shards one rank too
    ):
        return DistContext(0, 1, device, fsdp=False)
    fsdp = parallel == "fsdp" or (parallel == "auto" and device.type == "cuda")
    return DistContext(dist.get_rank(), dist.get_world_size(), device, fsdp=fsdp)


def wrap(model: nn.Module, ctx: DistContext) -> nn.Module:
    """FSDP or DDP as ``ctx`` says, the model itself in a single process."""
    if ctx.world_size == 1 and not ctx.fsdp:
        return model
    if ctx.fsdp:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        # bf16 compute on GPUs; on CPU float32 throughout, as a single CPU process trains
        kw = {}
        if ctx.device.type == "cuda":
            kw["mp_policy"] = MixedPrecisionPolicy(
                param_dtype=torch.bfloat16, reduce_dtype=torch.float32
            )
        for block in model.blocks:
            fully_shard(block, **kw)
        return fully_shard(model, **kw)
    # T2V steps leave the history-only parameters (channel-compression patchify) unused
    return nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (no-op in a single process)."""
    if ctx.world_size > 1:
        dist.barrier()


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def model_optimizer_state(
    model: nn.Module, opt: torch.optim.Optimizer, ctx: DistContext
) -> tuple[dict, dict]:
    """State dicts of model and optimiser: under FSDP each rank's shards (DTensors, nothing
    gathered), else full ones (a collective call under DDP)."""
    if ctx.world_size == 1 and not ctx.fsdp:
        return model.state_dict(), opt.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    opts = StateDictOptions(full_state_dict=not ctx.fsdp, cpu_offload=not ctx.fsdp)
    return get_state_dict(unwrap(model), opt, options=opts)


def load_model_optimizer_state(
    model: nn.Module, opt: torch.optim.Optimizer, model_sd: dict, opt_sd: dict, ctx: DistContext
) -> None:
    """Load full state dicts, or under FSDP cut each rank's shards out of full tensors or
    ``SavedTensor``s (a checkpoint of any world size); optimiser state keyed by name."""
    if ctx.world_size == 1 and not ctx.fsdp:
        model.load_state_dict(model_sd)
        opt.load_state_dict(opt_sd)
        return
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        set_state_dict,
    )

    if ctx.fsdp:
        like = get_model_state_dict(unwrap(model))
        missing = sorted(set(like) - set(model_sd))
        if missing:
            raise ValueError(f"checkpoint lacks model tensors {missing[:3]}")
        model_sd = {n: shard_like(model_sd[n], t, n) for n, t in like.items()}
        opt_sd = dict(opt_sd) | {
            "state": {
                n: {
                    k: shard_like(v, like[n], f"{n}/{k}") if _param_shaped(v, like[n]) else v
                    for k, v in s.items()
                }  # fmt: skip
                for n, s in opt_sd["state"].items()
            }
        }
    set_state_dict(
        unwrap(model),
        opt,
        model_state_dict=model_sd,
        optim_state_dict=opt_sd,
        options=StateDictOptions(full_state_dict=not ctx.fsdp),
    )


def _param_shaped(v: Any, param: torch.Tensor) -> bool:
    """Optimiser state laid out like its parameter (AdamW's moments; not its step count)."""
    return hasattr(v, "shape") and tuple(v.shape) == tuple(param.shape)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of an FSDP shard (collective), or ``t`` itself."""
    return t.full_tensor().cpu() if hasattr(t, "full_tensor") else t.cpu()


def shard_like(saved: Any, like: torch.Tensor, name: str = "tensor") -> torch.Tensor:
    """This rank's part of ``saved`` (a full tensor or a ``SavedTensor``) laid out as
    ``like`` is (a DTensor shard under FSDP; else the whole tensor). Reads only the rank's
    box; no collective."""
    if tuple(saved.shape) != tuple(like.shape):
        raise ValueError(
            f"checkpoint {name} has shape {tuple(saved.shape)}, the model {tuple(like.shape)}"
        )
    if not hasattr(like, "device_mesh"):
        return sharded_checkpoint.full(saved)
    from torch.distributed.tensor import DTensor

    offset, size = sharded_checkpoint.local_box(like)
    if isinstance(saved, sharded_checkpoint.SavedTensor):
        local = saved.read(offset, size)
    else:
        local = saved[tuple(slice(o, o + s) for o, s in zip(offset, size, strict=True))]
    local = local.to(device=like.device, dtype=like.dtype).contiguous()
    return DTensor.from_local(
        local, like.device_mesh, like.placements, run_check=False, shape=like.shape,
        stride=like.stride(),
    )  # fmt: skip


def absolute_paths(cfg: TrainConfig) -> dict:
    """The config as a dict with every local path (weights, encoders, data, out) absolute;
    backend names such as ``tiny-random`` are kept."""

    def resolve(p: str | None) -> str | None:
        if p is None or p == "tiny-random":
            return p
        return str(Path(p).expanduser().resolve())

    paths = ("weights", "vae", "text_encoder", "data_root", "out_dir")
    return cfg.to_dict() | {k: resolve(getattr(cfg, k)) for k in paths}


def run_ray(
    loop: Callable[..., object],
    cfg: TrainConfig,
    resume: bool = False,
    address: str | None = None,
    overwrite: bool = False,
) -> None:
    """Run ``loop(cfg, resume=..., overwrite=...)`` on ``cfg.workers`` Ray Train workers
    (multi-GPU / multi-node); ``loop`` is a training loop's entry point, e.g.
    ``training.train_base.train``, importable on every worker.

    Paths are made absolute because workers may start in another directory; they must be
    on storage every worker sees (shared folder or a mounted bucket). Each worker rebuilds
    the config with ``type(cfg).from_dict``.
    """
    if not callable(loop):
        raise TypeError(
            "run_ray(loop, cfg, ...): pass the training loop first, e.g. "
            "run_ray(training.train_base.train, cfg)"
        )
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from jobs.runtime import init_ray

    init_ray(address)  # a Ray of its own unless --address / RAY_ADDRESS names a cluster
    config = absolute_paths(cfg)
    out = Path(config["out_dir"])
    use_gpu = cfg.gpus_per_worker > 0
    resources = {"GPU": cfg.gpus_per_worker} if use_gpu else {"CPU": 1}
    config_type = type(cfg)

    def worker(loop_config: dict) -> None:
        # ``loop`` and ``config_type`` travel by reference (module-level names)
        run_cfg = config_type.from_dict(loop_config["config"])
        loop(run_cfg, resume=loop_config["resume"], overwrite=loop_config["overwrite"])

    trainer = TorchTrainer(
        worker,
        train_loop_config={"config": config, "resume": resume, "overwrite": overwrite},
        scaling_config=ScalingConfig(
            num_workers=cfg.workers, use_gpu=use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(name=cfg.name, storage_path=str(out / "ray")),
    )
    trainer.fit()
