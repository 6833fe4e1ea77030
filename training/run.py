"""The run folder and its state, for any training loop (base training, a distiller).

``<out>/checkpoints/step-%06d.safetensors`` plus ``latest.json`` naming the newest; a
checkpoint is written to a temporary name and renamed, so a killed run leaves the previous
one usable. Only the newest ``keep`` are kept (a 5B state with AdamW is about 60 GB). A
sharded (FSDP) run writes a step folder ``step-%06d/`` instead, one file per rank
(``training.sharded_checkpoint``); it is read back at any world size.

Nothing read back from a run folder can run code: a checkpoint is a safetensors file (every
tensor of the state) whose metadata holds the rest of the state as JSON (``encode_state``),
and every path read from ``latest.json`` must be a checkpoint file name inside
``checkpoints/``, or the run stops with a ``RunFolderError``.

- ``run_lock``: a run holds ``fcntl.flock`` on ``<out>/.lock`` (pid, host and start time
  written in it), so a second run into the folder fails at once naming the holder;
- ``check_run_folder``: the cheap checks (a file, unwritable, an old run without ``resume``
  or ``overwrite``, a resume with another config per ``config.json``), called before any
  shard scan or model load; ``save_config`` writes that ``config.json``;
- ``open_run``: a fresh run into a folder that holds a run is refused unless ``overwrite``;
  a resumed one loads the newest intact checkpoint (``load_latest``: a damaged newest one is
  named and the previous kept one used) after ``check_resumable`` (config differences
  named, ``RESUMABLE_CHANGES`` allowed);
- ``seed_rngs`` / ``rng_state`` / ``set_rng_state``: every random state a step reads;
- ``provenance_labels``: what made the outputs (tiny-random models or data, model ids, code).

A loop composes its own checkpoint dict (model, optimiser, EMA, data position, ...) and
stores ``rng_state(...)`` under ``"rng"``, ``cfg.to_dict()`` under ``"config"`` and the
labels under ``"labels"``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from curation import locks
from curation.manifest import atomic_write_json
from curation.provenance import code_version
from training import distributed, sharded_checkpoint
from training.config import TrainConfig

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
CONFIG = "config.json"  # the effective config of the latest start or resume
LATEST = "latest.json"
LOCK = ".lock"
CHECKPOINT_RE = re.compile(r"^step-(\d{6,})(?:\.safetensors)?$")  # a file, or a step folder
FORMAT = "yume-train-checkpoint/1"  # safetensors metadata: {"format": FORMAT, "state": JSON}


class RunFolderError(ValueError):
    """A run folder holds something this run will not use (a pointer outside, no intact
    checkpoint): one line naming the file, never a guess."""


class RunInUseError(RunFolderError):
    """Another run holds the run folder's lock."""


# ---- the run lock ----------------------------------------------------------------------------


def run_lock(out_dir: str | Path) -> contextlib.AbstractContextManager[None]:
    """Hold ``<out>/.lock`` for the run (curation.locks); RunInUseError naming the holder at
    once when another process holds it."""
    hint = "wait for it to end or use another --out"
    return locks.hold(Path(out_dir) / LOCK, str(Path(out_dir)), hint, RunInUseError)


# ---- RNG state -----------------------------------------------------------------------------


def seed_rngs(seed: int, rank: int) -> torch.Generator:
    """Seed torch, numpy and python for ``rank``; returns the CPU generator of training noise
    (kept apart so noise and sigmas do not depend on what else draws random numbers)."""
    torch.manual_seed(seed + rank)
    np.random.seed(seed + rank)
    random.seed(seed + rank)
    return torch.Generator().manual_seed(seed * 7919 + rank)


def rng_state(noise: torch.Generator) -> dict:
    """Every random state a training step reads: torch (CPU, CUDA), numpy, python, noise.
    Tensors and plain data only (numpy's key array as ints), so a checkpoint holds it."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": (name, keys.tolist(), int(pos), int(has_gauss), float(gauss)),
        "python": random.getstate(),
        "noise": noise.get_state(),
    }


def set_rng_state(state: dict, noise: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    noise.set_state(state["noise"])


# ---- the checkpoint format: tensors in safetensors, the rest as tagged JSON ------------------

_TAGS = ("__tensor__", "__tuple__", "__dict__")


def encode_state(
    state: Any,
    tensors: dict[str, torch.Tensor],
    path: str = "",
    shards: dict[str, dict] | None = None,
) -> Any:
    """``state`` as JSON-able data; each tensor moves into ``tensors`` under its path and is
    replaced by ``{"__tensor__": path}``. Tuples and dicts with non-string keys (optimiser
    state is keyed by parameter number) are tagged so they come back as they were. A DTensor
    (FSDP) stores its local shard, and its place in the whole tensor goes into ``shards``
    (only given for a per-rank file)."""
    if isinstance(state, torch.Tensor):
        name = path or "."
        while name in tensors:
            name += "'"
        if hasattr(state, "device_mesh"):
            if shards is None:
                raise TypeError(f"checkpoint state {name}: a DTensor in a single-file checkpoint")
            state, shards[name] = sharded_checkpoint.shard_box(state)
        tensors[name] = state.detach().cpu().contiguous()
        return {"__tensor__": name}

    def enc(v: Any, p: str) -> Any:
        return encode_state(v, tensors, p, shards)

    if isinstance(state, tuple):
        return {"__tuple__": [enc(v, f"{path}/{i}") for i, v in enumerate(state)]}
    if isinstance(state, list):
        return [enc(v, f"{path}/{i}") for i, v in enumerate(state)]
    if isinstance(state, dict):
        if all(isinstance(k, str) for k in state) and not set(state) & set(_TAGS):
            return {k: enc(v, f"{path}/{k}" if path else k) for k, v in state.items()}
        return {"__dict__": [[enc(k, path), enc(v, f"{path}/{k}")] for k, v in state.items()]}
    if state is None or isinstance(state, bool | int | float | str):
        return state
    raise TypeError(f"checkpoint state {path or '.'}: {type(state).__name__} is not storable")


def decode_state(data: Any, tensors: dict[str, Any]) -> Any:
    """The inverse of ``encode_state`` (a sharded tensor comes back as the ``tensors`` entry
    its name has: a ``SavedTensor``)."""
    if isinstance(data, list):
        return [decode_state(v, tensors) for v in data]
    if not isinstance(data, dict):
        return data
    if len(data) == 1 and next(iter(data)) in _TAGS:
        ((tag, value),) = data.items()
        if tag == "__tensor__":
            return tensors[value]
        if tag == "__tuple__":
            return tuple(decode_state(v, tensors) for v in value)
        return {decode_state(k, tensors): decode_state(v, tensors) for k, v in value}
    return {k: decode_state(v, tensors) for k, v in data.items()}


# ---- checkpoints ---------------------------------------------------------------------------


def checkpoint_step(path: str | Path) -> int:
    """The step a checkpoint name says (``step-000040.safetensors`` or ``step-000040`` -> 40)."""
    m = CHECKPOINT_RE.match(Path(path).name)
    if m is None:
        raise RunFolderError(
            f"{path}: not a checkpoint name (step-NNNNNN.safetensors or a step-NNNNNN folder)"
        )
    return int(m.group(1))


def _write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict) -> None:
    """safetensors writes straight from the tensors' memory (no in-memory copy of a multi-GB
    state) into a temporary file in the same folder, which is fsynced and renamed into place."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        save_file(tensors, tmp, metadata=metadata)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _point_and_prune(out_dir: str | Path, step: int, path: Path, keep: int) -> None:
    """``latest.json`` names ``path``; only the newest ``keep`` checkpoints stay."""
    atomic_write_json(path.parent / LATEST, {"step": step, "path": path.name})
    for old in kept_checkpoints(out_dir)[max(keep, 1) :]:
        if old.is_dir():
            shutil.rmtree(old)
        else:
            old.unlink()


def save_checkpoint(out_dir: str | Path, step: int, state: dict, keep: int = 3) -> Path:
    """Write ``state`` (full tensors) for ``step``, point ``latest.json`` at it, keep the
    newest ``keep``."""
    ckpt_dir = Path(out_dir) / CHECKPOINTS
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    path = ckpt_dir / f"step-{step:06d}.safetensors"
    tensors: dict[str, torch.Tensor] = {}
    skeleton = json.dumps(encode_state(state, tensors))
    _write_safetensors(path, tensors, {"format": FORMAT, "state": skeleton})
    _point_and_prune(out_dir, step, path, keep)
    return path


def save_sharded_checkpoint(
    out_dir: str | Path, step: int, state: dict, ctx: distributed.DistContext, keep: int = 3
) -> Path:
    """Every rank writes its ``state`` (DTensor shards and its own RNG and data position)
    into ``.step-NNNNNN.tmp/``; once all have, rank 0 writes ``done.json`` there, renames
    the folder to ``step-NNNNNN``, points ``latest.json`` at it and prunes. Collective: every
    rank calls it; nothing is gathered."""
    ckpt_dir = Path(out_dir) / CHECKPOINTS
    final = ckpt_dir / f"step-{step:06d}"
    tmp = ckpt_dir / f".{final.name}.tmp"
    if ctx.is_main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # a killed save's leftovers
        tmp.mkdir()
    distributed.barrier(ctx)
    tensors: dict[str, torch.Tensor] = {}
    shards: dict[str, dict] = {}
    skeleton = json.dumps(encode_state(state, tensors, shards=shards))
    meta = {
        "format": sharded_checkpoint.FORMAT,
        "rank": str(ctx.rank),
        "world_size": str(ctx.world_size),
        "state": skeleton,
        "shards": json.dumps(shards),
    }
    _write_safetensors(tmp / sharded_checkpoint.rank_file(ctx.rank, ctx.world_size), tensors, meta)
    distributed.barrier(ctx)
    if ctx.is_main:
        done = sharded_checkpoint.done_record(step, ctx.world_size)
        missing = [n for n in done["files"] if not (tmp / n).is_file()]
        if missing:
            raise RunFolderError(f"{tmp}: ranks wrote no {missing} (is {ckpt_dir} shared?)")
        atomic_write_json(tmp / sharded_checkpoint.DONE, done)
        if final.is_dir():  # the same step saved again (a resume that re-ran it)
            shutil.rmtree(final)
        os.replace(tmp, final)
        _point_and_prune(out_dir, step, final, keep)
    distributed.barrier(ctx)
    return final


def _inside(ckpt_dir: Path, name: object, source: Path) -> Path:
    """``ckpt_dir / name`` if ``name`` is a checkpoint file name that stays inside
    ``ckpt_dir`` (links resolved), else RunFolderError naming ``source``."""
    if not isinstance(name, str) or not CHECKPOINT_RE.match(name):
        hint = (
            " (pickle checkpoints are not read: loading one can run code)"
            if (isinstance(name, str) and name.endswith((".pt", ".pth", ".pkl")))
            else ""
        )
        raise RunFolderError(
            f"{source} names {name!r}, not a checkpoint file in {ckpt_dir} "
            f"(step-NNNNNN.safetensors or a step-NNNNNN folder){hint}"
        )
    path = ckpt_dir / name
    if path.resolve().parent != ckpt_dir.resolve():
        raise RunFolderError(f"{source}: {path} leads outside {ckpt_dir}")
    return path


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The checkpoint ``latest.json`` names (checked to lie in ``checkpoints/``), or None."""
    ckpt_dir = Path(out_dir) / CHECKPOINTS
    pointer = ckpt_dir / LATEST
    if not pointer.exists():
        return None
    try:
        name = json.loads(pointer.read_text())["path"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise RunFolderError(
            f"{pointer} is unreadable ({type(e).__name__}: {e}); remove it to resume from the "
            "newest intact checkpoint, or use another --out"
        ) from None
    return _inside(ckpt_dir, name, pointer)


def kept_checkpoints(out_dir: str | Path) -> list[Path]:
    """The checkpoints in ``checkpoints/`` (files, and step folders once complete), newest
    step first."""
    ckpt_dir = Path(out_dir) / CHECKPOINTS
    if not ckpt_dir.is_dir():
        return []
    found = [
        _inside(ckpt_dir, p.name, p)
        for p in ckpt_dir.iterdir()
        if CHECKPOINT_RE.match(p.name) and (p.is_file() or (p / sharded_checkpoint.DONE).is_file())
    ]
    return sorted(found, key=checkpoint_step, reverse=True)


def load_checkpoint(
    path: str | Path, *, rank: int = 0, world_size: int = 1, lazy: bool = False
) -> dict:
    """A checkpoint's state; RunFolderError when it is not an intact checkpoint of this
    format (truncated, foreign, a pickle under our name, a step folder missing a rank or
    with shards that do not fit). Reads no code: safetensors and JSON only.

    A step folder gives rank ``rank``'s own RNG and data position when it was written by
    ``world_size`` ranks (else rank 0's), and its sharded tensors whole, or as
    ``SavedTensor``s with ``lazy`` (each rank then reads only its shard)."""
    path = Path(path)
    try:
        if path.is_dir():
            return _load_step_folder(path, rank, world_size, lazy)
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise ValueError(f"format {meta.get('format')!r}, want {FORMAT!r}")
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
        return decode_state(json.loads(meta["state"]), tensors)
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as e:
        raise RunFolderError(
            f"{path}: not an intact checkpoint ({type(e).__name__}: {e})"
        ) from None


def _load_step_folder(folder: Path, rank: int, world_size: int, lazy: bool) -> dict:
    ranks, saved = sharded_checkpoint.open_step(folder)
    own = ranks[rank] if len(ranks) == world_size else ranks[0]
    tensors: dict[str, Any] = own.tensors()
    tensors |= saved if lazy else {k: t.full() for k, t in saved.items()}
    return decode_state(own.skeleton, tensors)


def load_latest(out_dir: str | Path, **how: Any) -> tuple[Path, dict] | None:
    """The newest intact checkpoint of a run folder and its state, or None without one
    (``how``: ``load_checkpoint``'s keywords).

    ``latest.json``'s checkpoint first; when it is damaged (a run killed while the disk
    was full, a truncated copy) the other kept ones, newest first, with one warning line
    naming the damaged file(s). RunFolderError when none is intact."""
    first = latest_checkpoint(out_dir)
    if first is None:
        return None
    damaged: list[str] = []
    for path in [first, *(p for p in kept_checkpoints(out_dir) if p != first)]:
        try:
            state = load_checkpoint(path, **how)
        except RunFolderError as e:
            damaged.append(str(e))
            continue
        if damaged:
            log.warning(
                "damaged checkpoint skipped: %s; resuming from %s", "; ".join(damaged), path
            )
        return path, state
    raise RunFolderError(f"no intact checkpoint in {first.parent}: {'; '.join(damaged)}")


# ---- starting or resuming ------------------------------------------------------------------


def check_run_folder(cfg: Any, resume: bool, overwrite: bool) -> None:
    """Refuse ``cfg.out_dir`` before anything heavy starts (a shard scan or a model load takes
    seconds at tiny size, minutes at 5B): a file, a place this process cannot write, a folder
    holding a run without ``resume`` or ``overwrite``, or (``resume``) a run whose saved
    ``config.json`` differs beyond ``RESUMABLE_CHANGES``. Reads only small files."""
    out = Path(cfg.out_dir)
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"--out {out} is a file, not a run folder")
    _check_writable(out)
    ckpt = latest_checkpoint(out)
    saved = out / CONFIG
    if not resume and not overwrite and (ckpt is not None or saved.is_file()):
        what = ckpt.name if ckpt is not None else CONFIG
        raise FileExistsError(
            f"{out} holds a run ({what}); pass --resume to continue it or --overwrite to start "
            "again"
        )
    if resume and ckpt is not None and saved.is_file():
        try:
            previous = json.loads(saved.read_text())
        except (OSError, ValueError) as e:
            raise RunFolderError(f"{saved} is unreadable ({type(e).__name__}: {e})") from None
        check_resumable(previous, cfg)


def _check_writable(out: Path) -> None:
    """RunFolderError unless a file can be made in ``out`` or, before it exists, in its
    nearest existing parent (a probe file, removed again: permission bits do not tell about
    read-only mounts)."""
    here = out
    while not here.exists():
        here = here.parent
    if not here.is_dir():
        raise RunFolderError(f"--out {out}: {here} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=here)
    except OSError as e:
        raise RunFolderError(f"--out {out}: cannot write in {here} ({e.strerror or e})") from None
    os.close(fd)
    os.unlink(probe)


def save_config(out_dir: str | Path, cfg: Any) -> Path:
    """Write the run's effective config (preset, file, options and --set applied) as
    ``config.json``: what this start or resume runs with, readable without a checkpoint."""
    path = Path(out_dir) / CONFIG
    atomic_write_json(path, cfg.to_dict())
    return path


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
    ``overwrite``, which deletes ``<out>/checkpoints`` (on the main rank; every rank waits),
    never a folder a file names. With ``resume``, the newest intact checkpoint is loaded and
    must pass ``check_resumable``; a folder without one starts fresh.
    """
    out = Path(out_dir)
    ckpt = latest_checkpoint(out)  # checked first: a bad pointer stops before any delete
    if ckpt is not None and not resume:
        if not overwrite:
            raise FileExistsError(
                f"{out} holds a run (step {ckpt.name}); pass --resume to continue "
                "it or --overwrite to start again"
            )
        if ctx.is_main:
            shutil.rmtree(out / CHECKPOINTS)
        distributed.barrier(ctx)
        return None
    found = load_latest(out, rank=ctx.rank, world_size=ctx.world_size, lazy=ctx.fsdp)
    if found is None:
        return None
    state = found[1]
    check_resumable(state["config"], cfg)
    return state


# ---- provenance ----------------------------------------------------------------------------


def provenance_labels(
    cfg: TrainConfig, *, data_tiny_random: bool, vae_id: str | None = None
) -> dict:
    """Labels of everything a run writes; tiny-random when any model or any sample seen so
    far is. ``vae_id``: the loaded VAE's ``model_id`` (else the configured ``cfg.vae``)."""
    from model.text import encoder_id  # here: transformers takes seconds to import, and
    # check_run_folder (this module) runs before anything heavy loads

    return {
        "tiny_random": cfg.tiny_random or data_tiny_random,
        "vae": vae_id if vae_id is not None else cfg.vae,
        "text_encoder": encoder_id(cfg.text_encoder),
        "transformer": cfg.weights or f"random-init:{cfg.model}",
        "code_version": code_version(),
    }
