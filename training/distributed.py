"""Single process by default; several workers through Ray Train from the same entry point.

Inside a Ray Train worker ``torch.distributed`` is already initialised (NCCL on GPUs, gloo on
CPU). The model is then sharded with FSDP (``fully_shard`` per DiT block, then the root) on
GPUs, or wrapped in DDP on CPU, where FSDP brings nothing. Checkpoints always hold full
(unsharded) state dicts, so a run can resume with another number of workers.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from training.config import TrainConfig


@dataclass(frozen=True)
class DistContext:
    rank: int
    world_size: int
    device: torch.device
    fsdp: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def context() -> DistContext:
    """This process's place in the run (rank 0 of 1 when not distributed)."""
    if torch.cuda.is_available():
        local = torch.cuda.current_device()
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if not (dist.is_available() and dist.is_initialized()):
        return DistContext(0, 1, device, fsdp=False)
    return DistContext(dist.get_rank(), dist.get_world_size(), device, fsdp=device.type == "cuda")


def wrap(model: nn.Module, ctx: DistContext) -> nn.Module:
    """FSDP on GPUs, DDP on CPU, the model itself in a single process."""
    if ctx.world_size == 1:
        return model
    if ctx.fsdp:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for block in model.blocks:
            fully_shard(block, mp_policy=mp)
        return fully_shard(model, mp_policy=mp)
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
    """Full state dicts of model and optimiser (a collective call when distributed)."""
    if ctx.world_size == 1:
        return model.state_dict(), opt.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_state_dict(unwrap(model), opt, options=opts)


def load_model_optimizer_state(
    model: nn.Module, opt: torch.optim.Optimizer, model_sd: dict, opt_sd: dict, ctx: DistContext
) -> None:
    if ctx.world_size == 1:
        model.load_state_dict(model_sd)
        opt.load_state_dict(opt_sd)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    set_state_dict(
        unwrap(model),
        opt,
        model_state_dict=model_sd,
        optim_state_dict=opt_sd,
        options=StateDictOptions(full_state_dict=True),
    )


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of an FSDP shard (collective), or ``t`` itself."""
    return t.full_tensor().cpu() if hasattr(t, "full_tensor") else t.cpu()


def shard_like(full: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Cut a full tensor the way ``like`` (maybe an FSDP DTensor) is sharded."""
    if hasattr(like, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(full.to(like.device), like.device_mesh, like.placements)
    return full


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
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    if not ray.is_initialized():
        ray.init(address=address or os.environ.get("RAY_ADDRESS") or None, include_dashboard=False)
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
