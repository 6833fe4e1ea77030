"""Dataset statistics: per-shard summaries (from stats files) and their totals.

Why apart: `shards stats` and trainers read counts without decoding anything; a shard's
stats file, written by the writer with its kind's ``summarize``, answers. A stats file is
first checked against the index (sample count, keys, frames, the shard's size, ...), so
`shards stats` never reports numbers its shards do not hold: a shard whose stats file is
missing, older than ``generated_count``, or disagrees with the index is recounted from its
json members, and the summary says which and why (``recounted``).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from curation.shards.read import (
    ShardError,
    index_kind,
    iter_shard,
    read_index,
    shard_paths,
    stats_name,
)
from schemas.kinds import SampleKind
from schemas.sample import CLIP_SAMPLE

log = logging.getLogger(__name__)

_MERGED = ("count", "frames", "duration_s", "tiny_random_count", "generated_count")


def merge_summaries(parts: Iterable[dict]) -> dict:
    """Add up summarize_metas results (per-shard stats) into one."""
    total: dict = {k: 0.0 if k == "duration_s" else 0 for k in _MERGED}
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


def _from_index(path: Path, rows: list[dict]) -> dict:
    """What the index (and the tar's size) says a shard's stats file must hold."""
    want = {
        "count": len(rows),
        "keys": sorted(r["key"] for r in rows),
        "bytes": path.stat().st_size,
        "frames": sum(r["frames"] for r in rows),
        "tiny_random_count": sum(bool(r["tiny_random"]) for r in rows),
        "source_counts": dict(sorted(Counter(r["source"] for r in rows).items())),
    }
    if all(r["tasks"] is not None for r in rows):
        want["task_counts"] = dict(sorted(Counter(t for r in rows for t in r["tasks"]).items()))
    return want


def stale_reason(stats: object, path: str | Path, rows: list[dict]) -> str | None:
    """Why a shard's stats file (parsed) cannot be reported for the shard at ``path``
    whose index rows are ``rows``; None when it agrees with them.

    Fields a kind's stats do not have (source_counts, task_counts) are not required;
    ``duration_s`` may differ by the rounding of the index's float32 fps.
    """
    path = Path(path)
    if not isinstance(stats, dict):
        return "not a JSON object"
    missing = [k for k in _MERGED if k not in stats]
    if missing:
        return f"lacks {', '.join(missing)} (an older version wrote it)"
    want = _from_index(path, rows)
    for field, value in want.items():
        if field not in stats:
            if field in ("source_counts", "task_counts"):
                continue
            return f"lacks {field}"
        got = sorted(stats[field]) if field == "keys" else stats[field]
        if got != value:
            shown = f"{len(got)} keys" if field == "keys" else repr(got)
            told = f"{len(value)} other keys" if field == "keys" else repr(value)
            return f"{field} is {shown}, the index says {told}"
    duration = sum(r["frames"] / r["fps"] for r in rows)
    if abs(stats["duration_s"] - duration) > 0.001 + 1e-6 * duration:
        return f"duration_s is {stats['duration_s']}, the index says {round(duration, 3)}"
    return None


def _summary(path: Path, kind: SampleKind, rows: list[dict] | None) -> tuple[dict, str | None]:
    """The shard's summary and, when it was recounted, why (None: the stats file said it)."""
    if not path.exists():
        raise ShardError(f"{path.name}: named by the index but missing (run shards verify)")
    stats_path = path.parent / stats_name(path.name)
    if not stats_path.exists():
        reason = "no stats file"
    else:
        try:
            stats = json.loads(stats_path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            stats, reason = None, f"does not read: {e}"
        else:
            reason = stale_reason(stats, path, rows) if rows is not None else None
            if reason is None and not (isinstance(stats, dict) and "generated_count" in stats):
                reason = "lacks generated_count (an older version wrote it)"
        if reason is None:
            return stats, None
    counted = kind.summarize(json.loads(m["json"]) for _, m in iter_shard(path, exts=("json",)))
    return counted, reason


def shard_summary(
    path: str | Path, kind: SampleKind = CLIP_SAMPLE, rows: list[dict] | None = None
) -> dict:
    """``kind.summarize`` over one shard, from its stats file or else from its json members.

    ``rows``: the shard's index rows; when given, a stats file that disagrees with them is
    not used (the shard is recounted, and a warning says why).
    """
    summary, reason = _summary(Path(path), kind, rows)
    if reason is not None:
        log.warning("%s: stats file not used (%s); recounted from the shard", path, reason)
    return summary


def dataset_stats(shards_dir: str | Path, kind: SampleKind | None = None) -> dict:
    """Totals of one dataset folder over the shards its index names (``kind`` as in
    verify_dataset). ``recounted`` lists the shards counted from their json members instead
    of their stats file, each with the reason."""
    shards_dir = Path(shards_dir)
    index = read_index(shards_dir)
    kind = kind or index_kind(index)
    by_shard: dict[str, list[dict]] = {}
    for r in index.to_pylist():
        by_shard.setdefault(r["shard"], []).append(r)
    shard_paths(shards_dir, set(by_shard))  # every entry a shard of this folder (IndexPathError)
    parts, recounted = [], []
    for shard in sorted(by_shard):
        summary, reason = _summary(shards_dir / shard, kind, by_shard[shard])
        parts.append(summary)
        if reason is not None:
            log.warning("%s/%s: stats file not used (%s); recounted", shards_dir, shard, reason)
            recounted.append(f"{shard}: {reason}")
    total = merge_summaries(parts)
    nbytes = sum(sum(sizes) for sizes in index.column("sizes").to_pylist())
    return {
        "dataset": shards_dir.name,
        "shards": len(by_shard),
        "bytes": nbytes,
        **total,
        "recounted": recounted,
    }
