"""VBench's total over the scored dimensions, and the top-k selection (pure logic).

The builtin dimensions and their definitions are in ``model/backends/scorer_builtin.py``.

``total`` follows VBench's ``cal_final_score.py``: ``(raw - Min) / (Max - Min) * weight``
summed over the dimensions present and divided by their weights (VBench's Min/Max and
weights for its dimensions; dynamic degree weighs 0.5). Dimensions without an entry in
``NORMALIZE`` (``motion_farneback``, ``static_flag``) are reported, not totalled.
"""

from __future__ import annotations

import math

# dimension -> (Min, Max, weight); VBench's scripts/constant.py for its own dimensions
NORMALIZE: dict[str, tuple[float, float, float]] = {
    "subject_consistency": (0.1462, 1.0, 1.0),
    "background_consistency": (0.2615, 1.0, 1.0),
    "temporal_flickering": (0.6293, 1.0, 1.0),
    "motion_smoothness": (0.706, 0.9975, 1.0),
    "dynamic_degree": (0.0, 1.0, 0.5),
    "aesthetic_quality": (0.0, 1.0, 1.0),
    "imaging_quality": (0.0, 1.0, 1.0),
    # builtin stand-ins: already in [0, 1]; Farneback dynamic degree weighs as VBench's
    "dynamic_degree_farneback": (0.0, 1.0, 0.5),
    "sharpness_laplacian": (0.0, 1.0, 1.0),
    "exposure_ok": (0.0, 1.0, 1.0),
}


def total(scores: dict[str, float]) -> tuple[float, list[str]]:
    """VBench's normalised weighted mean over the dimensions present; and which were used."""
    dims = sorted(d for d in scores if d in NORMALIZE and math.isfinite(scores[d]))
    if not dims:
        return float("nan"), []
    num = sum((scores[d] - NORMALIZE[d][0]) / (NORMALIZE[d][1] - NORMALIZE[d][0])
              * NORMALIZE[d][2] for d in dims)  # fmt: skip
    return num / sum(NORMALIZE[d][2] for d in dims), dims


def top_k(totals: dict[str, float], k: int) -> list[tuple[str, int, float, bool]]:
    """``(key, rank, total, selected)`` best first: by total descending, ties by key; a NaN
    total ranks last. The first ``k`` are selected (all when ``k`` >= the count)."""

    def order(kv: tuple[str, float]) -> tuple:
        key, t = kv
        return (0, -t, key) if math.isfinite(t) else (1, 0.0, key)

    ranked = sorted(totals.items(), key=order)
    return [(key, n + 1, t, n < k) for n, (key, t) in enumerate(ranked)]
