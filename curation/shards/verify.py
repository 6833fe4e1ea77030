"""Verifying shards against their index: members, sizes, sha256, json schema, video.

Why apart: verification is the one reader that decodes (the cost), fanned out over a
process pool, so jobs pass each shard's kind by name (cheap to pickle) and this module
looks it up in schemas.kinds.SAMPLE_KINDS. A kind's ``video`` member, when it has one, is
decoded against its json; kinds without video get the members, sha256 and json checks.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

from tqdm import tqdm

from curation.shards.read import (
    INDEX_NAME,
    ShardError,
    index_kind,
    iter_shard,
    read_index,
    stats_name,
)
from curation.shards.writer import check_sample
from schemas.common import SchemaError
from schemas.kinds import SAMPLE_KINDS, SampleKind

DECODE_MODES: tuple[str, ...] = ("ends", "full", "none")  # how much of each mp4 verify decodes


def check_decode_mode(decode: str) -> None:
    """Raise ValueError unless ``decode`` is one of DECODE_MODES."""
    if decode not in DECODE_MODES:
        raise ValueError(f"decode must be one of {'|'.join(DECODE_MODES)}, got {decode!r}")


def check_video(mp4: bytes, meta: dict, decode: str = "ends") -> list[str]:
    """Problems decoding ``mp4`` against its metadata (frame count, fps, resolution).

    The frame count is the container index's (``len`` of the decord reader). ``decode``:
    "ends" also decodes the first and the last frame by index (catches a cut-off stream
    cheaply), "full" decodes every frame, "none" reads the container header only.
    """
    import decord

    check_decode_mode(decode)
    try:
        vr = decord.VideoReader(io.BytesIO(mp4), ctx=decord.cpu(0), num_threads=1)
        n, fps = len(vr), vr.get_avg_fps()
        problems = []
        if n != meta["frames"]:
            problems.append(f"mp4 has {n} frames, json says {meta['frames']}")
        if abs(fps - meta["fps"]) > 0.01 * meta["fps"]:
            problems.append(f"mp4 is {fps:g} fps, json says {meta['fps']:g}")
        if decode == "none" or n == 0:
            return problems
        ends = sorted({0, n - 1})
        h, w = vr.get_batch(ends).shape[1:3]
        if (w, h) != (meta["width"], meta["height"]):
            problems.append(f"mp4 is {w}x{h}, json says {meta['width']}x{meta['height']}")
        if decode == "full":
            for start in range(0, n, 64):
                vr.get_batch(list(range(start, min(n, start + 64))))
        return problems
    except Exception as e:  # decord raises its own error types for every bad stream
        return [f"mp4 does not decode: {type(e).__name__}: {str(e)[:200]}"]


def _check_indexed_sample(
    key: str, members: dict[str, bytes], row: dict, decode: str, kind: SampleKind
) -> list:
    problems = []
    missing = [m for m in kind.members if m not in members]
    if missing:
        problems.append(f"missing members {missing}")
    exts = sorted(members)
    if exts != row["members"]:
        problems.append(f"members {exts} but index lists {row['members']}")
    for ext, size, digest in zip(row["members"], row["sizes"], row["sha256"], strict=True):
        data = members.get(ext)
        if data is None:
            continue
        if len(data) != size:
            problems.append(f"{ext}: {len(data)} bytes, index says {size}")
        elif hashlib.sha256(data).hexdigest() != digest:
            problems.append(f"{ext}: sha256 differs from the index")
    if missing:
        return problems
    try:
        meta = check_sample(key, members, kind)
    except SchemaError as e:
        return [*problems, str(e)]
    if kind.video is None:
        return problems
    return problems + check_video(members[kind.video], meta, decode)


def verify_shard(
    path: str | Path, rows: dict[str, dict], decode: str = "ends", kind: str = "clip"
) -> dict:
    """Check one shard against its index rows ``{key: row}``; return a report dict.

    ``kind`` names a SAMPLE_KINDS entry (a name, so jobs pickle cheaply to a process pool);
    kinds without a video member (latents) get the members, sha256 and json checks only.
    Every problem is a message "<shard>:<key>: what is wrong"; ``ok`` is False when any.
    """
    check_decode_mode(decode)
    sample_kind = SAMPLE_KINDS[kind]
    name = Path(path).name
    errors, seen = [], set()
    try:
        for key, members in iter_shard(path):
            seen.add(key)
            row = rows.get(key)
            if row is None:
                errors.append(f"{name}:{key}: sample is in the shard but not in the index")
                continue
            errors += [
                f"{name}:{key}: {p}"
                for p in _check_indexed_sample(key, members, row, decode, sample_kind)
            ]
    except (tarfile.TarError, ShardError, OSError, EOFError) as e:
        errors.append(f"{name}: cannot read shard: {type(e).__name__}: {e}")
    for key in sorted(set(rows) - seen):
        errors.append(f"{name}:{key}: index lists the sample but the shard lacks it")
    return {"shard": name, "samples": len(seen), "ok": not errors, "errors": errors}


def _verify_job(job: tuple[str, dict, str, str]) -> dict:
    return verify_shard(*job)


def verify_dataset(
    shards_dir: str | Path,
    decode: str = "ends",
    map_fn: Callable[[Callable, Iterable], Iterable] = map,
    kind: SampleKind | None = None,
) -> dict:
    """Verify every shard of one dataset folder against its index (see verify_shard).

    ``kind`` defaults to the registered one the index rows' members show (clip or latent).
    ``map_fn`` runs the per-shard checks (a process pool's map for parallel verification).
    Also checks: the index exists, keys are unique, every named shard and stats file exists,
    and no shard file is missing from the index.
    """
    check_decode_mode(decode)
    shards_dir = Path(shards_dir)
    dataset = shards_dir.name
    errors: list[str] = []
    if not (shards_dir / INDEX_NAME).exists():
        errors.append(f"{dataset}: no {INDEX_NAME}")
    table = read_index(shards_dir)
    kind = kind or index_kind(table)
    index = table.to_pylist()
    dupes = sorted(k for k, n in Counter(r["key"] for r in index).items() if n > 1)
    errors += [f"{dataset}: key {k!r} is in the index more than once" for k in dupes]
    by_shard: dict[str, dict[str, dict]] = {}
    for r in index:
        by_shard.setdefault(r["shard"], {})[r["key"]] = r
    on_disk = {p.name for p in shards_dir.glob("*.tar")}
    for shard in sorted(set(by_shard) - on_disk):
        errors.append(f"{shard}: named by the index ({len(by_shard[shard])} samples) but missing")
    for shard in sorted(set(by_shard) & on_disk):
        if not (shards_dir / stats_name(shard)).exists():
            errors.append(f"{shard}: stats file {stats_name(shard)} missing")
    jobs = [(str(shards_dir / s), by_shard.get(s, {}), decode, kind.name) for s in sorted(on_disk)]
    per_shard = list(
        tqdm(map_fn(_verify_job, jobs), total=len(jobs), desc=f"verify {dataset}", unit="shard")
    )
    for r in per_shard:
        errors += r["errors"]
    return {
        "dataset": dataset,
        "shards_dir": str(shards_dir),
        "ok": not errors,
        "decode": decode,
        "kind": kind.name,
        "shards": len(on_disk),
        "failed_shards": sum(not r["ok"] for r in per_shard),
        "samples_indexed": len(index),
        "samples_checked": sum(r["samples"] for r in per_shard),
        "errors": errors,
    }
