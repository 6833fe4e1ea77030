"""VAE wrapper, the encode-latents stage and job, and training from clip and latent shards."""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import tarfile
from functools import cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import jobs.runner as runner
from curation.dataroot import DataRoot
from curation.manifest import read_provenance, write_table
from curation.shards import (
    INDEX_NAME,
    LATENT_SAMPLE,
    dataset_stats,
    indexed_shards,
    read_index,
    verify_dataset,
    write_shards,
)
from curation.stages.base import StaleConfigError
from curation.stages.encode_latents import EncodeLatentsConfig, EncodeLatentsStage
from jobs.encode_latents import PRESETS, from_train_config
from jobs.runner import RunOptions, run_stage
from jobs.shards import run_verify
from model.vae import VideoVAE, latent_shape
from schemas.latents import LATENTS_MANIFEST_SCHEMA, latent_config_hash
from schemas.sample import SHARD_INDEX_SCHEMA
from tests.conftest import garbage, truncate
from tests.test_shards import LAX_CLIP, drop_field, make_mp4, make_sample
from training.config import preset
from training.mixture import Stream
from training.run import load_checkpoint
from training.sources import latent_shard_source, read_latent_samples
from training.train_base import train

FRAMES = 24


def test_tiny_vae_has_wan22_stride_and_decodes() -> None:
    vae = VideoVAE.tiny()
    assert vae.tiny_random and vae.model.config.z_dim == 48 and vae.model.config.is_residual
    video = torch.randint(0, 256, (1, 9, 64, 128, 3), dtype=torch.uint8)
    z = vae.encode(video)
    assert z.shape == (1, 48, 3, 4, 8) == (1, 48, *latent_shape(9, 64, 128))
    assert torch.equal(z, vae.encode(video))  # posterior mean: deterministic
    out = vae.decode(z)
    assert out.shape == video.shape and out.dtype == torch.uint8
    with pytest.raises(ValueError):
        vae.encode(torch.zeros(1, 8, 64, 128, 3, dtype=torch.uint8))  # not 1 + 4k frames


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """A data root with 3 tiny clips of 24 frames (128x64) in 2 sekai-real shards, plus one
    clip too short for any window. Shared by the module: tests that write latents copy it."""
    root = tmp_path_factory.mktemp("latents-data")
    mp4 = make_mp4(FRAMES, width=128, height=64)
    samples = [
        (f"clip_{i}", make_sample(f"clip_{i}", FRAMES, mp4=mp4, width=128, height=64))
        for i in range(3)
    ]
    short = make_mp4(4, width=128, height=64)
    samples.append(("short", make_sample("short", 4, mp4=short, width=128, height=64)))
    write_shards(samples, root / "shards" / "sekai-real", "sekai-real", max_samples=2)
    i2v_only = []
    for i in range(2):
        members = make_sample(f"ev_{i}", FRAMES, mp4=mp4, width=128, height=64, source="event")
        meta = json.loads(members["json"]) | {"tasks": ["i2v"]}
        i2v_only.append((f"ev_{i}", members | {"json": json.dumps(meta).encode()}))
    write_shards(i2v_only, root / "shards" / "event", "event", max_samples=2)
    shorts = [(f"s_{i}", make_sample(f"s_{i}", 4, mp4=short, width=128, height=64)) for i in (0, 1)]
    write_shards(shorts, root / "shards" / "shorty", "shorty", max_samples=2)
    return root


def _clip_root(data_root: Path, tmp: Path) -> DataRoot:
    """A root of its own holding a copy of the sekai-real clip shards (the fixture's stays
    clean for the other tests)."""
    root = DataRoot.at(tmp / "root")
    shutil.copytree(data_root / "shards" / "sekai-real", root.shards("sekai-real"))
    return root


def _encode_in_process(
    config: EncodeLatentsConfig, root: DataRoot, shard: str | None = None
) -> tuple[EncodeLatentsStage, list, pa.Table, dict]:
    """Run the stage without Ray: discover, set up, process (one shard, or all), finalize;
    returns the stage, the outcomes, the manifest rows and what finalize reported."""
    stage = EncodeLatentsStage(config, root)
    items = [it for it in stage.discover() if shard is None or it["shard"] == shard]
    stage.setup()
    result = stage.process(items)
    table = pa.Table.from_pylist(result.tables["encode_latents"], schema=LATENTS_MANIFEST_SCHEMA)
    return stage, result.outcomes, table, stage.finalize({"encode_latents": table})


def test_stage_encodes_a_shard_and_training_reads_latent_shards(data_root, tmp_path) -> None:
    train_cfg = preset("tiny", height=64, width=128)
    cfg = from_train_config(train_cfg)  # what `encode-latents --preset tiny` runs with
    h = latent_config_hash(cfg)
    assert h == latent_config_hash(train_cfg)  # the latents the trainer asks for
    root = _clip_root(data_root, tmp_path)
    shard = str(sorted(root.shards("sekai-real").glob("*.tar"))[0])
    stage, outcomes, table, fin = _encode_in_process(cfg, root, shard)
    assert [(o.key, o.status) for o in outcomes] == [
        ("sekai-real/clip_0", "done"),
        ("sekai-real/clip_1", "done"),
    ]
    ds = fin["datasets"]["sekai-real"]
    assert ds["samples"] == 4 and ds["shards_written"] == 1  # 2 clips x (t2v, i2v)
    assert ds["by_task"] == {"t2v": 2, "i2v": 2} and fin["tiny_random"]
    out = root.latents("sekai-real")
    (latent_shard,) = indexed_shards(out)  # written by the one shard writer, latent kind
    samples = {
        s["__key__"]: s for t in ("t2v", "i2v") for s in read_latent_samples(latent_shard, t, h)
    }
    t2v, i2v = samples["clip_0-t2v-0"], samples["clip_0-i2v-0"]
    assert t2v["latents"].shape == (48, 2, 4, 8) and t2v["history_latent_frames"] == 0
    hl = i2v["history_latent_frames"]
    assert 1 <= hl <= 2 and i2v["latents"].shape == (48, hl + 2, 4, 8)
    assert t2v["event_emb"].shape == (cfg.event_len, 32) and t2v["tiny_random"]
    index = pq.read_table(out / "latents.parquet")
    assert sorted(index.column("task").to_pylist()) == ["i2v", "i2v", "t2v", "t2v"]
    assert read_provenance(out / "latents.parquet")["latent_config_hash"] == h
    stats = dataset_stats(out)
    assert stats["count"] == 4 and stats["task_counts"] == {"i2v": 2, "t2v": 2}
    # verify checks members, sha256 and json of latent samples (kind read from the index)
    assert verify_dataset(out)["ok"] and verify_dataset(out)["kind"] == "latent"
    again = stage.finalize({"encode_latents": table})  # e.g. a rerun after a crash
    assert again["datasets"]["sekai-real"]["shards_written"] == 0
    assert len(indexed_shards(out)) == 1  # a rerun skips indexed keys: nothing doubles
    with pytest.raises(ValueError, match="another config"):
        read_latent_samples(latent_shard, "t2v", "other-hash")

    # the fast path: train from latent shards (no VAE or T5 per step)
    run_cfg = preset(
        "tiny", height=64, width=128, data_root=str(root), latents=True, steps=2, val_every=0,
        ckpt_every=2, out_dir=str(tmp_path / "run"), batch_size=2,
    )  # fmt: skip
    summary = train(run_cfg)
    assert summary["steps"] == 2 and all(torch.isfinite(torch.tensor(summary["losses"])))


def test_training_reads_clip_shards_through_the_reader(data_root, tmp_path) -> None:
    """The slow-but-simple path: windows from the reader, encoded on the fly."""
    cfg = preset(
        "tiny", height=64, width=128, data_root=str(data_root), steps=2, val_every=0, ckpt_every=2,
        out_dir=str(tmp_path / "run"), batch_size=1,
    )  # fmt: skip
    summary = train(cfg)
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["task"] for r in rows] == ["t2v", "i2v"] and rows[1]["history_frames"] >= 1
    assert summary["tiny_random"]
    assert (tmp_path / "run" / "checkpoints" / "step-000002.safetensors").exists()


@pytest.mark.slow  # the stage contract test runs the job and its resume by default
def test_encode_latents_job_on_ray_is_resumable(data_root, tmp_path, ray_local) -> None:
    root = tmp_path / "root"
    shutil.copytree(data_root, root)  # the job writes latents: the shared fixture stays clean
    cfg = dataclasses.replace(PRESETS["tiny"], height=64, width=128)
    assert cfg.datasets == ["sekai-real"]
    summary = run_stage(EncodeLatentsStage, cfg, RunOptions(root=root, progress=False))
    assert (summary["inputs"], summary["accepted"], summary["rejected"]) == (4, 3, 1)
    assert summary["rejects_by_reason"] == {"no_window": 1} and summary["exit_code"] == 3
    assert summary["this_run"]["processed"] == 4 and summary["tables"] == {"encode_latents": 6}
    ds = summary["datasets"]["sekai-real"]
    assert ds["samples"] == 6 and ds["by_task"] == {"t2v": 3, "i2v": 3}
    assert ds["tiny_random"] and summary["tiny_random"]
    latents = root / "latents" / "sekai-real"
    index = pq.read_table(latents / "latents.parquet")
    rows = index.to_pylist()
    assert len({r["key"] for r in rows}) == 6 and {r["task"] for r in rows} == {"t2v", "i2v"}
    assert read_provenance(latents / "latents.parquet")["latent_config_hash"] == (
        latent_config_hash(cfg)
    )
    assert verify_dataset(latents, kind=LATENT_SAMPLE)["ok"]
    report = run_verify(root, report_path=root / "reports" / "verify-all.json")
    kinds = {(d["dataset"], d["kind"]) for d in report["datasets"]}
    assert report["ok"] and ("sekai-real", "latent") in kinds and ("sekai-real", "clip") in kinds
    rejects = pq.read_table(root / "manifests" / "encode_latents.rejects.parquet").to_pylist()
    assert [(r["key"], r["reason"]) for r in rejects] == [("sekai-real/short", "no_window")]
    # the input names the clip in its dataset, not the shard holding it (a repack moves it)
    assert rejects[0]["input"] == str(root / "shards" / "sekai-real" / "short")
    assert rejects[0]["detail"]

    again = run_stage(EncodeLatentsStage, cfg, RunOptions(root=root, progress=False))
    assert again["this_run"]["processed"] == 0 and again["this_run"]["skipped_done"] == 4
    assert again["datasets"]["sekai-real"]["samples"] == 6  # nothing re-encoded
    assert again["datasets"]["sekai-real"]["shards_written"] == 0
    assert pq.read_table(latents / "latents.parquet").equals(index)  # the same index

    # latents made with another size: the job refuses to resume, the trainer to start
    other = dataclasses.replace(cfg, width=96)
    with pytest.raises(StaleConfigError, match="another config"):
        run_stage(EncodeLatentsStage, other, RunOptions(root=root, progress=False))
    train_other = preset(
        "tiny", height=64, width=96, data_root=str(root), latents=True,
        out_dir=str(tmp_path / "run-other"),
    )  # fmt: skip
    with pytest.raises(ValueError, match="another config"):
        train(train_other)


@pytest.mark.slow
def test_ray_train_two_cpu_workers_ddp(data_root, tmp_path, ray_local) -> None:
    """The multi-worker path on CPU: Ray Train TorchTrainer, gloo, DDP (FSDP needs GPUs)."""
    from training.distributed import run_ray

    cfg = preset(
        "tiny", height=64, width=128, data_root=str(data_root), out_dir=str(tmp_path / "dist"), steps=2,
        val_every=0, ckpt_every=2, workers=2,
    )  # fmt: skip
    run_ray(train, cfg)
    rows = [json.loads(x) for x in (tmp_path / "dist" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    state = load_checkpoint(tmp_path / "dist" / "checkpoints" / "step-000002.safetensors")
    assert state["step"] == 2 and "blocks.0.attn1.to_q.weight" in state["model"]


def test_streams_come_from_the_index_skip_missing_tasks_and_fail_fast(data_root, tmp_path) -> None:
    """An i2v-only dataset in a t2v+i2v mixture trains (t2v from the other dataset); a dataset
    whose clips are all shorter than any window is a clear error, not an endless search."""
    from training.sources import shard_streams

    cfg = preset(
        "tiny", height=64, width=128, data_root=str(data_root), steps=2, val_every=0,
        ckpt_every=2, out_dir=str(tmp_path / "mix"), batch_size=1,
        datasets={"sekai-real": 1.0, "event": 1.0},
    )  # fmt: skip
    assert sorted(shard_streams(cfg)) == [
        ("event", "i2v"),
        ("sekai-real", "i2v"),
        ("sekai-real", "t2v"),
    ]
    summary = train(cfg)
    assert summary["steps"] == 2
    short = preset("tiny", height=64, width=128, data_root=str(data_root), datasets={"shorty": 1})
    with pytest.raises(ValueError, match="no sample .* long enough"):
        shard_streams(short)


def test_latent_stream_restores_at_its_position_without_replay(
    data_root, tmp_path, monkeypatch
) -> None:
    """A latent stream saved mid-epoch continues with the same samples from its position
    (epoch, shard, index), across epochs, without replaying the consumed ones: the restored
    stream reads from the tars only what the uninterrupted one read, plus the one shard it
    resumes in (counted at the tar iterator; a replay from the start reads more)."""
    import curation.shards as shards_module

    cfg = dataclasses.replace(PRESETS["tiny"], height=64, width=128, max_samples=3)
    root = _clip_root(data_root, tmp_path)
    _encode_in_process(cfg, root)  # 6 samples sorted by key, 3 per shard: t2v in both
    shards = indexed_shards(root.latents("sekai-real"))
    assert len(shards) == 2
    reads: list[str] = []
    iter_shard = shards_module.iter_shard

    def counting(path):
        for key, members in iter_shard(path):
            reads.append(key)
            yield key, members

    monkeypatch.setattr(shards_module, "iter_shard", counting)
    factory = latent_shard_source(shards, "t2v", latent_config_hash(cfg))
    s = Stream(factory, 5)
    first = [s.next()["__key__"] for _ in range(4)]  # 3 samples per epoch: into epoch 2
    state = s.state_dict()
    assert state["position"]["epoch"] == 1 and state["consumed"] == 4
    reads.clear()
    rest = [s.next()["__key__"] for _ in range(5)]
    read_by_uninterrupted = len(reads)
    reads.clear()
    r = Stream(factory, 5)
    r.load_state_dict(state)
    assert [r.next()["__key__"] for _ in range(5)] == rest
    epoch, shard = state["position"]["epoch"], state["position"]["shard"]
    resumed_in = shards[np.random.default_rng([5, epoch]).permutation(len(shards))[shard]]
    assert len(reads) == read_by_uninterrupted + len(list(iter_shard(resumed_in)))
    assert sorted(first[:3]) == ["clip_0-t2v-0", "clip_1-t2v-0", "clip_2-t2v-0"]


# ---- the stage contract case (registered in tests/test_stage_contract.py) -------------------


@cache
def _mp4(frames: int) -> bytes:
    return make_mp4(frames, width=128, height=64)


def _clip_samples(
    keys: list[str], frames: int = 24, mp4: bytes | None = None
) -> list[tuple[str, dict[str, bytes]]]:
    mp4 = _mp4(frames) if mp4 is None else mp4
    return [(k, make_sample(k, frames, mp4=mp4, width=128, height=64)) for k in keys]


def damaged_clip_shards(folder: Path, make) -> dict[str, Path]:
    """Five more clips made by ``make(key, mp4)`` (mp4 None: a good one), each in a shard
    of its own, as the index names them, then damaged on disk: ``dmg_garbage``'s shard
    replaced by garbage, ``dmg_cut``'s cut in half, and, indexed so, ``dmg_empty`` with a
    0-byte mp4 and ``dmg_nofield`` whose json lacks ``segments``; ``dmg_gone`` is good (for
    a vanish hook). Returns each clip's shard. Shared by recaption's contract case."""
    samples = {k: make(k, b"" if k == "dmg_empty" else None)
               for k in ("dmg_garbage", "dmg_cut", "dmg_empty", "dmg_nofield", "dmg_gone")}  # fmt: skip
    drop_field(samples["dmg_nofield"], "segments")
    write_shards(samples.items(), folder, folder.name, max_samples=1, kind=LAX_CLIP)
    shard = {r["key"]: folder / r["shard"] for r in read_index(folder).to_pylist()}
    garbage(shard["dmg_garbage"])
    truncate(shard["dmg_cut"])
    return {k: shard[k] for k in samples}


def test_damaged_clips_are_named_before_any_model_time(tmp_path):
    """Each damage its own reason, found by reading alone (no encoder is loaded): a broken
    mp4 was unexpected_error, a shard cut at a member boundary read as a shorter tar."""
    root = DataRoot.at(tmp_path / "data")
    folder = root.shards("sekai-real")
    mp4 = _mp4(24)
    samples = dict(_clip_samples(["garbled", "cut_mp4", "empty_mp4", "no_segments"]))
    samples["garbled"]["mp4"] = bytes(range(256)) * 16
    samples["cut_mp4"]["mp4"] = mp4[: len(mp4) // 2]
    samples["empty_mp4"]["mp4"] = b""
    drop_field(samples["no_segments"], "segments")
    write_shards(samples.items(), folder, "sekai-real", max_samples=1, kind=LAX_CLIP)
    write_shards(_clip_samples(["pair_0", "pair_1"]), folder, "sekai-real", max_samples=2)
    write_shards(_clip_samples(["no_txt", "empty_tar"]), folder, "sekai-real", max_samples=1)
    shard = {r["key"]: folder / r["shard"] for r in read_index(folder).to_pylist()}
    truncate(shard["pair_0"])  # at the boundary before pair_1's mp4 header
    with tarfile.open(shard["no_txt"]) as tar:  # the same tar without one member
        kept = [(m, tar.extractfile(m).read()) for m in tar if m.name != "no_txt.txt"]
    with tarfile.open(shard["no_txt"], "w") as tar:
        for info, data in kept:
            tar.addfile(info, io.BytesIO(data))
    shard["empty_tar"].write_bytes(b"")

    stage = EncodeLatentsStage(dataclasses.replace(PRESETS["tiny"], height=64, width=128), root)
    items, _ = runner.discover(stage)
    got = {o.key.split("/")[1]: (o.reason, o.detail) for o in stage.process(items).outcomes}
    assert {k: r for k, (r, _) in got.items()} == {
        "garbled": "undecodable_clip",
        "cut_mp4": "undecodable_clip",
        "empty_mp4": "empty_clip",
        "no_segments": "bad_sample_json",
        "pair_0": "unreadable_shard",
        "pair_1": "unreadable_shard",
        "no_txt": "missing_member",
        "empty_tar": "unreadable_shard",
    }
    assert "'segments' is a required property" in got["no_segments"][1]
    assert "cut off" in got["pair_1"][1] and "empty file" in got["empty_tar"][1]
    assert "no_txt.txt is in the index" in got["no_txt"][1]


class EncodeLatentsCase:
    """A 24-frame clip and a 4-frame clip (no window) in two sekai-real clip shards.

    The stage's inputs are the root's clip shards (``<shard>:<key>``), not config paths. Two
    items make one batch (``_opts``): one encoder actor per run, which has to import the
    model libraries (seconds) before its first batch."""

    stage = EncodeLatentsStage
    follows_moves = True  # a clips rerun that repacks shards redoes no latents

    def _write(self, tmp: Path, max_samples: int) -> None:
        samples = _clip_samples(["clip_0"]) + _clip_samples(["short"], 4)
        folder = DataRoot.at(tmp / "data").shards("sekai-real")
        write_shards(samples, folder, "sekai-real", max_samples=max_samples)

    def build(self, tmp: Path) -> tuple[EncodeLatentsConfig, dict]:
        self._write(tmp, max_samples=1)  # clip_0 | short
        config = dataclasses.replace(PRESETS["tiny"], height=64, width=128)
        return config, {"no_window": 1}

    def changed(self, config: EncodeLatentsConfig) -> EncodeLatentsConfig:
        return dataclasses.replace(config, seed=1)  # other window positions

    def more(self, tmp: Path, config: EncodeLatentsConfig) -> tuple[EncodeLatentsConfig, int]:
        folder = DataRoot.at(tmp / "data").shards("sekai-real")
        write_shards(_clip_samples(["extra_0"]), folder, "sekai-real")  # a new shard
        return config, 1

    def moved(self, tmp: Path, config: EncodeLatentsConfig) -> EncodeLatentsConfig:
        """The same clips repacked: short now lives in the first shard."""
        shutil.rmtree(DataRoot.at(tmp / "data").shards("sekai-real"))
        self._write(tmp, max_samples=2)  # clip_0 short
        return config

    def empty(self, tmp: Path) -> EncodeLatentsConfig:
        folder = DataRoot.at(tmp / "data").shards("sekai-real")
        folder.mkdir(parents=True)
        write_table(SHARD_INDEX_SCHEMA.empty_table(), folder / INDEX_NAME, SHARD_INDEX_SCHEMA)
        return dataclasses.replace(PRESETS["tiny"], height=64, width=128)

    def relative(self, config: EncodeLatentsConfig, base: Path) -> EncodeLatentsConfig:
        return config  # no path fields: the root (and so the inputs) are made absolute

    not_applicable = {
        "empty_text": "an empty caption is no error here: the window is encoded with the "
        "empty prompt, as the training reader would feed it from the clip shards",
        "long_text": "a caption of any length is encoded to event_len tokens (the text "
        "encoder truncates), as in training",
    }

    def damage(self, tmp: Path, config: EncodeLatentsConfig) -> tuple[EncodeLatentsConfig, dict]:
        """Clips of shards that were damaged after indexing (garbage, cut in half), a 0-byte
        mp4 and a json without a required field (``damaged_clip_shards``)."""
        folder = DataRoot.at(tmp / "data").shards("sekai-real")
        damaged_clip_shards(folder, lambda k, mp4: _clip_samples([k], mp4=mp4)[0][1])
        return config, {
            "sekai-real/dmg_garbage": ("garbage", "unreadable_shard"),
            "sekai-real/dmg_empty": ("empty", "empty_clip"),
            "sekai-real/dmg_cut": ("truncated", "unreadable_shard"),
            "sekai-real/dmg_nofield": ("missing_field", "bad_sample_json"),
        }

    def vanish(self, tmp: Path, items: list[dict]) -> dict:
        """The shard of a discovered clip is deleted before a worker reads it."""
        item = next(it for it in items if it["clip_key"] == "dmg_gone")
        Path(item["shard"]).unlink()
        return {item["key"]: ("vanished", "missing_shard")}
