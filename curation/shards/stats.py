"""Dataset statistics: per-shard summaries (from stats files) and their totals.

Why apart: `shards stats` and trainers read counts without decoding anything; a shard's
stats file, written by the writer with its kind's ``summarize``, answers, and only a shard
whose stats file is missing or older than ``generated_count`` is recounted from its json.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from curation.shards.read import index_kind, iter_shard, read_index, stats_name
from schemas.kinds import SampleKind
from schemas.sample import CLIP_SAMPLE


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


def shard_summary(path: str | Path, kind: SampleKind = CLIP_SAMPLE) -> dict:
    """``kind.summarize`` over one shard, from its stats file or else from its json members."""
    path = Path(path)
    stats_path = path.parent / stats_name(path.name)
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
    kind = kind or index_kind(index)
    shards = sorted(set(index.column("shard").to_pylist()))
    total = merge_summaries(shard_summary(shards_dir / s, kind) for s in shards)
    nbytes = sum(sum(sizes) for sizes in index.column("sizes").to_pylist())
    return {"dataset": shards_dir.name, "shards": len(shards), "bytes": nbytes, **total}
