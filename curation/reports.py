"""Report helpers: summary JSON and PNG plots under ``<root>/reports/``."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

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
) -> None:
    """A labelled count heat map (counts[i, j] for rows[i], cols[j]) on ``ax``."""
    im = ax.imshow(counts, cmap="viridis")
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
    ax.figure.colorbar(im, ax=ax, shrink=0.8)


def heatmap(
    counts: np.ndarray, rows: list[str], cols: list[str], title: str, xlabel: str, ylabel: str
) -> plt.Figure:
    """A figure holding one ``draw_heatmap``."""
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * len(cols), 1.0 + 0.5 * len(rows)))
    draw_heatmap(ax, counts, rows, cols, title, xlabel, ylabel)
    return fig


def histogram(values: np.ndarray, title: str, xlabel: str, bins: int = 40) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(values, bins=bins, color="#3b7dd8")
    ax.set(title=title, xlabel=xlabel, ylabel="count")
    return fig
