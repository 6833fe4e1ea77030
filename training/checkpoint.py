"""Checkpoints: model, optimiser, EMA, data position, step and every RNG state, atomically.

``<out>/checkpoints/step-%06d.pt`` plus ``latest.json`` naming the newest; a checkpoint is
written to a temporary name and renamed, so a killed run leaves the previous one usable.
Only the newest ``keep_checkpoints`` are kept (a 5B state with AdamW is about 60 GB).
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import torch

from curation.manifest import atomic_write_json


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


def save_checkpoint(out_dir: str | Path, step: int, state: dict, keep: int = 3) -> Path:
    """Write ``state`` for ``step``, point ``latest.json`` at it, keep the newest ``keep``.

    ``torch.save`` streams into a temporary file in the same folder (no in-memory copy of a
    multi-GB state), which is fsynced and renamed into place.
    """
    ckpt_dir = Path(out_dir) / "checkpoints"
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
    pointer = Path(out_dir) / "checkpoints" / "latest.json"
    if not pointer.exists():
        return None
    return pointer.parent / json.loads(pointer.read_text())["path"]


def load_checkpoint(path: str | Path) -> dict:
    # our own files: optimiser and RNG states are plain python objects, not only tensors
    return torch.load(path, map_location="cpu", weights_only=False)
