"""A stage on a two-node Ray cluster, driven from another working directory, with a relative
--root: the tables equal those of a run on a plain local Ray, and the parts land under the
absolute root (workers on other nodes run in other working directories)."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from curation.sample_sekai import write_sample_release
from curation.stages.actions import ActionsConfig, ActionsStage
from jobs.runner import RunOptions, run_stage

pytestmark = pytest.mark.slow


def tables(root: Path) -> dict:
    """The stage's tables without the fields that name where or how they were made."""
    m = root / "manifests"
    return {
        "segments": pq.read_table(m / "actions.parquet").drop(["config_hash"]).to_pylist(),
        "clips": pq.read_table(m / "action_clips.parquet").drop(["source_path"]).to_pylist(),
        "rejects": sorted(
            (r["reason"], Path(r["input"]).name)
            for r in pq.read_table(m / "actions.rejects.parquet").to_pylist()
        ),
    }


def test_actions_on_a_two_node_cluster_with_a_relative_root(tmp_path, monkeypatch):
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()  # this test needs its own cluster, not the session's local Ray
    started_in, driver_in = tmp_path / "cluster-cwd", tmp_path / "driver-cwd"
    started_in.mkdir()
    driver_in.mkdir()
    info = write_sample_release(driver_in / "sekai", clips=6, frames=200, seed=5, corrupt=True)

    monkeypatch.chdir(started_in)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        monkeypatch.chdir(driver_in)
        # Relative root and input: the runner makes both absolute before any worker sees them.
        config = ActionsConfig(sekai=[Path("sekai")])
        opts = RunOptions(root=Path("data"), address=cluster.address, batch_size=2, progress=False)
        summary = run_stage(ActionsStage, config, opts)
        assert ray.is_initialized() and len([n for n in ray.nodes() if n["Alive"]]) == 2
        nodes = _nodes_that_ran_batches(ray)
    finally:
        ray.shutdown()
        cluster.shutdown()

    assert summary["accepted"] == 6 and summary["accounted"] and summary["exit_code"] == 3
    assert summary["rejects_by_reason"] == info["expected_rejects"]
    if nodes is not None:  # where Ray could say: both nodes did some of the work
        assert len(nodes) == 2, nodes
    root = driver_in / "data"
    status = sorted((root / "manifests" / "actions.parts" / "status").glob("part-*.parquet"))
    # 17 trajectories processed (6 good, 11 bad) in batches of 2, plus one part for the
    # inputs rejected while discovering them.
    assert summary["this_run"]["processed"] == 17 and len(status) == -(-17 // 2) + 1
    assert not (started_in / "data").exists() and sorted(p.name for p in started_in.iterdir()) == []
    clips = pq.read_table(root / "manifests" / "action_clips.parquet").to_pylist()
    assert all(Path(c["source_path"]).is_absolute() for c in clips)
    assert all(Path(c["source_path"]).is_relative_to(driver_in / "sekai") for c in clips)

    # The same inputs on a plain local Ray, absolute paths throughout.
    local = tmp_path / "local"
    try:
        run_stage(
            ActionsStage,
            ActionsConfig(sekai=[driver_in / "sekai"]),
            RunOptions(root=local, batch_size=2, num_cpus=2, progress=False),
        )
    finally:
        ray.shutdown()
    assert tables(root) == tables(local)


def _nodes_that_ran_batches(ray) -> set[str] | None:
    """Ids of the nodes whose workers ran the stage's batches, or None where this Ray
    cannot say (the timeline names each task's worker; the worker table, its node)."""
    try:
        from ray._private.state import state
        from ray.core.generated import gcs_pb2

        table = state._connect_and_get_accessor().get_worker_table()
        workers = {
            w.worker_address.worker_id.hex(): w.worker_address.node_id.hex()
            for w in map(gcs_pb2.WorkerTableData.FromString, table)
        }
        ran = {
            e["tid"].removeprefix("worker:")
            for e in ray.timeline()
            if "_task_fn" in e.get("cat", "") and str(e.get("tid", "")).startswith("worker:")
        }
    except Exception:  # a private API that moved: the check is a bonus, not the test
        return None
    return {workers[w] for w in ran if w in workers} or None
