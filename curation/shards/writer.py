"""Writing shards: one writer for every sample kind, keeping the index and stats files.

Why one writer: every dataset (clips, synthetic, event, latents) gets the same crash
safety. A shard is written under a temporary name, fsynced and renamed; only then is its
stats file written and the index rewritten (atomically) with its rows. The index is the
truth: on open, a writer deletes temporary files and shard files the index does not name
(a run killed between rename and index update), and drops index rows whose shard is gone.
So a SIGKILLed run, rerun, loses and duplicates nothing. A lock file keeps writers
exclusive. What a sample must hold and what its index row says come from its SampleKind
(schemas.kinds), so a new kind needs no change here. Tars are written directly, with fixed
headers, so the same samples always give the same bytes.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import mmap
import os
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa
from tqdm import tqdm

from curation.manifest import (
    atomic_write_json,
    honour_umask,
    reject_row,
    rejects_table,
    write_table,
)
from curation.provenance import provenance
from curation.shards.read import (
    INDEX_NAME,
    LOCK_NAME,
    META_DIR,
    migrate_layout,
    read_index,
    shard_name,
    shard_pattern,
    stats_name,
)
from schemas.common import SchemaError
from schemas.kinds import SampleKind
from schemas.sample import CLIP_SAMPLE, SHARD_INDEX_SCHEMA, validate_key, validate_member_name

log = logging.getLogger(__name__)

STAGE = "shards"
_TAR_MODE = 0o644
_BLOCK, _RECORD = tarfile.BLOCKSIZE, tarfile.RECORDSIZE
_MAP_BYTES = 1 << 20  # staged members at least this big are memory-mapped


class DuplicateKeyError(ValueError):
    """A key is already in the dataset's index or in the shard being written."""


class ShardRewriteError(RuntimeError):
    """A shard must be rewritten (a sample in it changed or went) but cannot be."""


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
        self._lock_fd = os.open(self.out_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
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
        migrate_layout(self.out_dir)
        index = read_index(self.out_dir)
        for tmp in [*self.out_dir.glob(".*.tmp"), *(self.out_dir / META_DIR).glob(".*.tmp")]:
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
        pattern = shard_pattern(self.dataset)
        used = [int(pattern.match(s).group(1)) for s in present]
        crashed = shard_name(self.dataset, max(used, default=-1) + 1)
        unindexed = []
        meta = self.out_dir / META_DIR
        for path in sorted([*self.out_dir.iterdir(), *(meta.iterdir() if meta.is_dir() else [])]):
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
    def remove_shards(self, keys: set[str], restageable: set[str]) -> list[str]:
        """Remove the shards holding any of ``keys`` (changed or gone samples) from the
        dataset, so their other samples are packed again from staging; returns their names.

        Every other sample of those shards must be in ``restageable`` (complete staged
        files), else nothing is removed and the error names what is missing. Shard files go
        before the index rows: a kill in between leaves rows naming missing shards, which
        the next open drops (``_recover``).
        """
        rows = self._index.to_pylist()
        shards = sorted({r["shard"] for r in rows if r["key"] in keys})
        if not shards:
            return []
        lost = sorted(
            r["key"]
            for r in rows
            if r["shard"] in shards and r["key"] not in keys and r["key"] not in restageable
        )
        if lost:
            raise ShardRewriteError(
                f"{self.out_dir}: {shards[0]} must be rewritten (a sample in it changed) but "
                f"{len(lost)} of its other samples ({', '.join(lost[:3])}) have no staged files "
                "to rewrite it from; restore the staging folder, or rerun with --overwrite"
            )
        for name in shards:
            (self.out_dir / name).unlink(missing_ok=True)
            (self.out_dir / stats_name(name)).unlink(missing_ok=True)
        keep = pa.array([r["shard"] not in shards for r in rows])
        self._index = write_table(
            self._index.filter(keep), self.out_dir / INDEX_NAME, SHARD_INDEX_SCHEMA,
            provenance=self._provenance,
        )  # fmt: skip
        pattern = shard_pattern(self.dataset)
        used = [int(pattern.match(s).group(1)) for s in self._index.column("shard").to_pylist()]
        self._next = max(used, default=-1) + 1  # the next open's crash rule expects this
        self.indexed_at_open = frozenset(self._index.column("key").to_pylist())
        self.done_keys = set(self.indexed_at_open)
        return shards

    def write(self, key: str, members: dict[str, bytes], staged: str | None = None) -> None:
        """Validate and append one sample (raises SchemaError or DuplicateKeyError).
        ``staged``: the signature of the staged files it came from (``staged_signature``)."""
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
                "staged": staged,
            }
        )
        self._metas.append(meta)
        self._bytes += size
        self.done_keys.add(key)

    def _open_shard(self) -> None:
        name = shard_name(self.dataset, self._next)
        fd, tmp = tempfile.mkstemp(dir=self.out_dir, prefix=f".{name}.", suffix=".tmp")
        honour_umask(fd)
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
    return reject_row(STAGE, source, reason, detail, key)  # the one rejects-row shape


def _pack(
    writer: ShardWriter,
    items: Iterable[tuple[str, str, Callable[[], dict[str, bytes]]]],
    staged: dict[str, str] | None = None,
) -> dict:
    """Write every (key, input, load) not yet indexed; bad samples become rejects rows."""
    skipped, rejects = 0, []
    staged = staged or {}
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
            writer.write(key, members, staged.get(key))
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
    kind: SampleKind = CLIP_SAMPLE,
    keys: set[str] | None = None,
) -> dict:
    """Pack every complete staged sample (of ``kind``) not yet indexed into new shards,
    sorted by key; the shards always hold what staging holds now.

    Resumable: rerun after a crash or with more staged samples and only the missing keys
    are written, into shards numbered after the existing ones. A sample restaged since it
    was packed (its staged files' sizes or mtimes differ from the index's ``staged``) and,
    when ``keys`` (the keys the producer's table holds) is given, a sample outside ``keys``
    make their shards be rewritten (``ShardWriter.remove_shards``); staged samples outside
    ``keys`` are not packed. Returns a summary dict (shards_written, samples_written,
    skipped_existing, rejected, rejects, indexed_samples, incomplete, shards_rewritten).
    Rejects (bad key, missing member, invalid json) are also written to ``rejects_path``
    when given; they are re-found on every run, so that file stays whole.
    """
    complete, incomplete = staged_samples(staging_dir)
    if keys is not None:
        complete = {k: v for k, v in complete.items() if k in keys}
    signatures = {k: staged_signature(p) for k, p in complete.items()}

    def items() -> Iterator[tuple[str, str, Callable[[], dict[str, bytes]]]]:
        for key in sorted(complete):
            paths = complete[key]
            yield key, str(paths["json"]), lambda p=paths: {e: _load(f) for e, f in p.items()}

    limits = {"max_samples": max_samples, "max_bytes": max_bytes, "kind": kind}
    with ShardWriter(shards_dir, dataset, **limits) as w:
        changed = {
            r["key"]
            for r in w._index.select(["key", "staged"]).to_pylist()
            if (keys is not None and r["key"] not in keys)
            or (r["staged"] is not None and r["key"] in signatures
                and signatures[r["key"]] != r["staged"])
        }  # fmt: skip
        rewritten = w.remove_shards(changed, set(complete))
        packed = _pack(w, items(), signatures)
    summary = _summary(w, packed, Path(rejects_path) if rejects_path else None)
    summary["incomplete"] = incomplete
    summary["shards_rewritten"] = rewritten
    return summary


def staged_signature(paths: dict[str, Path]) -> str:
    """``ext:size:mtime_ns`` of each staged member file, sorted by extension."""
    parts = []
    for ext in sorted(paths):
        st = paths[ext].stat()
        parts.append(f"{ext}:{st.st_size}:{st.st_mtime_ns}")
    return ";".join(parts)
