"""The README's cluster recipe, run: a job submitted through the Ray Jobs API (what
``ray job submit`` calls) to a local two-node cluster, with the repository shipped as the
job's ``working_dir``, writes the same accounting as a local run."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from curation.sample_sekai import write_sample_release

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_job_submitted_through_the_jobs_api_to_a_two_node_cluster(tmp_path):
    pytest.importorskip("aiohttp", reason="the Jobs API needs ray[default] (the cluster extra)")
    import ray
    from ray.cluster_utils import Cluster
    from ray.job_submission import JobStatus, JobSubmissionClient

    write_sample_release(tmp_path / "sekai", clips=4, frames=150, seed=7)
    root = tmp_path / "data"
    ray.shutdown()  # its own cluster, not the session's local Ray
    port = _free_port()
    head = {"num_cpus": 1, "include_dashboard": True, "dashboard_host": "127.0.0.1",
            "dashboard_port": port}  # fmt: skip
    cluster = Cluster(initialize_head=True, head_node_args=head)
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        client = JobSubmissionClient(f"http://127.0.0.1:{port}")
        job = client.submit_job(
            entrypoint=f"{sys.executable} -m jobs.actions --sekai {tmp_path / 'sekai'} "
            f"--root {root} --min-frames 20",
            runtime_env={"working_dir": str(REPO),
                         "excludes": [".venv*", "data", ".git", "bench-out", "*.mp4"]},
        )  # fmt: skip
        deadline = time.time() + 300
        while not (status := client.get_job_status(job)).is_terminal():
            assert time.time() < deadline, client.get_job_logs(job)[-3000:]
            time.sleep(2)
        logs = client.get_job_logs(job)
    finally:
        ray.shutdown()
        cluster.shutdown()
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    assert "actions: inputs 4 = accepted 4 + rejected 0" in logs
    clips = pq.read_table(root / "manifests" / "action_clips.parquet").to_pylist()
    assert sorted(c["clip_id"] for c in clips) == sorted(
        p.stem for p in (tmp_path / "sekai").rglob("*.npz")
    )
