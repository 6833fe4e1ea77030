"""Reading a dataset folder: shard and stats names, the index, shard members, and queries.

Why apart from the writer: trainers and verify only read. Everything a trainer asks of a
dataset before it opens a tar (which shards, of which kind, which can serve task T with
at least N frames) is answered from ``index.parquet`` here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import tarfile
from collections.abc import Collection, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from schemas.common import SchemaError
from schemas.kinds import SampleKind, infer_kind
from schemas.sample import CLIP_SAMPLE, SHARD_INDEX_SCHEMA, validate_key, validate_member_name

log = logging.getLogger(__name__)

# File names inside one dataset folder (the folder itself is curation.dataroot's). The index
# and stats live in ``__meta__/`` so the folder holds only tars at its top: Ray Data skips
# paths starting with "_" or ".", and Hugging Face ``datasets`` skips "__" folders and
# hidden files, so both read the folder as WebDataset with no arguments.
META_DIR = "__meta__"
INDEX_NAME = f"{META_DIR}/index.parquet"
LOCK_NAME = ".lock"
STATS_SUFFIX = "_stats.json"
OLD_INDEX_NAME = "index.parquet"  # written at the top by yume-data before __meta__/


class ShardError(Exception):
    """A shard is unreadable or holds something a sample never should (links, paths)."""


def shard_name(dataset: str, index: int) -> str:
    return f"{dataset}-{index:06d}.tar"


def stats_name(shard: str) -> str:
    """``real-000003.tar`` -> ``__meta__/real-000003_stats.json`` (video2dataset's naming),
    relative to the dataset folder."""
    return f"{META_DIR}/{shard.removesuffix('.tar')}{STATS_SUFFIX}"


def migrate_layout(shards_dir: str | Path) -> bool:
    """Move an older folder's top-level index and stats into ``__meta__/``; True if moved.

    Called by the writer under its lock, so a folder written by an older yume-data is
    upgraded by the next job that writes to it; readers fall back to the old index.
    """
    folder = Path(shards_dir)
    old = folder / OLD_INDEX_NAME
    if not old.exists() or (folder / INDEX_NAME).exists():
        return False
    (folder / META_DIR).mkdir(exist_ok=True)
    for stats in folder.glob(f"*{STATS_SUFFIX}"):
        stats.replace(folder / META_DIR / stats.name)
    old.replace(folder / INDEX_NAME)
    log.warning("%s: moved index.parquet and stats into %s/", folder, META_DIR)
    return True


def shard_pattern(dataset: str) -> re.Pattern:
    """Matches the dataset's shard and stats file names; group 1 is the shard number."""
    return re.compile(rf"^{re.escape(dataset)}-(\d{{6}})(\.tar|{re.escape(STATS_SUFFIX)})$")


class IndexPathError(ShardError, ValueError):
    """An index entry names a shard outside the dataset folder or not of its pattern."""


# a shard file name as the writer makes it: <dataset>-<6 digits>.tar
_SHARD_NAME = re.compile(r"^(?P<dataset>[A-Za-z0-9_-]{1,200})-\d{6}\.tar$")


def shard_paths(shards_dir: str | Path, names: Collection[str]) -> list[str]:
    """Paths of the index's ``shard`` entries, each checked to be a plain file name of one
    dataset's shard pattern that stays inside ``shards_dir`` (links resolved); an index
    entry like ``../other/x.tar`` is an IndexPathError, never a tar opened elsewhere."""
    folder = Path(shards_dir)
    index = folder / INDEX_NAME
    datasets = set()
    for name in names:
        m = _SHARD_NAME.match(name) if isinstance(name, str) else None
        if m is None:
            raise IndexPathError(f"{index}: shard entry {name!r} is not a shard file name")
        datasets.add(m.group("dataset"))
    if len(datasets) > 1:
        raise IndexPathError(f"{index}: shard entries of several datasets {sorted(datasets)}")
    paths = []
    for name in sorted(names):
        path = folder / name
        if path.resolve().parent != folder.resolve():  # a link to elsewhere
            raise IndexPathError(f"{index}: shard entry {name!r} leads outside {folder}")
        paths.append(str(path))
    return paths


def index_path(shards_dir: str | Path) -> Path:
    """The index file readers read: ``__meta__/index.parquet``, or an older folder's
    top-level one while only that exists (it may not exist at all)."""
    path = Path(shards_dir) / INDEX_NAME
    if not path.exists() and (Path(shards_dir) / OLD_INDEX_NAME).exists():
        return Path(shards_dir) / OLD_INDEX_NAME
    return path


def read_index_digest(shards_dir: str | Path) -> tuple[pa.Table, str | None]:
    """The index and the sha256 of the very bytes it was parsed from (None: no index).

    Why one read: verify records the digest, and a digest taken from a second read could
    describe another index than the one checked.
    """
    path = index_path(shards_dir)
    if not path.exists():
        return SHARD_INDEX_SCHEMA.empty_table(), None
    data = path.read_bytes()
    table = pq.read_table(pa.BufferReader(data), schema=SHARD_INDEX_SCHEMA)
    return table, hashlib.sha256(data).hexdigest()


def _read_index(shards_dir: str | Path, columns: list[str] | None = None) -> pa.Table:
    path = index_path(shards_dir)
    if not path.exists():
        empty = SHARD_INDEX_SCHEMA.empty_table()
        return empty.select(columns) if columns else empty
    # The schema fills columns an older index lacks (``tasks``) with nulls.
    return pq.read_table(path, schema=SHARD_INDEX_SCHEMA, columns=columns)


def read_index(shards_dir: str | Path) -> pa.Table:
    """The dataset's index table, empty when nothing has been written yet.

    An index written before the ``tasks`` column reads with ``tasks`` null (unknown).
    """
    return _read_index(shards_dir)


def indexed_shards(shards_dir: str | Path) -> list[str]:
    """Paths of the dataset's complete shards (those the index names): what a trainer reads."""
    return shard_paths(
        shards_dir, set(_read_index(shards_dir, ["shard"]).column("shard").to_pylist())
    )


def index_kind(index: pa.Table) -> SampleKind:
    """The registered kind whose members the index rows hold (clip for an empty index)."""
    if not index.num_rows:
        return CLIP_SAMPLE
    return infer_kind(index.column("members")[0].as_py()) or CLIP_SAMPLE


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


def _offers_from_json(shard: Path, keys: set[str], members: list[str], task: str) -> bool:
    """Whether one of ``keys`` in ``shard`` offers ``task``, from its json (the old way)."""
    kind = infer_kind(members)
    if kind is None:
        return False  # not a registered kind: nothing says which tasks it offers
    for key, m in iter_shard(shard, exts=("json",)):
        if key in keys and task in (kind.index_fields(json.loads(m["json"])).get("tasks") or []):
            return True
    return False


def shards_for(shards_dir: str | Path, task: str, min_frames: int) -> list[str]:
    """Paths of the indexed shards holding a sample that offers ``task`` with at least
    ``min_frames`` frames (index ``frames``: clip frames, or latent frames for latents).

    Answered from ``index.parquet`` alone. Rows whose ``tasks`` is null (an index written
    before that column) are the exception: their shards, if long enough samples are among
    them, are scanned the old way, reading only the json members, and a warning says so;
    rewriting the dataset's index (re-sharding) removes the need.
    """
    shards_dir = Path(shards_dir)
    index = _read_index(shards_dir, ["key", "shard", "frames", "tasks", "members"])
    shard_paths(shards_dir, set(index.column("shard").to_pylist()))  # every entry, checked
    index = index.filter(pc.greater_equal(index.column("frames"), min_frames))
    tasks = index.column("tasks")
    # Each row's task list, flattened: keep the rows (parent indices) one of whose is ``task``.
    flat, parents = pc.list_flatten(tasks), pc.list_parent_indices(tasks)
    rows = pc.unique(pc.filter(parents, pc.equal(flat, task)))
    found = set(index.column("shard").take(rows).to_pylist())
    unknown = index.filter(pc.is_null(tasks))
    if unknown.num_rows:
        by_shard: dict[str, tuple[set[str], list[str]]] = {}
        for key, shard, members in zip(
            unknown.column("key").to_pylist(),
            unknown.column("shard").to_pylist(),
            unknown.column("members").to_pylist(),
            strict=True,
        ):
            by_shard.setdefault(shard, (set(), members))[0].add(key)
        todo = sorted(set(by_shard) - found)
        if todo:
            log.warning(
                "%s: %d index rows have no tasks (an index older than that column, or a "
                "kind that does not record them); reading the json members of %d shards",
                shards_dir,
                unknown.num_rows,
                len(todo),
            )
        found |= {s for s in todo if _offers_from_json(shards_dir / s, *by_shard[s], task)}
    return [str(shards_dir / s) for s in sorted(found)]
