"""What an item was made from is part of its resume identity: a rerun redoes an item whose
input file or upstream records changed, and a stage fed by another stage's records drops
what that stage no longer holds, down to the shards (they never keep a sample from actions
that no longer exist or tokens from old thresholds)."""

from __future__ import annotations

import csv as csvlib
import dataclasses
import json
import os
import tarfile
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import jobs.runner as runner
from curation.dataroot import DataRoot
from curation.manifest import write_table
from curation.sample_images import write_sample_images
from curation.sample_openvid import write_sample_openvid
from curation.sample_sekai import write_sample_release
from curation.shards import (
    INDEX_NAME,
    iter_shard,
    read_index,
    write_shards,
    write_shards_from_dir,
)
from curation.shards.writer import ShardRewriteError
from curation.stages.actions import ActionsConfig, ActionsStage
from curation.stages.base import Outcome
from curation.stages.clips import ClipsConfig, ClipsStage
from curation.stages.encode_latents import EncodeLatentsStage
from curation.stages.parts import item_version, read_status, stale_batches, write_part
from jobs.runner import RunOptions, run_stage
from tests.conftest import garbage, truncate
from tests.test_recaption import _in_process  # a patched prompt table must reach the batches
from tests.test_shards import make_mp4, make_sample
from tests.test_shards import stage as stage_samples


def _shard_samples(folder) -> dict[str, dict]:
    """Every sample json in the dataset's indexed shards, by key."""
    out = {}
    for shard in sorted(set(read_index(folder).column("shard").to_pylist())):
        for key, members in iter_shard(folder / shard, exts=("json",)):
            assert key not in out, f"{key} is in two shards"
            out[key] = json.loads(members["json"])
    return out


def _touch_later(path) -> None:
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


# ---- the parts rule, without Ray ---------------------------------------------------------------


def test_item_version_covers_the_named_fields_and_the_input_file(tmp_path):
    f = tmp_path / "in.txt"
    f.write_text("a")
    item = {"key": "k", "input": str(f), "row": {"caption": "a cat"}}
    plain = item_version(item)
    assert plain == f"1:{os.stat(f).st_mtime_ns}"
    with_row = item_version(item, ["row"])
    assert with_row.startswith(plain + "#")
    assert item_version({**item, "row": {"caption": "a dog"}}, ["row"]) != with_row
    _touch_later(f)
    assert item_version(item, ["row"]) != with_row  # the file changed, the row did not
    # an input naming no file (a CSV row ``file:row``) still gets the fields' digest
    row_item = {"key": "k", "input": "captions.csv:7", "row": {"caption": "a cat"}}
    assert item_version(row_item, ["row"]).startswith("-#")
    assert item_version(row_item) is None
    # a source file named in ``files`` (an image behind ``image#description``) counts too
    pair = {"key": "k", "input": f"{f}#d3", "files": [str(f)], "text": "a storm"}
    was = item_version(pair, ["files", "text"])
    _touch_later(f)
    assert item_version(pair, ["files", "text"]) != was


def test_stale_batches_takes_every_batch_mate(tmp_path):
    parts = tmp_path / "parts"
    outs = [Outcome(k, k, "done") for k in ("a", "b", "c")]
    write_part(parts, "part-0001-" + "0" * 16, outs[:2], {}, {}, "h", 1)
    write_part(parts, "part-0001-" + "1" * 16, outs[2:], {}, {}, "h", 1)
    status = read_status(parts)
    assert stale_batches(status, {"a"}) == {"a", "b"}
    assert stale_batches(status, {"c"}) == {"c"}
    assert stale_batches(status, set()) == set()


def _stage(folder, keys) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for key in keys:
        for ext, data in make_sample(key).items():
            (folder / f"{key}.{ext}").write_bytes(data)


def test_a_restaged_or_gone_sample_rewrites_its_shard_only(tmp_path):
    staging, out = tmp_path / "staging", tmp_path / "shards"
    keys = [f"k{i}" for i in range(6)]
    _stage(staging, keys)
    first = write_shards_from_dir(staging, out, "d", max_samples=2, keys=set(keys))
    assert first["samples_written"] == 6 and len(first["shards_written"]) == 3
    shard_of = {r["key"]: r["shard"] for r in read_index(out).to_pylist()}
    untouched = {s: (out / s).read_bytes() for s in set(shard_of.values())}

    time.sleep(0.01)
    meta = json.loads((staging / "k0.json").read_text())
    meta["captions"]["scene"] = "restaged"
    (staging / "k0.json").write_text(json.dumps(meta))  # k0 redone
    again = write_shards_from_dir(staging, out, "d", max_samples=2, keys=set(keys) - {"k3"})
    assert again["shards_rewritten"] == sorted({shard_of["k0"], shard_of["k3"]})
    samples = _shard_samples(out)
    assert sorted(samples) == [k for k in keys if k != "k3"]  # k3 gone, nothing duplicated
    assert samples["k0"]["captions"]["scene"] == "restaged"
    kept = set(untouched) - {shard_of["k0"], shard_of["k3"]}
    assert kept and all((out / s).read_bytes() == untouched[s] for s in kept)
    # nothing changed since: nothing rewritten
    third = write_shards_from_dir(staging, out, "d", max_samples=2, keys=set(keys) - {"k3"})
    assert third["shards_rewritten"] == [] and third["samples_written"] == 0


def test_a_shard_that_cannot_be_rebuilt_is_left_whole_and_named(tmp_path):
    staging, out = tmp_path / "staging", tmp_path / "shards"
    _stage(staging, ["a", "b"])
    write_shards_from_dir(staging, out, "d", max_samples=2)
    before = (out / INDEX_NAME).read_bytes()
    for ext in ("json", "mp4", "txt"):
        (staging / f"b.{ext}").unlink()  # staging of b cleaned up after packing
    with pytest.raises(ShardRewriteError, match=r"\(b\) have no staged files"):
        write_shards_from_dir(staging, out, "d", max_samples=2, keys={"b"})
    assert (out / INDEX_NAME).read_bytes() == before
    # b's staging gone but b still wanted: nothing to rewrite, the shard stays
    summary = write_shards_from_dir(staging, out, "d", max_samples=2, keys={"a", "b"})
    assert summary["shards_rewritten"] == [] and sorted(_shard_samples(out)) == ["a", "b"]


# ---- end to end on Ray -------------------------------------------------------------------------


def _clip_tokens(root: DataRoot) -> dict[str, list]:
    rows = pq.read_table(root.manifest("action_clips")).to_pylist()
    return {r["clip_id"]: (r["keys"], r["config_hash"]) for r in rows}


@pytest.mark.slow  # four Ray runs (actions, clips, twice): `make test-slow`, CI
def test_actions_rerun_redoes_or_drops_the_clips_made_from_them(ray_local, tmp_path):
    release = tmp_path / "release"
    write_sample_release(release, clips=3, frames=64, seed=5, video=True, video_size=(64, 36))
    root = DataRoot.at(tmp_path / "data")
    opts = RunOptions(root=root.path, progress=False, batch_size=1)  # no batch-mates redone
    over = RunOptions(root=root.path, progress=False, overwrite=True, batch_size=1)
    actions = ActionsConfig(sekai=[release], min_frames=8)
    clips = ClipsConfig(videos=release / "videos", resolution="32x64", max_samples=1, min_side=16)
    run_stage(ActionsStage, actions, opts)
    assert run_stage(ClipsStage, clips, opts)["accepted"] == 3
    shards = root.shards(clips.dataset)
    assert run_stage(ClipsStage, clips, opts)["this_run"]["processed"] == 0

    # other thresholds: every clip's actions changed -> every clip redone, shards rewritten
    run_stage(ActionsStage, ActionsConfig(sekai=[release], min_frames=8, stride=2), over)
    s = run_stage(ClipsStage, clips, opts)
    assert s["this_run"]["redone_changed"] == 3 and s["accepted"] == 3, s["rejects_by_reason"]
    actions_hash = {h for _, h in _clip_tokens(root).values()}
    samples = _shard_samples(shards)
    assert len(samples) == 3
    assert {m["provenance"]["actions_config_hash"] for m in samples.values()} == actions_hash
    table = pq.read_table(root.manifest("clips"))
    assert table.num_rows == 3 and len(set(table.column("key").to_pylist())) == 3

    # fewer clips upstream: the clip it no longer holds is dropped everywhere
    npz = sorted(release.rglob("*.npz"))[0]
    gone = npz.stem
    npz.rename(tmp_path / npz.name)
    run_stage(ActionsStage, ActionsConfig(sekai=[release], min_frames=8, stride=2), over)
    s = run_stage(ClipsStage, clips, opts)
    assert s["this_run"]["dropped"] == 1 and s["this_run"]["processed"] == 0
    assert s["inputs"] == s["accepted"] == 2 and s["exit_code"] == 0
    left = {r["clip_id"] for r in pq.read_table(root.manifest("clips")).to_pylist()}
    assert gone not in left and len(left) == 2
    assert len(_shard_samples(shards)) == 2
    assert not list(root.staging(clips.dataset).glob(f"*{gone}*"))
    assert run_stage(ClipsStage, clips, opts)["this_run"]["processed"] == 0

    # an edited CSV caption: actions redo that clip, clips redo it, its shard holds the edit
    csv = release / "sekai.csv"
    lines = csv.read_text().splitlines()
    video_file, old_caption = lines[2].split(",")[:2]
    lines[2] = lines[2].replace(old_caption, "An edited caption.")
    csv.write_text("\n".join(lines) + "\n")
    s = run_stage(ActionsStage, ActionsConfig(sekai=[release], min_frames=8, stride=2), opts)
    assert s["this_run"]["redone_changed"] == 1
    assert run_stage(ClipsStage, clips, opts)["this_run"]["redone_changed"] == 1
    edited = [m for m in _shard_samples(shards).values() if m["source_video"] == video_file]
    assert [m["captions"]["scene"] for m in edited] == ["An edited caption."]

    # a replaced source video: only its clip is redone
    video = sorted((release / "videos").glob("*.mp4"))[-1]
    _touch_later(video)
    s = run_stage(ClipsStage, clips, opts)
    assert s["this_run"]["redone_changed"] == 1 and s["accepted"] == 2
    assert len(_shard_samples(shards)) == 2


# ---- the derived stages: clip shards, caption files, generated videos, images ------------------

# 128x64 clips of 24 frames: a window for the tiny encode preset at 64x128
CLIP_FRAMES, CLIP_W, CLIP_H = 24, 128, 64


def _clip(key: str, level: int = 0) -> dict[str, bytes]:
    """A clip sample; ``level`` > 0 gives other mp4 bytes (a re-encode of the clip)."""
    mp4 = make_mp4(CLIP_FRAMES, width=CLIP_W, height=CLIP_H, fps=16 + level)
    return make_sample(key, CLIP_FRAMES, mp4=mp4, width=CLIP_W, height=CLIP_H)


def _pack(root: DataRoot, staging, keys: set[str]) -> dict:
    """Pack staged clips into the root's sekai-real shards as the clips stage does."""
    return write_shards_from_dir(staging, root.shards("sekai-real"), "sekai-real",
                                 max_samples=2, keys=keys)  # fmt: skip


def _encode_config():
    from jobs.encode_latents import PRESETS

    return dataclasses.replace(PRESETS["tiny"], height=CLIP_H, width=CLIP_W)


def _damage_shards(root: DataRoot) -> dict[str, str]:
    """Four clips, one a shard: the first shard deleted, the second garbage, one byte of
    the third's mp4 flipped (still a tar), the fourth whole; each clip's expected reason."""
    write_shards([(k, _clip(k)) for k in ("c0", "c1", "c2", "c3")], root.shards("sekai-real"),
                 "sekai-real", max_samples=1)  # fmt: skip
    shard = {r["key"]: root.shards("sekai-real") / r["shard"]
             for r in read_index(root.shards("sekai-real")).to_pylist()}  # fmt: skip
    shard["c0"].unlink()
    garbage(shard["c1"])
    with tarfile.open(shard["c2"]) as tar:
        at = tar.getmember("c2.mp4").offset_data + 100
    data = bytearray(shard["c2"].read_bytes())
    data[at] ^= 0xFF
    shard["c2"].write_bytes(bytes(data))
    return {"c0": "missing_shard", "c1": "unreadable_shard", "c2": "sha256_mismatch"}


def test_encode_latents_names_a_gone_or_damaged_clip_shard(tmp_path):
    root = DataRoot.at(tmp_path / "data")
    expected = _damage_shards(root)
    stage = EncodeLatentsStage(_encode_config(), root)
    items, _ = runner.discover(stage)
    stage.setup()
    got = {o.key.split("/")[1]: (o.reason, o.detail) for o in stage.process(items).outcomes}
    assert {k: r for k, (r, _) in got.items()} == {**expected, "c3": None}
    assert "not on disk" in got["c0"][1] and "differs from its index sha256" in got["c2"][1]


def test_recaption_names_a_gone_or_damaged_clip_shard(tmp_path):
    from curation.stages.recaption import RecaptionStage
    from tests.test_recaption import _config

    root = DataRoot.at(tmp_path / "data")
    expected = _damage_shards(root)
    stage = RecaptionStage(_config(window_seconds=0.0), root)
    items, _ = runner.discover(stage)
    stage.setup()
    got = {o.key.split("/")[1]: o.reason for o in stage.process(items).outcomes}
    assert got == {**expected, "c3": None}


def _scored(tmp) -> DataRoot:
    """Three known videos as synth-generate and synth-score leave them (no Ray)."""
    from schemas.synth import SCORED_SCHEMA, SCORES_SCHEMA
    from tests.test_synth import _fake_generated

    _fake_generated(tmp, ["static", "moving", "flickering"])
    root = DataRoot.at(tmp / "data")
    keys = ["syn_static", "syn_moving", "syn_flickering"]
    label = {"backend": "builtin", "backend_version": "test"}
    rows = [{"key": k, "path": f"clips/synthetic-generated/{k}.mp4", "total": 0.5 + n / 10,
             "total_dimensions": ["temporal_flickering"], "tiny_random": True, **label}
            for n, k in enumerate(keys)]  # fmt: skip
    long = [{"video": r["key"], "dimension": "temporal_flickering", "score": r["total"], **label}
            for r in rows]  # fmt: skip
    write_table(pa.Table.from_pylist(rows, SCORED_SCHEMA), root.manifest("synth_score"),
                SCORED_SCHEMA)  # fmt: skip
    write_table(pa.Table.from_pylist(long, SCORES_SCHEMA), root.manifest("scores"), SCORES_SCHEMA)
    return root


def test_synth_select_probes_each_video_and_names_what_is_wrong(tmp_path):
    from curation.stages.synth_generate import GENERATED_DATASET, write_video
    from curation.stages.synth_select import SynthSelectConfig, SynthSelectStage
    from tests.test_synth import known_videos

    root = _scored(tmp_path)
    folder = root.staging(GENERATED_DATASET)
    garbage(folder / "syn_static.mp4")  # replaced after it was scored
    truncate(folder / "syn_moving.mp4")
    write_video(folder / "syn_flickering.mp4", known_videos(n=5, h=32, w=32)["static"], 16.0,
                "{}", 18)  # 5 frames where synth_generate recorded 9  # fmt: skip
    stage = SynthSelectStage(SynthSelectConfig(top_k=10), root)
    items, _ = runner.discover(stage)
    stage.setup()
    got = {o.key: (o.reason, o.detail) for o in stage.process(items).outcomes}
    assert {k: r for k, (r, _) in got.items()} == {
        "syn_static": "not_a_video",
        "syn_moving": "truncated_video",
        "syn_flickering": "frame_count_mismatch",
    }
    assert "5 frames" in got["syn_flickering"][1]
    assert not list(root.staging("synthetic").glob("*.json"))  # nothing staged


def test_versions_of_the_derived_stages_cover_what_each_item_is_made_from(tmp_path):
    """Without Ray: what discovery puts in each derived stage's version."""
    from curation.stages.dedup_captions import DedupCaptionsConfig, DedupCaptionsStage
    from curation.stages.events import EventsConfig, EventsStage
    from curation.stages.synth_generate import SynthGenerateConfig, SynthGenerateStage
    from tests.test_synth import _prompts

    def versions(stage) -> dict[str, str]:
        items, _ = runner.discover(stage)
        return {it["key"]: it["version"] for it in items}

    csv = tmp_path / "captions.csv"
    csv.write_text("video,caption\n" + "".join(f"v{n},caption {n}\n" for n in range(6)))
    dedup = DedupCaptionsStage(DedupCaptionsConfig(captions=[csv], chunk_size=3),
                               DataRoot.at(tmp_path / "d"))  # fmt: skip
    was = versions(dedup)
    csv.write_text(csv.read_text().replace("caption 4", "an edited caption"))
    now = versions(dedup)
    assert [k for k in was if was[k] != now[k]] == ["captions-00001"]  # its chunk only

    prompts = _prompts(tmp_path / "prompts.csv", [("p0", "a fox"), ("p1", "a boat")])
    gen = SynthGenerateStage(SynthGenerateConfig(prompts=prompts), DataRoot.at(tmp_path / "g"))
    was = versions(gen)
    _prompts(prompts, [("p0", "a fox"), ("p1", "a boat at night")])  # same ids, rows
    now = versions(gen)
    assert sum(was[k] != now[k] for k in was) == 1 and set(was) == set(now)

    images = tmp_path / "images"
    write_sample_images(images, 2, size=(96, 40))
    events = EventsStage(EventsConfig(images=images, i2v="tiny-random"), DataRoot.at(tmp_path))
    was = versions(events)
    _touch_later(images / "fpv_sample_0001.jpg")
    now = versions(events)
    assert sum(was[k] != now[k] for k in was) == 1


# ---- end to end on Ray: the derived stages follow their upstream ---------------------------------


def _latents(root: DataRoot) -> dict[str, str]:
    """Latent sample key -> the sha256 of its event embedding, from the latent shards' index."""
    rows = read_index(root.latents("sekai-real")).to_pylist()
    return {r["key"]: r["sha256"][r["members"].index("event_emb.pth")] for r in rows}


@pytest.mark.slow  # Ray runs of a model stage: `make test-slow`, CI
def test_encode_latents_follows_repacked_changed_and_gone_clips(ray_local, tmp_path):
    root = DataRoot.at(tmp_path / "data")
    staging = tmp_path / "clips"
    keys = {"a", "b", "c", "d"}
    stage_samples(staging, {k: _clip(k) for k in sorted(keys)})
    _pack(root, staging, keys)  # shards [a b] [c d]
    opts = RunOptions(root=root.path, progress=False, batch_size=1)  # no batch-mates redone
    config = _encode_config()
    first = run_stage(EncodeLatentsStage, config, opts)
    assert first["accepted"] == 4, first["rejects_by_reason"]
    before = _latents(root)
    assert {k.split("-")[0] for k in before} == keys

    # a caption edit in b: the clips stage restages it, its shard is rewritten and a moves
    shard_of = {r["key"]: r["shard"] for r in read_index(root.shards("sekai-real")).to_pylist()}
    meta = json.loads((staging / "b.json").read_text())
    meta["captions"] |= {"scene": "an edited scene", "event": "an edited event"}  # every task's
    (staging / "b.json").write_text(json.dumps(meta))
    assert _pack(root, staging, keys)["shards_rewritten"] == [shard_of["b"]]
    moved = {r["key"]: r["shard"] for r in read_index(root.shards("sekai-real")).to_pylist()}
    assert moved["a"] != shard_of["a"]
    s = run_stage(EncodeLatentsStage, config, opts)  # not refused: a's input names no shard
    assert s["this_run"]["processed"] == s["this_run"]["redone_changed"] == 1
    after = _latents(root)
    assert set(after) == set(before)
    assert [k for k in before if after[k] != before[k]] == [k for k in before if k[0] == "b"]

    # c gone from the clip index: its latents leave the manifest, the latent shards, staging
    _pack(root, staging, keys - {"c"})
    s = run_stage(EncodeLatentsStage, config, opts)
    assert s["this_run"]["dropped"] == 1 and s["this_run"]["processed"] == 0
    assert s["inputs"] == s["accepted"] == 3 and s["exit_code"] == 0
    left = _latents(root)
    assert left == {k: v for k, v in after.items() if k[0] != "c"}
    index = pq.read_table(root.latents("sekai-real") / "latents.parquet").column("key")
    assert sorted(index.to_pylist()) == sorted(left)
    manifest = pq.read_table(root.manifest("encode_latents")).column("clip_key").to_pylist()
    assert sorted(set(manifest)) == ["a", "b", "d"]
    assert not list(root.staging("sekai-real", kind="latent").glob("c-*"))
    assert run_stage(EncodeLatentsStage, config, opts)["this_run"]["processed"] == 0


@pytest.mark.slow  # Ray runs of a model stage: `make test-slow`, CI
def test_recaption_follows_re_encoded_and_gone_clips_for_every_prompt_version(
    tmp_path, monkeypatch
):
    import curation.recaption as rc
    from curation.stages.recaption import RecaptionStage
    from tests.test_recaption import _config

    _in_process(monkeypatch)
    monkeypatch.setitem(rc.PROMPTS, "event-v2", "Say what happens in the frames.")
    root = DataRoot.at(tmp_path / "data")
    staging = tmp_path / "clips"
    keys = {"a", "b", "c"}
    stage_samples(staging, {k: _clip(k) for k in sorted(keys)})
    _pack(root, staging, keys)
    opts = RunOptions(root=root.path, progress=False, batch_size=1)
    v1 = _config(window_seconds=0.0)
    v2 = dataclasses.replace(v1, prompt_version="event-v2")
    assert run_stage(RecaptionStage, v1, opts)["accepted"] == 3
    assert run_stage(RecaptionStage, v2, opts)["accepted"] == 6
    out = root.shards("sekai-real-captioned")

    # b re-encoded: both of its captions are made again; the captioned copy holds its new mp4
    (staging / "b.mp4").write_bytes(_clip("b", level=4)["mp4"])
    _pack(root, staging, keys)
    s = run_stage(RecaptionStage, v2, opts)
    assert s["this_run"]["processed"] == s["this_run"]["redone_changed"] == 2
    assert s["datasets"]["sekai-real"]["rebuilt"]
    source = {r["key"]: r["sha256"] for r in read_index(root.shards("sekai-real")).to_pylist()}
    captioned = {r["key"]: r for r in read_index(out).to_pylist()}
    assert all(captioned[k]["sha256"][captioned[k]["members"].index("mp4")]
               == source[k][captioned[k]["members"].index("mp4")] for k in keys)  # fmt: skip

    # c gone: its captions of both versions are dropped, and the captioned shards lose it
    _pack(root, staging, keys - {"c"})
    s = run_stage(RecaptionStage, v2, opts)
    assert s["this_run"]["dropped"] == 2 and s["this_run"]["processed"] == 0
    rows = pq.read_table(root.manifest("recaption")).to_pylist()
    assert sorted((r["sample_key"], r["prompt_version"]) for r in rows) == [
        ("a", "event-v1"), ("a", "event-v2"), ("b", "event-v1"), ("b", "event-v2"),
    ]  # fmt: skip
    assert sorted(read_index(out).column("key").to_pylist()) == ["a", "b"]
    # a new sample gets the current version only: earlier ones never captioned it
    stage_samples(staging, {"e": _clip("e")})
    _pack(root, staging, {"a", "b", "e"})
    s = run_stage(RecaptionStage, v2, opts)
    assert s["this_run"]["processed"] == 1 and s["prompt_versions_recorded"] == {
        "event-v1": 2, "event-v2": 3,
    }  # fmt: skip


def test_an_edited_caption_file_redoes_its_chunk(ray_local, tmp_path):
    from curation.stages.dedup_captions import DedupCaptionsConfig, DedupCaptionsStage

    csv = tmp_path / "OpenVid-a.csv"
    write_sample_openvid(csv, rows=20, seed=1)
    config = DedupCaptionsConfig(captions=[csv], embedder="tiny-random", n=10, chunk_size=8)
    opts = RunOptions(root=tmp_path / "data", progress=False)
    assert run_stage(DedupCaptionsStage, config, opts)["accepted"] == 3
    with csv.open(newline="") as f:
        header, *table = list(csvlib.reader(f))
    table[10][header.index("caption")] = "A kayak drifts under a stone bridge at dawn."  # chunk 1
    with csv.open("w", newline="") as f:  # every row rewritten: only row 10's text differs
        csvlib.writer(f, quoting=csvlib.QUOTE_ALL).writerows([header, *table])
    s = run_stage(DedupCaptionsStage, config, opts)
    assert s["this_run"]["processed"] == s["this_run"]["redone_changed"] == 1
    rows = pq.read_table(DataRoot.at(tmp_path / "data").manifest("dedup_captions")).to_pylist()
    assert [r["caption"] for r in rows if r["row"] == 10] == [
        "A kayak drifts under a stone bridge at dawn."
    ]
    assert len(rows) == 19  # row 0 of the sample has no caption: a missing_caption reject


@pytest.mark.slow  # Ray runs of a model stage: `make test-slow`, CI
def test_synth_score_and_select_drop_a_video_gone_upstream(ray_local, tmp_path):
    from curation.stages.synth_generate import GENERATED_DATASET
    from curation.stages.synth_score import SynthScoreConfig, SynthScoreStage
    from curation.stages.synth_select import SynthSelectConfig, SynthSelectStage
    from schemas.synth import GENERATED_SCHEMA
    from tests.test_synth import _fake_generated

    _fake_generated(tmp_path, ["static", "moving", "flickering"])
    root = DataRoot.at(tmp_path / "data")
    opts = RunOptions(root=root.path, progress=False, batch_size=1)
    select = SynthSelectConfig(top_k=10, max_samples=1)
    run_stage(SynthScoreStage, SynthScoreConfig(), opts)
    assert run_stage(SynthSelectStage, select, opts)["selected"] == 3

    # regenerated: its mp4 is rewritten, so it is scored and selected again
    video = root.staging(GENERATED_DATASET) / "syn_moving.mp4"
    _touch_later(video)
    assert run_stage(SynthScoreStage, SynthScoreConfig(), opts)["this_run"]["redone_changed"] == 1
    assert run_stage(SynthSelectStage, select, opts)["this_run"]["redone_changed"] == 1

    # gone from synth_generate's table: gone from the scores, the selection and the shards
    path = root.manifest("synth_generate")
    rows = [r for r in pq.read_table(path).to_pylist() if r["key"] != "syn_flickering"]
    write_table(pa.Table.from_pylist(rows, GENERATED_SCHEMA), path, GENERATED_SCHEMA)
    s = run_stage(SynthScoreStage, SynthScoreConfig(), opts)
    assert s["this_run"]["dropped"] == 1 and s["inputs"] == 2
    s = run_stage(SynthSelectStage, select, opts)
    assert s["this_run"]["dropped"] == 1 and s["selected"] == 2
    assert sorted(read_index(root.shards("synthetic")).column("key").to_pylist()) == [
        "syn_moving", "syn_static",
    ]  # fmt: skip
    assert not list(root.staging("synthetic").glob("syn_flickering.*"))


@pytest.mark.slow  # Ray runs of a model stage: `make test-slow`, CI
def test_events_remakes_a_pair_whose_image_changed(ray_local, tmp_path):
    from curation.stages.events import EventsConfig, EventsStage
    from tests.test_events import EventsCase

    images = tmp_path / "images"
    write_sample_images(images, 2, size=(96, 40))
    config = EventsConfig(images=images, **EventsCase.tiny)
    root = DataRoot.at(tmp_path / "data")
    opts = RunOptions(root=root.path, progress=False, batch_size=1)
    assert run_stage(EventsStage, config, opts)["accepted"] == 2
    image = str(images / "fpv_sample_0001.jpg")
    key = next(r["key"] for r in pq.read_table(root.manifest("events")).to_pylist()
               if r["image"] == image)  # fmt: skip
    garbage(images / "fpv_sample_0001.jpg")  # replaced by something that is no image
    s = run_stage(EventsStage, config, opts)
    assert s["this_run"]["redone_changed"] == 1 and s["rejects_by_reason"] == {
        "image_unreadable": 1
    }
    left = [r["key"] for r in pq.read_table(root.manifest("events")).to_pylist()]
    assert len(left) == 1 and key not in left
    assert not list(root.staging("event-generated").glob(f"{key}.*"))  # no video of the old one
