"""The sekai-actions Ray job end to end: accounting, ground truth, kill and resume, export."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from curation.sample_sekai import write_sample_release
from curation.sekai import discover_segments
from jobs.cli import app
from jobs.sekai_actions import ActionsJob, StaleOutputError, run
from schemas.actions import KEYS, MOUSE

ROOT = Path(__file__).resolve().parents[1]


def _tables(root: Path) -> dict:
    m = root / "manifests"
    return {
        "segments": pq.read_table(m / "actions.parquet").drop(["config_hash"]).to_pylist(),
        "clips": pq.read_table(m / "action_clips.parquet").drop(["source_path"]).to_pylist(),
        "rejects": sorted(
            (r["reason"], Path(r["input"]).name)
            for r in pq.read_table(m / "actions.rejects.parquet").to_pylist()
        ),
    }


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    out = tmp_path_factory.mktemp("sekai")
    info = write_sample_release(out, clips=6, frames=700, seed=3, corrupt=True)
    return out, info


def test_job_accounts_for_every_input_and_recovers_ground_truth(ray_local, release, tmp_path):
    sekai, info = release
    summary = run(ActionsJob(out=tmp_path, sekai=[sekai], batch_size=4, progress=False))
    assert summary["accounted"] and summary["inputs"] == summary["accepted"] + summary["rejected"]
    assert summary["accepted"] == 6
    assert summary["rejects_by_reason"] == info["expected_rejects"]
    rejects = pq.read_table(tmp_path / "manifests" / "actions.rejects.parquet").to_pylist()
    assert all(r["detail"] for r in rejects)

    truth = {r["clip_id"]: r for r in pq.read_table(sekai / "ground_truth.parquet").to_pylist()}
    clips = pq.read_table(tmp_path / "manifests" / "action_clips.parquet").to_pylist()
    assert {c["clip_id"] for c in clips} == set(truth)
    for c in clips:
        t = truth[c["clip_id"]]
        assert c["resets"] == t["resets"] == [299, 599]
        ok = np.ones(len(t["keys"]), bool)
        ok[t["resets"]] = False
        assert np.array_equal(np.array(c["keys"])[ok], np.array(t["keys"])[ok])
        assert np.array_equal(np.array(c["mouse"])[ok], np.array(t["mouse"])[ok])
        assert c["caption"].startswith("A first-person walk")
        assert json.loads(c["extra"]) == {
            "sampleSeed": "3",
            "generator": "yume-data sample-sekai (procedural render)",
        }
    segs = pq.read_table(tmp_path / "manifests" / "actions.parquet").to_pylist()
    for s in segs:
        assert s["num_frames"] >= 33 and not (s["start_frame"] <= 299 < s["end_frame"])
        t = truth[s["clip_id"]]
        pairs = slice(s["start_frame"], s["end_frame"])
        assert {KEYS[k] for k in t["keys"][pairs]} == {s["keys"]}
        assert {MOUSE[m] for m in t["mouse"][pairs]} == {s["mouse"]}
        assert (
            s["text_yume_speed"].startswith(s["text_yume"])
            and "Actual distance moved:" in s["text_yume_speed"]
        )
    report = json.loads((tmp_path / "reports" / "actions.json").read_text())
    assert report["segments"] == len(segs) and report["provenance"]["config_hash"]
    assert (tmp_path / "reports" / "actions_keys_mouse.png").stat().st_size > 1000

    # A rerun does nothing new and changes nothing.
    before = _tables(tmp_path)
    again = run(ActionsJob(out=tmp_path, sekai=[sekai], batch_size=4, progress=False))
    assert again["processed_this_run"] == 0 and _tables(tmp_path) == before


def test_resume_with_another_config_is_refused(ray_local, release, tmp_path):
    from curation.action_stage import ActionStageConfig

    sekai, _ = release
    run(ActionsJob(out=tmp_path, sekai=[sekai], progress=False))
    with pytest.raises(StaleOutputError):
        run(
            ActionsJob(
                out=tmp_path, sekai=[sekai], stage=ActionStageConfig(min_frames=40), progress=False
            )
        )


def test_yume_export_round_trips_through_the_segment_reader(ray_local, release, tmp_path):
    sekai, _ = release
    export = tmp_path / "yume"
    run(ActionsJob(out=tmp_path / "a", sekai=[sekai], export_yume=export, progress=False))
    segs = pq.read_table(tmp_path / "a" / "manifests" / "actions.parquet").to_pylist()
    items, rejects = discover_segments(export)
    assert rejects == [] and len(items) == len(segs)
    # Labelling the exported segments again gives each one back as a single segment.
    summary = run(ActionsJob(out=tmp_path / "b", segments=[export], progress=False))
    assert summary["accepted"] == len(segs) and summary["segments"] == len(segs)
    again = pq.read_table(tmp_path / "b" / "manifests" / "actions.parquet").to_pylist()
    refs = {it["clip_id"]: (it["reference_keys"], it["reference_mouse"]) for it in items}
    assert all(refs[s["clip_id"]] == (s["keys"], s["mouse"]) for s in again)


def test_killed_run_resumes_without_loss_or_duplicates(ray_local, tmp_path):
    sekai = tmp_path / "sekai"
    write_sample_release(sekai, clips=400, frames=300, seed=7)
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    cmd = [
        sys.executable,
        "-m",
        "jobs.sekai_actions",
        "--sekai",
        str(sekai),
        "--out",
        str(killed),
        "--batch-size",
        "4",
        "--num-cpus",
        "2",
    ]
    proc = subprocess.Popen(
        cmd, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    parts = killed / "manifests" / "actions.parts" / "clips"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if parts.exists() and len(list(parts.glob("part-*.parquet"))) >= 3:
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started
    proc.wait()
    done_before = len(list(parts.glob("part-*.parquet")))
    assert 0 < done_before < 100, "the kill should land mid-run"
    assert not (killed / "manifests" / "actions.parquet").exists()

    resumed = run(ActionsJob(out=killed, sekai=[sekai], batch_size=4, progress=False))
    assert resumed["resumed_done"] >= 3 * 4 and resumed["accepted"] == 400
    run(ActionsJob(out=clean, sekai=[sekai], batch_size=4, progress=False))
    assert _tables(killed) == _tables(clean)


def test_cli_help_and_exit_code_for_rejects(ray_local, release, tmp_path):
    runner = CliRunner()
    assert "Label camera trajectories" in runner.invoke(app, ["sekai-actions", "--help"]).output
    sekai, _ = release
    result = runner.invoke(app, ["sekai-actions", "--sekai", str(sekai), "--out", str(tmp_path)])
    assert result.exit_code == 3, result.output
    assert "rejected" in result.output and "needs_pickle" in result.output
