"""Shared fixtures: the real data in ../shared/fixtures and one local Ray per test session."""

from __future__ import annotations

import os
import random
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


# The kill-and-rerun, more-inputs and damaged-input contract checks of the model-backed
# stages run with the slow tests: the default run still puts every stage through the
# accounting and rerun checks.
HEAVY_CONTRACT = ("synth_generate", "encode_latents", "events", "recaption")
HEAVY_CHECKS = (
    "test_killed_run_then_rerun_equals_a_clean_run",
    "test_more_inputs_are_added_and_a_moved_key_is_refused",
    "test_generic_input_failures_are_named_rejects",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.originalname in HEAVY_CHECKS and any(
            f"[{name}]" in item.nodeid for name in HEAVY_CONTRACT
        ):
            item.add_marker(pytest.mark.slow)


# The generic input failures every stage contract case puts through its stage
# (tests/test_stage_contract.py): each case damages its own inputs with them, or says why one
# does not apply to it.
FAILURE_CLASSES = (
    "garbage",
    "empty",
    "truncated",
    "vanished",
    "empty_text",
    "long_text",
    "missing_field",
)


def garbage(path: Path) -> None:
    """Replace ``path`` by bytes no reader accepts (seeded, so every run is the same)."""
    path.write_bytes(random.Random(0).randbytes(4096))


def empty(path: Path) -> None:
    """Make ``path`` a file of no bytes: a copy that never started, a placeholder."""
    path.write_bytes(b"")


def truncate(path: Path) -> None:
    """Keep the first half of ``path``: a copy cut off mid-way."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
