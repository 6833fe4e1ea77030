"""Atomic file and table writing, rejects rows and config hashes.

Everything the pipeline writes goes through ``atomic_write_bytes`` (temporary name in the
same folder, fsync, rename), so a reader sees the old file or the whole new one; tables are
validated against their schema on write (``write_table``). Resumable part files are built
on these in ``curation/stages/parts.py``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from schemas.common import REJECTS_SCHEMA, conform

PROVENANCE_KEY = b"yume.provenance"


def umask_mode() -> int:
    """The mode a new file gets under the process umask (0o644 under the usual 022)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def honour_umask(fd: int) -> None:
    """Give a ``mkstemp`` file (always 0600) the mode the umask allows, so a dataset written
    by one user or job can be read by another, as any ``open()`` would have made it."""
    os.fchmod(fd, umask_mode())


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    honour_umask(fd)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def finite_json(obj: object) -> object:
    """``obj`` with every NaN/Infinity float replaced by None.

    Python writes those as ``NaN``/``Infinity``, which is not JSON: strict parsers (browsers,
    jq, other languages) refuse the whole file. One odd value must not do that to a report.
    """
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_json(v) for v in obj]
    return obj


def atomic_write_json(path: str | Path, obj: object) -> None:
    """Write ``obj`` as strict JSON (non-finite numbers become null), atomically."""
    text = json.dumps(finite_json(obj), indent=2, sort_keys=True, default=str, allow_nan=False)
    atomic_write_bytes(path, text.encode())


def write_table(
    table: pa.Table, path: str | Path, schema: pa.Schema, provenance: dict | None = None
) -> pa.Table:
    """Validate ``table`` against ``schema`` and write it atomically as parquet."""
    table = conform(table, schema)
    if provenance is not None:
        meta = dict(table.schema.metadata or {})
        meta[PROVENANCE_KEY] = json.dumps(provenance, sort_keys=True, default=str).encode()
        table = table.replace_schema_metadata(meta)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    atomic_write_bytes(path, sink.getvalue().to_pybytes())
    return table


def read_provenance(path: str | Path) -> dict:
    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta.get(PROVENANCE_KEY, b"{}"))


def reject_row(stage: str, input_: str, reason: str, detail: str, key: str | None = None) -> dict:
    """One rejects-table row: what was refused (path or id), a reason code and the detail."""
    return {"stage": stage, "input": input_, "key": key, "reason": reason, "detail": detail}


def rejects_table(rows: Iterable[dict]) -> pa.Table:
    """Build a rejects table (see ``schemas.common.REJECTS_SCHEMA``) from dict rows."""
    rows = list(rows)
    cols = {f.name: [r.get(f.name) for r in rows] for f in REJECTS_SCHEMA}
    return pa.table(cols, schema=REJECTS_SCHEMA)


def config_hash(config: dict) -> str:
    """Stable short hash of a JSON-able config, recorded with every output."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]
