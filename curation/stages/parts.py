"""Part files: how a running stage records finished work so a killed run resumes.

Each processed batch is written under ``manifests/<stage>.parts/`` as one part per output
table (``<table>/<part>.parquet``) and, last, its status part (``status/<part>.parquet``:
one row per item, done or rejected, with the config hash and run number). A batch counts
only once its status part exists, so a kill at any moment loses at most the batches in
flight, and rows of a batch that never committed are ignored and rewritten.

The one resume rule, for every stage: an item whose key has a committed status under the
same config is not processed again (``retry_rejected`` runs rejected ones again, and the
newest status of an item wins). Each status row records the item's version (what it was
made from: its input file's size and mtime, plus a digest of the upstream records or file
row it used); an item whose version changed is processed again.

A part's table rows count while one of its items still has its newest status there. To
redo or drop an item, its batch-mates are redone too (``stale_batches``), so a superseded
part never contributes rows: no stage needs to say which table column holds its key.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from curation.manifest import write_table
from curation.stages.base import Outcome
from schemas.common import conform

STATUS = "status"

STATUS_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("input", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),  # done | rejected | dropped
        pa.field("reason", pa.string()),
        pa.field("detail", pa.string()),
        pa.field("config_hash", pa.string(), nullable=False),
        pa.field("run", pa.int32(), nullable=False),  # 1 for the first run on this root
        pa.field("part", pa.string(), nullable=False),
        # what the item was made from (item_version); null when that is unknown: an input
        # naming no local file and no upstream fields, or a part written before this column
        pa.field("input_version", pa.string()),
    ]
)


def input_version(text: str) -> str | None:
    """``size:mtime_ns`` of the local file an item's input names; None when it names none
    (a CSV row ``file:row``, a URI). Why: a rerun can tell an input edited since."""
    try:
        st = os.stat(text)
    except (OSError, ValueError):
        return None
    return f"{st.st_size}:{st.st_mtime_ns}" if stat.S_ISREG(st.st_mode) else None


def item_version(item: dict, fields: Iterable[str] = ()) -> str | None:
    """What an item was made from: ``input_version`` of its input, plus (when the stage
    names ``fields``) a digest of those item fields, the upstream records or the file row
    the item carries; a field named ``files`` (paths) contributes each file's version. Why:
    a rerun redoes an item whose input, upstream rows, CSV row or source file changed, and
    only that item."""
    version = input_version(item["input"])
    fields = tuple(fields)
    if not fields:
        return version
    used = {f: item.get(f) for f in fields}
    if "files" in used:
        used["files"] = {str(p): input_version(str(p)) for p in used["files"] or []}
    text = json.dumps(used, sort_keys=True, default=str)
    return f"{version or '-'}#{hashlib.sha256(text.encode()).hexdigest()[:16]}"


# what part_name makes: a status row naming anything else is not ours (a path, an edit)
PART_RE = re.compile(r"^part-\d{4,}-[0-9a-f]{16}$")


class PartRecordError(ValueError):
    """A committed status row names a part that is not a part file name of this folder."""


def part_name(items: Iterable[tuple[str, str]], run: int) -> str:
    """A deterministic part name for a batch's (key, input) pairs in one run."""
    text = "\n".join(sorted(f"{k}\t{i}" for k, i in items))
    return f"part-{run:04d}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"


def write_part(
    parts_dir: Path,
    name: str,
    outcomes: list[Outcome],
    tables: dict[str, pa.Table],
    schemas: dict[str, pa.Schema],
    config_hash: str,
    run: int,
    versions: dict[str, str | None] | None = None,
) -> None:
    """Write a batch's table parts, then (the commit) its status part, each atomically.
    ``versions``: each item's version by key, as discovered (item_version)."""
    for table, schema in schemas.items():
        rows = tables.get(table)
        if rows is None:
            rows = schema.empty_table()
        elif not isinstance(rows, pa.Table):
            rows = pa.Table.from_pylist(list(rows), schema=schema)
        write_table(rows, parts_dir / table / f"{name}.parquet", schema)
    status = pa.Table.from_pylist(
        [
            {
                "key": o.key,
                "input": o.input,
                "status": o.status,
                "reason": o.reason,
                "detail": o.detail,
                "config_hash": config_hash,
                "run": run,
                "part": name,
                "input_version": (versions or {}).get(o.key),
            }
            for o in outcomes
        ],
        schema=STATUS_SCHEMA,
    )
    write_table(status, parts_dir / STATUS / f"{name}.parquet", STATUS_SCHEMA)


def _read_dir(folder: Path, schema: pa.Schema) -> pa.Table:
    files = sorted(folder.glob("part-*.parquet")) if folder.is_dir() else []
    if not files:
        return schema.empty_table()
    return pa.concat_tables([conform(_with_nullable(pq.read_table(f), schema), schema)
                             for f in files])  # fmt: skip


def _with_nullable(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with the nullable columns of ``schema`` it lacks added as nulls (parts
    written by an older version)."""
    for f in schema:
        if f.nullable and f.name not in table.column_names:
            table = table.append_column(f.name, pa.nulls(table.num_rows, f.type))
    return table


def read_status(parts_dir: Path) -> pa.Table:
    """The newest committed status of every (key, input), sorted by key then input."""
    table = _read_dir(parts_dir / STATUS, STATUS_SCHEMA)
    if table.num_rows == 0:
        return table
    bad = sorted({p for p in table.column("part").to_pylist() if not PART_RE.match(p)})
    if bad:
        raise PartRecordError(
            f"{parts_dir / STATUS}: status rows name parts {bad[:3]} that are not part file "
            "names; rerun with --overwrite to start over"
        )
    rows = table.to_pylist()
    latest: dict[tuple[str, str], dict] = {}
    for r in sorted(rows, key=lambda r: (r["run"], r["part"])):
        latest[(r["key"], r["input"])] = r
    ordered = [latest[k] for k in sorted(latest)]
    return pa.Table.from_pylist(ordered, schema=STATUS_SCHEMA)


def stale_batches(status: pa.Table, keys: set[str]) -> set[str]:
    """The keys that must be redone with ``keys``: every item whose newest status shares a
    part with one of them, so that part ends with no live item and none of its rows count."""
    parts = {r["part"] for r in status.to_pylist() if r["key"] in keys}
    return {r["key"] for r in status.to_pylist() if r["part"] in parts} | keys


def read_table_parts(parts_dir: Path, table: str, schema: pa.Schema, parts: set[str]) -> pa.Table:
    """Rows of ``table`` from committed ``parts`` only (uncommitted batches are ignored)."""
    folder = parts_dir / table
    bad = sorted(p for p in parts if not PART_RE.match(p))
    if bad:
        raise PartRecordError(f"{folder}: asked for parts {bad[:3]}, not part file names")
    files = [folder / f"{p}.parquet" for p in sorted(parts)]
    found = [f for f in files if f.exists()]
    if not found:
        return schema.empty_table()
    return pa.concat_tables([conform(pq.read_table(f), schema) for f in found])


def remove_uncommitted(parts_dir: Path, tables: Iterable[str]) -> int:
    """Delete table parts with no committed status (left by a killed run); how many."""
    committed = set(_read_dir(parts_dir / STATUS, STATUS_SCHEMA).column("part").to_pylist())
    removed = 0
    for table in tables:
        folder = parts_dir / table
        for f in folder.glob("part-*.parquet") if folder.is_dir() else []:
            if f.stem not in committed:
                f.unlink()
                removed += 1
    return removed
