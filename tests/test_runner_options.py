"""Runner options every stage gets (--limit, --dry-run) and files other users can read."""

from __future__ import annotations

import os
import stat

import pyarrow.parquet as pq
import pytest

from curation.dataroot import DataRoot
from curation.manifest import atomic_write_bytes
from curation.provenance import library_versions
from curation.sample_sekai import write_sample_release
from curation.stages.actions import ActionsConfig, ActionsStage
from jobs.runner import RunOptions, run_stage


@pytest.fixture()
def release(tmp_path):
    write_sample_release(tmp_path / "sekai", clips=3, frames=80, seed=1)
    return ActionsConfig(sekai=[tmp_path / "sekai"], min_frames=20)


def test_dry_run_lists_and_writes_nothing(release, tmp_path):
    s = run_stage(ActionsStage, release, RunOptions(root=tmp_path / "data", dry_run=True))
    assert s["dry_run"] and len(s["would_process"]) == 3 and s["already_done"] == 0
    assert all(p.endswith(".npz") for p in s["would_process"])
    assert not (tmp_path / "data").exists()


def test_limit_processes_a_few_then_the_rest(release, ray_local, tmp_path):
    opts = dict(root=tmp_path / "data", progress=False)
    first = run_stage(ActionsStage, release, RunOptions(limit=1, **opts))
    assert (first["inputs"], first["this_run"]["processed"]) == (1, 1)
    rest = run_stage(ActionsStage, release, RunOptions(**opts))
    assert (rest["inputs"], rest["this_run"]["processed"], rest["runs"]) == (3, 2, [1, 2])
    root = DataRoot.at(tmp_path / "data")
    assert pq.read_table(root.manifest("action_clips")).num_rows == 3
    prov = rest["provenance"]
    assert prov["libraries"] == library_versions() and prov["libraries"]["torch"]
    assert all(os.path.isabs(p) for p in prov["inputs"])


def test_written_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"x")
        assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == 0o644
        os.umask(0o077)
        atomic_write_bytes(tmp_path / "b.bin", b"x")
        assert stat.S_IMODE((tmp_path / "b.bin").stat().st_mode) == 0o600
    finally:
        os.umask(old)
