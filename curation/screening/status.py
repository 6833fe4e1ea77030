"""Where screening stands: decisions per category, what is still undecided or claimed.

Written to ``reports/screening.json`` and drawn as ``reports/screening_status.png`` (one bar
group per category, integer count axis), so the lead sees the progress without a notebook.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from curation.dataroot import DataRoot
from curation.manifest import atomic_write_json
from curation.screening.decisions import DECISIONS, active_claims, latest_decisions, load_events

UNDECIDED = "undecided"
STATES: tuple[str, ...] = (*DECISIONS, UNDECIDED)


def screening_status(root: DataRoot) -> dict:
    """Counts per state (keep, reject, unsure, undecided) and category, and claimed keys."""
    root = DataRoot.at(root)
    events = load_events(root)
    latest = latest_decisions(root)
    claims = active_claims(root)
    counts: dict[str, Counter] = {}
    for e in events:
        state = latest[e["key"]]["decision"] if e["key"] in latest else UNDECIDED
        counts.setdefault(e["category"], Counter())[state] += 1
    per_category = {c: {s: counts[c][s] for s in STATES} for c in sorted(counts)}
    totals = {s: sum(per_category[c][s] for c in per_category) for s in STATES}
    claimed = [k for k in (e["key"] for e in events) if k in claims and k not in latest]
    screeners = Counter(claims[k]["screener"] for k in claimed)
    return {"events": len(events), "totals": totals, "per_category": per_category,
            "claimed": len(claimed), "claimed_by": dict(sorted(screeners.items())),
            "unclaimed_undecided": totals[UNDECIDED] - len(claimed)}  # fmt: skip


def status_figure(status: dict):
    """Grouped bars: per category, how many videos are in each state."""
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.ticker import MaxNLocator

    cats = list(status["per_category"])
    fig, ax = plt.subplots(figsize=(2 + 1.6 * max(1, len(cats)), 4))
    x = np.arange(len(cats))
    width = 0.8 / len(STATES)
    colors = {"keep": "#3b9d4a", "reject": "#d83b3b", "unsure": "#e0a020", UNDECIDED: "#999999"}
    for i, state in enumerate(STATES):
        values = [status["per_category"][c][state] for c in cats]
        ax.bar(x + (i - (len(STATES) - 1) / 2) * width, values, width, label=state,
               color=colors[state])  # fmt: skip
    ax.set_xticks(x, cats)
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="category", ylabel="event videos",
           title=f"screening: {status['events']} videos, {status['claimed']} claimed")  # fmt: skip
    ax.legend(title="decision", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def plot_status(status: dict, path: str | Path) -> Path:
    from curation.reports import save_figure

    return save_figure(status_figure(status), path)


def write_status(root: DataRoot) -> dict:
    """``screening_status`` written to reports/screening.json with its PNG; returns it."""
    root = DataRoot.at(root)
    status = screening_status(root)
    status["plot"] = str(plot_status(status, root.plot("screening", "status")))
    atomic_write_json(root.report("screening"), status)
    return status
