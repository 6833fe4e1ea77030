"""Where each entry point's Ray comes from: a Ray of its own unless a cluster is named.

A job that joins whatever Ray runs on the machine dies when that cluster's owner stops it;
only ``--address`` or ``RAY_ADDRESS`` may join one (issue 8).
"""

from __future__ import annotations

import pytest

import jobs.runtime
from training.config import preset


class Joined(Exception):
    """Raised by the fake ``ray.init``: the test needs only its arguments."""


@pytest.fixture
def ray_init(monkeypatch):
    import ray

    calls = []

    def fake_init(*args, **kwargs):
        calls.append(kwargs.get("address", args[0] if args else None))
        raise Joined

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", fake_init)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    return calls


@pytest.mark.parametrize(
    ("address", "env", "want"),
    [
        (None, None, "local"),
        ("ray://head:10001", None, "ray://head:10001"),
        (None, "10.0.0.2:6379", "10.0.0.2:6379"),
    ],  # fmt: skip
)
def test_jobs_join_a_cluster_only_when_named(ray_init, monkeypatch, address, env, want):
    if env:
        monkeypatch.setenv("RAY_ADDRESS", env)
    with pytest.raises(Joined):
        jobs.runtime.init_ray(address)
    assert ray_init == [want]


def test_ray_train_starts_its_own_ray_by_default(ray_init, tmp_path):
    from training.distributed import run_ray
    from training.train_base import train

    cfg = preset("tiny", out_dir=str(tmp_path / "run"), workers=2)
    with pytest.raises(Joined):
        run_ray(train, cfg)
    assert ray_init == ["local"]
