"""The run folder and its state, for any training loop (base training, a distiller).

``<out>/checkpoints/step-%06d.pt`` plus ``latest.json`` naming the newest; a checkpoint is
written to a temporary name and renamed, so a killed run leaves the previous one usable.
Only the newest ``keep`` are kept (a 5B state with AdamW is about 60 GB).

- ``open_run``: a fresh run into a folder that holds a run is refused unless ``overwrite``;
  a resumed one loads the latest checkpoint after ``check_resumable`` (config differences
  named, ``RESUMABLE_CHANGES`` allowed);
- ``seed_rngs`` / ``rng_state`` / ``set_rng_state``: every random state a step reads;
- ``provenance_labels``: what made the outputs (tiny-random models or data, model ids, code).

A loop composes its own checkpoint dict (model, optimiser, EMA, data position, ...) and
stores ``rng_state(...)`` under ``"rng"``, ``cfg.to_dict()`` under ``"config"`` and the
labels under ``"labels"``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from curation.manifest import atomic_write_json
from curation.provenance import code_version
from model.text import encoder_id
from training import distributed
from training.config import TrainConfig

CHECKPOINTS = "checkpoints"


# ---- RNG state -----------------------------------------------------------------------------


def seed_rngs(seed: int, rank: int) -> torch.Generator:
    """Seed torch, numpy and python for ``rank``; returns the CPU generator of training noise
    (kept apart so noise and sigmas do not depend on what else draws random numbers)."""
    torch.manual_seed(seed + rank)
    np.random.seed(seed + rank)
    random.seed(seed + rank)
    return torch.Generator().manual_seed(seed * 7919 + rank)


def rng_state(noise: torch.Generator) -> dict:
    """Every random state a training step reads: torch (CPU, CUDA), numpy, python, noise."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "noise": noise.get_state(),
    }


def set_rng_state(state: dict, noise: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    noise.set_state(state["noise"])


# ---- checkpoints ---------------------------------------------------------------------------


def save_checkpoint(out_dir: str | Path, step: int, state: dict, keep: int = 3) -> Path:
    """Write ``state`` for ``step``, point ``latest.json`` at it, keep the newest ``keep``.

    ``torch.save`` streams into a temporary file in the same folder (no in-memory copy of a
    multi-GB state), which is fsynced and renamed into place.
    """
    ckpt_dir = Path(out_dir) / CHECKPOINTS
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    path = ckpt_dir / f"step-{step:06d}.pt"
    tmp = ckpt_dir / f".{path.name}.tmp"
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    atomic_write_json(ckpt_dir / "latest.json", {"step": step, "path": path.name})
    for old in sorted(ckpt_dir.glob("step-*.pt"))[: -max(keep, 1)]:
        old.unlink()
    return path


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    pointer = Path(out_dir) / CHECKPOINTS / "latest.json"
    if not pointer.exists():
        return None
    return pointer.parent / json.loads(pointer.read_text())["path"]


def load_checkpoint(path: str | Path) -> dict:
    # our own files: optimiser and RNG states are plain python objects, not only tensors
    return torch.load(path, map_location="cpu", weights_only=False)


# ---- starting or resuming ------------------------------------------------------------------


def check_resumable(saved: dict, cfg: TrainConfig) -> None:
    """Refuse to resume a checkpoint made with another config (but see RESUMABLE_CHANGES).

    ``saved`` is the checkpoint's ``config`` dict; ``cfg``'s class reads it (any config
    dataclass with ``from_dict``, ``to_dict`` and ``RESUMABLE_CHANGES``)."""
    kind = type(cfg)
    now = kind.from_dict(saved).to_dict()
    want = cfg.to_dict()
    differ = sorted(k for k in want if k not in kind.RESUMABLE_CHANGES and now.get(k) != want[k])
    if differ:
        lines = ", ".join(f"{k}: {now.get(k)!r} -> {want[k]!r}" for k in differ)
        raise ValueError(f"--resume with another config ({lines}); use a new --out")


def open_run(
    out_dir: str | Path,
    cfg: TrainConfig,
    ctx: distributed.DistContext,
    *,
    resume: bool,
    overwrite: bool,
) -> dict | None:
    """The checkpoint state to continue from, or None for a fresh start.

    Without ``resume``, a folder that holds a checkpoint is refused (FileExistsError) unless
    ``overwrite``, which deletes its checkpoints (on the main rank; every rank waits). With
    ``resume``, the latest checkpoint is loaded and must pass ``check_resumable``; a folder
    without one starts fresh.
    """
    out = Path(out_dir)
    ckpt = latest_checkpoint(out)
    if ckpt is not None and not resume:
        if not overwrite:
            raise FileExistsError(
                f"{out} holds a run (step {ckpt.name}); pass --resume to continue "
                "it or --overwrite to start again"
            )
        if ctx.is_main:
            shutil.rmtree(ckpt.parent)
        distributed.barrier(ctx)
        return None
    if ckpt is None:
        return None
    state = load_checkpoint(ckpt)
    check_resumable(state["config"], cfg)
    return state


# ---- provenance ----------------------------------------------------------------------------


def provenance_labels(
    cfg: TrainConfig, *, data_tiny_random: bool, vae_id: str | None = None
) -> dict:
    """Labels of everything a run writes; tiny-random when any model or any sample seen so
    far is. ``vae_id``: the loaded VAE's ``model_id`` (else the configured ``cfg.vae``)."""
    return {
        "tiny_random": cfg.tiny_random or data_tiny_random,
        "vae": vae_id if vae_id is not None else cfg.vae,
        "text_encoder": encoder_id(cfg.text_encoder),
        "transformer": cfg.weights or f"random-init:{cfg.model}",
        "code_version": code_version(),
    }
