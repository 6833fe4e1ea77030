"""A rerun after an input file changed is refused, naming it (its outputs may already be in
shards, which are never rewritten); --overwrite redoes the stage; parts written before the
input_version column still read."""

from __future__ import annotations

import os

import pyarrow.parquet as pq
import pytest

from curation.dataroot import DataRoot
from curation.sample_sekai import write_sample_release
from curation.stages.actions import ActionsConfig, ActionsStage
from curation.stages.parts import STATUS, read_status
from jobs.runner import JobError, RunOptions, run_stage


@pytest.mark.slow  # end to end on Ray; the default run covers the parts
def test_a_changed_input_is_refused_and_overwrite_redoes_it(ray_local, tmp_path):
    write_sample_release(tmp_path / "sekai", clips=2, frames=120, seed=4)
    cfg = ActionsConfig(sekai=[tmp_path / "sekai"], min_frames=20)
    opts = RunOptions(root=tmp_path / "data", progress=False)
    assert run_stage(ActionsStage, cfg, opts)["accepted"] == 2
    assert run_stage(ActionsStage, cfg, opts)["this_run"]["processed"] == 0  # unchanged: resumes

    npz = sorted((tmp_path / "sekai").rglob("*.npz"))[0]
    st = os.stat(npz)
    os.utime(npz, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # replaced by a newer copy
    with pytest.raises(JobError, match=rf"actions: 1 inputs changed since .*{npz.name}"):
        run_stage(ActionsStage, cfg, opts)
    s = run_stage(
        ActionsStage, cfg, RunOptions(root=tmp_path / "data", overwrite=True, progress=False)
    )
    assert s["accepted"] == 2 and s["this_run"]["processed"] == 2

    # a status part from before the column: read with input_version null, never refused
    parts = DataRoot.at(tmp_path / "data").parts("actions") / STATUS
    for f in parts.glob("part-*.parquet"):
        pq.write_table(pq.read_table(f).drop_columns(["input_version"]), f)
    assert read_status(parts.parent).column("input_version").null_count == 2
    assert run_stage(ActionsStage, cfg, opts)["this_run"]["processed"] == 0
