"""The clips stage and its job on Ray: re-timed tokens, staged samples, rejects, resume, shards."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import decord
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.spatial.transform import Rotation
from typer.testing import CliRunner

import curation.video as video_module
from curation.clips import retime_segments, retime_tokens, sample_key
from curation.dataroot import DataRoot
from curation.manifest import write_table
from curation.render import render_clip
from curation.shard_reader import make_window_dataset
from curation.shards import verify_dataset
from curation.stages.base import StaleConfigError
from curation.stages.clips import ClipsConfig, ClipsStage
from curation.video import resample_indices
from jobs.cli import app
from jobs.runner import RunOptions, run_stage
from schemas.actions import CLIPS_SCHEMA, KEY_CODE, KEYS, MOUSE, MOUSE_CODE, SEGMENTS_SCHEMA
from schemas.sample import validate_key, validate_sample

K = np.array([[1000.0, 0, 960], [0, 1000.0, 540], [0, 0, 1]])
N = 300  # trajectory frames: pairs 0..149 walk forward (W, ·), pairs 150..298 turn right


def known_motion() -> tuple[np.ndarray, list[int], list[int]]:
    """(N, 4, 4) poses and per-pair key and mouse codes of the known motion."""
    c2w = np.tile(np.eye(4), (N, 1, 1))
    rot, pos = np.eye(3), np.zeros(3)
    for i in range(1, N):
        if i <= 150:
            pos = pos + rot @ [0.0, 0.0, 0.002]
        else:
            rot = rot @ Rotation.from_euler("y", 0.01).as_matrix()
        c2w[i, :3, :3], c2w[i, :3, 3] = rot, pos
    keys = [KEY_CODE["W"] if i < 150 else KEY_CODE["None"] for i in range(N - 1)]
    mouse = [MOUSE_CODE["·"] if i < 150 else MOUSE_CODE["→"] for i in range(N - 1)]
    return c2w, keys, mouse


def clip_row(clip_id: str, video_file: str | None, num_frames: int = N, **kw) -> dict:
    _, keys, mouse = known_motion()
    row = {f.name: None for f in CLIPS_SCHEMA}
    row.update(
        clip_id=clip_id,
        source_path=f"trajectories/{clip_id}.npz",
        video_file=video_file,
        num_frames=num_frames,
        fps=30.0,
        stride=1,
        keys=keys[: num_frames - 1] + [keys[-1]] * max(0, num_frames - N),
        mouse=mouse[: num_frames - 1] + [mouse[-1]] * max(0, num_frames - N),
        resets=[],
        num_segments=2,
        caption="A walk between coloured pillars, then a turn to the right.",
        location="procedural",
        scene="street",
        extra=json.dumps({"sampleSeed": "1"}),
        config_hash="actions0",
    )
    row.update(kw)
    return row


def segment_rows(clip_id: str, last: int = N - 1) -> list[dict]:
    def seg(i, a, b, keys, mouse):
        return {
            "clip_id": clip_id,
            "segment_index": i,
            "start_frame": a,
            "end_frame": b,
            "num_frames": b - a + 1,
            "duration_s": (b - a + 1) / 30,
            "keys": keys,
            "mouse": mouse,
            "distance_speed": 0.06 if keys == "W" else 0.0,
            "turn_speed": 0.0,
            "view_rotation_speed": 0.0 if mouse == "·" else 0.57,
            "text_yume": f"text {keys} {mouse}",
            "text_yume_speed": "s",
            "text_yume5b": f"5b {keys} {mouse}",
            "text_yume5b_speed": "s",
            "config_hash": "actions0",
        }

    return [seg(0, 0, 150, "W", "·"), seg(1, 150, last, "None", "→")]


@pytest.fixture(scope="module")
def good_video(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("src") / "good.mp4"
    render_clip(known_motion()[0], K, path, size=(160, 90))
    return path


def config(videos: Path, **kw) -> ClipsConfig:
    return ClipsConfig(videos=videos, resolution="72x128", **kw)


def run_clips(root: Path, cfg: ClipsConfig, **opts) -> dict:
    return run_stage(ClipsStage, cfg, RunOptions(root=root, progress=False, **opts))


# ---- pure pieces ------------------------------------------------------------------------


@given(st.text(max_size=300))
def test_sample_key_is_always_a_safe_key(clip_id):
    validate_key(sample_key(clip_id))  # raises SchemaError unless safe


def test_sample_key_keeps_plain_ids_and_separates_altered_ones():
    assert sample_key("IfKRDeE-Fb0_0001800_0003600") == "IfKRDeE-Fb0_0001800_0003600"
    odd = ["a.b", "a_b-x", "a/b", "../a.b", "a\\b"]
    keys = [sample_key(i) for i in odd]
    assert len(set(keys)) == len(keys) and not any("." in k or "/" in k for k in keys)


def test_retime_tokens_and_segments():
    idx = resample_indices(10, 30.0, 16.0)  # [0, 2, 4, 6, 8, 9]
    codes = [KEY_CODE[k] for k in ("W", "W", "W", "S", "S", "S", "S", "A", "A")]
    assert retime_tokens(codes, KEYS, idx) == ["W", "W", "S", "S", "A", "A"]  # 9 -> pair 8
    # stride 2: 8 overlapping pairs (i, i+2) of 10 frames; frames 8 and 9 take pair 7
    assert retime_tokens(codes[:8], KEYS, idx) == ["W", "W", "S", "S", "A", "A"]
    segs = [
        {"start_frame": 0, "end_frame": 3, "keys": "W", "mouse": "·"},
        {"start_frame": 3, "end_frame": 4, "keys": "S", "mouse": "·"},  # one output frame
        {"start_frame": 4, "end_frame": 9, "keys": "A", "mouse": "·"},
    ]
    for s in segs:
        s.update(
            distance_speed=1, turn_speed=0, view_rotation_speed=0, text_yume="t", text_yume5b="t5"
        )
    out = retime_segments(segs, idx)
    assert [(s["start"], s["end"], s["keys"]) for s in out] == [(0, 1, "W"), (2, 5, "A")]


# ---- the stage, directly ----------------------------------------------------------------


class CountingReader:
    """A PyAV container that counts opens and passes over its packets."""

    opened: list[CountingReader] = []

    def __init__(self, container) -> None:
        self.container, self.passes = container, 0
        self.streams = container.streams
        CountingReader.opened.append(self)

    def demux(self, *streams):
        self.passes += 1
        return self.container.demux(*streams)

    def seek(self, offset: int) -> None:
        self.container.seek(offset)

    def close(self) -> None:
        self.container.close()


def test_stage_round_trip_matches_the_known_motion(good_video, tmp_path, monkeypatch):
    real_open = video_module._open
    monkeypatch.setattr(video_module, "_open", lambda *a, **k: CountingReader(real_open(*a, **k)))
    CountingReader.opened.clear()
    stage = ClipsStage(config(good_video.parent), DataRoot.at(tmp_path))
    stage.setup()
    item = {
        "key": sample_key("walk_then_turn"),
        "input": str(good_video),
        "clip": clip_row("walk_then_turn", "good.mp4"),
        "segments": segment_rows("walk_then_turn"),
    }
    result = stage.process([item])
    assert [o.status for o in result.outcomes] == ["done"], result.outcomes
    assert result.outcomes[0].key == "walk_then_turn"
    (row,) = result.tables["clips"]
    assert (row["clip_id"], row["frames"], row["segments"]) == ("walk_then_turn", 160, 2)
    assert row["path"] == "clips/sekai-real/walk_then_turn.mp4" and row["bytes"] > 0
    # The source is opened once; its packets are read twice: timestamps only, then decoded.
    assert [r.passes for r in CountingReader.opened] == [2]
    staged = tmp_path / "clips" / "sekai-real"
    meta = json.loads((staged / "walk_then_turn.json").read_text())
    validate_sample(meta)
    # 300 frames at 30 fps -> 160 frames at 16 fps; output frame 80 is source frame 150,
    # the first frame of the turn.
    assert (meta["frames"], meta["fps"], meta["width"], meta["height"]) == (160, 16.0, 128, 72)
    assert meta["source_frame_range"] == [0, 298]
    assert meta["keys"] == ["W"] * 80 + ["None"] * 80
    assert meta["mouse"] == ["·"] * 80 + ["→"] * 80
    assert [(s["start"], s["end"], s["keys"], s["mouse"]) for s in meta["segments"]] == [
        (0, 80, "W", "·"),
        (80, 159, "None", "→"),
    ]
    assert meta["captions"]["scene"].startswith("A walk") and meta["meta"]["sampleSeed"] == "1"
    assert (staged / "walk_then_turn.txt").read_text() == meta["captions"]["scene"]
    assert meta["provenance"]["generated"] is False and meta["provenance"]["generator"] is None
    vr = decord.VideoReader(str(staged / "walk_then_turn.mp4"))
    assert len(vr) == 160 and vr[0].shape == (72, 128, 3)
    # The video moves where the tokens say it does: forward frames change, and during the
    # turn the view pans (large change between frames 80 apart).
    frames = vr.get_batch([0, 79, 159]).asnumpy().astype(float)
    assert np.abs(frames[0] - frames[1]).mean() > 2 and np.abs(frames[1] - frames[2]).mean() > 5


GENERATOR = "yume-data sample-sekai (procedural render)"

# ---- the job on Ray ---------------------------------------------------------------------

BAD = {  # clip id -> (video file, row overrides, how to make the file, expected reason)
    "missing": ("nope.mp4", {}, None, "missing_video"),
    "zero": ("zero.mp4", {}, lambda p, g: p.write_bytes(b""), "empty_video"),
    "text": ("notes.mp4", {}, lambda p, g: p.write_text("no video here\n" * 40), "not_a_video"),
    "cut": (
        "cut.mp4",
        {},
        lambda p, g: p.write_bytes(g.read_bytes()[: g.stat().st_size // 3]),
        "truncated_video",
    ),
    "long_traj": ("good.mp4", {"num_frames": N + 20}, None, "trajectory_longer_than_video"),
    "escape": ("../good.mp4", {}, None, "unsafe_path"),
}


def build_root(tmp_path: Path, good_video: Path) -> tuple[Path, Path]:
    videos, root = tmp_path / "videos", tmp_path / "data"
    videos.mkdir()
    (videos / "good.mp4").write_bytes(good_video.read_bytes())
    clips = [clip_row("good", "good.mp4"), clip_row("odd/../id.v2", "good.mp4")]
    segments = segment_rows("good") + segment_rows("odd/../id.v2")
    for clip_id, (name, over, make, _) in BAD.items():
        if make:
            make(videos / name, good_video)
        clips.append(clip_row(clip_id, name, **over))
        segments += segment_rows(clip_id)
    clips.append(clip_row("seg_past_end", "good.mp4"))
    clips.append(clip_row("good", "good.mp4"))  # a duplicate row
    segments += segment_rows("seg_past_end", last=N + 30)
    write_table(
        pa.Table.from_pylist(clips, CLIPS_SCHEMA),
        root / "manifests" / "action_clips.parquet",
        CLIPS_SCHEMA,
    )
    write_table(
        pa.Table.from_pylist(segments, SEGMENTS_SCHEMA),
        root / "manifests" / "actions.parquet",
        SEGMENTS_SCHEMA,
    )
    return videos, root


def test_job_rejects_bad_inputs_resumes_and_writes_shards(ray_local, good_video, tmp_path):
    videos, root = build_root(tmp_path, good_video)
    cfg = config(videos, max_samples=1)
    summary = run_clips(root, cfg, workers=2)
    assert (summary["inputs"], summary["accepted"], summary["rejected"]) == (10, 2, 8)
    assert summary["tables"] == {"clips": 2} and summary["exit_code"] == 3
    assert summary["this_run"]["processed"] == 9  # the duplicate row is rejected up front
    rejects = pq.read_table(root / "manifests" / "clips.rejects.parquet").to_pylist()
    got = {r["key"]: r["reason"] for r in rejects}
    want = {sample_key(k): v[3] for k, v in BAD.items()} | {
        "seg_past_end": "segment_beyond_video",
        "good": "duplicate_key",
    }
    assert got == want and all(r["detail"] for r in rejects)
    (dup,) = [r for r in rejects if r["reason"] == "duplicate_key"]
    assert dup["input"] == f"{videos / 'good.mp4'} (repeat 2)"
    samples = pq.read_table(root / "manifests" / "clips.parquet").to_pylist()
    assert sorted(r["clip_id"] for r in samples) == ["good", "odd/../id.v2"]
    assert all(r["frames"] == 160 and (r["height"], r["width"]) == (72, 128) for r in samples)
    # Odd ids stay inside the output folder; nothing was written next to the inputs.
    staged = sorted(p.name for p in (root / "clips" / "sekai-real").iterdir())
    odd = sample_key("odd/../id.v2")
    assert staged == sorted(f"{k}.{e}" for k in ("good", odd) for e in ("json", "mp4", "txt"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "videos"]
    assert sorted(p.name for p in root.iterdir()) == [
        "README.md",
        "clips",
        "manifests",
        "reports",
        "shards",
    ]
    verified = verify_dataset(root / "shards" / "sekai-real", decode="full")
    assert verified["ok"], verified["errors"]
    assert (verified["samples_indexed"], verified["shards"]) == (2, 2)
    # Round trip through the training reader: a whole-clip t2v window per sample.
    tars = sorted(str(p) for p in (root / "shards" / "sekai-real").glob("*.tar"))
    reader = make_window_dataset(tars, 0, 160, shuffle=0, tasks=("t2v",))
    items = list(reader)
    assert len(items) == 2 and reader.skipped.count == 0
    for item in items:
        assert tuple(item["video"].shape) == (160, 72, 128, 3) and item["fps"] == 16.0
        assert item["keys"].tolist() == [KEY_CODE["W"]] * 80 + [KEY_CODE["None"]] * 80
        assert item["mouse"].tolist() == [MOUSE_CODE["·"]] * 80 + [MOUSE_CODE["→"]] * 80
    report = json.loads((root / "reports" / "clips.json").read_text())
    assert report["rejects_by_reason"]["missing_video"] == 1 and report["output_frames"] == 320

    again = run_clips(root, cfg, workers=2)
    assert (again["this_run"]["processed"], again["this_run"]["skipped_done"]) == (0, 9)
    assert (again["accepted"], again["rejected"], again["runs"]) == (2, 8, [1, 2])
    assert again["shards"]["samples_written"] == 0
    assert pq.read_table(root / "manifests" / "clips.parquet").num_rows == 2

    # Resuming with another output config would mix two configs in one dataset: refused.
    with pytest.raises(StaleConfigError):
        run_clips(root, dataclasses.replace(cfg, fps=8.0))

    # The CLI runs the same job: exit code 3 says some inputs were rejected.
    cli = CliRunner()
    args = ["clips", "--videos", str(videos), "--root", str(root), "--resolution", "72x128"]
    result = cli.invoke(app, args)
    assert result.exit_code == 3, result.output
    assert "accepted 2 + rejected 8" in result.output
    assert "--resolution" in cli.invoke(app, ["clips", "--help"]).output


def test_end_to_end_sample_release_actions_clips_shards(ray_local, tmp_path):
    """sample-sekai (rendered videos) -> actions -> clips -> verified shards."""
    from curation.sample_sekai import write_sample_release
    from curation.stages.actions import ActionsConfig, ActionsStage

    release, root = tmp_path / "release", tmp_path / "data"
    write_sample_release(release, clips=2, frames=320, seed=3, video=True, video_size=(192, 108))
    run_stage(ActionsStage, ActionsConfig(sekai=[release]), RunOptions(root=root, progress=False))
    summary = run_clips(root, config(release / "videos"))
    assert (summary["inputs"], summary["accepted"], summary["rejected"]) == (2, 2, 0)
    assert verify_dataset(root / "shards" / "sekai-real", decode="full")["ok"]
    truth = {r["clip_id"]: r for r in pq.read_table(release / "ground_truth.parquet").to_pylist()}
    for clip_id, gt in truth.items():
        meta = json.loads(
            (root / "clips" / "sekai-real" / f"{sample_key(clip_id)}.json").read_text()
        )
        idx = resample_indices(320, 30.0, 16.0)
        want_keys = [KEYS[gt["keys"][min(i, 318)]] for i in idx]
        want_mouse = [MOUSE[gt["mouse"][min(i, 318)]] for i in idx]
        agree = np.mean(
            [
                a == b
                for a, b in zip(meta["keys"] + meta["mouse"], want_keys + want_mouse, strict=True)
            ]
        )
        assert meta["frames"] == len(idx) and agree > 0.95
        assert meta["provenance"]["generated"] is True
        assert meta["provenance"]["generator"] == GENERATOR == meta["meta"]["generator"]
    assert summary["generated"] == {GENERATOR: 2}


def _descendants(pid: int) -> set[int]:
    """Every live process below ``pid``, by parent links in /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # exited while listing
        children.setdefault(ppid, []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def kill_process_tree(proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """SIGKILL a job and every process it started, its Ray cluster included, and wait.

    Ray's daemons start their own sessions, so killing the process group leaves them
    running. The tree is frozen first (SIGSTOP, until no new process appears), so nothing
    escapes by forking or being re-parented, then every process in it is SIGKILLed.
    """
    os.killpg(proc.pid, signal.SIGSTOP)
    tree: set[int] = set()
    while new := ({proc.pid} | _descendants(proc.pid)) - tree:
        for pid in new:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        tree |= new
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    for pid in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + timeout
    while (left := [p for p in tree if _alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"processes of the killed job still running: {left}"


@pytest.mark.slow
def test_killed_job_reruns_without_loss_or_duplicates(ray_local, good_video, tmp_path):
    """SIGKILL the job (driver and its Ray) mid-run, rerun: every key once, all verified."""
    videos, root = tmp_path / "videos", tmp_path / "data"
    videos.mkdir()
    ids = [f"clip{i}" for i in range(5)]
    for i in ids:
        (videos / f"{i}.mp4").write_bytes(good_video.read_bytes())
    clips = [clip_row(i, f"{i}.mp4") for i in ids]
    segments = [s for i in ids for s in segment_rows(i)]
    manifests = root / "manifests"
    write_table(
        pa.Table.from_pylist(clips, CLIPS_SCHEMA), manifests / "action_clips.parquet", CLIPS_SCHEMA
    )
    write_table(
        pa.Table.from_pylist(segments, SEGMENTS_SCHEMA),
        manifests / "actions.parquet",
        SEGMENTS_SCHEMA,
    )
    args = [
        "--videos",
        str(videos),
        "--root",
        str(root),
        "--resolution",
        "72x128",
        "--workers",
        "1",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobs.clips", *args],
        cwd=Path(__file__).resolve().parents[1],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    status = root / "manifests" / "clips.parts" / "status"  # one part per committed clip
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if len(list(status.glob("part-*.parquet"))) >= 2:
            break
        time.sleep(0.2)
    kill_process_tree(proc)
    done_at_kill = len(list(status.glob("part-*.parquet")))
    assert 0 < done_at_kill < len(ids), "the kill should land mid-run"
    assert not (manifests / "clips.parquet").exists()

    summary = run_clips(root, config(videos))
    run = summary["this_run"]
    assert run["processed"] + run["skipped_done"] == len(ids) == summary["accepted"]
    assert run["skipped_done"] == done_at_kill and summary["rejected"] == 0
    samples = pq.read_table(manifests / "clips.parquet").column("key").to_pylist()
    assert sorted(samples) == ids
    index = (
        pq.read_table(root / "shards" / "sekai-real" / "__meta__" / "index.parquet")
        .column("key")
        .to_pylist()
    )
    assert sorted(index) == ids
    assert verify_dataset(root / "shards" / "sekai-real", decode="full")["ok"]
