"""The actions stage end to end on Ray: accounting, ground truth, kill and resume, export, CLI."""

from __future__ import annotations

import json
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
from curation.stages.actions import ActionsConfig, ActionsStage
from curation.stages.base import StaleConfigError
from jobs.cli import app
from jobs.runner import RunOptions, run_stage
from schemas.actions import KEYS, MOUSE
from tests.test_clips import kill_process_tree

ROOT = Path(__file__).resolve().parents[1]


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


def actions(root: Path, batch_size: int | None = None, **config) -> dict:
    opts = RunOptions(root=root, batch_size=batch_size, progress=False)
    return run_stage(ActionsStage, ActionsConfig(**config), opts)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    out = tmp_path_factory.mktemp("sekai")
    info = write_sample_release(out, clips=6, frames=700, seed=3, corrupt=True)
    return out, info


def test_stage_accounts_for_every_input_and_recovers_ground_truth(ray_local, release, tmp_path):
    sekai, info = release
    summary = actions(tmp_path, batch_size=4, sekai=[sekai])
    assert summary["accounted"] and summary["inputs"] == summary["accepted"] + summary["rejected"]
    assert summary["accepted"] == 6 and summary["exit_code"] == 3
    assert summary["rejects_by_reason"] == info["expected_rejects"]
    # 6 good + 11 bad trajectories are processed; 6 inputs are rejected while discovering them
    # (a missing npz, an unparseable file name, a repeated CSV row, a second npz with a known
    # clip id, an empty CSV, a ragged CSV row).
    assert summary["this_run"]["processed"] == 17 and summary["runs"] == [1]
    assert summary["inputs"] == 23 == summary["this_run"]["found"]
    rejects = pq.read_table(tmp_path / "manifests" / "actions.rejects.parquet").to_pylist()
    assert all(r["detail"] and r["key"] and r["stage"] == "actions" for r in rejects)
    # The repeated CSV row is named as a repeat of its input, not silently dropped.
    (dup,) = [r for r in rejects if r["reason"] == "duplicate_key"]
    assert dup["input"].endswith("(repeat 2)")

    truth = {r["clip_id"]: r for r in pq.read_table(sekai / "ground_truth.parquet").to_pylist()}
    clips = pq.read_table(tmp_path / "manifests" / "action_clips.parquet").to_pylist()
    assert sorted(c["clip_id"] for c in clips) == sorted(truth)
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
    assert report["segments"] == len(segs) == summary["tables"]["actions"]
    assert report["provenance"]["config_hash"]
    assert (tmp_path / "reports" / "actions_keys_mouse.png").stat().st_size > 1000

    # A rerun processes nothing and changes nothing.
    before = tables(tmp_path)
    again = actions(tmp_path, batch_size=4, sekai=[sekai])
    assert again["this_run"]["processed"] == 0 and again["this_run"]["skipped_done"] == 17
    assert (again["inputs"], again["accepted"], again["rejected"]) == (
        summary["inputs"],
        summary["accepted"],
        summary["rejected"],
    )
    assert tables(tmp_path) == before


def test_resume_with_another_config_is_refused(ray_local, release, tmp_path):
    sekai, _ = release
    actions(tmp_path, sekai=[sekai])
    with pytest.raises(StaleConfigError):
        actions(tmp_path, sekai=[sekai], min_frames=40)


def test_yume_export_round_trips_through_the_segment_reader(ray_local, release, tmp_path):
    sekai, _ = release
    export = tmp_path / "yume"
    actions(tmp_path / "a", sekai=[sekai], export_yume=export)
    segs = pq.read_table(tmp_path / "a" / "manifests" / "actions.parquet").to_pylist()
    items, rejects = discover_segments(export)
    assert rejects == [] and len(items) == len(segs)
    # Labelling the exported segments again gives each one back as a single segment.
    summary = actions(tmp_path / "b", segments=[export])
    assert summary["accepted"] == len(segs) and summary["segments"] == len(segs)
    assert summary["exit_code"] == 0
    again = pq.read_table(tmp_path / "b" / "manifests" / "actions.parquet").to_pylist()
    refs = {it["clip_id"]: (it["reference_keys"], it["reference_mouse"]) for it in items}
    assert all(refs[s["clip_id"]] == (s["keys"], s["mouse"]) for s in again)


@pytest.mark.slow  # a real SIGKILL of the job; the contract test kills every stage by default
def test_killed_run_resumes_without_loss_or_duplicates(ray_local, tmp_path):
    sekai = tmp_path / "sekai"
    write_sample_release(sekai, clips=400, frames=300, seed=7)
    killed, clean = tmp_path / "killed", tmp_path / "clean"
    cmd = [
        sys.executable,
        "-m",
        "jobs.actions",
        "--sekai",
        str(sekai),
        "--root",
        str(killed),
        "--batch-size",
        "4",
        "--num-cpus",
        "2",
    ]
    log = (tmp_path / "killed-run.log").open("w")  # what the run said, shown if it died early
    proc = subprocess.Popen(
        cmd, cwd=ROOT, start_new_session=True, stdout=subprocess.DEVNULL, stderr=log
    )
    status = killed / "manifests" / "actions.parts" / "status"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list(status.glob("part-*.parquet"))) >= 3:
            break
        time.sleep(0.02)
    exited = proc.poll()  # None: still running when killed, as it should be
    kill_process_tree(proc)  # the driver and the Ray it started
    log.close()
    done_before = len(list(status.glob("part-*.parquet")))
    said = (tmp_path / "killed-run.log").read_text()[-3000:]
    assert 0 < done_before < 100, f"the kill should land mid-run (exit {exited}):\n{said}"
    assert not (killed / "manifests" / "actions.parquet").exists()

    resumed = actions(killed, batch_size=4, sekai=[sekai])
    assert resumed["this_run"]["skipped_done"] >= 3 * 4 and resumed["accepted"] == 400
    assert resumed["this_run"]["processed"] == 400 - resumed["this_run"]["skipped_done"]
    assert resumed["runs"] == [1, 2]
    actions(clean, batch_size=4, sekai=[sekai])
    assert tables(killed) == tables(clean)


def test_cli_help_and_exit_code_for_rejects(ray_local, release, tmp_path):
    runner = CliRunner()
    assert "Label camera trajectories" in runner.invoke(app, ["sekai-actions", "--help"]).output
    sekai, _ = release
    result = runner.invoke(app, ["sekai-actions", "--sekai", str(sekai), "--root", str(tmp_path)])
    assert result.exit_code == 3, result.output
    assert "rejected" in result.output and "needs_pickle" in result.output
    assert (tmp_path / "manifests" / "actions.parquet").exists()


def test_cli_bad_config_value_is_one_error_line(tmp_path):
    result = CliRunner().invoke(
        app,
        ["actions", "--sekai", str(tmp_path), "--root", str(tmp_path), "--set", "min_frames=abc"],
    )
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "min_frames" in lines[0]
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    assert not (tmp_path / "manifests").exists()
