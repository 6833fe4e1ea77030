"""Shard writer, index, stats and verify: round trip, corruption, unsafe input, SIGKILL resume."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import av
import numpy as np
import pytest
from typer.testing import CliRunner

import curation.shards as shards_module
import curation.shards.read as read_module
import curation.shards.writer as writer_module
from curation.shards import (
    LATENT_SAMPLE,
    SAMPLE_KINDS,
    SampleKind,
    ShardError,
    ShardWriter,
    check_video,
    dataset_stats,
    indexed_shards,
    iter_shard,
    read_index,
    register_kind,
    shards_for,
    verify_dataset,
    write_shards,
    write_shards_from_dir,
)
from jobs.cli import app
from schemas.actions import KEYS, MOUSE
from schemas.common import SchemaError
from schemas.kinds import infer_kind
from schemas.sample import CLIP_SAMPLE, validate_sample

ROOT = Path(__file__).resolve().parents[1]


def frame_level(i: int) -> int:
    """The grey level of generated frame ``i``: frames are told apart after decoding."""
    return 16 + (8 * i) % 224


def make_mp4(frames: int = 12, width: int = 64, height: int = 48, fps: int = 16) -> bytes:
    """A small H.264 yuv420p clip whose frame i is a flat grey of frame_level(i)."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "crf": "12"}
        for i in range(frames):
            img = np.full((height, width, 3), frame_level(i), np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def make_meta(
    key: str,
    frames: int = 12,
    width: int = 64,
    height: int = 48,
    fps: float = 16,
    actions: bool = True,
    source: str = "sekai-real",
) -> dict:
    """Valid sample metadata; frame i has keys KEYS[i % 9] and mouse MOUSE[(i // 2) % 9]."""
    half = frames // 2
    segments = [
        {
            "start": s,
            "end": e,
            "keys": KEYS[s % 9],
            "mouse": MOUSE[(s // 2) % 9],
            "distance_speed": 1.0,
            "turn_speed": 0.5,
            "view_rotation_speed": 0.25,
            "text": f"segment {s}-{e}",
            "text_yume5b": f"5b segment {s}-{e}",
        }
        for s, e in ((0, half - 1), (half, frames - 1))
    ]
    return {
        "schema_version": 1,
        "key": key,
        "source": source,
        "tasks": ["t2v", "i2v"],
        "fps": fps,
        "frames": frames,
        "width": width,
        "height": height,
        "source_video": f"videos/{key}.mp4",
        "source_fps": 30,
        "source_frame_range": [0, frames * 2 - 1],
        "keys": [KEYS[i % 9] for i in range(frames)] if actions else [],
        "mouse": [MOUSE[(i // 2) % 9] for i in range(frames)] if actions else [],
        "segments": segments if actions else [],
        "captions": {"scene": f"scene of {key}", "event": f"event of {key}", "action": None},
        "scores": {"total": 0.5},
        "screening": None,
        "meta": {},
        "provenance": {
            "stage": "test",
            "code_version": "test",
            "config_hash": "0",
            "backend": "tiny-random",
            "tiny_random": True,
        },
    }


def make_sample(key: str, frames: int = 12, mp4: bytes | None = None, **kw) -> dict[str, bytes]:
    return {
        "mp4": mp4 if mp4 is not None else make_mp4(frames),
        "json": json.dumps(make_meta(key, frames, **kw)).encode(),
        "txt": f"caption of {key}".encode(),
    }


# the clip writer of an older or other tool: it did not check the json against today's schema
LAX_CLIP = dataclasses.replace(CLIP_SAMPLE, validate=lambda meta: None)


def drop_field(sample: dict[str, bytes], field: str) -> None:
    """Remove ``field`` from a sample's json (write it with ``LAX_CLIP``)."""
    meta = json.loads(sample["json"])
    del meta[field]
    sample["json"] = json.dumps(meta).encode()


def stage(staging: Path, samples: dict[str, dict[str, bytes]]) -> None:
    """Stage samples the way the clips job does: mp4, txt, then json."""
    staging.mkdir(parents=True, exist_ok=True)
    for key, members in samples.items():
        for ext in ("mp4", "txt", "json"):
            (staging / f"{key}.{ext}").write_bytes(members[ext])


@pytest.fixture(scope="module")
def mp4() -> bytes:
    return make_mp4(12)


@pytest.fixture()
def built(tmp_path, mp4) -> tuple[Path, Path, dict]:
    """A data root with 7 samples in shards of 3: returns (root, shards_dir, samples)."""
    samples = {f"clip_{i:02d}": make_sample(f"clip_{i:02d}", mp4=mp4) for i in range(7)}
    stage(tmp_path / "staging", samples)
    shards = tmp_path / "root" / "shards" / "real"
    write_shards_from_dir(tmp_path / "staging", shards, "real", max_samples=3)
    return tmp_path / "root", shards, samples


def test_meta_helper_is_valid():
    validate_sample(make_meta("a"))
    bad = make_meta("a")
    bad["segments"][1]["end"] = 99
    with pytest.raises(SchemaError, match="beyond last frame"):
        validate_sample(bad)
    bad = make_meta("a")
    bad["keys"] = bad["keys"][:-1]
    with pytest.raises(SchemaError, match="keys has 11 entries"):
        validate_sample(bad)
    bad = make_meta("a")
    bad["mouse"][3] = "Left"
    with pytest.raises(SchemaError, match=r"mouse: unknown tokens \['Left'\]"):
        validate_sample(bad)
    bad = make_meta("a")
    bad["source"] = "youtube"
    with pytest.raises(SchemaError, match="source"):
        validate_sample(bad)


def test_round_trip_index_and_stats(built):
    _, shards, samples = built
    names = sorted(p.name for p in shards.glob("*.tar"))
    assert names == ["real-000000.tar", "real-000001.tar", "real-000002.tar"]
    index = read_index(shards).to_pylist()
    assert [r["key"] for r in index] == sorted(samples)
    assert [r["shard"] for r in index] == ["real-000000.tar"] * 3 + ["real-000001.tar"] * 3 + [
        "real-000002.tar"
    ]
    got = {k: m for s in names for k, m in iter_shard(shards / s)}
    assert got == samples
    import hashlib

    for r in index:
        assert r["members"] == ["json", "mp4", "txt"]
        assert r["sha256"] == [
            hashlib.sha256(samples[r["key"]][e]).hexdigest() for e in r["members"]
        ]
        assert r["sizes"] == [len(samples[r["key"]][e]) for e in r["members"]]
    stats = json.loads((shards / "__meta__" / "real-000001_stats.json").read_text())
    assert stats["count"] == 3 and stats["keys"] == ["clip_03", "clip_04", "clip_05"]
    assert stats["fps_counts"] == {"16": 3} and stats["resolution_counts"] == {"64x48": 3}
    assert stats["durations_s"] == [0.75] * 3
    assert stats["bytes"] == (shards / "real-000001.tar").stat().st_size
    report = verify_dataset(shards, decode="full")
    assert report["ok"], report["errors"]
    assert report["samples_checked"] == 7


def test_rerun_is_idempotent_and_deterministic(built, tmp_path, monkeypatch):
    _, shards, samples = built
    before = {p.name: p.read_bytes() for p in shards.glob("*.tar")}
    summary = write_shards_from_dir(tmp_path / "staging", shards, "real", max_samples=3)
    assert summary["samples_written"] == 0 and summary["skipped_existing"] == 7
    # A fresh build from the same staging gives byte-identical shards, also when every
    # staged member is memory-mapped (the large-file path) instead of read.
    monkeypatch.setattr(writer_module, "_MAP_BYTES", 1)
    again = tmp_path / "again"
    write_shards_from_dir(tmp_path / "staging", again, "real", max_samples=3)
    assert {p.name: p.read_bytes() for p in again.glob("*.tar")} == before
    assert indexed_shards(again) == [str(again / n) for n in sorted(before)]
    # New staged samples go into new shards after the existing ones.
    stage(tmp_path / "staging", {"clip_99": make_sample("clip_99", mp4=samples["clip_00"]["mp4"])})
    summary = write_shards_from_dir(tmp_path / "staging", shards, "real", max_samples=3)
    assert summary["shards_written"] == ["real-000003.tar"] and summary["indexed_samples"] == 8


def test_max_bytes_limits_shards(tmp_path, mp4):
    samples = [(f"k{i}", make_sample(f"k{i}", mp4=mp4)) for i in range(5)]
    # one sample in a tar: per member a 512-byte header plus data padded to 512
    one = sum(512 + -(-len(d) // 512) * 512 for d in samples[0][1].values())
    summary = write_shards(samples, tmp_path, "syn", max_bytes=2 * one + 100)
    assert summary["shards_written"] == ["syn-000000.tar", "syn-000001.tar", "syn-000002.tar"]
    assert [len(list(iter_shard(p))) for p in sorted(tmp_path.glob("*.tar"))] == [2, 2, 1]


def test_bad_samples_become_rejects(tmp_path, mp4):
    staging = tmp_path / "staging"
    good = make_sample("good", mp4=mp4)
    wrong_key = make_sample("other", mp4=mp4)
    no_txt = make_sample("no_txt", mp4=mp4)
    stage(staging, {"good": good, "wrong_key": wrong_key, "no_txt": no_txt, "bad_json": no_txt})
    (staging / "no_txt.txt").unlink()
    (staging / "bad_json.json").write_text("{not json")
    (staging / "in_progress.mp4").write_bytes(mp4)  # no json yet: not complete, not rejected
    rejects = tmp_path / "manifests" / "shards.real.rejects.parquet"
    summary = write_shards_from_dir(staging, tmp_path / "real", "real", rejects_path=rejects)
    assert summary["samples_written"] == 1 and summary["incomplete"] == 1
    reasons = {r["key"]: r["detail"] for r in summary["rejects"]}
    assert set(reasons) == {"wrong_key", "no_txt", "bad_json"}
    assert "json names key 'other'" in reasons["wrong_key"]
    assert "lacks members ['txt']" in reasons["no_txt"]
    assert "not JSON" in reasons["bad_json"]
    import pyarrow.parquet as pq

    assert pq.read_table(rejects).num_rows == 3


@pytest.mark.parametrize("key", ["a.b", "../evil", "a/b", "", "x" * 201, "/abs", "sp ace"])
def test_unsafe_keys_rejected(tmp_path, mp4, key):
    with ShardWriter(tmp_path, "real") as w, pytest.raises(SchemaError, match="bad sample key"):
        w.write(key, make_sample("ok", mp4=mp4))
    assert not list(tmp_path.glob("*.tar"))


def test_duplicate_key_rejected(tmp_path, mp4):
    samples = [("a", make_sample("a", mp4=mp4)), ("a", make_sample("a", mp4=mp4))]
    summary = write_shards(samples, tmp_path, "real")
    assert summary["samples_written"] == 1
    assert [r["reason"] for r in summary["rejects"]] == ["duplicate_key"]


def _tar_with(path: Path, name: str, data: bytes = b"x", kind: bytes = tarfile.REGTYPE) -> None:
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo(name)
        info.type = kind
        if kind == tarfile.SYMTYPE:
            info.linkname = "/etc/passwd"
        else:
            info.size = len(data)
        tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


@pytest.mark.parametrize(
    "name,kind",
    [
        ("../evil.json", tarfile.REGTYPE),
        ("/abs/evil.json", tarfile.REGTYPE),
        ("dir/evil.json", tarfile.REGTYPE),
        ("link.json", tarfile.SYMTYPE),
    ],
)
def test_reading_unsafe_tar_refused(tmp_path, name, kind):
    _tar_with(tmp_path / "bad.tar", name, kind=kind)
    before = set(tmp_path.rglob("*"))
    with pytest.raises(ShardError):
        list(iter_shard(tmp_path / "bad.tar"))
    assert set(tmp_path.rglob("*")) == before


def _verify_cli(root: Path) -> tuple[int, str, dict]:
    result = CliRunner().invoke(app, ["shards", "verify", "--root", str(root), "--workers", "1"])
    report = json.loads((root / "reports" / "shards_verify.json").read_text())
    return result.exit_code, result.output, report


def test_verify_cli_passes_then_fails_on_corruption(built):
    root, shards, _ = built
    code, out, report = _verify_cli(root)
    assert code == 0, out
    assert report["ok"] and report["datasets"][0]["samples_checked"] == 7

    # flip one byte inside an mp4 payload: sha256 mismatch
    tar = shards / "real-000001.tar"
    with tarfile.open(tar) as t:
        offset = t.getmember("clip_04.mp4").offset_data + 100
    data = bytearray(tar.read_bytes())
    data[offset] ^= 0xFF
    tar.write_bytes(bytes(data))
    code, out, report = _verify_cli(root)
    assert code != 0
    assert "sha256 differs" in out
    assert any("real-000001.tar" in e for e in report["datasets"][0]["errors"])


def test_verify_detects_missing_member_truncation_and_orphans(built, mp4):
    root, shards, samples = built
    # rewrite shard 0 without clip_01's txt
    src = shards / "real-000000.tar"
    members = [(k, m) for k, m in iter_shard(src)]
    with tarfile.open(src, "w") as tar:
        for k, m in members:
            for ext, data in sorted(m.items()):
                if (k, ext) != ("clip_01", "txt"):
                    info = tarfile.TarInfo(f"{k}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    # truncate shard 2, delete shard 1
    last = shards / "real-000002.tar"
    last.write_bytes(last.read_bytes()[:1500])
    (shards / "real-000001.tar").unlink()
    report = verify_dataset(shards)
    text = "\n".join(report["errors"])
    assert not report["ok"]
    assert "clip_01: missing members ['txt']" in text
    assert "real-000001.tar: named by the index (3 samples) but missing" in text
    assert "real-000002.tar" in text
    # a tar the index does not know
    (shards / "real-000009.tar").write_bytes(src.read_bytes())
    report = verify_dataset(shards)
    assert any("in the shard but not in the index" in e for e in report["errors"])


def test_verify_rejects_an_unknown_decode_mode(built, mp4):
    root, shards, _ = built
    with pytest.raises(ValueError, match=r"ends\|full\|none.*'all'"):
        verify_dataset(shards, decode="all")
    with pytest.raises(ValueError, match=r"ends\|full\|none"):
        check_video(mp4, make_meta("x"), decode="all")
    result = CliRunner().invoke(app, ["shards", "verify", "--root", str(root), "--decode", "all"])
    assert result.exit_code == 2 and "ends|full|none" in result.output
    assert not (root / "reports" / "shards_verify.json").exists()


def test_verify_detects_frame_count_mismatch(tmp_path, mp4):
    sample = make_sample("liar", mp4=mp4)
    meta = json.loads(sample["json"])
    meta["frames"] = 13
    meta["keys"], meta["mouse"] = meta["keys"] + ["W"], meta["mouse"] + ["·"]
    sample["json"] = json.dumps(meta).encode()
    write_shards([("liar", sample)], tmp_path / "real", "real")
    report = verify_dataset(tmp_path / "real")
    assert not report["ok"]
    assert any("mp4 has 12 frames, json says 13" in e for e in report["errors"])


def test_recovery_from_crash_states(built, tmp_path):
    _, shards, samples = built
    # states a SIGKILL can leave: a temp file, a renamed shard not yet indexed
    (shards / ".real-000003.tar.abc.tmp").write_bytes(b"partial")
    (shards / "real-000003.tar").write_bytes(b"not indexed")
    (shards / "__meta__" / "real-000003_stats.json").write_text("{}")
    stage(tmp_path / "staging", {"late": make_sample("late", mp4=samples["clip_00"]["mp4"])})
    summary = write_shards_from_dir(tmp_path / "staging", shards, "real", max_samples=3)
    assert summary["shards_written"] == ["real-000003.tar"]
    assert not list(shards.glob(".*.tmp"))
    assert [k for k, _ in iter_shard(shards / "real-000003.tar")] == ["late"]
    # an index row naming a deleted shard is dropped and its staged samples rewritten
    (shards / "real-000000.tar").unlink()
    summary = write_shards_from_dir(tmp_path / "staging", shards, "real", max_samples=3)
    assert summary["samples_written"] == 3
    assert verify_dataset(shards)["ok"]
    # a lost index never gets shards deleted: the writer stops and says why
    before = sorted(p.name for p in shards.rglob("*"))
    (shards / "__meta__" / "index.parquet").unlink()
    with pytest.raises(RuntimeError, match="not in __meta__/index.parquet; refusing"):
        write_shards_from_dir(tmp_path / "staging", shards, "real")
    assert sorted(p.name for p in shards.rglob("*")) == [n for n in before if n != "index.parquet"]


def test_second_writer_is_locked_out(tmp_path):
    with ShardWriter(tmp_path, "real"), pytest.raises(RuntimeError, match="another shard writer"):
        ShardWriter(tmp_path, "real").__enter__()


def test_sigkill_and_rerun_loses_and_duplicates_nothing(tmp_path, mp4):
    """Kill a real writer process with SIGKILL at several points, rerun, check the index."""
    keys = [f"k{i:03d}" for i in range(40)]
    stage(tmp_path / "staging", {k: make_sample(k, mp4=mp4) for k in keys})
    shards = tmp_path / "shards" / "real"
    code = (
        "import sys; from curation.shards import write_shards_from_dir as w; "
        f"w({str(tmp_path / 'staging')!r}, {str(shards)!r}, 'real', max_samples=2)"
    )
    rng = np.random.default_rng(0)
    for _ in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-c", code], cwd=ROOT, stderr=subprocess.PIPE, text=True
        )
        target = len(list(shards.glob("*.tar"))) + int(rng.integers(1, 4))
        deadline = time.monotonic() + 60
        while len(list(shards.glob("*.tar"))) < target and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.002)
        if proc.poll() not in (None, 0):  # the writer died on its own: say how
            pytest.fail(f"writer exited {proc.returncode}: {proc.stderr.read()[-3000:]}")
        time.sleep(float(rng.uniform(0, 0.02)))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert len(read_index(shards)) < len(keys), "the writer finished before it was killed"
    summary = write_shards_from_dir(tmp_path / "staging", shards, "real", max_samples=2)
    index_keys = read_index(shards).column("key").to_pylist()
    assert sorted(index_keys) == keys and len(set(index_keys)) == len(keys)
    assert summary["indexed_samples"] == len(keys)
    report = verify_dataset(shards, decode="none")
    assert report["ok"], report["errors"]


def test_stats_cli(built, mp4):
    root, _, _ = built
    rendered = make_sample("rendered", mp4=mp4)
    meta = json.loads(rendered["json"])
    meta["provenance"].update(generated=True, generator="a test renderer")
    rendered["json"] = json.dumps(meta).encode()
    write_shards([("rendered", rendered)], root / "shards" / "demo", "demo")
    result = CliRunner().invoke(app, ["shards", "stats", "--root", str(root)])
    assert result.exit_code == 0, result.output
    stats = json.loads((root / "reports" / "shards_stats.json").read_text())
    assert stats["total"]["count"] == 8 and stats["total"]["tiny_random_count"] == 8
    assert stats["total"]["generated_count"] == 1
    by_name = {d["dataset"]: d for d in stats["datasets"]}
    assert by_name["demo"]["generated_count"] == 1 and by_name["real"]["generated_count"] == 0
    assert "generated (rendered, not filmed) samples: 1 of 8" in result.output
    assert stats["total"]["action_frame_counts"]["W|·"] == 8  # frame 1 of each clip
    assert stats["total"]["hours"] == pytest.approx(8 * 12 / 16 / 3600, abs=1e-6)
    assert (root / "reports" / "shards_stats.png").stat().st_size > 1000
    assert "tiny-random" in result.output


def test_write_cli(tmp_path, mp4):
    stage(tmp_path / "staging", {"a": make_sample("a", mp4=mp4), "b": make_sample("b", mp4=mp4)})
    args = ["shards", "write", "--staging", str(tmp_path / "staging"), "--root", str(tmp_path)]
    result = CliRunner().invoke(app, [*args, "--dataset", "real"])
    assert result.exit_code == 0, result.output
    assert read_index(tmp_path / "shards" / "real").column("key").to_pylist() == ["a", "b"]
    assert (tmp_path / "manifests" / "shards-real.rejects.parquet").exists()


def test_verify_cli_rejects_a_folder_without_shards(tmp_path):
    result = CliRunner().invoke(app, ["shards", "verify", "--root", str(tmp_path)])
    assert result.exit_code == 2 and "neither" in result.output  # (rich wraps the message)


def _latent_meta(key: str, frames: int = 5) -> dict:
    return {"key": key, "source": "sekai-real", "latent_shape": [48, frames, 4, 4], "fps": 4.0}


def _validate_latent(meta: dict) -> None:
    if not (isinstance(meta.get("latent_shape"), list) and len(meta["latent_shape"]) == 4):
        raise SchemaError(f"sample {meta.get('key')!r}: latent_shape must be 4 integers")


LATENT = shards_module.SampleKind(
    name="latent",
    members=("latents.pth", "json"),
    validate=_validate_latent,
    index_fields=lambda m: {
        "source": m["source"],
        "frames": m["latent_shape"][1],
        "fps": m["fps"],
        "tiny_random": False,
    },
    summarize=lambda metas: {"count": len(list(metas))},
)


def test_writer_validates_other_sample_kinds(tmp_path):
    """Latent samples go through the same writer: their own members, schema and stats."""
    good = {
        f"lat_{i}": {"latents.pth": bytes([i]) * 100, "json": json.dumps(_latent_meta(f"lat_{i}"))}
        for i in range(3)
    }
    bad = {"latents.pth": b"x", "json": json.dumps({"key": "bad", "latent_shape": [1]})}
    no_latents = {"json": json.dumps(_latent_meta("no_latents"))}
    samples = [
        (k, {e: d.encode() if isinstance(d, str) else d for e, d in m.items()})
        for k, m in [*good.items(), ("bad", bad), ("no_latents", no_latents)]
    ]
    out = tmp_path / "latents"
    summary = write_shards(samples, out, "latents", max_samples=2, kind=LATENT)
    assert summary["samples_written"] == 3 and summary["shards_written"] == [
        "latents-000000.tar",
        "latents-000001.tar",
    ]
    reasons = {r["key"]: r["detail"] for r in summary["rejects"]}
    assert (
        "latent_shape" in reasons["bad"]
        and "lacks members ['latents.pth']" in reasons["no_latents"]
    )
    index = read_index(out).to_pylist()
    assert [(r["key"], r["members"], r["frames"]) for r in index] == [
        (f"lat_{i}", ["json", "latents.pth"], 5) for i in range(3)
    ]
    assert all(r["tasks"] is None for r in index)  # the kind does not say: unknown
    stats = json.loads((out / "__meta__" / "latents-000000_stats.json").read_text())
    assert stats["count"] == 2 and stats["durations_s"] == [1.25, 1.25]
    read = dict(iter_shard(out / "latents-000001.tar"))
    assert read["lat_2"]["latents.pth"] == bytes([2]) * 100
    # the default kind (clips) refuses a latent sample: no mp4, not a clip schema
    with pytest.raises(SchemaError, match="lacks members"):
        with ShardWriter(tmp_path / "clips", "clips") as w:
            w.write("lat_0", samples[0][1])


def _wav_meta(key: str, seconds: int) -> dict:
    return {"key": key, "seconds": seconds, "tasks": ["t2a"]}


def _validate_wav(meta: dict) -> None:
    if not isinstance(meta.get("seconds"), int):
        raise SchemaError(f"sample {meta.get('key')!r}: seconds must be an integer")


def _summarize_wav(metas) -> dict:
    metas = list(metas)
    seconds = sum(m["seconds"] for m in metas)
    return {
        "count": len(metas),
        "frames": seconds,
        "duration_s": float(seconds),
        "tiny_random_count": 0,
        "generated_count": 0,
        "task_counts": {"t2a": len(metas)},
    }


@pytest.fixture()
def wav_kind():
    """A kind no module of the project knows, registered only for the test."""
    kind = register_kind(
        SampleKind(
            name="test-wav",
            members=("json", "wav"),
            validate=_validate_wav,
            index_fields=lambda m: {
                "source": "synthetic",
                "frames": m["seconds"],
                "fps": 1.0,
                "tiny_random": False,
                "tasks": m["tasks"],
            },
            summarize=_summarize_wav,
        )
    )
    yield kind
    del SAMPLE_KINDS[kind.name]


def test_a_registered_kind_needs_no_writer_change(tmp_path, wav_kind):
    """Write, index, verify, stats and query a kind declared only here."""
    samples = [
        (f"w{i}", {"wav": bytes([i]) * 64, "json": json.dumps(_wav_meta(f"w{i}", i + 1)).encode()})
        for i in range(3)
    ]
    bad = {"wav": b"x", "json": json.dumps({"key": "bad", "seconds": "1"}).encode()}
    out = tmp_path / "wav"
    summary = write_shards([*samples, ("bad", bad)], out, "wav", max_samples=2, kind=wav_kind)
    assert summary["shards_written"] == ["wav-000000.tar", "wav-000001.tar"]
    assert [r["reason"] for r in summary["rejects"]] == ["invalid_sample"]
    index = read_index(out).to_pylist()
    assert [(r["key"], r["frames"], r["tasks"]) for r in index] == [
        ("w0", 1, ["t2a"]),
        ("w1", 2, ["t2a"]),
        ("w2", 3, ["t2a"]),
    ]
    assert infer_kind(index[0]["members"]) is wav_kind
    report = verify_dataset(out, decode="none")  # the kind is found by its members
    assert report["ok"] and report["kind"] == "test-wav", report["errors"]
    assert dataset_stats(out)["task_counts"] == {"t2a": 3}
    assert shards_for(out, "t2a", 3) == [str(out / "wav-000001.tar")]
    with pytest.raises(ValueError, match="already registered"):
        register_kind(SampleKind("test-wav", ("json",), _validate_wav, dict, _summarize_wav))


def test_builtin_kinds_are_registered_and_index_their_tasks():
    assert SAMPLE_KINDS["clip"] is CLIP_SAMPLE and SAMPLE_KINDS["latent"] is LATENT_SAMPLE
    assert infer_kind(["json", "mp4", "txt", "first.jpg"]) is CLIP_SAMPLE
    assert infer_kind(["event_emb.pth", "json", "latents.pth"]) is LATENT_SAMPLE
    assert infer_kind(["json"]) is None
    assert CLIP_SAMPLE.index_fields(make_meta("a"))["tasks"] == ["t2v", "i2v"]
    latent = {"source": "event", "latent_shape": [48, 3, 2, 2], "latent_fps": 4.0}
    assert LATENT_SAMPLE.index_fields({**latent, "tiny_random": True, "task": "i2v"}) == {
        "source": "event",
        "frames": 3,
        "fps": 4.0,
        "tiny_random": True,
        "tasks": ["i2v"],
    }


def _task_sample(key: str, frames: int, tasks: list[str], mp4: bytes) -> dict[str, bytes]:
    sample = make_sample(key, frames, mp4=mp4)
    meta = json.loads(sample["json"])
    meta["tasks"] = tasks
    sample["json"] = json.dumps(meta).encode()
    return sample


@pytest.fixture()
def by_task(tmp_path, mp4) -> Path:
    """Shards [a 12 t2v, b 12 i2v], [c 30 t2v, d 12 none], [e 30 i2v+t2v] (frames, tasks)."""
    rows = [("a", 12, ["t2v"]), ("b", 12, ["i2v"]), ("c", 30, ["t2v"]), ("d", 12, [])]
    rows.append(("e", 30, ["i2v", "t2v"]))
    out = tmp_path / "shards" / "real"
    write_shards([(k, _task_sample(k, f, t, mp4)) for k, f, t in rows], out, "real", max_samples=2)
    return out


SHARDS_FOR_CASES = [
    ("t2v", 12, [0, 1, 2]),
    ("t2v", 13, [1, 2]),
    ("i2v", 12, [0, 2]),
    ("i2v", 13, [2]),
    ("i2v", 31, []),
    ("x2v", 1, []),
]


def test_shards_for_answers_from_the_index_alone(by_task, monkeypatch):
    assert read_index(by_task).column("tasks").to_pylist() == [
        ["t2v"],
        ["i2v"],
        ["t2v"],
        [],
        ["i2v", "t2v"],
    ]
    for tar in by_task.glob("*.tar"):
        tar.unlink()  # no tar is opened: the answers cannot come from them

    def no_tars(*args, **kwargs):
        raise AssertionError("shards_for opened a tar")

    monkeypatch.setattr(read_module.tarfile, "open", no_tars)
    for task, min_frames, want in SHARDS_FOR_CASES:
        got = shards_for(by_task, task, min_frames)
        assert got == [str(by_task / f"real-{i:06d}.tar") for i in want], (task, min_frames)
    assert shards_for(by_task.parent / "empty", "t2v", 1) == []


def test_shards_for_reads_json_for_an_index_older_than_tasks(by_task, mp4, monkeypatch):
    """An index written before the tasks column: read it with tasks null, and answer for
    those rows from the json members of only the shards that have long enough samples."""
    import pyarrow.parquet as pq

    old = pq.read_table(by_task / "__meta__" / "index.parquet").drop_columns(["tasks"])
    pq.write_table(old, by_task / "__meta__" / "index.parquet")
    assert read_index(by_task).column("tasks").null_count == 5
    opened = []
    real_iter = read_module.iter_shard

    def counting(path, exts=None):
        opened.append(Path(path).name)
        return real_iter(path, exts)

    monkeypatch.setattr(read_module, "iter_shard", counting)
    for task, min_frames, want in SHARDS_FOR_CASES:
        got = shards_for(by_task, task, min_frames)
        assert got == [str(by_task / f"real-{i:06d}.tar") for i in want], (task, min_frames)
    opened.clear()
    assert shards_for(by_task, "i2v", 13) == [str(by_task / "real-000002.tar")]
    assert opened == ["real-000001.tar", "real-000002.tar"]  # shard 0 holds only 12 frames
    # The writer appends to an old index; new rows carry tasks, old ones stay unknown.
    write_shards([("f", _task_sample("f", 40, ["i2v"], mp4))], by_task, "real")
    assert read_index(by_task).column("tasks").to_pylist()[-1] == ["i2v"]
    opened.clear()
    assert shards_for(by_task, "i2v", 31) == [str(by_task / "real-000003.tar")]
    assert opened == []  # no old row has 31 frames: nothing to scan
