"""Ray start-up shared by every job: embedded local Ray by default, a cluster on request."""

from __future__ import annotations

import logging
import os


def init_ray(
    address: str | None = None, num_cpus: int | None = None, verbose: bool = False
) -> None:
    """Connect to ``address`` (or RAY_ADDRESS) if given, else start Ray on this machine.

    Why: the same job runs on a laptop, in CI (no dashboard, few CPUs) and on a cluster.
    Unless ``verbose``, Ray's console lines (the token notice, Ray Data's per-dataset INFO
    lines and its "progress bars disabled") are hidden; errors and worker output still show.
    """
    import ray

    if ray.is_initialized():
        return
    if not verbose:
        os.environ.setdefault("RAY_DATA_LOG_LEVEL", "ERROR")  # read when Ray Data logs first
    address = address or os.environ.get("RAY_ADDRESS") or None
    kwargs: dict = {"logging_level": logging.WARNING, "log_to_driver": True}
    if not verbose:  # the notice that token authentication is on, at every start
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(
            logging.ERROR
        )
    if address:
        ray.init(address=address, **kwargs)
    else:
        # "local": a Ray of its own, never one that happens to run on this machine already
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **kwargs)
    if not verbose:
        logging.getLogger("ray.data").setLevel(logging.ERROR)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # jobs show their own tqdm bar over items
    ctx.verbose_stats_logs = False
