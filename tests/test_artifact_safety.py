"""What a run reads back is checked, not trusted: checkpoints run no code, paths read from
files stay inside their root, damaged checkpoints, metrics and shards are named and
survived, and one run folder holds one run at a time."""

from __future__ import annotations

import json
import logging
import os
import pathlib
import pickle
import shutil
import tarfile
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.shard_reader import DamagedDataError, make_window_dataset, tar_damage
from curation.shards import read_index, shards_for, write_shards
from curation.shards.read import INDEX_NAME, IndexPathError, indexed_shards
from curation.stages.parts import PartRecordError, read_status, read_table_parts
from tests.test_shards import make_mp4, make_sample
from tests.test_training import streams, tiny_cfg
from training import distributed
from training.distill import load_transformer
from training.run import (
    RunFolderError,
    RunInUseError,
    load_latest,
    open_run,
    run_lock,
)
from training.train_base import train

FRAMES = 24


class _Touch:
    """A pickle that creates ``marker`` when unpickled (what a crafted checkpoint does)."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> tuple[pathlib.Path, list[float]]:
    """A real tiny run of 2 steps, a checkpoint after each; (folder, its losses)."""
    out = tmp_path_factory.mktemp("safety") / "run"
    summary = train(tiny_cfg(out, steps=2, ckpt_every=1), streams=streams())
    return out, summary["losses"]


def _copy(run_dir, tmp_path) -> pathlib.Path:
    out = tmp_path / "run"
    shutil.copytree(run_dir[0], out)
    return out


def _ctx():
    return distributed.context()


def test_crafted_pickle_checkpoint_is_refused_and_runs_nothing(run_dir, tmp_path) -> None:
    out = _copy(run_dir, tmp_path)
    ckpts = out / "checkpoints"
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"model": _Touch(marker)})
    assert not marker.exists()
    # 1. latest.json names a pickle (the old format): refused before opening it
    (ckpts / "step-000003.pt").write_bytes(payload)
    (ckpts / "latest.json").write_text(json.dumps({"step": 3, "path": "step-000003.pt"}))
    with pytest.raises(RunFolderError, match="pickle checkpoints are not read"):
        train(tiny_cfg(out, steps=4), streams=streams(), resume=True)
    # 2. the pickle under a checkpoint's name: not safetensors, so damaged; with every kept
    #    checkpoint a pickle there is nothing intact to resume
    for p in ckpts.glob("step-*.safetensors"):
        p.write_bytes(payload)
    (ckpts / "latest.json").write_text(json.dumps({"step": 2, "path": "step-000002.safetensors"}))
    with pytest.raises(RunFolderError, match="no intact checkpoint"):
        open_run(out, tiny_cfg(out), _ctx(), resume=True, overwrite=False)
    # 3. the distiller reading such a folder as its base
    with pytest.raises(RunFolderError, match="not an intact checkpoint"):
        load_transformer(str(out), "tiny")
    assert not marker.exists()
    pickle.loads(payload)  # the payload is live: unpickling it does create the marker
    assert marker.exists()


@pytest.mark.parametrize(
    "pointer",
    ["../../victim/step-000001.safetensors", "ABS", "step-000001.safetensors/../../../victim",
     "LINK", 7],
)  # fmt: skip
def test_latest_json_pointing_outside_stops_and_overwrite_deletes_nothing(
    run_dir, tmp_path, pointer
) -> None:
    out = _copy(run_dir, tmp_path)
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "step-000001.safetensors").write_bytes(b"precious")
    if pointer == "ABS":
        pointer = str(victim / "step-000001.safetensors")
    if pointer == "LINK":  # a checkpoint name that is a link to a file elsewhere
        pointer = "step-000009.safetensors"
        (out / "checkpoints" / pointer).symlink_to(victim / "step-000001.safetensors")
    (out / "checkpoints" / "latest.json").write_text(json.dumps({"step": 1, "path": pointer}))
    with pytest.raises(RunFolderError, match="latest.json|outside"):
        train(tiny_cfg(out, steps=2), streams=streams(), overwrite=True)
    with pytest.raises(RunFolderError):
        open_run(out, tiny_cfg(out), _ctx(), resume=True, overwrite=False)
    assert (victim / "step-000001.safetensors").read_bytes() == b"precious"
    assert (out / "checkpoints" / "step-000002.safetensors").exists()  # nothing deleted here


@pytest.mark.slow
def test_overwrite_with_an_honest_pointer_deletes_only_the_checkpoints(run_dir, tmp_path) -> None:
    out = _copy(run_dir, tmp_path)
    (tmp_path / "keep.txt").write_text("x")
    summary = train(tiny_cfg(out, steps=1), streams=streams(), overwrite=True)
    assert summary["steps"] == 1 and (tmp_path / "keep.txt").exists()
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "latest.json",
        "step-000001.safetensors",
    ]


def _clip_shards(folder: pathlib.Path, n: int, per_shard: int = 1, dataset: str = "real") -> None:
    mp4 = make_mp4(FRAMES)
    samples = [(f"c{i:03d}", make_sample(f"c{i:03d}", FRAMES, mp4=mp4)) for i in range(n)]
    write_shards(samples, folder, dataset, max_samples=per_shard)


@pytest.mark.parametrize(
    "entry", ["../evil/real-000000.tar", "ABS", "real-000000.tar/../../evil/x.tar", "LINK",
              "notes.txt", "other-000000.tar"],
)  # fmt: skip
def test_index_entries_leading_outside_the_dataset_are_errors(tmp_path, entry) -> None:
    folder = tmp_path / "shards" / "real"
    _clip_shards(folder, 2)
    evil = tmp_path / "shards" / "evil"
    evil.mkdir()
    shutil.copy(folder / "real-000000.tar", evil / "real-000000.tar")
    if entry == "ABS":
        entry = str(evil / "real-000000.tar")
    if entry == "LINK":
        entry = "real-000007.tar"
        (folder / entry).symlink_to(evil / "real-000000.tar")
    index = read_index(folder)
    shard = index.column("shard").to_pylist()
    shard[0] = entry
    pq.write_table(index.set_column(1, "shard", [shard]), folder / INDEX_NAME)
    with pytest.raises(IndexPathError, match="shard entr"):
        indexed_shards(folder)
    with pytest.raises(IndexPathError):
        shards_for(folder, "t2v", 1)
    # the trainer's way in: a clear error (a ValueError, one line on the command line)
    with pytest.raises(ValueError, match="shard entr"):
        train(tiny_cfg(tmp_path / "run", data_root=str(tmp_path), datasets={"real": 1.0}))


@pytest.mark.parametrize("part", ["../../../evil", "/tmp/evil", "part-0001-zz", ""])
def test_part_records_naming_a_path_stop_the_resume(tmp_path, part) -> None:
    from curation.stages.parts import STATUS, STATUS_SCHEMA

    parts = tmp_path / "manifests" / "x.parts"
    (parts / STATUS).mkdir(parents=True)
    row = {"key": "k", "input": "i", "status": "done", "reason": None, "detail": None,
           "config_hash": "h", "run": 1, "part": part}  # fmt: skip
    pq.write_table(
        pa.Table.from_pylist([row], schema=STATUS_SCHEMA),
        parts / STATUS / "part-0001-0123456789abcdef.parquet",
    )
    with pytest.raises(PartRecordError, match="not part file names"):
        read_status(parts)
    with pytest.raises(PartRecordError):
        read_table_parts(parts, "x", STATUS_SCHEMA, {part})


def test_truncated_latest_checkpoint_falls_back_to_the_previous_one_named(
    run_dir, tmp_path, caplog
) -> None:
    out = _copy(run_dir, tmp_path)
    bad = out / "checkpoints" / "step-000002.safetensors"
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    with caplog.at_level(logging.WARNING, logger="training.run"):
        path, state = load_latest(out)
    assert path.name == "step-000001.safetensors" and state["step"] == 1
    lines = [r.getMessage() for r in caplog.records if r.name == "training.run"]
    assert len(lines) == 1 and "step-000002.safetensors" in lines[0], lines
    state = open_run(out, tiny_cfg(out, steps=3), _ctx(), resume=True, overwrite=False)
    assert state["step"] == 1
    # nothing intact at all: an error naming every damaged file
    for p in (out / "checkpoints").glob("step-*.safetensors"):
        p.write_bytes(p.read_bytes()[:40])
    with pytest.raises(RunFolderError, match=r"no intact checkpoint.*step-000002.*step-000001"):
        load_latest(out)


@pytest.mark.slow
def test_resume_from_the_fallback_checkpoint_is_bit_identical(run_dir, tmp_path) -> None:
    out = _copy(run_dir, tmp_path)
    bad = out / "checkpoints" / "step-000002.safetensors"
    bad.write_bytes(bad.read_bytes()[:-100])
    resumed = train(tiny_cfg(out, steps=2, ckpt_every=1), streams=streams(), resume=True)
    assert resumed["losses"] == run_dir[1][1:]  # step 2 redone exactly as the first time


def test_partial_last_metrics_line_does_not_stop_a_resume(run_dir, tmp_path, caplog) -> None:
    out = _copy(run_dir, tmp_path)
    with (out / "metrics.jsonl").open("a") as f:
        f.write('{"step": 3, "loss": 0.4')  # killed mid-write
    with caplog.at_level(logging.WARNING, logger="training.metrics"):
        resumed = train(tiny_cfg(out, steps=3, ckpt_every=1), streams=streams(), resume=True)
    assert resumed["steps"] == 3 and len(resumed["losses"]) == 1
    assert any("partial last line" in r.getMessage() for r in caplog.records)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    # a broken line that is not the last is not guessed around
    (out / "metrics.jsonl").write_text('{"step": 1}\n{oops\n{"step": 2}\n')
    with pytest.raises(ValueError, match="line 2"):
        train(tiny_cfg(out, steps=3), streams=streams(), resume=True)


def _corrupt_member_header(tar_path: pathlib.Path, member: int) -> None:
    """Scribble over the checksum of member ``member``'s header (what bad storage does)."""
    with tarfile.open(tar_path) as tar:
        offset = tar.getmembers()[member].offset
    data = bytearray(tar_path.read_bytes())
    data[offset + 148 : offset + 156] = b"XXXXXXXX"
    tar_path.write_bytes(bytes(data))


def test_corrupt_member_header_is_counted_as_damaged_and_skipped(tmp_path) -> None:
    folder = tmp_path / "real"
    _clip_shards(folder, 12, per_shard=3)  # 4 shards of 3 samples, 3 members each
    urls = indexed_shards(folder)
    clean = {it["__key__"] for it in make_window_dataset(urls, 0, 4, shuffle=0, tasks=("t2v",))}
    assert len(clean) == 12
    bad = pathlib.Path(urls[1])
    _corrupt_member_header(bad, 4)  # sample 2's second member: tarfile would stop silently
    with tarfile.open(bad) as tar:
        assert len(tar.getmembers()) == 4  # of 9: what the reader saw before, with 0 skips
    assert "unreadable member header" in tar_damage(bad)
    ds = make_window_dataset(urls, 0, 4, shuffle=0, tasks=("t2v",), max_damaged_share=0.3)
    keys = {it["__key__"] for it in ds}
    assert ds.damaged.count == 1 and list(ds.damaged.shards) == [str(bad)]
    assert ds.skipped.count == 1  # no longer 0: the damage is counted in the skip count too
    assert keys == clean - {"c003", "c004", "c005"}  # the damaged shard is skipped whole
    # a truncated shard and one whose first header is garbage are damaged too
    short = pathlib.Path(urls[2])
    short.write_bytes(short.read_bytes()[:5000])
    first = pathlib.Path(urls[3])
    first.write_bytes(b"\x07" * 512 + first.read_bytes()[512:])
    assert "end of" in tar_damage(short) and "unreadable tar" in tar_damage(first)
    ds = make_window_dataset(urls, 0, 4, shuffle=0, tasks=("t2v",), max_damaged_share=0.8)
    assert {it["__key__"] for it in ds} == {"c000", "c001", "c002"} and ds.damaged.count == 3
    # resampled (as training reads): still skipped, and every damaged shard is counted once
    ds = make_window_dataset(urls, 0, 4, resampled=True, shuffle=0, tasks=("t2v",),
                             max_damaged_share=0.8)  # fmt: skip
    it = iter(ds)
    assert {next(it)["__key__"] for _ in range(30)} == {"c000", "c001", "c002"}


def test_a_shard_cut_at_a_member_boundary_or_emptied_is_damaged(tmp_path) -> None:
    """tarfile reads a tar cut between two members as a shorter tar without any error: the
    reader would train on part of the shard with a skip count of 0."""
    folder = tmp_path / "real"
    _clip_shards(folder, 6, per_shard=3)
    urls = indexed_shards(folder)
    cut = pathlib.Path(urls[0])
    with tarfile.open(cut) as tar:
        boundary = tar.getmembers()[3].offset  # where the second sample's first member starts
    cut.write_bytes(cut.read_bytes()[:boundary])
    with tarfile.open(cut) as tar:
        assert len(tar.getmembers()) == 3  # it still reads, as one whole sample
    assert "cut off" in tar_damage(cut)
    ds = make_window_dataset(urls, 0, 4, shuffle=0, tasks=("t2v",), max_damaged_share=0.6)
    assert {it["__key__"] for it in ds} == {"c003", "c004", "c005"} and ds.damaged.count == 1
    pathlib.Path(urls[1]).write_bytes(b"")
    assert "empty file" in tar_damage(urls[1])


def test_damage_over_the_share_stops_with_a_clear_message(tmp_path) -> None:
    folder = tmp_path / "real"
    _clip_shards(folder, 4)
    urls = indexed_shards(folder)
    _corrupt_member_header(pathlib.Path(urls[0]), 1)
    with pytest.raises(DamagedDataError, match=r"1 of 4 shards are damaged \(25%.*10%"):
        list(make_window_dataset(urls, 0, 4, shuffle=0, tasks=("t2v",), max_damaged_share=0.1))
    # every shard damaged: an error even when the share allows all, never an endless loop
    for u in urls[1:]:
        _corrupt_member_header(pathlib.Path(u), 1)
    ds = make_window_dataset(urls, 0, 4, resampled=True, shuffle=0, max_damaged_share=1.0)
    with pytest.raises(DamagedDataError, match="4 of 4"):
        next(iter(ds))


@pytest.mark.slow
def test_training_on_a_data_root_with_damaged_shards(tmp_path) -> None:
    """One damaged shard in 21 (under the default 5%) trains; more stop the run (at the
    second damaged shard the reader meets: 2 of 21 is 9.5%)."""
    folder = tmp_path / "shards" / "real"
    mp4 = make_mp4(FRAMES, width=128, height=64)
    samples = [(f"c{i:03d}", make_sample(f"c{i:03d}", FRAMES, mp4=mp4, width=128, height=64))
               for i in range(21)]  # fmt: skip
    write_shards(samples, folder, "real", max_samples=1)
    urls = indexed_shards(folder)
    _corrupt_member_header(pathlib.Path(urls[5]), 1)
    cfg = tiny_cfg(tmp_path / "run", data_root=str(tmp_path), datasets={"real": 1.0}, steps=2)
    assert cfg.max_damaged_share == 0.05
    assert train(cfg)["steps"] == 2
    for u in urls[6:]:
        _corrupt_member_header(pathlib.Path(u), 1)
    with pytest.raises(DamagedDataError, match="2 of 21 shards are damaged"):
        train(cfg, overwrite=True)


def _hold(out: pathlib.Path, held, done) -> None:
    with run_lock(out):
        held.set()
        done.wait(60)


def test_a_second_run_into_a_held_folder_fails_at_once_naming_the_holder(tmp_path) -> None:
    import multiprocessing

    from training.config import DistillConfig
    from training.distill import distill

    out = tmp_path / "run"
    mp = multiprocessing.get_context("fork")  # the holder: another process, started at once
    held, done = mp.Event(), mp.Event()
    holder = mp.Process(target=_hold, args=(out, held, done))
    holder.start()
    try:
        assert held.wait(30)
        t0 = time.perf_counter()
        with pytest.raises(RunInUseError, match=rf"pid {holder.pid} on host \S+, started 20"):
            train(tiny_cfg(out, steps=1), streams=streams())
        assert time.perf_counter() - t0 < 2.0  # at once: before any model or data is built
        with pytest.raises(RunInUseError, match=f"pid {holder.pid}"):
            distill(DistillConfig(out_dir=str(out)))
        assert not (out / "metrics.jsonl").exists()
    finally:
        done.set()
        holder.join(30)
    # released with its holder (also when a holder is killed: the kernel drops flock)
    with run_lock(out):
        assert f"pid {os.getpid()}" in (out / ".lock").read_text()
