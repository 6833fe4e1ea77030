"""Ray start-up shared by every job: embedded local Ray by default, a cluster on request."""

from __future__ import annotations

import logging
import os


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to ``address`` (or RAY_ADDRESS) if given, else start Ray on this machine.

    Why: the same job runs on a laptop, in CI (no dashboard, few CPUs) and on a cluster.
    """
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict = {"logging_level": logging.WARNING, "log_to_driver": True}
    if address:
        ray.init(address=address, **kwargs)
    else:
        # "local": a Ray of its own, never one that happens to run on this machine already
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **kwargs)
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # no per-dataset INFO lines
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # jobs show their own tqdm bar over items
    ctx.verbose_stats_logs = False
