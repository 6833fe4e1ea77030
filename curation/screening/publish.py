"""Publishing screened event videos: the kept ones become ``shards/event/``.

Why a rebuild, not an append: the shard writer only appends, but a person may later reject a
kept video or edit its note, and the sample must then leave (or change in) the shards. So
when the kept set or a kept sample's decision changed, the whole dataset is written anew
through the one shard writer into a folder beside it (under ``<root>/screening/``, the same
file system) and swapped in with one atomic rename exchange: a reader sees the old folder
or the new one, never a half-written one. A fingerprint of what was published makes a
repeat a no-op.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from curation.dataroot import DataRoot
from curation.manifest import atomic_write_json, reject_row, rejects_table, write_table
from curation.screening.decisions import latest_decisions, load_events, locked
from curation.shards import read_index, write_shards
from curation.stages.events import EVENT_DATASET, EVENT_GENERATED

DATASET, STAGING = EVENT_DATASET, EVENT_GENERATED
_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


def _published_path(root: DataRoot) -> Path:
    return root.screening / "published.json"


def _exchange(a: Path, b: Path) -> None:
    """Swap two folders atomically (renameat2 RENAME_EXCHANGE, Linux >= 3.15)."""
    libc = ctypes.CDLL(None, use_errno=True)
    rc = libc.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"cannot swap {a} and {b}: {os.strerror(err)}")


def _swap_in(new: Path, target: Path) -> None:
    """Put folder ``new`` at ``target`` in one step; the old folder is deleted after."""
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        new.rename(target)
        return
    try:
        _exchange(new, target)
    except (AttributeError, OSError) as e:  # no renameat2 (not Linux, or an old kernel/fs)
        if isinstance(e, OSError) and e.errno not in (errno.EINVAL, errno.ENOSYS):
            raise
        old = new.with_name(new.name + ".old")
        target.rename(old)  # a moment without the folder, never a half-written one
        new.rename(target)
        new = old
    shutil.rmtree(new)


def _kept(root: DataRoot) -> dict[str, dict]:
    """The events whose latest decision is keep, with that decision."""
    latest = latest_decisions(root)
    events = {e["key"]: e for e in load_events(root)}
    return {k: {**events[k], "decision": latest[k]} for k in sorted(events)
            if k in latest and latest[k]["decision"] == "keep"}  # fmt: skip


def _fingerprint(root: DataRoot, kept: dict[str, dict]) -> str:
    """What the published dataset depends on: each kept key's screener, note and staged files."""
    staging = root.staging(STAGING)
    parts = []
    for key, e in kept.items():
        stamps = [(ext, p.stat().st_mtime_ns, p.stat().st_size) if p.exists() else (ext, None)
                  for ext in ("json", "mp4", "txt") for p in [staging / f"{key}.{ext}"]]  # fmt: skip
        parts.append([key, e["decision"]["screener"], e["decision"]["note"], stamps])
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def _samples(root: DataRoot, kept: dict[str, dict], rejects: list[dict]):
    """(key, members) of every kept staged sample, its json's ``screening`` set."""
    staging = root.staging(STAGING)
    for key, e in kept.items():
        paths = {ext: staging / f"{key}.{ext}" for ext in ("json", "mp4", "txt")}
        try:
            meta = json.loads(paths["json"].read_bytes())
            members = {ext: p.read_bytes() for ext, p in paths.items() if ext != "json"}
        except (OSError, json.JSONDecodeError) as err:
            detail = f"{type(err).__name__}: {err}"
            rejects.append(reject_row("screening", str(paths["json"]), "unreadable", detail, key))
            continue
        d = e["decision"]
        meta["screening"] = {"decision": "accepted", "reviewer": d["screener"], "note": d["note"]}
        members["json"] = json.dumps(meta, sort_keys=True).encode()
        yield key, members


def write_event_shards(root: DataRoot, max_samples: int = 1000) -> dict:
    """Make ``shards/event/`` hold exactly the kept videos; rebuild only when they changed.

    Returns a summary: kept, rebuilt (bool), samples (indexed), shards, rejected (staged
    samples that could not be packed; also in ``manifests/shards-event.rejects.parquet``).
    """
    root = DataRoot.at(root)
    target = root.shards(DATASET)
    with locked(root):
        kept = _kept(root)
        fingerprint = _fingerprint(root, kept)
        published = _published_path(root)
        before = json.loads(published.read_text()) if published.exists() else {}
        if before.get("fingerprint") == fingerprint and _keys(target) == before.get("keys"):
            return {"kept": len(kept), "rebuilt": False, **_contents(target),
                    "rejected": before.get("rejected", 0)}  # fmt: skip
        for stale in root.screening.glob(".publish-*"):  # left by a killed rebuild
            shutil.rmtree(stale, ignore_errors=True)
        work = Path(tempfile.mkdtemp(prefix=".publish-", dir=root.screening))
        try:
            rejects: list[dict] = []
            new = work / DATASET
            summary = write_shards(_samples(root, kept, rejects), new, DATASET,
                                   max_samples=max_samples)  # fmt: skip
            rejects += summary["rejects"]
            if summary["indexed_samples"]:
                _swap_in(new, target)
            elif target.exists():
                target.rename(work / "removed")  # nothing kept: the dataset goes, in one step
        finally:
            shutil.rmtree(work, ignore_errors=True)
        write_table(rejects_table(rejects), root.rejects(f"shards-{DATASET}"),
                    rejects_table([]).schema)  # fmt: skip
        atomic_write_json(published, {"fingerprint": fingerprint, "keys": _keys(target),
                                      "rejected": len(rejects)})  # fmt: skip
    return {"kept": len(kept), "rebuilt": True, **_contents(target), "rejected": len(rejects)}


def _keys(folder: Path) -> list[str]:
    return sorted(read_index(folder).column("key").to_pylist()) if folder.is_dir() else []


def _contents(folder: Path) -> dict:
    """How many samples and shards the published dataset folder holds."""
    if not folder.is_dir():
        return {"samples": 0, "shards": 0}
    index = read_index(folder)
    return {"samples": index.num_rows, "shards": len(set(index.column("shard").to_pylist()))}
