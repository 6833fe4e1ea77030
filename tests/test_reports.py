"""Plots say what they count: integer count axes, values on bars, zero apart from small
counts, labelled colour bars, and a rejects-by-reason chart per stage that follows the data."""

from __future__ import annotations

import numpy as np

from curation.dataroot import DataRoot
from curation.reports import bar_chart, heatmap, histogram
from jobs.runner import plot_rejects


def test_bar_chart_writes_each_value_and_counts_in_integers():
    fig = bar_chart({"truncated_video": 12, "not_a_video": 1}, "t", "reason", "inputs")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == ["12", "1"]  # largest first
    assert [t.get_text() for t in ax.get_yticklabels()] == ["truncated_video", "not_a_video"]
    assert all(float(t).is_integer() for t in ax.get_xticks())


def test_heatmap_tells_zero_from_small_counts_and_labels_its_bar():
    counts = np.array([[0.0, 1.0], [500.0, 0.0]])
    fig = heatmap(counts, ["a", "b"], ["x", "y"], "t", "mouse", "keys", unit="frames (30 fps)")
    image = fig.axes[0].images[0]
    rgba = image.to_rgba(image.get_array())
    grey = rgba[0, 0]
    assert np.allclose(grey[:3], 0xE6 / 255, atol=0.01)  # the masked colour, not the scale's
    assert not np.allclose(rgba[0, 1], grey)  # a count of 1 is on the scale
    assert fig.axes[1].get_ylabel() == "frames (30 fps) (grey: 0)"
    assert [t.get_text() for t in fig.axes[0].texts] == ["1", "500"]


def test_histogram_counts_in_integers():
    ax = histogram(np.array([1.0, 2.0, 2.5]), "t", "x", bins=3).axes[0]
    assert all(float(t).is_integer() for t in ax.get_yticks())


def test_rejects_chart_per_stage_follows_the_latest_run(tmp_path):
    root = DataRoot.at(tmp_path)
    path = plot_rejects("clips", {"inputs": 5, "rejects_by_reason": {"not_a_video": 2}}, root)
    assert path == str(root.plot("clips", "rejects")) and root.plot("clips", "rejects").exists()
    assert plot_rejects("clips", {"inputs": 5, "rejects_by_reason": {}}, root) is None
    assert not root.plot("clips", "rejects").exists()
