"""The per-rank checkpoint of a sharded (FSDP) run: every rank writes only its own shard.

A 5B state with AdamW is about 60 GB: gathered on rank 0 it would not fit one host's memory
and would cost a long pause. Instead ``checkpoints/step-NNNNNN/`` holds one safetensors file
per rank, ``rank-RRRRR-of-WWWWW.safetensors``, with that rank's tensors (its DTensor shards,
and its copy of the small replicated ones) and, in the header, the rank's state skeleton as
JSON plus ``shards``: the global shape and offset of every shard. ``done.json`` lists the rank
files; rank 0 writes it once every rank has written, and only then renames the folder into
place, so a folder under a checkpoint name is complete (a copy that lost files is named).

Reading needs no process group: ``open_step`` checks the folder (every rank file there, of
this format, every shard inside its tensor, the shards covering it exactly) and returns a
``SavedTensor`` per sharded tensor, which reads any box of it (another world size's shard,
or the whole tensor for an export) from the rank files that hold it. Only JSON and
safetensors are read: nothing in a step folder can run code.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

FORMAT = "yume-train-shard/1"
DONE = "done.json"
RANK_RE = re.compile(r"^rank-(\d{5})-of-(\d{5})\.safetensors$")

Box = tuple[tuple[int, ...], tuple[int, ...]]  # (offset, size) per dimension


def rank_file(rank: int, world_size: int) -> str:
    return f"rank-{rank:05d}-of-{world_size:05d}.safetensors"


def shard_box(t: torch.Tensor) -> tuple[torch.Tensor, dict[str, list[int]]]:
    """A DTensor's local shard and where it sits in the whole tensor (``shape``, ``offset``)."""
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    shape, offset = compute_local_shape_and_global_offset(t.shape, t.device_mesh, t.placements)
    local = t.to_local()
    if tuple(local.shape) != tuple(shape):
        raise ValueError(f"a shard of shape {tuple(local.shape)} where {tuple(shape)} is due")
    return local, {"shape": list(t.shape), "offset": list(offset)}


def local_box(like: torch.Tensor) -> Box:
    """The box of the whole tensor that ``like`` (a DTensor) holds on this rank."""
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    shape, offset = compute_local_shape_and_global_offset(
        like.shape, like.device_mesh, like.placements
    )
    return tuple(offset), tuple(shape)


def done_record(step: int, world_size: int) -> dict:
    """What ``done.json`` says: the step and every rank file of a complete folder."""
    files = [rank_file(r, world_size) for r in range(world_size)]
    return {"format": FORMAT, "step": step, "world_size": world_size, "files": files}


@dataclass(frozen=True)
class SavedTensor:
    """A sharded tensor on disk: its whole shape and dtype, and the rank files' chunks."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    chunks: tuple[tuple[Path, Box], ...]  # (rank file, (offset, size)) each

    def read(self, offset: tuple[int, ...], size: tuple[int, ...]) -> torch.Tensor:
        """The box ``offset``..``offset + size`` of the whole tensor, from the chunks in it."""
        if len(offset) != len(self.shape) or any(
            o < 0 or o + s > n for o, s, n in zip(offset, size, self.shape, strict=True)
        ):
            raise ValueError(f"{self.name}: box {offset}+{size} outside shape {self.shape}")
        out = torch.empty(size, dtype=self.dtype)
        for path, (c_off, c_size) in self.chunks:
            lo = [max(o, c) for o, c in zip(offset, c_off, strict=True)]
            hi = [
                min(o + s, c + cs) for o, s, c, cs in zip(offset, size, c_off, c_size, strict=True)
            ]
            if any(a >= b for a, b in zip(lo, hi, strict=True)):
                continue
            src = tuple(slice(a - c, b - c) for a, b, c in zip(lo, hi, c_off, strict=True))
            dst = tuple(slice(a - o, b - o) for a, b, o in zip(lo, hi, offset, strict=True))
            with safe_open(str(path), framework="pt", device="cpu") as f:
                out[dst] = f.get_slice(self.name)[src]
        return out

    def full(self) -> torch.Tensor:
        """The whole tensor, assembled on CPU."""
        return self.read((0,) * len(self.shape), self.shape)


@dataclass(frozen=True)
class RankFile:
    """One rank's file: its state skeleton (JSON) and the names of its plain tensors."""

    path: Path
    skeleton: Any
    plain: frozenset[str]

    def tensors(self) -> dict[str, torch.Tensor]:
        with safe_open(str(self.path), framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in self.plain}


def open_step(folder: Path) -> tuple[list[RankFile], dict[str, SavedTensor]]:
    """Every rank file of a complete step folder and its sharded tensors; ValueError naming
    what is wrong (no ``done.json``, a missing or foreign rank file, shards that do not fit)."""
    try:
        done = json.loads((folder / DONE).read_text())
    except FileNotFoundError:
        raise ValueError(f"no {DONE}: not a complete step folder") from None
    world = done.get("world_size") if isinstance(done, dict) else None
    if (
        not isinstance(done, dict)
        or done.get("format") != FORMAT
        or not isinstance(world, int)
        or world < 1
        or done.get("files") != done_record(done.get("step"), world)["files"]
    ):
        raise ValueError(f"{DONE} is not a record of this format ({FORMAT})")
    ranks: list[RankFile] = []
    pieces: dict[str, list[tuple[Path, Box, tuple[tuple[int, ...], str]]]] = {}
    for rank, name in enumerate(done["files"]):
        path = folder / name
        if not path.is_file() or path.resolve().parent != folder.resolve():
            raise ValueError(f"{name} is missing (rank {rank} of {world})")
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT or meta.get("rank") != str(rank):
                raise ValueError(f"{name}: not rank {rank}'s file of this format ({FORMAT})")
            shards = json.loads(meta["shards"])
            if not isinstance(shards, dict):
                raise ValueError(f"{name}: its shard table is not a JSON object")
            keys = set(f.keys())
            for key, box in shards.items():
                if key not in keys:
                    raise ValueError(f"{name}: shard {key!r} listed but not stored")
                stored = tuple(f.get_slice(key).get_shape())
                dtype = str(f.get_slice(key).get_dtype())
                pieces.setdefault(key, []).append(
                    (path, (tuple(box["offset"]), stored), (tuple(box["shape"]), dtype))
                )
            ranks.append(RankFile(path, json.loads(meta["state"]), frozenset(keys - set(shards))))
    return ranks, {k: _saved(k, v, world) for k, v in pieces.items()}


_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "F64": torch.float64, "I64": torch.int64, "I32": torch.int32}  # fmt: skip


def _saved(
    name: str, pieces: list[tuple[Path, Box, tuple[tuple[int, ...], str]]], world: int
) -> SavedTensor:
    """The SavedTensor of ``name`` once its chunks agree, lie inside it and cover it once."""
    kinds = {kind for _, _, kind in pieces}
    if len(pieces) != world or len(kinds) != 1:
        raise ValueError(f"shard {name!r}: {len(pieces)} of {world} ranks, shape/dtype {kinds}")
    shape, dtype_s = kinds.pop()
    if dtype_s not in _DTYPES:
        raise ValueError(f"shard {name!r}: dtype {dtype_s} is not a state dtype")
    boxes = [box for _, box, _ in pieces]
    for off, size in boxes:
        if len(off) != len(shape) or len(size) != len(shape):
            raise ValueError(f"shard {name!r}: {len(off)}-d offset for a {len(shape)}-d tensor")
        if any(o < 0 or o + s > n for o, s, n in zip(off, size, shape, strict=True)):
            raise ValueError(f"shard {name!r}: chunk at {off} of {size} outside {shape}")
    if sum(math.prod(s) for _, s in boxes) != math.prod(shape) or _overlap(boxes):
        raise ValueError(f"shard {name!r}: the chunks do not cover {shape} exactly once")
    chunks = tuple((path, box) for path, box, _ in pieces)
    return SavedTensor(name, shape, _DTYPES[dtype_s], chunks)


def _overlap(boxes: list[Box]) -> bool:
    for i, (a_off, a_size) in enumerate(boxes):
        for b_off, b_size in boxes[i + 1 :]:
            if (
                math.prod(a_size)
                and math.prod(b_size)
                and all(
                    ao < bo + bs and bo < ao + as_
                    for ao, as_, bo, bs in zip(a_off, a_size, b_off, b_size, strict=True)
                )
            ):
                return True
    return False


def full(t: Any) -> Any:
    """A SavedTensor's whole tensor; anything else as it is."""
    return t.full() if isinstance(t, SavedTensor) else t


def materialize(state: Any) -> Any:
    """``state`` with every SavedTensor replaced by its whole tensor (for a single process)."""
    if isinstance(state, dict):
        return {k: materialize(v) for k, v in state.items()}
    if isinstance(state, list):
        return [materialize(v) for v in state]
    if isinstance(state, tuple):
        return tuple(materialize(v) for v in state)
    return full(state)
