"""The screening CSV: export a batch for a person's spreadsheet, and read it back strictly.

Why strict and forgiving at once: a CSV comes back from Excel, LibreOffice or Numbers
re-saved with a BOM, CRLF, semicolons, quotes and extra columns, and all of that is fine;
but a wrong key, a duplicate or a typo in a decision must be caught before anything is
recorded, each error naming the file, the row (as the spreadsheet numbers it, header = 1)
and the column. Cells a spreadsheet would run as formulas are prefixed with ``'`` on export
(a leading ``'`` too, so the round trip is exact) and restored on import.
"""

from __future__ import annotations

import csv
import io
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import av

from curation.dataroot import DataRoot, check_name
from curation.manifest import atomic_write_bytes, reject_row, rejects_table, write_table
from curation.screening.contact_sheet import contact_sheet
from curation.screening.decisions import (
    append_decisions,
    claim,
    latest_decisions,
    load_events,
    normalise_decision,
)
from schemas.common import REJECTS_SCHEMA

# The columns export writes, in order; import needs only REQUIRED, in any order.
COLUMNS: tuple[str, ...] = (
    "key", "category", "event_text", "video", "contact_sheet", "total", "screener",
    "decision", "note",
)  # fmt: skip
REQUIRED: tuple[str, ...] = ("key", "decision", "note")
_FORMULA = ("=", "+", "-", "@", "\t", "\r")
_DELIMITERS = (",", ";", "\t")


def neutralise(cell: str) -> str:
    """A cell no spreadsheet runs as a formula: ``'`` before a formula start (or a ``'``)."""
    return "'" + cell if cell.startswith((*_FORMULA, "'")) else cell


def restore(cell: str) -> str:
    """The inverse of ``neutralise`` (a typed ``'note`` stays as it is)."""
    return cell[1:] if cell.startswith("'") and cell[1:].startswith((*_FORMULA, "'")) else cell


def write_csv(path: Path, rows: list[dict]) -> None:
    """The batch CSV (UTF-8 with BOM, so spreadsheets read it as UTF-8), cells neutralised."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([neutralise(_cell(row.get(c))) for c in COLUMNS])
    atomic_write_bytes(path, out.getvalue().encode("utf-8-sig"))


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6f}"
    return str(value)


@dataclass
class ParsedCsv:
    """What one CSV holds: the decided rows, how many were left undecided, and every error."""

    path: Path
    rows: list[dict] = field(default_factory=list)  # key, decision, note, screener, source
    undecided: int = 0
    errors: list[str] = field(default_factory=list)


def _decode(path: Path, data: bytes, parsed: ParsedCsv) -> str | None:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        parsed.errors.append(f"{path.name}: line {line}: not UTF-8 (byte {e.start}); save as UTF-8")
        return None


def sniff_delimiter(text: str) -> str:
    """The delimiter that splits the header into the most known column names."""
    header = text.splitlines()[0] if text else ""

    def known(delim: str) -> int:
        names = next(csv.reader([header], delimiter=delim), [])
        return sum(n.strip().lower() in COLUMNS for n in names)

    return max(_DELIMITERS, key=known)


def read_csv(path: str | Path, known_keys: set[str], screener: str | None = None) -> ParsedCsv:
    """Parse and validate one screening CSV; ``parsed.errors`` empty means every row is good.

    The screener of a row is its ``screener`` cell, else ``screener``; an empty decision is a
    row not decided yet (skipped).
    """
    path = Path(path)
    parsed = ParsedCsv(path)
    text = _decode(path, path.read_bytes(), parsed)
    if text is None:
        return parsed
    records = list(csv.reader(io.StringIO(text, newline=""), delimiter=sniff_delimiter(text)))
    if not records:
        parsed.errors.append(f"{path.name}: row 1: empty file, no header")
        return parsed
    header = [restore(h).strip().lower() for h in records[0]]
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        parsed.errors += [f"{path.name}: row 1: missing column {c!r}" for c in missing]
        return parsed
    col = {name: header.index(name) for name in COLUMNS if name in header}
    seen: dict[str, int] = {}
    source = f"csv:{path.name}"
    for number, record in enumerate(records[1:], start=2):
        cells = {name: restore(record[i]) if i < len(record) else "" for name, i in col.items()}
        if not any(c.strip() for c in record):
            continue  # a blank line a spreadsheet left

        def error(column: str, message: str, n: int = number) -> None:
            parsed.errors.append(f"{path.name}: row {n}, column {column!r}: {message}")

        key = cells["key"].strip()
        if key not in known_keys:
            error("key", f"unknown key {key!r} (not in manifests/events.parquet)")
            continue
        if key in seen:
            error("key", f"key {key!r} is also on row {seen[key]}")
            continue
        seen[key] = number
        try:
            decision = normalise_decision(cells["decision"])
        except ValueError as e:
            error("decision", str(e))
            continue
        if decision is None:
            parsed.undecided += 1
            continue
        who = cells.get("screener", "").strip() or screener
        if not who:
            error("screener", "no screener: fill the column or pass --screener")
            continue
        note = cells["note"].strip() or None
        parsed.rows.append({"key": key, "decision": decision, "note": note, "screener": who,
                            "source": source})  # fmt: skip
    return parsed


def batch_rows(
    root: DataRoot, screener: str, batch_size: int, workers: int | None = None
) -> tuple[list[dict], list[dict]]:
    """Claim up to ``batch_size`` undecided events for ``screener`` (its own claims first, so
    a repeated export gives the same batch): their CSV rows, contact sheets made, and a
    rejects row for each video no sheet could be made of (its row stays, the cell empty)."""
    root = DataRoot.at(root)
    events = load_events(root)
    decided = latest_decisions(root)
    by_key = {e["key"]: e for e in events}
    candidates = [e["key"] for e in events if e["key"] not in decided]
    claimed = [by_key[k] for k in claim(root, screener, candidates, batch_size, None)]
    with ThreadPoolExecutor(max_workers=workers or min(8, os.cpu_count() or 1)) as pool:
        sheets = list(pool.map(lambda e: _sheet(root, e), claimed))  # PyAV and PIL drop the GIL
    rows, rejects = [], []
    for e, (sheet, problem) in zip(claimed, sheets, strict=True):
        if problem:
            rejects.append(
                reject_row("screening", e["path"], "unreadable_video", problem, e["key"])
            )
        rows.append({
            "key": e["key"], "category": e["category"], "event_text": e["event_text"],
            "video": str(root.path / e["path"]), "contact_sheet": sheet,
            "total": e["total"], "screener": screener, "decision": "", "note": "",
        })  # fmt: skip
    return rows, rejects


def _sheet(root: DataRoot, event: dict) -> tuple[str, str | None]:
    """(contact sheet path, None), or ("", why not) for a video that does not decode."""
    try:
        return str(contact_sheet(root, event)), None
    except (OSError, av.error.FFmpegError, IndexError) as err:  # IndexError: no frames
        return "", f"no contact sheet: {type(err).__name__}: {err}"


def export_batch(
    root: DataRoot, screener: str, batch_size: int, out: Path | None = None,
    workers: int | None = None,
) -> dict:  # fmt: skip
    """Write one screener's batch CSV (default ``<root>/screening/<screener>-<n>.csv``, a new
    name each time, so a file someone is still editing is never overwritten). Contact sheets
    are made by ``workers`` threads (default: the CPUs, at most 8)."""
    root = DataRoot.at(root)
    check_name(screener, "screener")
    rows, rejects = batch_rows(root, screener, batch_size, workers)
    write_table(rejects_table(rejects), root.rejects("screening-export"), REJECTS_SCHEMA)
    path = Path(out) if out else _next_name(root.screening, screener)
    if rows:
        write_csv(path, rows)
    return {"csv": str(path) if rows else None, "rows": len(rows), "screener": screener,
            "rejected": len(rejects)}  # fmt: skip


def _next_name(folder: Path, screener: str) -> Path:
    n = 1
    while (folder / f"{screener}-{n:03d}.csv").exists():
        n += 1
    return folder / f"{screener}-{n:03d}.csv"


def import_csvs(root: DataRoot, paths: list[Path], screener: str | None = None) -> list[dict]:
    """Validate each CSV and record the decisions of every file without errors.

    A decision equal to the key's latest (same decision, note and screener) is not recorded
    again, so re-importing a file changes nothing. Returns one summary per file.
    """
    root = DataRoot.at(root)
    known = {e["key"] for e in load_events(root)}
    results = []
    for path in paths:
        parsed = read_csv(path, known, screener)
        recorded = []
        if not parsed.errors:
            latest = latest_decisions(root)
            fresh = [r for r in parsed.rows if _changed(latest.get(r["key"]), r)]
            recorded = append_decisions(root, fresh)
        results.append({
            "csv": str(path), "decided": len(parsed.rows), "undecided": parsed.undecided,
            "recorded": len(recorded), "unchanged": len(parsed.rows) - len(recorded)
            if not parsed.errors else 0, "errors": parsed.errors,
        })  # fmt: skip
    return results


def _changed(latest: dict | None, row: dict) -> bool:
    if latest is None:
        return True
    return any(latest[f] != row[f] for f in ("decision", "note", "screener"))
