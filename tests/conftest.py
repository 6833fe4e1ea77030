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


# The kill-and-rerun contract check of the model-backed stages runs with the slow tests: the
# default run still puts every stage through the accounting and rerun checks.
HEAVY_CONTRACT = ("synth_generate", "encode_latents", "events", "recaption")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.originalname == "test_killed_run_then_rerun_equals_a_clean_run" and any(
            f"[{name}]" in item.nodeid for name in HEAVY_CONTRACT
        ):
            item.add_marker(pytest.mark.slow)
