"""WebDataset shards: one writer for every dataset, its index and stats, and verification.

Layout of one dataset folder (``<root>/shards/<dataset>/``)::

    <dataset>-000000.tar            samples, members sorted: <key>.json, <key>.mp4, <key>.txt
    <dataset>-000000_stats.json     per-shard stats (count, bytes, durations, fps, sizes, actions)
    index.parquet                   one row per sample (schemas.sample.SHARD_INDEX_SCHEMA)

Crash safety: a shard is written under a temporary name, fsynced and renamed; only then is
its stats file written and the index rewritten (atomically) with its rows. The index is the
truth: on open, a writer deletes temporary files and shard files the index does not name
(a run killed between rename and index update), and drops index rows whose shard is gone.
So a SIGKILLed run, rerun, loses and duplicates nothing. A lock file keeps writers exclusive.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import logging
import mmap
import os
import re
import tarfile
import tempfile
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from curation.manifest import atomic_write_json, rejects_table, write_table
from curation.provenance import provenance
from schemas.common import SchemaError
from schemas.latents import LATENT_MEMBERS, validate_latent_sample
from schemas.sample import (
    REQUIRED_MEMBERS,
    SHARD_INDEX_SCHEMA,
    is_generated,
    validate_key,
    validate_member_name,
    validate_sample,
)

log = logging.getLogger(__name__)

INDEX_NAME = "index.parquet"
STAGE = "shards"
_TAR_MODE = 0o644
_BLOCK, _RECORD = tarfile.BLOCKSIZE, tarfile.RECORDSIZE
_MAP_BYTES = 1 << 20  # staged members at least this big are memory-mapped
DECODE_MODES: tuple[str, ...] = ("ends", "full", "none")  # how much of each mp4 verify decodes


class ShardError(Exception):
    """A shard is unreadable or holds something a sample never should (links, paths)."""


class DuplicateKeyError(ValueError):
    """A key is already in the dataset's index or in the shard being written."""


def shard_name(dataset: str, index: int) -> str:
    return f"{dataset}-{index:06d}.tar"


def stats_name(shard: str) -> str:
    """``real-000003.tar`` -> ``real-000003_stats.json`` (video2dataset's naming)."""
    return shard.removesuffix(".tar") + "_stats.json"


def _shard_re(dataset: str) -> re.Pattern:
    return re.compile(rf"^{re.escape(dataset)}-(\d{{6}})(\.tar|_stats\.json)$")


def read_index(shards_dir: str | Path) -> pa.Table:
    """The dataset's index table, empty when nothing has been written yet."""
    path = Path(shards_dir) / INDEX_NAME
    if not path.exists():
        return SHARD_INDEX_SCHEMA.empty_table()
    return pq.read_table(path, schema=SHARD_INDEX_SCHEMA)


def indexed_shards(shards_dir: str | Path) -> list[str]:
    """Paths of the dataset's complete shards (those the index names): what a trainer reads."""
    names = sorted(set(read_index(shards_dir).column("shard").to_pylist()))
    return [str(Path(shards_dir) / n) for n in names]


def _clip_index_fields(meta: dict) -> dict:
    return {
        "source": meta["source"],
        "frames": meta["frames"],
        "fps": meta["fps"],
        "tiny_random": meta["provenance"]["tiny_random"],
    }


@dataclass(frozen=True)
class SampleKind:
    """What one kind of sample must hold, and what the writer records about it.

    ``members``: required member extensions, ``json`` among them (the metadata, whose
    ``key`` must equal the sample key). ``validate(meta)`` raises SchemaError for bad
    metadata. ``index_fields(meta)`` gives the index columns source, frames, fps and
    tiny_random (frames/fps of whatever the sample holds, e.g. latent frames and their
    rate). ``summarize(metas)`` gives the counts of a shard's stats file.
    """

    name: str
    members: tuple[str, ...]
    validate: Callable[[dict], None]
    index_fields: Callable[[dict], dict]
    summarize: Callable[[Iterable[dict]], dict]


def check_sample(key: str, members: dict[str, bytes], kind: SampleKind | None = None) -> dict:
    """Validate one sample before it goes into a shard; return its parsed metadata.

    Raises SchemaError naming the problem: bad key, unsafe member name, a missing member,
    json that is not valid metadata of ``kind`` (default: clip samples) or names another
    key, or a txt that is not UTF-8.
    """
    kind = kind or CLIP_SAMPLE
    validate_key(key)
    for ext in members:
        validate_member_name(ext)
    missing = [m for m in kind.members if m not in members]
    if missing:
        raise SchemaError(f"sample {key!r} lacks members {missing}")
    try:
        meta = json.loads(bytes(members["json"]))  # members may be mmaps (bytes-like)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SchemaError(f"sample {key!r}: json member is not JSON: {e}") from e
    if not isinstance(meta, dict):
        raise SchemaError(f"sample {key!r}: json member is not an object")
    kind.validate(meta)
    if meta.get("key") != key:
        raise SchemaError(f"sample {key!r}: json names key {meta.get('key')!r}")
    try:
        bytes(members.get("txt", b"")).decode("utf-8")
    except UnicodeDecodeError as e:
        raise SchemaError(f"sample {key!r}: txt member is not UTF-8: {e}") from e
    return meta


def _tar_header(name: str, size: int) -> bytes:
    """A member header with fixed owner, mode and time, so a rerun writes identical bytes."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = _TAR_MODE
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _sha256s(blobs: list[bytes]) -> list[str]:
    return [hashlib.sha256(b).hexdigest() for b in blobs]  # hashlib releases the GIL


def _tar_size(members: dict[str, bytes]) -> int:
    """Bytes ``members`` take in a tar: a 512-byte header plus data padded to 512."""
    return sum(_BLOCK + -(-len(data) // _BLOCK) * _BLOCK for data in members.values())


def summarize_metas(metas: Iterable[dict]) -> dict:
    """Counts over sample metadata: what a stats file and `shards stats` report.

    ``actions`` counts frames per "keys|mouse" label; samples without actions add nothing.
    """
    fps, res, src, tasks, actions = Counter(), Counter(), Counter(), Counter(), Counter()
    count = frames = tiny = generated = 0
    duration = 0.0
    for m in metas:
        count += 1
        frames += m["frames"]
        duration += m["frames"] / m["fps"]
        fps[f"{m['fps']:g}"] += 1
        res[f"{m['width']}x{m['height']}"] += 1
        src[m["source"]] += 1
        tasks.update(m["tasks"])
        tiny += bool(m["provenance"]["tiny_random"])
        generated += is_generated(m)
        actions.update(f"{k}|{ms}" for k, ms in zip(m["keys"], m["mouse"], strict=True))
    return {
        "count": count,
        "frames": frames,
        "duration_s": round(duration, 3),
        "fps_counts": dict(sorted(fps.items())),
        "resolution_counts": dict(sorted(res.items())),
        "source_counts": dict(sorted(src.items())),
        "task_counts": dict(sorted(tasks.items())),
        "tiny_random_count": tiny,
        "generated_count": generated,
        "action_frame_counts": dict(sorted(actions.items())),
    }


# Clip samples (mp4 + json + txt, schemas.sample): every dataset the curation jobs write.
CLIP_SAMPLE = SampleKind(
    name="clip",
    members=REQUIRED_MEMBERS,
    validate=validate_sample,
    index_fields=_clip_index_fields,
    summarize=summarize_metas,
)


def _latent_index_fields(meta: dict) -> dict:
    return {
        "source": meta["source"],
        "frames": meta["latent_shape"][1],
        "fps": meta["latent_fps"],
        "tiny_random": meta["tiny_random"],
    }


def summarize_latent_metas(metas: Iterable[dict]) -> dict:
    """Counts over latent sample metadata (frames are latent frames), for stats files."""
    src, tasks, shapes, hist = Counter(), Counter(), Counter(), Counter()
    count = frames = tiny = 0
    duration = 0.0
    for m in metas:
        count += 1
        f = m["latent_shape"][1]
        frames += f
        duration += f / m["latent_fps"]
        src[m["source"]] += 1
        tasks[m["task"]] += 1
        shapes["x".join(map(str, m["latent_shape"]))] += 1
        hist[str(m["history_latent_frames"])] += 1
        tiny += bool(m["tiny_random"])
    return {
        "count": count,
        "frames": frames,
        "duration_s": round(duration, 3),
        "source_counts": dict(sorted(src.items())),
        "task_counts": dict(sorted(tasks.items())),
        "latent_shape_counts": dict(sorted(shapes.items())),
        "history_latent_frames_counts": dict(sorted(hist.items())),
        "tiny_random_count": tiny,
        "generated_count": 0,
    }


# Latent samples (schemas.latents): training windows pre-encoded by jobs.encode_latents.
LATENT_SAMPLE = SampleKind(
    name="latent",
    members=LATENT_MEMBERS,
    validate=validate_latent_sample,
    index_fields=_latent_index_fields,
    summarize=summarize_latent_metas,
)
SAMPLE_KINDS: dict[str, SampleKind] = {k.name: k for k in (CLIP_SAMPLE, LATENT_SAMPLE)}


def infer_kind(index: pa.Table) -> SampleKind:
    """The kind whose members the index rows hold (clip for an empty index)."""
    held = set(index.column("members")[0].as_py()) if index.num_rows else set()
    for kind in SAMPLE_KINDS.values():
        if set(kind.members) <= held:
            return kind
    return CLIP_SAMPLE


def merge_summaries(parts: Iterable[dict]) -> dict:
    """Add up summarize_metas results (per-shard stats) into one."""
    total: dict = {
        "count": 0,
        "frames": 0,
        "duration_s": 0.0,
        "tiny_random_count": 0,
        "generated_count": 0,
    }
    counters: dict[str, Counter] = {}
    for p in parts:
        for k in total:
            total[k] += p[k]
        for k, v in p.items():
            if k.endswith("_counts"):
                counters.setdefault(k, Counter()).update(v)
    total["duration_s"] = round(total["duration_s"], 3)
    total.update({k: dict(sorted(c.items())) for k, c in counters.items()})
    return total


class ShardWriter:
    """Append samples to ``<out_dir>/<dataset>-%06d.tar`` shards, keeping index and stats.

    Use as a context manager. ``write`` validates and adds one sample; a shard is closed
    when it reaches ``max_samples`` or would pass ``max_bytes``. ``kind`` says what a
    sample must hold (default: clip samples; see SampleKind). ``indexed_at_open`` holds
    the keys indexed before this run, ``done_keys`` those plus every key written since;
    writing one of them again raises DuplicateKeyError. On an exception the shard in
    progress is discarded and every finished shard stays indexed.
    """

    def __init__(
        self,
        out_dir: str | Path,
        dataset: str,
        *,
        max_samples: int = 1000,
        max_bytes: int = 2**30,
        kind: SampleKind = CLIP_SAMPLE,
    ) -> None:
        validate_key(dataset)
        if max_samples < 1 or max_bytes < 1:
            raise ValueError("max_samples and max_bytes must be positive")
        self.out_dir = Path(out_dir)
        self.dataset = dataset
        self.max_samples = max_samples
        self.max_bytes = max_bytes
        self.kind = kind
        self.shards_written: list[str] = []
        self.samples_written = 0
        self._lock_fd: int | None = None
        self._file = None
        self._offset = 0
        self._completer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-complete")
        self._hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shard-hash")
        self._pending: Future | None = None
        self._tmp: Path | None = None
        self._rows: list[dict] = []
        self._metas: list[dict] = []
        self._bytes = 0
        config = {
            "dataset": dataset,
            "max_samples": max_samples,
            "max_bytes": max_bytes,
            "kind": kind.name,
        }
        self._provenance = provenance(STAGE, config)

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> ShardWriter:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.out_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._index = self._recover()
        except BaseException as e:
            os.close(self._lock_fd)
            self._lock_fd = None
            if isinstance(e, BlockingIOError):
                raise RuntimeError(f"another shard writer is running in {self.out_dir}") from None
            raise
        self.indexed_at_open = frozenset(self._index.column("key").to_pylist())
        self.done_keys: set[str] = set(self.indexed_at_open)
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._finish_shard()
            else:
                self._discard_shard()
            self._wait_completed()
        finally:
            self._completer.shutdown(wait=True)
            self._hasher.shutdown(wait=True)
            if self._lock_fd is not None:
                os.close(self._lock_fd)  # releases the flock
                self._lock_fd = None

    def _recover(self) -> pa.Table:
        """Make the folder agree with the index after a killed run; return the index."""
        index = read_index(self.out_dir)
        for tmp in self.out_dir.glob(".*.tmp"):
            log.warning("removing temporary file of an interrupted run: %s", tmp)
            tmp.unlink()
        named = set(index.column("shard").to_pylist())
        present = {s for s in named if (self.out_dir / s).exists()}
        if present != named:
            gone = sorted(named - present)
            log.warning("index rows name missing shards %s; dropping them to rewrite", gone)
            keep = pa.array([s in present for s in index.column("shard").to_pylist()])
            index = write_table(index.filter(keep), self.out_dir / INDEX_NAME, SHARD_INDEX_SCHEMA)
        # A killed run leaves at most one shard renamed but not indexed: the one after the
        # last indexed shard. Remove it (it is rewritten); anything else means the index was
        # lost or edited, and deleting shards then would destroy data, so stop instead.
        pattern = _shard_re(self.dataset)
        used = [int(pattern.match(s).group(1)) for s in present]
        crashed = shard_name(self.dataset, max(used, default=-1) + 1)
        unindexed = []
        for path in sorted(self.out_dir.iterdir()):
            m = pattern.match(path.name)
            if m and shard_name(self.dataset, int(m.group(1))) not in present:
                unindexed.append(path)
        strays = [p.name for p in unindexed if p.suffix == ".tar" and p.name != crashed]
        if strays:
            raise RuntimeError(
                f"{self.out_dir}: shard files {strays[:5]} are not in {INDEX_NAME}; refusing to "
                "overwrite them. Restore the index, or move those files away, and rerun."
            )
        for path in unindexed:  # the crashed shard, and stats files of shards not indexed
            log.warning("removing %s: its shard is not in the index", path.name)
            path.unlink()
        self._next = max(used, default=-1) + 1
        return index

    # -- writing ---------------------------------------------------------------------------
    def write(self, key: str, members: dict[str, bytes]) -> None:
        """Validate and append one sample (raises SchemaError or DuplicateKeyError)."""
        meta = check_sample(key, members, self.kind)
        if key in self.done_keys:
            raise DuplicateKeyError(f"sample {key!r} is already in {self.dataset}")
        size = _tar_size(members)
        if self._rows and (
            len(self._rows) >= self.max_samples or self._bytes + size > self.max_bytes
        ):
            self._finish_shard()
        if self._file is None:
            self._open_shard()
        name = shard_name(self.dataset, self._next)
        exts = sorted(members)
        digests = self._hasher.submit(_sha256s, [members[e] for e in exts])  # overlaps writing
        for ext in exts:  # the tar format written directly: header, data, zero padding
            data = members[ext]
            header = _tar_header(f"{key}.{ext}", len(data))
            pad = -len(data) % _BLOCK
            self._file.write(header)
            self._file.write(data)
            self._file.write(b"\0" * pad)
            self._offset += len(header) + len(data) + pad
        self._rows.append(
            {
                "key": key,
                "shard": name,
                "members": exts,
                "sizes": [len(members[e]) for e in exts],
                "sha256": digests.result(),
                **self.kind.index_fields(meta),
            }
        )
        self._metas.append(meta)
        self._bytes += size
        self.done_keys.add(key)

    def _open_shard(self) -> None:
        name = shard_name(self.dataset, self._next)
        fd, tmp = tempfile.mkstemp(dir=self.out_dir, prefix=f".{name}.", suffix=".tmp")
        self._tmp = Path(tmp)
        self._file = os.fdopen(fd, "wb")
        self._offset = 0

    def _finish_shard(self) -> None:
        """End the shard and hand it to the background completer; start the next one.

        Why a thread: fsync of a large shard then overlaps writing the next one. Shards are
        completed one at a time, in order, so the index only ever grows by whole shards.
        """
        if self._file is None:
            return
        end = self._offset + 2 * _BLOCK  # two zero blocks end the archive ...
        self._file.write(b"\0" * (2 * _BLOCK + -end % _RECORD))  # ... padded to a record
        self._file.flush()
        job = (self._file, self._tmp, shard_name(self.dataset, self._next), self._rows, self._metas)
        self._wait_completed()
        self._pending = self._completer.submit(self._complete, *job)
        self._file = self._tmp = None
        self._rows, self._metas, self._bytes = [], [], 0
        self._next += 1

    def _wait_completed(self) -> None:
        """Wait for the shard being completed; re-raise its error here."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def _complete(self, file, tmp: Path, name: str, rows: list[dict], metas: list[dict]) -> None:
        """fsync and rename the shard into place, write its stats, then index its rows."""
        try:
            os.fsync(file.fileno())
        finally:
            file.close()
        os.replace(tmp, self.out_dir / name)
        stats = {
            "shard": name,
            "dataset": self.dataset,
            "bytes": (self.out_dir / name).stat().st_size,
            "keys": [r["key"] for r in rows],
            "durations_s": [round(r["frames"] / r["fps"], 3) for r in rows],
            **self.kind.summarize(metas),
        }
        atomic_write_json(self.out_dir / stats_name(name), stats)
        table = pa.Table.from_pylist(rows, schema=SHARD_INDEX_SCHEMA)
        self._index = write_table(
            pa.concat_tables([self._index, table]),
            self.out_dir / INDEX_NAME,
            SHARD_INDEX_SCHEMA,
            provenance=self._provenance,
        )
        self.shards_written.append(name)
        self.samples_written += len(rows)

    def _discard_shard(self) -> None:
        if self._file is None:
            return
        self._file.close()
        self._tmp.unlink(missing_ok=True)
        self.done_keys.difference_update(r["key"] for r in self._rows)
        self._file = self._tmp = None
        self._rows, self._metas, self._bytes = [], [], 0


def _reject(key: str, source: str, reason: str, detail: str) -> dict:
    return {"stage": STAGE, "input": source, "clip_id": key, "reason": reason, "detail": detail}


def _pack(
    writer: ShardWriter, items: Iterable[tuple[str, str, Callable[[], dict[str, bytes]]]]
) -> dict:
    """Write every (key, input, load) not yet indexed; bad samples become rejects rows."""
    skipped, rejects = 0, []
    for key, source, load in tqdm(items, desc=f"shards {writer.dataset}", unit="sample"):
        if key in writer.indexed_at_open:
            skipped += 1
            continue
        try:
            members = load()
        except OSError as e:
            rejects.append(_reject(key, source, "unreadable", f"{type(e).__name__}: {e}"))
            continue
        try:
            writer.write(key, members)
        except DuplicateKeyError as e:
            rejects.append(_reject(key, source, "duplicate_key", str(e)))
        except SchemaError as e:
            rejects.append(_reject(key, source, "invalid_sample", str(e)))
    return {"skipped_existing": skipped, "rejects": rejects}


def _summary(writer: ShardWriter, packed: dict, rejects_path: Path | None) -> dict:
    if rejects_path is not None:
        write_table(rejects_table(packed["rejects"]), rejects_path, rejects_table([]).schema)
    return {
        "dataset": writer.dataset,
        "shards_dir": str(writer.out_dir),
        "shards_written": writer.shards_written,
        "samples_written": writer.samples_written,
        "skipped_existing": packed["skipped_existing"],
        "rejected": len(packed["rejects"]),
        "rejects": packed["rejects"],
        "indexed_samples": len(writer.done_keys),
    }


def write_shards(
    samples: Iterable[tuple[str, dict[str, bytes]]],
    shards_dir: str | Path,
    dataset: str,
    *,
    max_samples: int = 1000,
    max_bytes: int = 2**30,
    rejects_path: str | Path | None = None,
    kind: SampleKind = CLIP_SAMPLE,
) -> dict:
    """Append ``(key, members)`` samples not yet indexed to the dataset's shards.

    For producers that hold samples in memory (synthetic, event and latent datasets; pass
    ``kind`` for samples other than clips). Returns the summary of write_shards_from_dir.
    """
    limits = {"max_samples": max_samples, "max_bytes": max_bytes, "kind": kind}
    with ShardWriter(shards_dir, dataset, **limits) as w:
        items = ((key, key, lambda m=members: m) for key, members in samples)
        packed = _pack(w, items)
    return _summary(w, packed, Path(rejects_path) if rejects_path else None)


def staged_samples(staging_dir: str | Path) -> tuple[dict[str, dict[str, Path]], int]:
    """Complete staged samples ``{key: {ext: path}}`` and how many are still incomplete.

    A producer writes ``<key>.mp4``, ``<key>.txt`` and last ``<key>.json``: a key is
    complete iff its json exists. Hidden files (temporaries) are ignored.
    """
    groups: dict[str, dict[str, Path]] = {}
    for path in Path(staging_dir).iterdir():
        if path.name.startswith(".") or "." not in path.name or not path.is_file():
            continue
        key, ext = path.name.split(".", 1)
        groups.setdefault(key, {})[ext] = path
    complete = {k: v for k, v in groups.items() if "json" in v}
    return complete, len(groups) - len(complete)


def _load(path: Path) -> bytes | mmap.mmap:
    """A staged member: small ones read, large ones mapped (hashed and written, never copied)."""
    size = path.stat().st_size
    if size < _MAP_BYTES:
        return path.read_bytes()
    with open(path, "rb") as f:
        return mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ)


def write_shards_from_dir(
    staging_dir: str | Path,
    shards_dir: str | Path,
    dataset: str,
    max_samples: int = 1000,
    max_bytes: int = 2**30,
    rejects_path: str | Path | None = None,
) -> dict:
    """Pack every complete staged sample not yet indexed into new shards, sorted by key.

    Resumable: rerun after a crash or with more staged samples and only the missing keys
    are written, into shards numbered after the existing ones. Returns a summary dict
    (shards_written, samples_written, skipped_existing, rejected, rejects, indexed_samples,
    incomplete). Rejects (bad key, missing member, invalid json) are also written to
    ``rejects_path`` when given; they are re-found on every run, so that file stays whole.
    """
    complete, incomplete = staged_samples(staging_dir)

    def items() -> Iterator[tuple[str, str, Callable[[], dict[str, bytes]]]]:
        for key in sorted(complete):
            paths = complete[key]
            yield key, str(paths["json"]), lambda p=paths: {e: _load(f) for e, f in p.items()}

    with ShardWriter(shards_dir, dataset, max_samples=max_samples, max_bytes=max_bytes) as w:
        packed = _pack(w, items())
    summary = _summary(w, packed, Path(rejects_path) if rejects_path else None)
    summary["incomplete"] = incomplete
    return summary


# -- reading and verification ----------------------------------------------------------------
def _split_member(name: str) -> tuple[str, str]:
    """``<key>.<ext>`` -> (key, ext); ShardError for any name that could be a path."""
    if "/" in name or "\\" in name or name.startswith(".") or "." not in name:
        raise ShardError(f"unsafe or malformed member name {name!r}")
    key, ext = name.split(".", 1)
    try:
        validate_key(key)
        validate_member_name(ext)
    except SchemaError as e:
        raise ShardError(f"member {name!r}: {e}") from e
    return key, ext


def iter_shard(
    path: str | Path, exts: Collection[str] | None = None
) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Yield ``(key, {ext: bytes})`` per sample, reading only ``exts`` when given.

    Never extracts to disk. Raises ShardError on links, devices, directories, names with
    path parts or dots before the key ends, and a key split across the tar.
    """
    seen: set[str] = set()
    key, members = None, {}
    with tarfile.open(path, mode="r|") as tar:
        for info in tar:
            if not info.isreg():
                raise ShardError(f"{Path(path).name}: member {info.name!r} is not a regular file")
            k, ext = _split_member(info.name)
            if k != key:
                if key is not None:
                    yield key, members
                if k in seen:
                    raise ShardError(f"{Path(path).name}: key {k!r} appears twice")
                seen.add(k)
                key, members = k, {}
            if ext in members:
                raise ShardError(f"{Path(path).name}: member {info.name!r} appears twice")
            if exts is None or ext in exts:
                members[ext] = tar.extractfile(info).read()
            else:
                members[ext] = b""
    if key is not None:
        yield key, members


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
    if "mp4" not in kind.members:
        return problems
    return problems + check_video(members["mp4"], meta, decode)


def verify_shard(
    path: str | Path, rows: dict[str, dict], decode: str = "ends", kind: str = "clip"
) -> dict:
    """Check one shard against its index rows ``{key: row}``; return a report dict.

    ``kind`` names a SAMPLE_KINDS entry (a name, so jobs pickle cheaply to a process pool);
    kinds without an mp4 (latents) get the members, sha256 and json checks only.
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

    ``kind`` defaults to the one the index rows' members show (clip or latent).
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
    kind = kind or infer_kind(table)
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


def shard_summary(path: str | Path, kind: SampleKind = CLIP_SAMPLE) -> dict:
    """``kind.summarize`` over one shard, from its stats file or else from its json members."""
    path = Path(path)
    stats_path = path.with_name(stats_name(path.name))
    if stats_path.exists():
        stats = json.loads(stats_path.read_text())
        if "generated_count" in stats:  # else written by an older version: recount
            return stats
    return kind.summarize(json.loads(m["json"]) for _, m in iter_shard(path, exts=("json",)))


def dataset_stats(shards_dir: str | Path, kind: SampleKind | None = None) -> dict:
    """Totals of one dataset folder over the shards its index names (``kind`` as in
    verify_dataset)."""
    shards_dir = Path(shards_dir)
    index = read_index(shards_dir)
    kind = kind or infer_kind(index)
    shards = sorted(set(index.column("shard").to_pylist()))
    total = merge_summaries(shard_summary(shards_dir / s, kind) for s in shards)
    nbytes = sum(sum(sizes) for sizes in index.column("sizes").to_pylist())
    return {"dataset": shards_dir.name, "shards": len(shards), "bytes": nbytes, **total}
