"""The stage contract, checked for every registered stage (like diffusers' model tester mixins).

Each stage command in ``jobs.cli.JOBS`` must have a case here; every case gets the same
checks: inputs = accepted + rejected with reasons, a rerun skips done work, a killed run
rerun equals a clean run, a changed config is refused, more inputs are added to the
accounting, a known key with another input is refused, what reaches Ray holds absolute
paths, and a run without inputs still writes its tables and report.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import jobs.runner as runner
from curation.dataroot import DataRoot
from curation.manifest import write_table
from curation.sample_sekai import write_sample_release
from curation.stages.actions import ActionsConfig, ActionsStage
from curation.stages.base import StaleConfigError
from curation.stages.clips import ClipsConfig, ClipsStage
from curation.stages.encode_latents import EncodeLatentsStage
from curation.stages.parts import part_name, write_part
from curation.stages.recaption import RecaptionStage
from jobs.cli import JOBS
from jobs.runner import JobError, RunOptions, run_stage
from schemas.actions import CLIPS_SCHEMA, SEGMENTS_SCHEMA
from tests.conftest import FAILURE_CLASSES, empty, garbage, truncate
from tests.test_dedup_captions import DedupCaptionsCase
from tests.test_encode_latents import EncodeLatentsCase
from tests.test_events import EventsCase
from tests.test_recaption import RecaptionCase
from tests.test_synth import SynthGenerateCase, SynthScoreCase, SynthSelectCase


class ActionsCase:
    """Six generated Sekai clips with one bad input of each kind."""

    stage = ActionsStage

    def build(self, tmp: Path) -> tuple[ActionsConfig, dict]:
        info = write_sample_release(tmp / "sekai", clips=4, frames=120, seed=3, corrupt=True)
        return ActionsConfig(sekai=[tmp / "sekai"], min_frames=20), info["expected_rejects"]

    def changed(self, config: ActionsConfig) -> ActionsConfig:
        return dataclasses.replace(config, min_frames=40)

    def more(self, tmp: Path, config: ActionsConfig) -> tuple[ActionsConfig, int]:
        write_sample_release(tmp / "more", clips=2, frames=120, seed=11)
        for p in (tmp / "more").rglob("*.npz"):  # new clip ids: no clash with the first release
            p.rename(p.with_name(f"extra_{p.name}"))
        return dataclasses.replace(config, trajectories=[tmp / "more"]), 2

    def moved(self, tmp: Path, config: ActionsConfig) -> ActionsConfig:
        """The same clip id from another file, without the original inputs."""
        src = sorted((tmp / "sekai").rglob("*.npz"))[0]
        (tmp / "moved").mkdir()
        shutil.copy(src, tmp / "moved" / src.name)
        return dataclasses.replace(config, sekai=[], trajectories=[tmp / "moved"])

    def empty(self, tmp: Path) -> ActionsConfig:
        (tmp / "nothing").mkdir()
        return ActionsConfig(trajectories=[tmp / "nothing"])

    def relative(self, config: ActionsConfig, base: Path) -> ActionsConfig:
        return dataclasses.replace(config, sekai=[p.relative_to(base) for p in config.sekai])

    not_applicable = {
        "long_text": "a caption is kept whatever its length; an id too long for a file name "
        "is clip_id_too_long under --export-yume (tests/test_actions_inputs.py)",
        "missing_field": "a row with fewer fields than the header is bad_csv_row, "
        "which the build's ragged row already is",
    }

    def damage(self, tmp: Path, config: ActionsConfig) -> tuple[ActionsConfig, dict]:
        """Three more trajectories, garbage, empty and cut in half, and a CSV row whose
        video file name is empty, in a second release folder."""
        release = tmp / "damaged"
        write_sample_release(release, clips=3, frames=120, seed=13)
        paths = sorted(release.rglob("*.npz"))
        garbage(paths[0])
        empty(paths[1])
        truncate(paths[2])
        csv = next(release.rglob("*.csv"))
        header = csv.read_text().splitlines()[0].split(",")
        csv.write_text(csv.read_text() + "," * (len(header) - 1) + "\n")  # every field empty
        row = f"{csv}:{len(csv.read_text().splitlines())}"
        expected = {
            row: ("empty_text", "bad_video_file_name"),
            paths[0].stem: ("garbage", "corrupt_file"),
            paths[1].stem: ("empty", "empty_file"),
            paths[2].stem: ("truncated", "corrupt_file"),
        }
        return dataclasses.replace(config, sekai=[*config.sekai, release]), expected

    def vanish(self, tmp: Path, items: list[dict]) -> dict:
        """A discovered trajectory is deleted before a worker reads it."""
        item = next(  # a clip of the first release with no copy (the build's duplicate_key)
            it
            for it in items
            if "damaged" not in it["input"] and len(list(tmp.rglob(Path(it["input"]).name))) == 1
        )
        Path(item["input"]).unlink()
        return {item["key"]: ("vanished", "missing_trajectory")}


class ClipsCase:
    """Two rendered clips from the actions stage, one missing video and one duplicate row."""

    stage = ClipsStage

    def build(self, tmp: Path) -> tuple[ClipsConfig, dict]:
        release = tmp / "release"
        write_sample_release(release, clips=2, frames=64, seed=5, video=True, video_size=(64, 36))
        root = DataRoot.at(tmp / "data")
        run_stage(ActionsStage, ActionsConfig(sekai=[release], min_frames=8), _opts(root.path))
        clips = pq.read_table(root.manifest("action_clips")).to_pylist()
        missing = dict(clips[0], clip_id="no_video", video_file="no_video.mp4")
        rows = [*clips, missing, clips[0]]  # the last is a duplicate row
        write_table(
            pa.Table.from_pylist(rows, CLIPS_SCHEMA), root.manifest("action_clips"), CLIPS_SCHEMA
        )
        config = ClipsConfig(
            videos=release / "videos", resolution="32x64", max_samples=1, min_side=16
        )
        return config, {"missing_video": 1, "duplicate_key": 1}

    def changed(self, config: ClipsConfig) -> ClipsConfig:
        return dataclasses.replace(config, fps=8.0)

    def more(self, tmp: Path, config: ClipsConfig) -> tuple[ClipsConfig, int]:
        rows = pq.read_table(DataRoot.at(tmp / "data").manifest("action_clips")).to_pylist()
        _add_clips(tmp, {"again_" + rows[1]["clip_id"]: rows[1]})
        return config, 1

    def moved(self, tmp: Path, config: ClipsConfig) -> ClipsConfig:
        other = tmp / "other-videos"
        shutil.copytree(config.videos, other)
        return dataclasses.replace(config, videos=other)

    def empty(self, tmp: Path) -> ClipsConfig:
        root = DataRoot.at(tmp / "data")
        write_table(CLIPS_SCHEMA.empty_table(), root.manifest("action_clips"), CLIPS_SCHEMA)
        (tmp / "videos").mkdir()
        return ClipsConfig(videos=tmp / "videos")

    def relative(self, config: ClipsConfig, base: Path) -> ClipsConfig:
        return dataclasses.replace(config, videos=config.videos.relative_to(base))

    not_applicable = {
        "empty_text": "a clip's texts come from the actions stage (ActionsCase tries them at "
        "their source); an empty caption falls back to the segment text",
        "long_text": "a caption is kept whatever its length: the text encoder truncates",
    }

    def damage(self, tmp: Path, config: ClipsConfig) -> tuple[ClipsConfig, dict]:
        """Three more clip rows whose videos are garbage, empty and cut in half, and one
        whose segment rows are missing from the actions table."""
        rows = pq.read_table(DataRoot.at(tmp / "data").manifest("action_clips")).to_pylist()
        good = rows[1]
        damaged = {"dmg_garbage": garbage, "dmg_empty": empty,
                   "dmg_truncated": truncate}  # fmt: skip
        for clip_id, spoil in damaged.items():
            video = Path(config.videos) / f"{clip_id}.mp4"
            shutil.copy(Path(config.videos) / good["video_file"], video)
            spoil(video)
        _add_clips(tmp, {k: dict(good, video_file=f"{k}.mp4") for k in damaged})
        _add_clips(tmp, {"dmg_nosegs": rows[0]}, segments=False)
        return config, {
            "dmg_garbage": ("garbage", "not_a_video"),
            "dmg_empty": ("empty", "empty_video"),
            "dmg_truncated": ("truncated", "truncated_video"),
            "dmg_nosegs": ("missing_field", "missing_segments"),
        }

    def vanish(self, tmp: Path, items: list[dict]) -> dict:
        """A good clip's video is deleted before a worker opens it."""
        rows = pq.read_table(DataRoot.at(tmp / "data").manifest("action_clips")).to_pylist()
        item = next(it for it in items if it["clip"]["clip_id"] == rows[1]["clip_id"])
        Path(item["input"]).unlink()
        return {item["key"]: ("vanished", "missing_video")}


def _add_clips(tmp: Path, clips: dict[str, dict], segments: bool = True) -> None:
    """Append copies of actions clip rows under new ids to the root's actions tables, with
    copies of their segment rows unless ``segments`` is False."""
    root = DataRoot.at(tmp / "data")
    rows = pq.read_table(root.manifest("action_clips")).to_pylist()
    segs = pq.read_table(root.manifest("actions")).to_pylist()
    for clip_id, clip in clips.items():
        rows.append(dict(clip, clip_id=clip_id))
        if segments:
            segs += [dict(s, clip_id=clip_id) for s in segs if s["clip_id"] == clip["clip_id"]]
    write_table(pa.Table.from_pylist(rows, CLIPS_SCHEMA), root.manifest("action_clips"),
                CLIPS_SCHEMA)  # fmt: skip
    write_table(pa.Table.from_pylist(segs, SEGMENTS_SCHEMA), root.manifest("actions"),
                SEGMENTS_SCHEMA)  # fmt: skip


CASES = {
    "actions": ActionsCase(),
    "clips": ClipsCase(),
    "encode_latents": EncodeLatentsCase(),
    "recaption": RecaptionCase(),
    "dedup_captions": DedupCaptionsCase(),
    "synth_generate": SynthGenerateCase(),
    "synth_score": SynthScoreCase(),
    "synth_select": SynthSelectCase(),
    "events": EventsCase(),
}


def _opts(root: Path, **kw) -> RunOptions:
    return RunOptions(root=root, batch_size=2, progress=False, **kw)


def _tables(stage, root: Path) -> dict:
    data = DataRoot.at(root)
    out = {name: pq.read_table(data.manifest(name)).to_pylist() for name in stage.tables}
    out["rejects"] = sorted(
        (r["key"], r["reason"]) for r in pq.read_table(data.rejects(stage.name)).to_pylist()
    )
    return out


def test_every_registered_stage_has_a_contract_case():
    assert {job.STAGE.name for job in JOBS} == set(CASES)


@pytest.fixture(params=sorted(CASES))
def case(request):
    return CASES[request.param]


def test_accounting_rerun_and_changed_config(case, ray_local, tmp_path):
    config, expected = case.build(tmp_path)
    root = tmp_path / "data"
    s = run_stage(case.stage, config, _opts(root))
    assert s["accounted"] and s["inputs"] == s["accepted"] + s["rejected"] > 0
    assert s["rejects_by_reason"] == expected
    assert s["exit_code"] == (3 if expected else 0)
    rejects = pq.read_table(DataRoot.at(root).rejects(case.stage.name)).to_pylist()
    assert len(rejects) == s["rejected"] and all(r["reason"] and r["detail"] for r in rejects)
    report = json.loads(DataRoot.at(root).report(case.stage.name).read_text())
    assert (report["inputs"], report["accepted"]) == (s["inputs"], s["accepted"])
    assert report["provenance"]["config_hash"]

    before = _tables(case.stage, root)
    again = run_stage(case.stage, config, _opts(root))
    assert again["this_run"]["processed"] == 0 and _tables(case.stage, root) == before

    with pytest.raises(StaleConfigError, match="--overwrite"):
        run_stage(case.stage, case.changed(config), _opts(root))
    fresh = run_stage(case.stage, case.changed(config), _opts(root, overwrite=True))
    assert fresh["inputs"] == s["inputs"] and fresh["this_run"]["run"] == 1


def test_killed_run_then_rerun_equals_a_clean_run(case, ray_local, tmp_path):
    """A kill leaves committed batches and a batch whose rows were written but whose status
    was not; the rerun must neither lose nor duplicate anything."""
    config, _ = case.build(tmp_path)
    killed = tmp_path / "data"
    stage = case.stage(config, DataRoot.at(killed))
    items, _ = runner.discover(stage)
    stage.setup()
    runner.process_batch(stage, items[:1], run=1)  # committed before the kill
    result = stage.process(items[1:2])  # rows written, status never committed
    name = part_name(((it["key"], it["input"]) for it in items[1:2]), 1)
    write_part(stage.root.parts(stage.name), name, [], result.tables, stage.tables, "x", 1)
    (stage.root.parts(stage.name) / "status" / f"{name}.parquet").unlink()
    resumed = run_stage(case.stage, config, _opts(killed))
    assert resumed["this_run"]["skipped_done"] == 1

    clean_tmp = tmp_path / "clean"
    clean_tmp.mkdir()
    if case.stage is ClipsStage:  # the same upstream manifests in the clean root
        shutil.copytree(killed / "manifests", clean_tmp / "data" / "manifests",
                        ignore=shutil.ignore_patterns("clips*"))  # fmt: skip
    if case.stage in (EncodeLatentsStage, RecaptionStage):  # inputs: the root's clip shards
        shutil.copytree(killed / "shards", clean_tmp / "data" / "shards")
    run_stage(case.stage, config, _opts(clean_tmp / "data"))
    assert _tables(case.stage, killed) == _tables(case.stage, clean_tmp / "data")


def test_more_inputs_are_added_and_a_moved_key_is_refused(case, ray_local, tmp_path):
    config, _ = case.build(tmp_path)
    root = tmp_path / "data"
    first = run_stage(case.stage, config, _opts(root))
    bigger, added = case.more(tmp_path, config)
    second = run_stage(case.stage, bigger, _opts(root))
    assert second["inputs"] == first["inputs"] + added
    assert second["accepted"] == first["accepted"] + added and second["runs"] == [1, 2]
    assert second["this_run"]["processed"] == added

    moved = case.moved(tmp_path, config)
    if getattr(case, "follows_moves", False):  # the input names the clip, not its shard
        assert run_stage(case.stage, moved, _opts(root))["this_run"]["processed"] == 0
    else:
        with pytest.raises(JobError, match="--overwrite"):
            run_stage(case.stage, moved, _opts(root))


def test_what_reaches_ray_is_absolute(case, ray_local, tmp_path, monkeypatch):
    config, _ = case.build(tmp_path)
    monkeypatch.chdir(tmp_path)
    seen = {}

    def capture(stage, batches, opts, run):
        seen["stage"], seen["batches"] = stage, batches

    monkeypatch.setattr(runner, "_run_on_ray", capture)
    # Nothing ran, so the runner's accounting check must fail loudly.
    with pytest.raises(RuntimeError, match="no outcome"):
        run_stage(case.stage, case.relative(config, tmp_path), _opts(Path("data")))
    stage = seen["stage"]
    assert stage.root.path.is_absolute() and stage.root.path == tmp_path / "data"
    for f in dataclasses.fields(stage.config):
        value = getattr(stage.config, f.name)
        if f.metadata.get("path") and value:
            for v in value if isinstance(value, list) else [value]:
                assert Path(v).is_absolute(), (f.name, v)
    inputs = [it["input"] for batch in seen["batches"] for it in batch]
    assert inputs and all(Path(i).is_absolute() for i in inputs)


def test_no_input_still_writes_tables_and_report(case, ray_local, tmp_path):
    config = case.empty(tmp_path)
    root = DataRoot.at(tmp_path / "data")
    s = run_stage(case.stage, config, _opts(root.path))
    assert s["exit_code"] == 1 and "found no inputs" in s["error"]
    assert s["inputs"] == s["accepted"] == s["rejected"] == 0
    assert pq.read_table(root.rejects(case.stage.name)).num_rows == 0
    for name in case.stage.tables:
        assert pq.read_table(root.manifest(name)).num_rows == 0
    assert json.loads(root.report(case.stage.name).read_text())["exit_code"] == 1


def test_every_case_damages_its_inputs():
    """Each stage puts the generic input failures (issue 8) through itself, or says why a
    class cannot occur for its inputs."""
    for name, c in CASES.items():
        assert all(hasattr(c, a) for a in ("damage", "vanish", "not_applicable")), name
        assert set(c.not_applicable) <= set(FAILURE_CLASSES), name
        assert all(why.strip() for why in c.not_applicable.values()), name


@pytest.mark.parametrize("name", sorted(CASES))
def test_generic_input_failures_are_named_rejects(name, ray_local, tmp_path, monkeypatch):
    """Garbage, empty, truncated and vanished inputs (and bad rows where inputs are rows)
    each become a rejects row with a named reason: never unexpected_error, never a crash."""
    case = CASES[name]
    config, built = case.build(tmp_path)
    config, expected = case.damage(tmp_path, config)
    real, vanished = runner.discover, {}

    def discover_then_vanish(stage):  # an input that disappears after discovery
        items, rejected = real(stage)
        if not vanished:
            vanished.update(case.vanish(tmp_path, items))
        return items, rejected

    monkeypatch.setattr(runner, "discover", discover_then_vanish)
    root = tmp_path / "data"
    s = run_stage(case.stage, config, _opts(root))
    expected = {**expected, **vanished}
    classes = [c for c, _ in expected.values()] + list(case.not_applicable)
    assert sorted(classes) == sorted(FAILURE_CLASSES)  # each class tried or said why not
    rejects = pq.read_table(DataRoot.at(root).rejects(case.stage.name)).to_pylist()
    got = {r["key"]: r["reason"] for r in rejects}
    assert {k: got.get(k) for k in expected} == {k: r for k, (_, r) in expected.items()}
    assert "unexpected_error" not in got.values() and all(r["detail"] for r in rejects)
    others = Counter(r for k, r in got.items() if k not in expected)
    assert dict(others) == built  # only the build's own rejects besides the damaged ones
    assert s["accounted"] and s["accepted"] == s["inputs"] - s["rejected"] > 0
    assert s["exit_code"] == 3

    def present(tables: dict) -> dict:  # a vanished file is no input of a later run
        return {**tables, "rejects": [r for r in tables["rejects"] if r[0] not in vanished]}

    before = present(_tables(case.stage, root))
    again = run_stage(case.stage, config, _opts(root))["this_run"]
    if again["processed"]:  # a vanished input still listed upstream changed: its batch is redone
        assert again["processed"] == again["redone_changed"] <= 2 * len(vanished)
        again = run_stage(case.stage, config, _opts(root))["this_run"]
    assert again["processed"] == 0 and present(_tables(case.stage, root)) == before
