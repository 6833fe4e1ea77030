"""The screening decisions manifest and the claims that keep screeners' batches apart.

Why one module: the CSV round trip and the web page both record decisions; they share one
append-only table (``manifests/screening_decisions.parquet``, latest ``seq`` per key wins)
and one lock (``<root>/screening/.lock``), so two writers never lose each other's rows.
Claims (``<root>/screening/claims.parquet``) hand each screener keys nobody else holds.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from curation.dataroot import DataRoot
from curation.manifest import write_table

DECISIONS: tuple[str, ...] = ("keep", "reject", "unsure")
CLEARED = "cleared"  # written only by undo in the web page: the key counts as undecided again

_TS = pa.timestamp("us", tz="UTC")

DECISIONS_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("decision", pa.string(), nullable=False),  # one of DECISIONS or CLEARED
        pa.field("note", pa.string()),
        pa.field("screener", pa.string(), nullable=False),
        pa.field("decided_at", _TS, nullable=False),
        pa.field("source", pa.string(), nullable=False),  # "csv:<file name>" or "web"
        pa.field("seq", pa.int64(), nullable=False),  # 1, 2, ... in append order
    ]
)

CLAIMS_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("screener", pa.string(), nullable=False),
        pa.field("claimed_at", _TS, nullable=False),
        pa.field("expires_at", _TS),  # null: held until decided or released
    ]
)

DECISIONS_TABLE = "screening_decisions"
EVENTS_TABLE = "events"


def normalise_decision(text: str) -> str | None:
    """'  Keep ' -> 'keep'; '' or whitespace -> None (undecided row); anything else -> ValueError."""
    value = (text or "").strip().lower()
    if not value:
        return None
    if value not in DECISIONS:
        raise ValueError(f"decision {text!r} is not one of {', '.join(DECISIONS)} (or empty)")
    return value


def decisions_path(root: DataRoot) -> Path:
    return DataRoot.at(root).manifest(DECISIONS_TABLE)


def claims_path(root: DataRoot) -> Path:
    return DataRoot.at(root).screening / "claims.parquet"


@contextmanager
def locked(root: DataRoot) -> Iterator[None]:
    """Exclusive flock on ``<root>/screening/.lock``; every writer of decisions or claims holds
    it (not re-entrant: do not nest)."""
    folder = DataRoot.at(root).screening
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the flock


def _read(path: Path, schema: pa.Schema) -> list[dict]:
    if not path.exists():
        return []
    return pq.read_table(path, schema=schema).to_pylist()


def _now() -> datetime:
    return datetime.now(UTC)


def read_decisions(root: DataRoot) -> list[dict]:
    """Every recorded decision row, in ``seq`` order ([] when none)."""
    return sorted(_read(decisions_path(root), DECISIONS_SCHEMA), key=lambda r: r["seq"])


def latest_decisions(root: DataRoot) -> dict[str, dict]:
    """key -> its latest row (highest seq); keys whose latest is CLEARED are omitted."""
    latest: dict[str, dict] = {}
    for row in read_decisions(root):
        latest[row["key"]] = row
    return {k: r for k, r in latest.items() if r["decision"] != CLEARED}


def append_decisions(root: DataRoot, rows: list[dict]) -> list[dict]:
    """Record ``rows`` (key, decision, note, screener, source) with decided_at and seq, and
    release those keys' claims; return the rows as recorded."""
    for row in rows:
        if row["decision"] not in (*DECISIONS, CLEARED):
            raise ValueError(f"decision {row['decision']!r} is not one of {DECISIONS + (CLEARED,)}")
    with locked(root):
        old = read_decisions(root)
        seq = max((r["seq"] for r in old), default=0)
        now = _now()
        recorded = []
        for row in rows:
            seq += 1
            recorded.append({
                "key": row["key"], "decision": row["decision"], "note": row.get("note"),
                "screener": row["screener"], "decided_at": now, "source": row["source"],
                "seq": seq,
            })  # fmt: skip
        if recorded:
            table = pa.Table.from_pylist(old + recorded, schema=DECISIONS_SCHEMA)
            write_table(table, decisions_path(root), DECISIONS_SCHEMA)
            decided = {r["key"] for r in recorded}
            _write_claims(root, [c for c in _all_claims(root) if c["key"] not in decided])
    return recorded


def _all_claims(root: DataRoot) -> list[dict]:
    return _read(claims_path(root), CLAIMS_SCHEMA)


def _write_claims(root: DataRoot, claims: list[dict]) -> None:
    table = pa.Table.from_pylist(claims, schema=CLAIMS_SCHEMA)
    write_table(table, claims_path(root), CLAIMS_SCHEMA)


def _unexpired(claims: list[dict], now: datetime) -> list[dict]:
    return [c for c in claims if c["expires_at"] is None or c["expires_at"] > now]


def active_claims(root: DataRoot) -> dict[str, dict]:
    """key -> claim row, unexpired claims only."""
    return {c["key"]: c for c in _unexpired(_all_claims(root), _now())}


def claim(
    root: DataRoot, screener: str, candidates: list[str], n: int, lease_s: float | None
) -> list[str]:
    """Claim up to ``n`` of ``candidates`` for ``screener``: its own unexpired claims among
    them first, then undecided keys nobody else holds. Returns the keys in candidate order.

    ``lease_s`` None: held until decided or released (CSV batches); else it expires.
    """
    with locked(root):
        now = _now()
        live = _unexpired(_all_claims(root), now)
        held = {c["key"]: c for c in live}
        decided = latest_decisions(root)
        mine = [k for k in candidates if held.get(k, {}).get("screener") == screener][:n]
        chosen = set(mine)
        for key in candidates:
            if len(chosen) >= n:
                break
            if key not in held and key not in decided and key not in chosen:
                chosen.add(key)
        expires = None if lease_s is None else now + timedelta(seconds=lease_s)
        kept = [c for c in live if c["key"] not in chosen]
        new = [{"key": k, "screener": screener, "claimed_at": now, "expires_at": expires}
               for k in sorted(chosen)]  # fmt: skip
        _write_claims(root, kept + new)
    return [k for k in dict.fromkeys(candidates) if k in chosen]


def release(root: DataRoot, screener: str, keys: list[str] | None = None) -> int:
    """Drop ``screener``'s claims on ``keys`` (all its claims when None); return how many."""
    with locked(root):
        claims = _all_claims(root)
        drop = set(keys) if keys is not None else None

        def dropped(c: dict) -> bool:
            return c["screener"] == screener and (drop is None or c["key"] in drop)

        kept = [c for c in claims if not dropped(c)]
        if len(kept) != len(claims):
            _write_claims(root, kept)
    return len(claims) - len(kept)


def load_events(root: DataRoot) -> list[dict]:
    """The rows of ``manifests/events.parquet`` (the events stage's videos), sorted by key.

    Raises FileNotFoundError (a user's mistake: run ``yume-data events`` first) when absent.
    """
    path = DataRoot.at(root).manifest(EVENTS_TABLE)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `yume-data events` first")
    return sorted(pq.read_table(path).to_pylist(), key=lambda r: r["key"])
