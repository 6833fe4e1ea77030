"""`yume-data shards write|verify|stats`: build, check and summarise WebDataset shards.

ROOT is a data root (every ``shards/<dataset>/`` in it) or one dataset folder. Reports go
to ``<root>/reports/``. Verification fans shards out over a process pool (decoding is the
cost); writing is sequential by design, since shard numbering and the index are ordered.
Entry point for a cluster: ``python -m jobs.shards verify ROOT``.
"""

from __future__ import annotations

import multiprocessing
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from curation.manifest import atomic_write_json
from curation.shards import (
    INDEX_NAME,
    dataset_stats,
    merge_summaries,
    verify_dataset,
    write_shards_from_dir,
)
from schemas.actions import KEYS, MOUSE


def dataset_dirs(root: str | Path, latents: bool = False) -> tuple[list[Path], Path]:
    """The dataset folders under ``root`` (and its latent datasets if asked) and the reports folder."""
    root = Path(root)
    tops = ["shards", "latents"] if latents else ["shards"]
    if any((root / top).is_dir() for top in tops):
        dirs = [d for top in tops if (root / top).is_dir() for d in sorted((root / top).iterdir())]
        return [d for d in dirs if d.is_dir()], root / "reports"
    if (root / INDEX_NAME).exists() or any(root.glob("*.tar")):
        reports = root.parent.parent if root.parent.name == "shards" else root
        return [root], reports / "reports"
    raise FileNotFoundError(f"{root}: neither a data root with shards/ nor a shard folder")


@contextmanager
def _pool(workers: int) -> Iterator[Callable]:
    """``map`` over a spawn process pool, or the builtin map for one worker."""
    if workers <= 1:
        yield map
        return
    ctx = multiprocessing.get_context("spawn")  # decord/ffmpeg threads do not survive fork
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        yield pool.map


def _table(rows: list[list], header: list[str]) -> str:
    cells = [header, *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells)


def run_verify(
    root: str | Path, decode: str = "ends", workers: int = 1, report_path: Path | None = None
) -> dict:
    """Verify every dataset under ``root``; print a table; write the JSON report."""
    dirs, reports = dataset_dirs(root, latents=True)
    with _pool(workers) as map_fn:
        datasets = [verify_dataset(d, decode=decode, map_fn=map_fn) for d in dirs]
    report = {
        "root": str(root),
        "decode": decode,
        "ok": bool(datasets) and all(d["ok"] for d in datasets),
        "datasets": datasets,
    }
    report_path = report_path or reports / "shards_verify.json"
    atomic_write_json(report_path, report)
    rows = [
        [
            d["dataset"] if d.get("kind", "clip") == "clip" else f"{d['dataset']} ({d['kind']})",
            d["shards"],
            d["samples_indexed"],
            d["samples_checked"],
            d["failed_shards"],
            len(d["errors"]),
            "OK" if d["ok"] else "FAIL",
        ]
        for d in datasets
    ]
    header = ["dataset", "shards", "indexed", "checked", "failed_shards", "errors", "status"]
    print(_table(rows, header))
    errors = [e for d in datasets for e in d["errors"]]
    for e in errors[:20]:
        print(f"  error: {e}")
    if len(errors) > 20:
        print(f"  ... {len(errors) - 20} more errors in {report_path}")
    if not datasets:
        print(f"no datasets found under {root}")
    print(f"report: {report_path}")
    return report


def _plot(stats: dict, path: Path) -> None:
    import matplotlib.pyplot as plt
    import numpy as np

    from curation.reports import draw_heatmap, save_figure

    total = stats["total"]
    grid = np.zeros((len(KEYS), len(MOUSE)))
    for label, n in total["action_frame_counts"].items():
        k, m = label.split("|")
        grid[KEYS.index(k), MOUSE.index(m)] = n
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    draw_heatmap(
        axes[0, 0], grid, list(KEYS), list(MOUSE), "action frames (keys x mouse)", "mouse", "keys"
    )
    for ax, field, title in [
        (axes[0, 1], "source_counts", "samples per source"),
        (axes[1, 0], "fps_counts", "samples per fps"),
        (axes[1, 1], "resolution_counts", "samples per resolution (WxH)"),
    ]:
        counts = total.get(field, {})
        ax.bar(list(counts), list(counts.values()))
        ax.set_title(title)
        ax.tick_params(axis="x", rotation=30)
    tiny, generated = total["tiny_random_count"], total["generated_count"]
    note = f" - {tiny} tiny-random samples (not real data)" if tiny else ""
    note += f" - {generated} generated videos (not real footage)" if generated else ""
    fig.suptitle(f"{total['count']} samples, {total['hours']:.2f} h{note}")
    fig.tight_layout()
    save_figure(fig, path)


def run_stats(root: str | Path) -> dict:
    """Samples, hours, fps/resolution/source/action counts per dataset and in total."""
    dirs, reports = dataset_dirs(root)
    datasets = [dataset_stats(d) for d in dirs]
    total = merge_summaries(datasets)
    total["bytes"] = sum(d["bytes"] for d in datasets)
    for d in [*datasets, total]:
        d["hours"] = round(d["duration_s"] / 3600, 6)
    stats = {"root": str(root), "datasets": datasets, "total": total}
    atomic_write_json(reports / "shards_stats.json", stats)
    _plot(stats, reports / "shards_stats.png")
    rows = [
        [
            d["dataset"] if d.get("kind", "clip") == "clip" else f"{d['dataset']} ({d['kind']})",
            d["shards"],
            d["count"],
            f"{d['hours']:.3f}",
            d["tiny_random_count"],
            d["generated_count"],
        ]
        for d in datasets
    ]
    print(_table(rows, ["dataset", "shards", "samples", "hours", "tiny_random", "generated"]))
    print(f"fps: {total.get('fps_counts', {})}")
    print(f"resolution: {total.get('resolution_counts', {})}")
    print(f"sources: {total.get('source_counts', {})}")
    print(f"tiny-random samples: {total['tiny_random_count']} of {total['count']}")
    print(
        f"generated (rendered, not filmed) samples: {total['generated_count']} of {total['count']}"
    )
    print(f"report: {reports / 'shards_stats.json'} and shards_stats.png")
    return stats


def run_write(
    staging: str | Path,
    root: str | Path,
    dataset: str,
    max_samples: int = 1000,
    max_bytes: int = 2**30,
) -> dict:
    """Pack staged samples into ``<root>/shards/<dataset>/``; rejects to manifests/."""
    root = Path(root)
    summary = write_shards_from_dir(
        staging,
        root / "shards" / dataset,
        dataset,
        max_samples=max_samples,
        max_bytes=max_bytes,
        rejects_path=root / "manifests" / f"shards.{dataset}.rejects.parquet",
    )
    print(
        f"{dataset}: wrote {summary['samples_written']} samples in "
        f"{len(summary['shards_written'])} shards; {summary['skipped_existing']} already "
        f"indexed, {summary['rejected']} rejected, {summary['incomplete']} incomplete; "
        f"{summary['indexed_samples']} in the index"
    )
    for r in summary["rejects"][:20]:
        print(f"  rejected {r['clip_id']}: {r['reason']}: {r['detail']}")
    return summary


if __name__ == "__main__":
    from jobs.cli import app

    app(["shards", *sys.argv[1:]])
