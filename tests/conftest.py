"""Shared fixtures: the real data in ../shared/fixtures and one local Ray per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("YUME_FIXTURES", ROOT.parent / "shared" / "fixtures"))


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not FIXTURES.exists():
        pytest.skip(f"real fixtures not found at {FIXTURES} (set YUME_FIXTURES)")
    return FIXTURES


@pytest.fixture(scope="session")
def ray_local():
    """One embedded Ray for the whole session (CI: 2 CPUs, no dashboard)."""
    import ray

    from jobs.runtime import init_ray

    init_ray(num_cpus=2)
    yield ray
    ray.shutdown()
