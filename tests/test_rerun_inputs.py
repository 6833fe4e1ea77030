"""A rerun after an input file changed redoes that item, and only it (with the batch it was
processed in); parts written before the input_version column still read."""

from __future__ import annotations

import os

import pyarrow.parquet as pq
import pytest

from curation.dataroot import DataRoot
from curation.sample_sekai import write_sample_release
from curation.stages.actions import ActionsConfig, ActionsStage
from curation.stages.parts import STATUS, read_status
from jobs.runner import RunOptions, run_stage


@pytest.mark.slow  # end to end on Ray; the default run covers the parts (test_upstream_identity)
def test_a_changed_input_is_redone_alone(ray_local, tmp_path):
    write_sample_release(tmp_path / "sekai", clips=2, frames=120, seed=4)
    cfg = ActionsConfig(sekai=[tmp_path / "sekai"], min_frames=20)
    opts = RunOptions(root=tmp_path / "data", progress=False, batch_size=1)
    assert run_stage(ActionsStage, cfg, opts)["accepted"] == 2
    assert run_stage(ActionsStage, cfg, opts)["this_run"]["processed"] == 0  # unchanged: resumes
    before = pq.read_table(DataRoot.at(tmp_path / "data").manifest("action_clips"))

    npz = sorted((tmp_path / "sekai").rglob("*.npz"))[0]
    st = os.stat(npz)
    os.utime(npz, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # replaced by a newer copy
    s = run_stage(ActionsStage, cfg, opts)
    assert s["this_run"]["redone_changed"] == s["this_run"]["processed"] == 1
    assert s["accepted"] == 2 and s["runs"] == [1, 2]
    after = pq.read_table(DataRoot.at(tmp_path / "data").manifest("action_clips"))
    assert after.drop_columns(["source_path"]).equals(before.drop_columns(["source_path"]))
    assert run_stage(ActionsStage, cfg, opts)["this_run"]["processed"] == 0

    # a status part from before the column: read with input_version null, never refused
    parts = DataRoot.at(tmp_path / "data").parts("actions") / STATUS
    for f in parts.glob("part-*.parquet"):
        pq.write_table(pq.read_table(f).drop_columns(["input_version"]), f)
    assert read_status(parts.parent).column("input_version").null_count == 2
    assert run_stage(ActionsStage, cfg, opts)["this_run"]["processed"] == 0
