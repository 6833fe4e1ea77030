"""What an item was made from is part of its resume identity: a rerun redoes an item whose
input file or upstream records changed, and a stage fed by another stage's records drops
what that stage no longer holds, down to the shards (they never keep a sample from actions
that no longer exist or tokens from old thresholds)."""

from __future__ import annotations

import json
import os
import time

import pyarrow.parquet as pq
import pytest

from curation.dataroot import DataRoot
from curation.sample_sekai import write_sample_release
from curation.shards import INDEX_NAME, iter_shard, read_index, write_shards_from_dir
from curation.shards.writer import ShardRewriteError
from curation.stages.actions import ActionsConfig, ActionsStage
from curation.stages.base import Outcome
from curation.stages.clips import ClipsConfig, ClipsStage
from curation.stages.parts import item_version, read_status, stale_batches, write_part
from jobs.runner import RunOptions, run_stage
from tests.test_shards import make_sample


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
