"""Verifying shards against their index: members, sizes, sha256, json schema, video.

Why apart: verification is the one reader that decodes (the cost), fanned out over a
process pool, so jobs pass each shard's kind by name (cheap to pickle) and this module
looks it up in schemas.kinds.SAMPLE_KINDS. A kind's ``video`` member, when it has one, is
decoded against its json; kinds without video get the members, sha256 and json checks.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

import pyarrow as pa
from tqdm import tqdm

from curation.shards.read import (
    INDEX_NAME,
    ShardError,
    index_kind,
    iter_shard,
    read_index_digest,
    stats_name,
)
from curation.shards.writer import check_sample
from schemas.common import SchemaError
from schemas.kinds import SAMPLE_KINDS, SampleKind
from schemas.sample import SHARD_INDEX_SCHEMA

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


def _short(value: object, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}..."


def _index_field_problems(row: dict, fields: dict) -> list[str]:
    """The index columns that describe the sample (``kind.index_fields`` of its json)
    against what the row says. Columns this code does not know are not compared; a null
    in a nullable column (``tasks`` of an older index) means unknown, not a claim."""
    problems = []
    for name, value in fields.items():
        if name not in row or name not in SHARD_INDEX_SCHEMA.names:
            continue
        field = SHARD_INDEX_SCHEMA.field(name)
        if row[name] is None and field.nullable:
            continue
        try:  # the value as the index stores it (fps is float32)
            want = pa.scalar(value, type=field.type).as_py()
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError):
            want = value
        if row[name] != want:
            problems.append(f"index {name} is {_short(row[name])}, json says {_short(value)}")
    return problems


def _check_indexed_sample(
    key: str, members: dict[str, bytes], row: dict, decode: str, kind: SampleKind
) -> tuple[list[str], dict | None]:
    """Problems of one indexed sample, and its metadata when its json is valid."""
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
        return problems, None
    try:
        meta = check_sample(key, members, kind)
    except SchemaError as e:
        return [*problems, str(e)], None
    problems += _index_field_problems(row, kind.index_fields(meta))
    if kind.video is not None:
        problems += check_video(members[kind.video], meta, decode)
    return problems, meta


def tar_tail_problems(path: str | Path) -> list[str]:
    """Bytes after the end of the archive that the writer never leaves there.

    A tar ends with two zero blocks after its last member, padded with zeros to a whole
    record (``tarfile.RECORDSIZE``, 10240 bytes; Python's tarfile, GNU tar and our writer
    all do this). Readers stop at the first zero block, so anything after it (an appended
    tar, say, that a reader ignoring zero blocks would see) is invisible to the index.
    """
    block, record = tarfile.BLOCKSIZE, tarfile.RECORDSIZE
    with open(path, "rb") as f:
        with tarfile.open(fileobj=f, mode="r:") as tar:
            for _ in tar:
                pass
            end = tar.offset  # just after the last member's padded data
        size = f.seek(0, io.SEEK_END)
        f.seek(end)
        pos = end
        while chunk := f.read(1 << 20):
            first = len(chunk) - len(chunk.lstrip(b"\0"))
            if first < len(chunk):
                return [
                    f"data after the end of the archive at byte {pos + first} "
                    f"(the last member ends at byte {end}, the file has {size})"
                ]
            pos += len(chunk)
    if size < end + 2 * block:
        return [f"no end-of-archive blocks after the last member (ends at byte {end})"]
    expected = end + 2 * block + -(end + 2 * block) % record
    if size > expected:
        return [f"{size - expected} bytes after the end-of-archive record ({expected} bytes)"]
    return []


def expected_stats(path: str | Path, metas: list[dict], kind: SampleKind) -> dict:
    """The stats file the writer makes for the shard at ``path`` holding ``metas`` (the
    samples' json, in tar order), as JSON would read it back."""
    path = Path(path)
    fields = [kind.index_fields(m) for m in metas]
    stats = {
        "shard": path.name,
        "dataset": path.name.removesuffix(".tar").rsplit("-", 1)[0],
        "bytes": path.stat().st_size,
        "keys": [m["key"] for m in metas],
        "durations_s": [round(f["frames"] / f["fps"], 3) for f in fields],
        **kind.summarize(metas),
    }
    return json.loads(json.dumps(stats))


def stats_problems(path: str | Path, metas: list[dict], kind: SampleKind) -> list[str]:
    """The shard's stats file against ``expected_stats`` (no stats file: nothing here;
    verify_dataset names a missing one). A file without ``generated_count`` was written
    by an older version, and ``shards stats`` recounts it, so only its fields are compared;
    otherwise every field must be there. Other fields are compared if they are counts."""
    path = Path(path)
    stats_path = path.parent / stats_name(path.name)
    if not stats_path.exists():
        return []
    name = stats_name(path.name)
    try:
        stats = json.loads(stats_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return [f"stats file {name} does not read: {type(e).__name__}: {e}"]
    if not isinstance(stats, dict):
        return [f"stats file {name} is not a JSON object"]
    want = expected_stats(path, metas, kind)
    legacy = "generated_count" not in stats
    problems = []
    for field, value in want.items():
        if field not in stats:
            if not legacy:
                problems.append(f"stats file {name} lacks {field}")
        elif stats[field] != value:
            problems.append(
                f"stats file {name}: {field} is {_short(stats[field])}, "
                f"the shard holds {_short(value)}"
            )
    for field in sorted(set(stats) - set(want)):
        if field.endswith("_counts"):
            problems.append(f"stats file {name}: {field} counts what the shard does not hold")
    return problems


def verify_shard(
    path: str | Path, rows: dict[str, dict], decode: str = "ends", kind: str = "clip"
) -> dict:
    """Check one shard against its index rows ``{key: row}``; return a report dict.

    ``kind`` names a SAMPLE_KINDS entry (a name, so jobs pickle cheaply to a process pool);
    kinds without a video member (latents) get the members, sha256 and json checks only.
    Also checked: the index columns describing each sample against its json, bytes after
    the end of the archive, and the shard's stats file against its samples.
    Every problem is a message "<shard>:<key>: what is wrong"; ``ok`` is False when any.
    """
    check_decode_mode(decode)
    sample_kind = SAMPLE_KINDS[kind]
    name = Path(path).name
    errors, seen = [], set()
    metas: list[dict | None] = []
    readable = True
    try:
        for key, members in iter_shard(path):
            seen.add(key)
            row = rows.get(key)
            if row is None:
                errors.append(f"{name}:{key}: sample is in the shard but not in the index")
                try:
                    metas.append(check_sample(key, members, sample_kind))
                except SchemaError:
                    metas.append(None)
                continue
            problems, meta = _check_indexed_sample(key, members, row, decode, sample_kind)
            errors += [f"{name}:{key}: {p}" for p in problems]
            metas.append(meta)
    except (tarfile.TarError, ShardError, OSError, EOFError) as e:
        errors.append(f"{name}: cannot read shard: {type(e).__name__}: {e}")
        readable = False
    for key in sorted(set(rows) - seen):
        errors.append(f"{name}:{key}: index lists the sample but the shard lacks it")
    if readable and seen:
        try:
            errors += [f"{name}: {p}" for p in tar_tail_problems(path)]
        except (tarfile.TarError, OSError) as e:
            errors.append(f"{name}: cannot read shard: {type(e).__name__}: {e}")
        if all(m is not None for m in metas):  # else the stats cannot be recounted
            errors += [f"{name}: {p}" for p in stats_problems(path, metas, sample_kind)]
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
    and no shard file is missing from the index. The report records ``index_sha256`` (the
    index file verified) and ``shard_bytes`` (each tar's size), which ``changes_since``
    compares with a later report: an edit of shards and index together changes them.
    """
    check_decode_mode(decode)
    shards_dir = Path(shards_dir)
    dataset = shards_dir.name
    errors: list[str] = []
    if not (shards_dir / INDEX_NAME).exists():
        errors.append(f"{dataset}: no {INDEX_NAME}")
    table, digest = read_index_digest(shards_dir)
    kind = kind or index_kind(table)
    index = table.to_pylist()
    dupes = sorted(k for k, n in Counter(r["key"] for r in index).items() if n > 1)
    errors += [f"{dataset}: key {k!r} is in the index more than once" for k in dupes]
    by_shard: dict[str, dict[str, dict]] = {}
    for r in index:
        by_shard.setdefault(r["shard"], {})[r["key"]] = r
    on_disk = {p.name: p.stat().st_size for p in shards_dir.glob("*.tar")}
    for shard in sorted(set(by_shard) - set(on_disk)):
        errors.append(f"{shard}: named by the index ({len(by_shard[shard])} samples) but missing")
    for shard in sorted(set(by_shard) & set(on_disk)):
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
        "index_sha256": digest,
        "shard_bytes": dict(sorted(on_disk.items())),
        "errors": errors,
    }


def _dataset_id(report: dict) -> str:
    """``shards/real`` or ``latents/real``: a dataset folder by where it sits in its root."""
    folder = Path(report["shards_dir"])
    return f"{folder.parent.name}/{folder.name}"


def changes_since(saved: dict, current: dict) -> list[str]:
    """What differs between two verify reports (``run_verify``'s, or lists of
    verify_dataset reports under ``datasets``): datasets added or gone, an index whose
    sha256 changed, shard files added, gone or resized. Empty: nothing changed.

    Raises ValueError when ``saved`` holds no index digests (a report of an older version).
    """
    before = {_dataset_id(d): d for d in saved.get("datasets", [])}
    if any("index_sha256" not in d for d in before.values()):
        raise ValueError("the saved report has no index digests (an older version wrote it)")
    now = {_dataset_id(d): d for d in current["datasets"]}
    changes = [f"{d}: not in the saved report" for d in sorted(set(now) - set(before))]
    changes += [
        f"{d}: in the saved report but not found now" for d in sorted(set(before) - set(now))
    ]
    for d in sorted(set(before) & set(now)):
        old, new = before[d], now[d]
        if old["index_sha256"] != new["index_sha256"]:
            changes.append(
                f"{d}: index changed (sha256 {str(old['index_sha256'])[:12]} -> "
                f"{str(new['index_sha256'])[:12]})"
            )
        was, is_ = old.get("shard_bytes", {}), new["shard_bytes"]
        for shard in sorted(set(was) | set(is_)):
            if shard not in is_:
                changes.append(f"{d}/{shard}: gone")
            elif shard not in was:
                changes.append(f"{d}/{shard}: new")
            elif was[shard] != is_[shard]:
                changes.append(f"{d}/{shard}: {was[shard]} bytes, now {is_[shard]}")
    return changes
