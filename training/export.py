"""`yume-train export`: a run folder's transformer as a diffusers folder.

The folder holds what diffusers' ``save_pretrained`` writes (``config.json`` and
``diffusion_pytorch_model[.<variant>].safetensors``), so ``TSCMTransformer.from_pretrained``
loads it and ``yume-train sample --weights`` / ``yume-train distill --base`` take it like a
Wan2.2 folder. Beside them: the run's action-embedding caches (``sample`` reads one instead of
encoding the 81 actions again) and ``export.json`` naming the run, checkpoint, which weights
(raw or EMA) and the run's labels. Only JSON and safetensors are written: loading the folder
cannot run code. It is built in a temporary sibling and renamed, so a killed export leaves no
half folder.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from diffusers.models.modeling_utils import no_init_weights

from curation.manifest import atomic_write_json
from model.tscm import TSCMTransformer
from training.run import load_latest
from training.sharded_checkpoint import full

MANIFEST = "export.json"


def checkpoint_weights(state: dict, ema: bool) -> dict[str, torch.Tensor]:
    """The transformer state dict in a checkpoint state: a base run's ``model`` or a distill
    run's ``generator``; with ``ema`` the EMA shadow over it (the shadow holds the trainable
    parameters only, so anything else keeps the raw value). A sharded checkpoint's tensors
    are assembled here, one at a time, from its rank files (optimiser state is never read)."""
    raw = state.get("model", state.get("generator"))
    if raw is None:
        raise ValueError(f"checkpoint holds no transformer weights (keys: {sorted(state)})")
    if not ema:
        return {k: full(v) for k, v in raw.items()}
    shadow = state["ema"]["shadow"]
    foreign = sorted(set(shadow) - set(raw))
    if foreign:
        raise ValueError(f"EMA weights name parameters the model lacks: {foreign[:3]}")
    return {k: full(shadow.get(k, v)).to(v.dtype) for k, v in raw.items()}


def export(
    run: str | Path,
    out: str | Path,
    *,
    ema: bool = False,
    variant: str | None = None,
    overwrite: bool = False,
) -> dict:
    """Write ``run``'s newest intact checkpoint (EMA weights with ``ema``) to ``out`` as a
    diffusers folder; returns what ``export.json`` says. ``overwrite`` replaces an earlier
    export only (a folder with ``export.json``), never another folder."""
    run, out = Path(run), Path(out)
    _check_target(run, out, overwrite)
    found = load_latest(run, lazy=True)  # a step folder: nothing read until needed
    if found is None:
        raise FileNotFoundError(f"{run}: no checkpoint to export (checkpoints/latest.json)")
    ckpt, state = found
    weights = checkpoint_weights(state, ema)
    with no_init_weights():  # every parameter is loaded below
        model = TSCMTransformer.from_config_name(state["config"]["model"])
    model.load_state_dict(weights, strict=True)

    tmp = out.with_name(f".{out.name}.export-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True, variant=variant)
    for cache in sorted(run.glob("action_cache-*.safetensors")):
        shutil.copyfile(cache, tmp / cache.name)
    info = {
        "run": str(run),
        "checkpoint": ckpt.name,
        "step": state["step"],
        "weights": "ema" if ema else "raw",
        "variant": variant,
        "config": state["config"],
        "labels": state["labels"],
    }
    atomic_write_json(tmp / MANIFEST, info)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return info


def _check_target(run: Path, out: Path, overwrite: bool) -> None:
    """Refuse an ``out`` that is a file, holds something, or would take the run with it."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file")
    if out.resolve() == run.resolve() or out.resolve() in run.resolve().parents:
        raise ValueError(f"--out {out} contains the run folder {run}")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"--out {out} is not empty; pass --overwrite to replace it")
        if not (out / MANIFEST).is_file():
            raise FileExistsError(
                f"--out {out} holds no {MANIFEST}: --overwrite replaces only an earlier export"
            )
