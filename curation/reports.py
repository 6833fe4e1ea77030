"""Report helpers: summary JSON and PNG plots under ``<root>/reports/``."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from curation.manifest import atomic_write_bytes  # noqa: E402


def save_figure(fig: plt.Figure, path: str | Path) -> Path:
    """Save ``fig`` as PNG atomically and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def draw_heatmap(
    ax: plt.Axes,
    counts: np.ndarray,
    rows: list[str],
    cols: list[str],
    title: str,
    xlabel: str,
    ylabel: str,
    unit: str = "count",
) -> None:
    """A labelled count heat map (counts[i, j] for rows[i], cols[j]) on ``ax``.

    Zero cells are drawn light grey, apart from the colour scale, so an empty cell never
    reads as a small count; the colour bar is labelled with ``unit`` (what is counted).
    """
    cmap = plt.get_cmap("viridis").with_extremes(bad="#e6e6e6")
    im = ax.imshow(np.ma.masked_equal(counts, 0), cmap=cmap)
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(len(rows)), rows)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    vmax = counts.max() if counts.size else 0
    for i in range(counts.shape[0]):
        for j in range(counts.shape[1]):
            if counts[i, j]:
                color = "black" if counts[i, j] > 0.6 * vmax else "white"
                ax.text(
                    j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=7, color=color
                )
    bar = ax.figure.colorbar(im, ax=ax, shrink=0.8)
    bar.set_label(f"{unit} (grey: 0)")
    bar.locator = MaxNLocator(integer=True)
    bar.update_ticks()


def heatmap(
    counts: np.ndarray, rows: list[str], cols: list[str], title: str, xlabel: str, ylabel: str,
    unit: str = "count",
) -> plt.Figure:  # fmt: skip
    """A figure holding one ``draw_heatmap``."""
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * len(cols), 1.0 + 0.5 * len(rows)))
    draw_heatmap(ax, counts, rows, cols, title, xlabel, ylabel, unit)
    return fig


def histogram(values: np.ndarray, title: str, xlabel: str, bins: int = 40) -> plt.Figure:
    """A histogram with an integer count axis."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(values, bins=bins, color="#3b7dd8")
    ax.set(title=title, xlabel=xlabel, ylabel="count")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    return fig


def bar_chart(counts: dict[str, int], title: str, xlabel: str, ylabel: str = "count") -> plt.Figure:
    """Horizontal bars, largest first, each with its value written at its end."""
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    fig, ax = plt.subplots(figsize=(6.5, 1.2 + 0.35 * max(1, len(items))))
    labels, values = [k for k, _ in items], [v for _, v in items]
    bars = ax.barh(labels, values, color="#d8703b")
    ax.bar_label(bars, labels=[str(v) for v in values], padding=3, fontsize=8)
    ax.invert_yaxis()
    ax.set(title=title, xlabel=ylabel, ylabel=xlabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.margins(x=0.12)
    return fig
