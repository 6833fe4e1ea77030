"""`yume-data shards write|verify|stats`: build, check and summarise WebDataset shards.

ROOT is a data root (every dataset folder in it, see curation.dataroot) or one dataset
folder; reports go to the data root's reports folder. Verification fans shards out over a
process pool (decoding is the cost); writing is sequential by design, since shard numbering
and the index are ordered.
Entry point for a cluster: ``python -m jobs.shards verify --root ROOT``.
"""

from __future__ import annotations

import json
import multiprocessing
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import typer

from curation.dataroot import DataRoot
from curation.manifest import atomic_write_json
from curation.shards import (
    INDEX_NAME,
    STAGE,
    ShardError,
    check_decode_mode,
    dataset_stats,
    merge_summaries,
    verify_dataset,
    write_shards_from_dir,
)
from curation.shards.verify import changes_since
from schemas.actions import KEYS, MOUSE


def dataset_dirs(root: str | Path, latents: bool = False) -> tuple[list[Path], Path]:
    """The dataset folders under ``root`` (and its latent datasets if asked) and the reports
    folder; ``root`` may also be one dataset folder (reports then go to its data root's)."""
    dirs, data = _datasets(root, latents)
    return dirs, data.reports


def _datasets(root: str | Path, latents: bool) -> tuple[list[Path], DataRoot]:
    """dataset_dirs, with the data root that gets the reports."""
    data = DataRoot.at(root)
    tops = [data.shards_dir, data.latents_dir] if latents else [data.shards_dir]
    if any(top.is_dir() for top in tops):
        return data.datasets(latents=latents), data
    folder = data.path
    if (folder / INDEX_NAME).exists() or any(folder.glob("*.tar")):
        owner = DataRoot.of_dataset(folder)
        return [folder], owner[0] if owner else data
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


class ReportError(ValueError):
    """The report given to compare with is unreadable, not a verify report, or in the way."""


def load_verify_report(path: Path) -> dict:
    """A report written by ``shards verify`` (ReportError naming what is wrong with it)."""
    try:
        report = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ReportError(f"{path}: not a readable verify report ({type(e).__name__}: {e})") from e
    if not isinstance(report, dict) or not isinstance(report.get("datasets"), list):
        raise ReportError(f"{path}: not a shards verify report (no datasets list)")
    if any("index_sha256" not in d for d in report["datasets"]):
        raise ReportError(
            f"{path}: written before verify recorded index digests; run shards verify "
            "without --against to make a report to compare with later"
        )
    return report


def run_verify(
    root: str | Path,
    decode: str = "ends",
    workers: int = 1,
    report_path: Path | None = None,
    against: Path | None = None,
) -> dict:
    """Verify every dataset under ``root``; print a table; write the JSON report.

    The report records each dataset's ``index_sha256`` and ``shard_bytes``. ``against``: a
    report saved earlier; any dataset, index or shard file that changed since then is named
    in ``changed`` and fails the run (an edit of shards and index together passes the
    other checks). Its report then goes to ``shards_verify_against.json`` by default, so
    the saved one is never overwritten.
    """
    saved = load_verify_report(against) if against is not None else None
    dirs, data = _datasets(root, latents=True)
    report_path = report_path or data.report(
        f"{STAGE}_verify" if against is None else f"{STAGE}_verify_against"
    )
    if against is not None and Path(report_path).resolve() == Path(against).resolve():
        raise ReportError(f"{against}: --report would overwrite it; give another --report")
    with _pool(workers) as map_fn:
        datasets = [verify_dataset(d, decode=decode, map_fn=map_fn) for d in dirs]
    report = {
        "root": str(root),
        "decode": decode,
        "ok": bool(datasets) and all(d["ok"] for d in datasets),
        "datasets": datasets,
    }
    if saved is not None:
        changed = changes_since(saved, report)
        report.update(against=str(against), changed=changed, ok=report["ok"] and not changed)
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
    if saved is not None:
        for c in report["changed"][:20]:
            print(f"  changed since {against}: {c}")
        if not report["changed"]:
            print(f"no index or shard file changed since {against}")
    print(f"report: {report_path}")
    return report


def _plot(stats: dict, path: Path) -> None:
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    from curation.reports import draw_heatmap, save_figure

    total = stats["total"]
    grid = np.zeros((len(KEYS), len(MOUSE)))
    for label, n in total["action_frame_counts"].items():
        k, m = label.split("|")
        grid[KEYS.index(k), MOUSE.index(m)] = n
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    draw_heatmap(
        axes[0, 0], grid, list(KEYS), list(MOUSE), "action frames (keys x mouse)", "mouse",
        "keys", unit="output frames (at the samples' fps)",
    )  # fmt: skip
    for ax, field, title in [
        (axes[0, 1], "source_counts", "samples per source"),
        (axes[1, 0], "fps_counts", "samples per fps"),
        (axes[1, 1], "resolution_counts", "samples per resolution (WxH)"),
    ]:
        counts = total.get(field, {})
        bars = ax.bar(list(counts), list(counts.values()), color="#3b7dd8")
        ax.bar_label(bars, fontsize=8)
        ax.set(title=title, ylabel="samples")
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(axis="x", rotation=30)
    tiny, generated = total["tiny_random_count"], total["generated_count"]
    note = f" - {tiny} tiny-random samples (not real data)" if tiny else ""
    note += f" - {generated} generated videos (not real footage)" if generated else ""
    fig.suptitle(f"{total['count']} samples, {total['hours']:.2f} h{note}")
    fig.tight_layout()
    save_figure(fig, path)


def run_stats(root: str | Path) -> dict:
    """Samples, hours, fps/resolution/source/action counts per dataset and in total."""
    dirs, data = _datasets(root, latents=False)
    datasets = [dataset_stats(d) for d in dirs]
    total = merge_summaries(datasets)
    total["bytes"] = sum(d["bytes"] for d in datasets)
    total["recounted"] = [f"{d['dataset']}/{r}" for d in datasets for r in d["recounted"]]
    for d in [*datasets, total]:
        d["hours"] = round(d["duration_s"] / 3600, 6)
    stats = {"root": str(root), "datasets": datasets, "total": total}
    report_path, plot_path = data.report(f"{STAGE}_stats"), data.plot(STAGE, "stats")
    atomic_write_json(report_path, stats)
    _plot(stats, plot_path)
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
    for r in total["recounted"]:
        print(f"stats file not used, recounted from the shard: {r}")
    print(f"report: {report_path} and {plot_path.name}")
    return stats


def run_write(
    staging: str | Path,
    root: str | Path,
    dataset: str,
    max_samples: int = 1000,
    max_bytes: int = 2**30,
) -> dict:
    """Pack staged samples into the root's shard folder of ``dataset``; rejects to its
    ``shards-<dataset>`` rejects table."""
    data = DataRoot.at(root)
    summary = write_shards_from_dir(
        staging,
        data.shards(dataset),
        dataset,
        max_samples=max_samples,
        max_bytes=max_bytes,
        rejects_path=data.rejects(f"{STAGE}-{dataset}"),
    )
    print(
        f"{dataset}: wrote {summary['samples_written']} samples in "
        f"{len(summary['shards_written'])} shards; {summary['skipped_existing']} already "
        f"indexed, {summary['rejected']} rejected, {summary['incomplete']} incomplete; "
        f"{summary['indexed_samples']} in the index"
    )
    for r in summary["rejects"][:20]:
        print(f"  rejected {r['key']}: {r['reason']}: {r['detail']}")
    return summary


# ---- the command line ------------------------------------------------------------------------
app = typer.Typer(
    help="WebDataset shards (shards/<dataset>/<dataset>-%06d.tar + __meta__/index.parquet): "
    "write staged samples, verify them against their index and schema, summarise.",
    no_args_is_help=True,
)


@app.command("write")
def shards_write(
    staging: Path = typer.Option(..., help="Staging folder of <key>.mp4/.txt/.json samples."),
    root: Path = typer.Option(Path("data"), help="Data root; shards go to ROOT/shards/DATASET/."),
    dataset: str = typer.Option(..., help="Dataset name, e.g. real, synthetic, event."),
    max_samples: int = typer.Option(1000, help="Most samples per shard."),
    max_bytes: int = typer.Option(2**30, help="Most bytes per shard."),
) -> None:
    """Pack complete staged samples not yet indexed into new shards (resumable).

    Bad samples are listed in ROOT/manifests/shards-DATASET.rejects.parquet.
    """
    run_write(staging, root, dataset, max_samples=max_samples, max_bytes=max_bytes)


@app.command("verify")
def shards_verify(
    root: Path = typer.Option(
        Path("data"), help="Data root (all shards/ and latents/ datasets) or one dataset folder."
    ),
    decode: str = typer.Option(
        "ends",
        help="mp4 check; the frame count always comes from the container index. 'ends' "
        "decodes the first and last frame, 'full' decodes every frame (the only mode that "
        "does), 'none' reads the header only.",
    ),
    workers: int = typer.Option(2, help="Processes verifying shards in parallel."),
    report: Path | None = typer.Option(None, help="JSON report (ROOT/reports/shards_verify.json)."),
    against: Path | None = typer.Option(
        None,
        help="A verify report saved earlier: also fail if an index (sha256) or a shard file "
        "(size) changed since. The new report then defaults to "
        "ROOT/reports/shards_verify_against.json.",
    ),
) -> None:
    """Check shards: members, sha256 vs index, index fields vs json, json schema, mp4
    frames/fps/size, bytes after the end of a tar, stats files vs shards.

    Exits non-zero on any failure; details in the JSON report, which records a sha256 of
    every index (compare a later state with --against).
    """

    try:
        check_decode_mode(decode)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--decode") from None
    try:
        saved = {"report_path": report, "against": against}
        ok = run_verify(root, decode=decode, workers=workers, **saved)["ok"]
    except FileNotFoundError as e:
        raise typer.BadParameter(str(e), param_hint="--root") from None
    except ReportError as e:
        raise typer.BadParameter(str(e), param_hint="--against") from None
    if not ok:
        raise typer.Exit(1)


@app.command("stats")
def shards_stats(
    root: Path = typer.Option(
        Path("data"), help="Data root (all shards/ and latents/ datasets) or one dataset folder."
    ),
) -> None:
    """Samples, hours, fps/resolution/source counts, action distribution, and a PNG.

    Writes ROOT/reports/shards_stats.json and shards_stats.png.
    """
    try:
        run_stats(root)
    except FileNotFoundError as e:
        raise typer.BadParameter(str(e), param_hint="--root") from None
    except ShardError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None


if __name__ == "__main__":
    app()
