"""Metrics: a JSONL log (plus TensorBoard when installed) and a loss-curve PNG.

TensorBoard is the optional ``tensorboard`` extra (``pip install -e '.[tensorboard]'``):
installed, every run also writes its numeric metrics to ``<out>/tensorboard`` (view with
``tensorboard --logdir <out>/tensorboard``); without it only ``metrics.jsonl`` is written.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from curation.manifest import atomic_write_bytes

log = logging.getLogger(__name__)


class MetricsLog:
    """Appends one JSON line per logged step; on resume drops lines past the resumed step."""

    def __init__(self, out_dir: str | Path, resume_step: int | None = None):
        self.path = Path(out_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        rows = self.read() if resume_step is not None else []
        kept = [r for r in rows if r["step"] <= (resume_step or 0)]
        atomic_write_bytes(self.path, "".join(json.dumps(r) + "\n" for r in kept).encode())
        self._tb = _tensorboard(Path(out_dir) / "tensorboard")

    def log(self, row: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self._tb is not None:
            for k, v in row.items():
                if isinstance(v, int | float) and not isinstance(v, bool) and k != "step":
                    self._tb.add_scalar(k, v, row["step"])

    def read(self) -> list[dict]:
        """The logged rows. A partial last line (a run killed mid-write) is dropped with a
        warning, so it never makes a resume impossible; a bad line before it is an error."""
        if not self.path.exists():
            return []
        lines = [(i, line) for i, line in enumerate(self.path.read_text().splitlines(), 1)]
        lines = [(i, line) for i, line in lines if line.strip()]
        rows = []
        for i, line in lines:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            if isinstance(row, dict) and isinstance(row.get("step"), int):
                rows.append(row)
            elif i == lines[-1][0]:
                log.warning("%s: dropping a partial last line %d (%.60r)", self.path, i, line)
            else:
                raise ValueError(f"{self.path}: line {i} is not a metrics row ({line[:60]!r})")
        return rows

    def plot(self, title: str) -> Path:
        """Write ``loss.png`` (``loss_figure`` of the logged rows); returns its path."""
        import matplotlib.pyplot as plt

        fig = loss_figure(self.read(), title)
        out = self.path.with_name("loss.png")
        fig.savefig(out, dpi=100, bbox_inches="tight")
        plt.close(fig)
        return out

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def loss_figure(rows: list[dict], title: str):
    """Train loss per step (T2V and I2V steps apart, with a running mean) and the validation
    loss where it was logged, against whole steps; returns the matplotlib Figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    train = [r for r in rows if "loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    for task in ("t2v", "i2v"):
        pts = [(r["step"], r["loss"]) for r in train if r.get("task") == task]
        if pts:
            ax.plot(*zip(*pts, strict=True), ".", alpha=0.5, label=f"train loss ({task})")
    if train:
        k = max(1, len(train) // 10)
        losses = [r["loss"] for r in train]
        mean = [
            sum(losses[max(0, i - k + 1) : i + 1]) / len(losses[max(0, i - k + 1) : i + 1])
            for i in range(len(losses))
        ]
        ax.plot([r["step"] for r in train], mean, "-", color="black", label=f"train, mean of {k}")
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    if val:
        ax.plot(*zip(*val, strict=True), "s-", color="tab:red", label="validation loss")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="step", ylabel="flow-matching loss", title=title)
    if train or val:
        ax.legend()
    return fig


def _tensorboard(log_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(log_dir))
