"""`shards verify` checks the index's own fields, tar tails and stats files, and records an
index digest; `shards stats` never reports a stats file its shards do not hold.

Why: verify compared members, sizes and sha256 with the index, but not the index's frames,
fps, source, tiny-random flag or tasks (what a trainer selects shards by), not bytes after a
tar's end (a tar appended there is invisible to readers that stop at the end but not to
those that skip zero blocks), and not the stats files `shards stats` reports from. Each
crafted case below leaves everything else consistent, so only the named check can flag it.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from curation.shards import INDEX_NAME, dataset_stats, iter_shard, read_index, verify_dataset
from curation.shards import write_shards as write
from curation.shards.verify import changes_since, tar_tail_problems
from jobs.cli import app
from schemas.sample import SHARD_INDEX_SCHEMA
from tests.test_shards import make_mp4, make_sample

SHARD = "real-000000.tar"


@pytest.fixture(scope="module")
def mp4() -> bytes:
    return make_mp4(12)


def build(folder: Path, mp4: bytes, n: int = 3, max_samples: int = 2, **meta) -> Path:
    """``n`` clip samples in shards of ``max_samples`` (``meta`` overrides each json)."""
    samples = []
    for i in range(n):
        sample = make_sample(f"clip_{i}", mp4=mp4)
        sample["json"] = json.dumps(json.loads(sample["json"]) | meta).encode()
        samples.append((f"clip_{i}", sample))
    write(samples, folder, "real", max_samples=max_samples)
    return folder


def edit_index(folder: Path, edit: Callable[[dict], None]) -> None:
    rows = read_index(folder).to_pylist()
    for row in rows:
        edit(row)
    pq.write_table(pa.Table.from_pylist(rows, schema=SHARD_INDEX_SCHEMA), folder / INDEX_NAME)


def stats_path(folder: Path, shard: str = SHARD) -> Path:
    return folder / "__meta__" / f"{shard.removesuffix('.tar')}_stats.json"


def edit_stats(folder: Path, edit: Callable[[dict], None], shard: str = SHARD) -> None:
    stats = json.loads(stats_path(folder, shard).read_text())
    edit(stats)
    stats_path(folder, shard).write_text(json.dumps(stats))


def errors(folder: Path) -> list[str]:
    report = verify_dataset(folder, decode="none")
    assert report["ok"] == (not report["errors"])
    return report["errors"]


# ---- 1. index fields against the sample's json ------------------------------------------------
def test_a_clean_dataset_passes_every_new_check(tmp_path, mp4):
    folder = build(tmp_path / "real", mp4, n=5)
    report = verify_dataset(folder, decode="ends")
    assert report["ok"], report["errors"]
    assert report["index_sha256"] == hashlib.sha256((folder / INDEX_NAME).read_bytes()).hexdigest()
    assert report["shard_bytes"] == {p.name: p.stat().st_size for p in folder.glob("*.tar")}


@pytest.mark.parametrize(
    ("column", "value", "shown"),
    [
        ("frames", 999, "index frames is 999, json says 12"),
        ("fps", 24.0, "index fps is 24.0, json says 16"),
        ("source", "synthetic", "index source is 'synthetic', json says 'sekai-real'"),
        ("tiny_random", False, "index tiny_random is False, json says True"),
        ("tasks", ["t2v"], "index tasks is ['t2v'], json says ['t2v', 'i2v']"),
        ("tasks", [], "index tasks is [], json says ['t2v', 'i2v']"),
    ],
)
def test_an_index_field_differing_from_the_json_is_flagged(tmp_path, mp4, column, value, shown):
    folder = build(tmp_path / "real", mp4)
    edit_index(folder, lambda r: r.update({column: value}) if r["key"] == "clip_1" else None)
    assert errors(folder) == [f"{SHARD}:clip_1: {shown}"]


def test_a_fractional_fps_stored_as_float32_is_not_a_mismatch(tmp_path):
    mp4 = make_mp4(12, fps=30)  # a container rate near 29.97 is not the point: decode none
    folder = build(tmp_path / "real", mp4, fps=29.97)
    assert read_index(folder).column("fps").to_pylist()[0] != 29.97  # float32 in the index
    assert errors(folder) == []


def test_null_tasks_of_an_older_index_and_unknown_columns_are_not_flagged(tmp_path, mp4):
    folder = build(tmp_path / "real", mp4)
    edit_index(folder, lambda r: r.update(tasks=None))
    table = pq.read_table(folder / INDEX_NAME)
    pq.write_table(table.append_column("future", pa.array([1] * len(table))), folder / INDEX_NAME)
    assert errors(folder) == []


# ---- 2. bytes after the end of a tar ----------------------------------------------------------
def python_tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


# txt lengths putting the archive's end at many offsets within a record, the exact fit
# (end + two zero blocks == 10240) among them
TAIL_SIZES = [0, 1, 511, 512, 513, 5000, 7167, 7168, 7169, 10239, 10240, 20000]


@pytest.mark.parametrize("size", TAIL_SIZES)
def test_tars_written_by_the_writer_python_and_gnu_tar_are_never_flagged(tmp_path, size):
    members = {"k.json": b'{"key": "k"}', "k.txt": b"x" * size}
    python_tar(tmp_path / "py.tar", members)
    assert tar_tail_problems(tmp_path / "py.tar") == []
    assert (tmp_path / "py.tar").stat().st_size % tarfile.RECORDSIZE == 0
    folder = tmp_path / "real"
    sample = make_sample("k", mp4=b"\0" * 600)  # only the writer's framing matters here
    sample["txt"] = b"x" * size
    write([("k", sample)], folder, "real")
    assert tar_tail_problems(folder / SHARD) == []
    if shutil.which("tar"):  # an independent writer of the same format
        src = tmp_path / "src"
        src.mkdir()
        for name, data in members.items():
            (src / name).write_bytes(data)
        subprocess.run(["tar", "-cf", str(tmp_path / "gnu.tar"), "-C", str(src), *members],
                       check=True)  # fmt: skip
        assert tar_tail_problems(tmp_path / "gnu.tar") == []


def test_exact_record_fit_has_no_padding_and_passes(tmp_path):
    # 2 headers + 512 + 7168 bytes of data end at 9216: the zero blocks fill the record
    python_tar(tmp_path / "fit.tar", {"k.json": b"{}", "k.txt": b"x" * 7168})
    assert (tmp_path / "fit.tar").stat().st_size == tarfile.RECORDSIZE
    assert tar_tail_problems(tmp_path / "fit.tar") == []


def _hidden_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("hidden.txt")
        info.size = 6
        tar.addfile(info, io.BytesIO(b"hidden"))
    return buf.getvalue()


TAILS = {
    "appended_tar": lambda raw: raw + _hidden_tar(),
    "byte_in_padding": lambda raw: raw[:-100] + b"\x01" + raw[-99:],
    "extra_zero_record": lambda raw: raw + b"\0" * tarfile.RECORDSIZE,
    "one_extra_block": lambda raw: raw + b"\0" * tarfile.BLOCKSIZE,
    "no_end_blocks": None,  # cut right after the last member
}


@pytest.mark.parametrize("case", list(TAILS))
def test_bytes_after_the_end_of_a_tar_are_flagged(tmp_path, mp4, case):
    folder = build(tmp_path / "real", mp4, n=2)
    tar = folder / SHARD
    raw = tar.read_bytes()
    if case == "no_end_blocks":
        with tarfile.open(tar) as t:
            last = t.getmembers()[-1]
        end = last.offset_data + -(-last.size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
        crafted = raw[:end]
    else:
        crafted = TAILS[case](raw)
    tar.write_bytes(crafted)
    edit_stats(folder, lambda s: s.update(bytes=len(crafted)))  # the stats agree: tail only
    assert [k for k, _ in iter_shard(tar)] == ["clip_0", "clip_1"]  # readers see nothing new
    if case == "appended_tar":  # ... unless they skip zero blocks
        with tarfile.open(tar, ignore_zeros=True) as t:
            assert "hidden.txt" in t.getnames()
    (error,) = errors(folder)
    expected = {
        "appended_tar": "data after the end of the archive",
        "byte_in_padding": "data after the end of the archive",
        "extra_zero_record": f"{tarfile.RECORDSIZE} bytes after the end-of-archive record",
        "one_extra_block": f"{tarfile.BLOCKSIZE} bytes after the end-of-archive record",
        "no_end_blocks": "no end-of-archive blocks after the last member",
    }[case]
    assert error.startswith(f"{SHARD}: {expected}"), error


# ---- 3. stats files against the shards --------------------------------------------------------
STATS_EDITS = {
    "count": (lambda s: s.update(count=5), "count is 5, the shard holds 2"),
    "keys": (lambda s: s.update(keys=["clip_0", "x"]), "keys is ['clip_0', 'x']"),
    "bytes": (lambda s: s.update(bytes=s["bytes"] + 1), "bytes is"),
    "frames": (lambda s: s.update(frames=1), "frames is 1, the shard holds 24"),
    "durations": (lambda s: s.update(durations_s=[9.0, 0.75]), "durations_s is [9.0, 0.75]"),
    "duration_s": (lambda s: s.update(duration_s=2.0), "duration_s is 2.0, the shard holds 1.5"),
    "fps_counts": (lambda s: s.update(fps_counts={"30": 2}), "fps_counts is {'30': 2}"),
    "tiny": (lambda s: s.update(tiny_random_count=0), "tiny_random_count is 0"),
    "generated": (lambda s: s.update(generated_count=2), "generated_count is 2"),
    "actions": (lambda s: s["action_frame_counts"].update({"W|·": 99}), "action_frame_counts"),
    "missing": (lambda s: s.pop("resolution_counts"), "lacks resolution_counts"),
    "extra_counts": (
        lambda s: s.update(camera_counts={"x": 2}),
        "camera_counts counts what the shard does not hold",
    ),
}


@pytest.mark.parametrize("case", list(STATS_EDITS))
def test_a_stats_file_differing_from_its_shard_is_flagged(tmp_path, mp4, case):
    folder = build(tmp_path / "real", mp4)
    edit, shown = STATS_EDITS[case]
    edit_stats(folder, edit)
    (error,) = errors(folder)
    assert error.startswith(f"{SHARD}: stats file __meta__/real-000000_stats.json")
    assert shown in error, error


def test_an_unreadable_stats_file_is_flagged(tmp_path, mp4):
    folder = build(tmp_path / "real", mp4)
    stats_path(folder).write_text("{not json")
    (error,) = errors(folder)
    assert "stats file __meta__/real-000000_stats.json does not read" in error


def test_an_older_stats_file_is_checked_on_the_fields_it_has(tmp_path, mp4):
    folder = build(tmp_path / "real", mp4)
    keep = ("shard", "dataset", "bytes", "keys", "count", "frames", "fps_counts")
    edit_stats(folder, lambda s: [s.pop(k) for k in list(s) if k not in keep])
    assert errors(folder) == []
    edit_stats(folder, lambda s: s.update(count=3))
    assert errors(folder) == [
        f"{SHARD}: stats file __meta__/real-000000_stats.json: count is 3, the shard holds 2"
    ]


STALE = {
    "count": lambda s: s.update(count=50, frames=600, duration_s=37.5),
    "keys": lambda s: s.update(keys=["clip_0", "clip_9"]),
    "bytes": lambda s: s.update(bytes=1),
    "frames": lambda s: s.update(frames=1000),
    "duration_s": lambda s: s.update(duration_s=3600.0),
    "tiny": lambda s: s.update(tiny_random_count=0),
    "source": lambda s: s.update(source_counts={"synthetic": 2}),
    "tasks": lambda s: s.update(task_counts={"t2v": 7}),
    "not_object": None,
}


@pytest.mark.parametrize("case", list(STALE))
def test_shards_stats_recounts_a_stats_file_the_index_contradicts(tmp_path, mp4, case):
    root = tmp_path / "root"
    folder = build(root / "shards" / "real", mp4, n=3)
    clean = dataset_stats(folder)
    assert clean["recounted"] == []
    if STALE[case] is None:
        stats_path(folder).write_text("[1, 2]")
    else:
        edit_stats(folder, STALE[case])
    got = dataset_stats(folder)
    assert got["recounted"] and got["recounted"][0].startswith(f"{SHARD}: ")
    assert {k: v for k, v in got.items() if k != "recounted"} == {
        k: v for k, v in clean.items() if k != "recounted"
    }
    assert got["count"] == 3 and got["frames"] == 36 and got["tiny_random_count"] == 3
    result = CliRunner().invoke(app, ["shards", "stats", "--root", str(root)])
    assert result.exit_code == 0, result.output
    assert f"stats file not used, recounted from the shard: real/{SHARD}" in result.output
    report = json.loads((root / "reports" / "shards_stats.json").read_text())
    assert report["total"]["count"] == 3
    assert report["total"]["recounted"] == [f"real/{r}" for r in got["recounted"]]


def test_shards_stats_names_a_missing_shard_in_one_line(tmp_path, mp4):
    root = tmp_path / "root"
    folder = build(root / "shards" / "real", mp4, n=3)
    (folder / SHARD).unlink()
    result = CliRunner().invoke(app, ["shards", "stats", "--root", str(root)])
    assert result.exit_code == 1
    assert f"error: {SHARD}: named by the index but missing" in result.output
    assert "Traceback" not in result.output


# ---- 4. the index digest in the report, and --against -------------------------------------------
def verify_cli(root: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(
        app, ["shards", "verify", "--root", str(root), "--workers", "1", "--decode", "none", *args]
    )
    return result.exit_code, result.output


def saved_report(root: Path, tmp_path: Path) -> Path:
    code, out = verify_cli(root)
    assert code == 0, out
    saved = tmp_path / "saved.json"
    shutil.copy(root / "reports" / "shards_verify.json", saved)
    return saved


def test_against_an_unchanged_root_passes(tmp_path, mp4):
    root = tmp_path / "root"
    build(root / "shards" / "real", mp4, n=3)
    saved = saved_report(root, tmp_path)
    code, out = verify_cli(root, "--against", str(saved))
    assert code == 0, out
    assert "no index or shard file changed" in out
    report = json.loads((root / "reports" / "shards_verify_against.json").read_text())
    assert report["ok"] and report["changed"] == []


def _recaption(root: Path, mp4: bytes, text: bytes) -> None:
    """Rewrite the dataset consistently (shards, index, stats) with one caption changed."""
    folder = root / "shards" / "real"
    shutil.rmtree(folder)
    samples = [(f"clip_{i}", make_sample(f"clip_{i}", mp4=mp4)) for i in range(3)]
    samples[1][1]["txt"] = text
    write(samples, folder, "real", max_samples=2)


@pytest.mark.parametrize(
    "edit",
    ["same_length_caption", "longer_caption", "shard_removed", "dataset_added", "dataset_gone"],
)
def test_against_names_a_consistent_edit_plain_verify_passes(tmp_path, mp4, edit):
    root = tmp_path / "root"
    build(root / "shards" / "real", mp4, n=3)
    saved = saved_report(root, tmp_path)
    folder = root / "shards" / "real"
    if edit == "same_length_caption":
        _recaption(root, mp4, b"caption of CLIP_1")
    elif edit == "longer_caption":
        _recaption(root, mp4, b"caption of clip_1, now longer" * 400)
    elif edit == "shard_removed":
        (folder / "real-000001.tar").unlink()
        stats_path(folder, "real-000001.tar").unlink()
        table = read_index(folder)
        keep = pa.array([s != "real-000001.tar" for s in table.column("shard").to_pylist()])
        pq.write_table(table.filter(keep), folder / INDEX_NAME)
    elif edit == "dataset_added":
        write([("e", make_sample("e", mp4=mp4))], root / "shards" / "extra", "extra")
    else:
        shutil.rmtree(folder)
        write([("e", make_sample("e", mp4=mp4))], root / "shards" / "other", "other")
    code, out = verify_cli(root, "--report", str(tmp_path / "plain.json"))
    assert code == 0, out  # every other check passes: the edit is consistent
    code, out = verify_cli(root, "--against", str(saved))
    assert code == 1, out
    report = json.loads((root / "reports" / "shards_verify_against.json").read_text())
    changed = "\n".join(report["changed"])
    assert not report["ok"] and report["changed"]
    expected = {
        "same_length_caption": "shards/real: index changed",
        "longer_caption": "shards/real: index changed",
        "shard_removed": "shards/real/real-000001.tar: gone",
        "dataset_added": "shards/extra: not in the saved report",
        "dataset_gone": "shards/real: in the saved report but not found now",
    }[edit]
    assert expected in changed and f"changed since {saved}: {expected}" in out


def test_changes_since_compares_sizes_and_digests():
    def report(digest: str, sizes: dict) -> dict:
        d = {"shards_dir": "/r/shards/real", "index_sha256": digest, "shard_bytes": sizes}
        return {"datasets": [d]}

    same = report("a", {"real-000000.tar": 10})
    assert changes_since(same, same) == []
    assert changes_since(same, report("a", {"real-000000.tar": 11})) == [
        "shards/real/real-000000.tar: 10 bytes, now 11"
    ]
    assert changes_since(same, report("a", {"real-000000.tar": 10, "real-000001.tar": 5})) == [
        "shards/real/real-000001.tar: new"
    ]
    with pytest.raises(ValueError, match="no index digests"):
        changes_since({"datasets": [{"shards_dir": "/r/shards/real"}]}, same)


@pytest.mark.parametrize("bad", ["not_json", "no_datasets", "old_report", "same_as_report"])
def test_against_a_bad_report_is_one_error_line(tmp_path, mp4, bad):
    root = tmp_path / "root"
    build(root / "shards" / "real", mp4, n=1)
    saved = saved_report(root, tmp_path)
    args = ["--against", str(saved)]
    if bad == "not_json":
        saved.write_text("{")
    elif bad == "no_datasets":
        saved.write_text("{}")
    elif bad == "old_report":
        report = json.loads(saved.read_text())
        del report["datasets"][0]["index_sha256"]
        saved.write_text(json.dumps(report))
    else:
        args += ["--report", str(saved)]
    before = saved.read_text()
    code, out = verify_cli(root, *args)
    assert code == 2 and "--against" in out and "Traceback" not in out, out
    assert saved.read_text() == before  # never overwritten
