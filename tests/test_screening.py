"""Human screening of event videos: the decisions manifest and claims, the CSV round trip
(export, a person's spreadsheet edits, import), contact sheets, shards/event and status.

The events stage is another engineer's; ``event_root`` builds what it writes (the events
manifest with the contract's columns and staged samples with real tiny mp4s), so these
tests do not depend on it (only on its EVENTS_SCHEMA, the contract).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from curation.dataroot import DataRoot
from curation.manifest import write_table
from curation.screening import csvio
from curation.screening import decisions as dec
from curation.screening.contact_sheet import contact_sheet, frame_indices
from curation.screening.fill import fill_csv
from curation.screening.publish import write_event_shards
from curation.screening.status import screening_status, status_figure
from curation.shards import iter_shard, read_index, verify_dataset
from curation.video import write_mp4
from jobs.screening import app
from schemas.events import EVENTS_SCHEMA
from schemas.sample import SAMPLE_SCHEMA_VERSION, validate_sample

CATEGORIES = ("urban_daily_life", "sci_fi", "fantasy", "weather")


def event_key(i: int) -> str:
    return "evt_" + hashlib.sha256(f"event {i}".encode()).hexdigest()[:16]


def event_root(
    path: Path, n: int, frames: int = 9, size: tuple[int, int] = (64, 32), videos: bool = True
) -> DataRoot:
    """A data root as the events stage leaves it: ``n`` staged event samples (real H.264
    mp4s, txt, valid json) and ``manifests/events.parquet``. ``videos=False``: rows only."""
    root = DataRoot.at(path)
    staging = root.staging("event-generated")
    staging.mkdir(parents=True, exist_ok=True)
    w, h = size
    rows = []
    for i in range(n):
        key, category = event_key(i), CATEGORIES[i % len(CATEGORIES)]
        text = f"event {i}: a sudden gust sweeps the {category} street"
        if i % 5 == 3:
            text = f'=HYPERLINK("x") event {i}; with, commas "quotes"'  # a formula-like text
        mp4 = staging / f"{key}.mp4"
        if videos:
            rng = np.random.default_rng(i)
            base = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
            clip = np.stack([np.roll(base, 2 * t, axis=1) for t in range(frames)])
            write_mp4(mp4, clip, 16.0, w, h)
            scores = {"aesthetic_quality": 0.5, "total": 0.4 + i / (10 * n)}
            meta = {
                "schema_version": SAMPLE_SCHEMA_VERSION, "key": key, "source": "event",
                "tasks": ["t2v", "i2v"], "fps": 16.0, "frames": frames, "width": w,
                "height": h, "source_video": mp4.name, "source_fps": 16.0,
                "source_frame_range": [0, frames - 1], "keys": [], "mouse": [],
                "segments": [], "captions": {"scene": None, "event": text, "action": None},
                "scores": scores, "screening": None,
                "meta": {"category": category, "image": f"/images/{i}.png",
                         "pair_id": f"pair{i}", "seed": i},
                "provenance": {"stage": "events", "code_version": "test", "config_hash": "x",
                               "backend": "tiny-random", "tiny_random": True,
                               "generated": True, "generator": "tiny-random"},
            }  # fmt: skip
            validate_sample(meta)
            (staging / f"{key}.txt").write_text(text)
            (staging / f"{key}.json").write_text(json.dumps(meta))
        rows.append({
            "key": key, "pair_id": f"pair{i}", "image": f"/images/{i}.png", "category": category,
            "event_text": text, "seed": i, "path": str(mp4.relative_to(root.path)),
            "frames": frames, "fps": 16.0, "width": w, "height": h, "steps": 2,
            "guidance_scale": 5.0, "guidance_scale_2": None, "boundary_ratio": None,
            "model_id": "tiny-random", "tiny_random": True, "tasks": ["t2v", "i2v"],
            "total": 0.4 + i / (10 * n), "total_dimensions": ["aesthetic_quality"],
            "scorer": "builtin 1",
        })  # fmt: skip
    table = pa.Table.from_pylist(rows, schema=EVENTS_SCHEMA)
    write_table(table, root.manifest("events"), EVENTS_SCHEMA)
    return root


# ---- decisions and claims ---------------------------------------------------------------


def test_normalise_decision():
    assert dec.normalise_decision("  Keep ") == "keep"
    assert dec.normalise_decision("REJECT") == "reject"
    assert dec.normalise_decision("\tunsure\n") == "unsure"
    assert dec.normalise_decision("") is None
    assert dec.normalise_decision("   ") is None
    with pytest.raises(ValueError, match="keep, reject, unsure"):
        dec.normalise_decision("maybe")


def test_decisions_latest_wins_and_cleared(tmp_path):
    root = DataRoot.at(tmp_path)
    assert dec.read_decisions(root) == [] and dec.latest_decisions(root) == {}
    rows = [{"key": "a", "decision": "keep", "note": None, "screener": "ann", "source": "web"},
            {"key": "b", "decision": "reject", "note": "blurry", "screener": "ann",
             "source": "csv:batch.csv"}]  # fmt: skip
    recorded = dec.append_decisions(root, rows)
    assert [r["seq"] for r in recorded] == [1, 2]
    assert all(r["decided_at"].tzinfo is not None for r in recorded)
    dec.append_decisions(root, [{"key": "a", "decision": "reject", "note": "n",
                                 "screener": "bob", "source": "web"}])  # fmt: skip
    latest = dec.latest_decisions(root)
    assert latest["a"]["decision"] == "reject" and latest["a"]["screener"] == "bob"
    assert latest["a"]["seq"] == 3
    dec.append_decisions(root, [{"key": "b", "decision": dec.CLEARED, "note": None,
                                 "screener": "ann", "source": "web"}])  # fmt: skip
    assert set(dec.latest_decisions(root)) == {"a"}
    every = dec.read_decisions(root)
    assert [r["seq"] for r in every] == [1, 2, 3, 4]
    table = pq.read_table(root.manifest("screening_decisions"))
    assert table.schema.equals(dec.DECISIONS_SCHEMA, check_metadata=False)
    with pytest.raises(ValueError):
        dec.append_decisions(root, [{"key": "a", "decision": "maybe", "note": None,
                                     "screener": "x", "source": "web"}])  # fmt: skip
    assert len(dec.read_decisions(root)) == 4


def test_claims_never_overlap_and_expire(tmp_path):
    root = DataRoot.at(tmp_path)
    keys = [f"k{i}" for i in range(10)]
    dec.append_decisions(root, [{"key": "k0", "decision": "keep", "note": None,
                                 "screener": "z", "source": "web"}])  # fmt: skip
    ann = dec.claim(root, "ann", keys, 4, None)
    assert ann == ["k1", "k2", "k3", "k4"]  # k0 is decided
    bob = dec.claim(root, "bob", keys, 4, None)
    assert bob == ["k5", "k6", "k7", "k8"]
    assert dec.claim(root, "ann", keys, 4, None) == ann  # her own claims first
    assert dec.claim(root, "ann", keys, 5, None) == [*ann, "k9"]
    assert dec.claim(root, "cat", keys, 4, None) == []
    # deciding a key releases its claim; release frees the rest
    dec.append_decisions(root, [{"key": "k5", "decision": "reject", "note": None,
                                 "screener": "bob", "source": "web"}])  # fmt: skip
    assert "k5" not in dec.active_claims(root)
    assert dec.release(root, "bob", ["k6"]) == 1
    assert dec.claim(root, "cat", keys, 4, None) == ["k6"]
    assert dec.release(root, "ann") == 5
    assert dec.claim(root, "cat", keys, 3, None) == ["k1", "k2", "k6"]  # k6: hers already
    # a lease that has run out no longer holds the key
    leased = dec.claim(root, "dan", ["x1", "x2"], 2, 0.0)
    assert leased == ["x1", "x2"]
    assert "x1" not in dec.active_claims(root)
    assert dec.claim(root, "eve", ["x1", "x2"], 1, 60.0) == ["x1"]
    row = dec.active_claims(root)["x1"]
    assert row["screener"] == "eve"
    assert row["expires_at"] - datetime.now(UTC) < timedelta(seconds=61)


def test_load_events(tmp_path):
    with pytest.raises(FileNotFoundError, match="yume-data events"):
        dec.load_events(DataRoot.at(tmp_path))
    root = event_root(tmp_path, 6, videos=False)
    events = dec.load_events(root)
    assert [e["key"] for e in events] == sorted(event_key(i) for i in range(6))
    assert {"category", "event_text", "path", "total", "tasks"} <= set(events[0])


# ---- the CSV round trip -----------------------------------------------------------------


def cli(*args: str, ok: bool = True):
    result = CliRunner().invoke(app, [str(a) for a in args])
    if ok:
        assert result.exit_code == 0, result.output
    return result


def shard_samples(root: DataRoot) -> dict[str, dict]:
    """key -> parsed json of every sample in shards/event."""
    folder = root.shards("event")
    out = {}
    for shard in sorted(set(read_index(folder).column("shard").to_pylist())):
        for key, members in iter_shard(folder / shard):
            out[key] = json.loads(members["json"])
    return out


@pytest.fixture(scope="module")
def eight(tmp_path_factory) -> Path:
    """A pristine root with 8 event videos; tests copy it (encoding once is enough)."""
    return event_root(tmp_path_factory.mktemp("events8"), 8).path


@pytest.fixture
def root(eight, tmp_path) -> DataRoot:
    shutil.copytree(eight, tmp_path / "root")
    return DataRoot.at(tmp_path / "root")


def test_neutralise_round_trip():
    cells = ["=1+1", "+x", "-3", "@SUM(A1)", "\tx", "\rx", "'", "'=a", "''", "plain", "",
             "it's", "a=b", "'note"]  # fmt: skip
    for cell in cells:
        out = csvio.neutralise(cell)
        assert not out.startswith(("=", "+", "-", "@", "\t", "\r"))
        assert csvio.restore(out) == cell
    assert csvio.restore("'note") == "'note"  # a typed apostrophe stays


def test_export_fill_import_publish(root):
    r = cli("export", "--root", root.path, "--screener", "ann", "--batch-size", "5")
    csv_path = root.screening / "ann-001.csv"
    assert str(csv_path) in r.output
    raw = csv_path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf") and b"\r\n" in raw
    text = raw.decode("utf-8-sig")
    assert text.splitlines()[0] == ",".join(csvio.COLUMNS)
    events = {e["key"]: e for e in dec.load_events(root)}
    exported = text.splitlines()[1:]
    assert len(exported) == 5
    # the formula-like event text (row 3) is neutralised in the file
    formula = events[event_key(3)]["event_text"]
    assert formula.startswith("=") and ",\"'=HYPERLINK(" in text
    # contact sheets: one JPEG per exported video, 8 frames (2 rows of 4) plus text
    for key in sorted(events)[:5]:
        sheet = root.screening / "contact_sheets" / f"{key}.jpg"
        with Image.open(sheet) as im:
            assert im.format == "JPEG" and im.width == 4 * 192
            assert im.height > 2 * 96  # 64x32 frames scaled to 192x96, then the text
    filled = fill_csv(csv_path, 0.6, seed=0)
    assert (filled["keep"], filled["reject"]) == (3, 2)
    r = cli("import", csv_path, "--root", root.path)
    assert "recorded 5" in r.output and "rebuilt: 3 samples" in r.output
    latest = dec.latest_decisions(root)
    assert len(latest) == 5 and {d["screener"] for d in latest.values()} == {"ann"}
    assert {d["source"] for d in latest.values()} == {"csv:ann-001.csv"}
    kept = {k for k, d in latest.items() if d["decision"] == "keep"}
    samples = shard_samples(root)
    assert set(samples) == kept
    for key, meta in samples.items():
        assert meta["screening"] == {"decision": "accepted", "reviewer": "ann",
                                     "note": latest[key]["note"]}  # fmt: skip
        assert meta["captions"]["event"] == events[key]["event_text"]
        validate_sample(meta)
    assert verify_dataset(root.shards("event"), decode="full")["ok"]
    # the next export skips the decided videos
    cli("export", "--root", root.path, "--screener", "ann", "--batch-size", "10")
    second = (root.screening / "ann-002.csv").read_text("utf-8-sig").splitlines()[1:]
    assert len(second) == 3 and not {line.split(",")[0] for line in second} & set(latest)


def _edit(path: Path, key: str, decision: str, note: str = "") -> None:
    """Set one row's decision and note as a person would, keeping everything else."""
    rows = list(csv.reader(io.StringIO(path.read_text("utf-8-sig"), newline="")))
    head = rows[0]
    for row in rows[1:]:
        if row[head.index("key")] == key:
            row[head.index("decision")], row[head.index("note")] = decision, note
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows(rows)
    path.write_bytes(out.getvalue().encode("utf-8-sig"))


def test_reimport_and_keep_to_reject(root):
    cli("export", "--root", root.path, "--screener", "ann", "--batch-size", "6")
    path = root.screening / "ann-001.csv"
    fill_csv(path, 0.5, seed=1)
    cli("import", path, "--root", root.path)
    first = shard_samples(root)
    index_before = read_index(root.shards("event"))
    # the same file again: nothing recorded, shards untouched
    r = cli("import", path, "--root", root.path)
    assert "recorded 0, unchanged 6" in r.output and "unchanged: 3 samples" in r.output
    assert len(dec.read_decisions(root)) == 6
    assert read_index(root.shards("event")).equals(index_before)
    # keep -> reject: the sample leaves shards/event; a note edit changes the kept sample
    gone, edited = sorted(first)[:2]
    _edit(path, gone, "Reject", "on second look: flicker")
    _edit(path, edited, " keep ", "fine, slight blur")
    r = cli("import", path, "--root", root.path)
    assert "recorded 2, unchanged 4" in r.output
    samples = shard_samples(root)
    assert set(samples) == set(first) - {gone}
    assert samples[edited]["screening"]["note"] == "fine, slight blur"
    assert len(read_index(root.shards("event"))) == len(samples)  # no sample twice
    assert verify_dataset(root.shards("event"), decode="ends")["ok"]
    assert dec.latest_decisions(root)[gone]["decision"] == "reject"
    assert len(dec.read_decisions(root)) == 8
    assert not list(root.screening.glob(".publish-*"))  # no half-built folder left behind
    # every kept video rejected: the dataset folder goes
    for key in samples:
        _edit(path, key, "reject")
    cli("import", path, "--root", root.path)
    assert not root.shards("event").exists()
    assert write_event_shards(root)["samples"] == 0


def _filled(root: DataRoot, screener: str = "ann", n: int = 4) -> tuple[Path, list[list[str]]]:
    """An exported, filled batch CSV and its records (header first), as read back."""
    cli("export", "--root", root.path, "--screener", screener, "--batch-size", str(n))
    path = root.screening / f"{screener}-001.csv"
    fill_csv(path, 0.5, seed=2)
    return path, list(csv.reader(io.StringIO(path.read_text("utf-8-sig"), newline="")))


def _write(path: Path, records: list[list[str]], delimiter: str = ",", bom: bool = True,
           eol: str = "\r\n") -> Path:  # fmt: skip
    out = io.StringIO()
    csv.writer(out, delimiter=delimiter, lineterminator=eol).writerows(records)
    path.write_bytes(out.getvalue().encode("utf-8-sig" if bom else "utf-8"))
    return path


def _set(records: list[list[str]], row: int, column: str, value: str) -> list[list[str]]:
    """A copy with spreadsheet row ``row`` (header = 1) of ``column`` set to ``value``."""
    out = [list(r) for r in records]
    out[row - 1][out[0].index(column)] = value
    return out


def _malformed(records: list[list[str]]) -> dict[str, tuple[list[list[str]], str]]:
    first_key = records[1][0]
    drop = records[0].index("note")
    return {
        "unknown_key": (_set(records, 3, "key", "evt_0000000000000000"),
                        "row 3, column 'key': unknown key 'evt_0000000000000000'"),
        "duplicate_key": (_set(records, 4, "key", first_key),
                          f"row 4, column 'key': key {first_key!r} is also on row 2"),
        "bad_decision": (_set(records, 2, "decision", "maybe"),
                         "row 2, column 'decision': decision 'maybe' is not one of keep, "
                         "reject, unsure"),
        "missing_column": ([r[:drop] + r[drop + 1:] for r in records],
                           "row 1: missing column 'note'"),
    }  # fmt: skip


@pytest.mark.parametrize("case", ["unknown_key", "duplicate_key", "bad_decision",
                                  "missing_column"])  # fmt: skip
def test_malformed_csv_records_nothing(root, case):
    path, records = _filled(root)
    bad, message = _malformed(records)[case]
    bad_path = _write(root.path / f"{case}.csv", bad, delimiter=";", eol="\n")
    good_path = _write(root.path / "good.csv", records)
    r = cli("import", bad_path, good_path, "--root", root.path, ok=False)
    assert r.exit_code == 1
    assert f"error: {case}.csv: {message}" in r.output
    assert "error: 1 of 2 files had errors" in r.output
    assert "Traceback" not in r.output
    # nothing from the bad file; the good file is recorded
    assert {d["source"] for d in dec.read_decisions(root)} == {"csv:good.csv"}


def test_not_utf8_names_the_line(root):
    path, records = _filled(root)
    bad = root.path / "latin1.csv"
    rows = _set(records, 3, "note", "trop floué")
    bad.write_bytes("\r\n".join(",".join(r) for r in rows).encode("latin-1"))
    r = cli("import", bad, "--root", root.path, ok=False)
    assert r.exit_code == 1 and "error: latin1.csv: line 3: not UTF-8" in r.output
    assert dec.read_decisions(root) == []


def test_spreadsheet_resaves_are_accepted(root):
    """BOM or not, CRLF or LF, semicolons, quoted cells, columns moved, extra columns, formula
    cells the spreadsheet kept neutralised: all read back to the same decisions."""
    path, records = _filled(root)
    records = _set(records, 2, "note", "'=SUM(A1) looks odd")  # typed '= in a spreadsheet
    records = _set(records, 3, "note", '\'-ok; "fine"\nsecond line')  # quoted, multi-line
    expect = {}
    for row in records[1:]:
        cells = dict(zip(records[0], row, strict=True))
        note = csvio.restore(cells["note"]).strip() or None
        expect[cells["key"]] = (cells["decision"].strip().lower(), note)
    assert expect[records[1][0]][1] == "=SUM(A1) looks odd"
    order = [records[0].index(c) for c in ("note", "decision", "total", "key", "event_text")]
    moved = [[r[i] for i in order] + ["extra"] for r in records]
    moved[0][-1] = "Comments"
    variants = {
        "plain.csv": _write(root.path / "plain.csv", records, bom=False, eol="\n"),
        "excel-fr.csv": _write(root.path / "excel-fr.csv", moved, delimiter=";"),
        "tabs.csv": _write(root.path / "tabs.csv", moved, delimiter="\t", bom=False),
    }
    for name, variant in variants.items():
        parsed = csvio.read_csv(variant, {e["key"] for e in dec.load_events(root)}, "ann")
        assert parsed.errors == [], name
        assert {r["key"]: (r["decision"], r["note"]) for r in parsed.rows} == expect, name
    cli("import", variants["excel-fr.csv"], "--root", root.path, "--screener", "ann")
    latest = dec.latest_decisions(root)
    assert {k: (d["decision"], d["note"]) for k, d in latest.items()} == expect
    assert {d["screener"] for d in latest.values()} == {"ann"}
    # an undecided row is skipped, not an error; --screener fills a missing screener column
    blank = [[c for c, h in zip(r, records[0], strict=True) if h != "screener"]
             for r in _set(records, 2, "decision", "  ")]  # fmt: skip
    parsed = csvio.read_csv(_write(root.path / "b.csv", blank), set(expect), "bob")
    assert parsed.errors == [] and parsed.undecided == 1 and len(parsed.rows) == 3
    assert {r["screener"] for r in parsed.rows} == {"bob"}
    no_one = csvio.read_csv(root.path / "b.csv", set(expect), None)
    assert "column 'screener': no screener" in no_one.errors[0]


def test_two_screeners_never_overlap(root):
    batches = {}
    for who in ("ann", "bob", "cat"):
        cli("export", "--root", root.path, "--screener", who, "--batch-size", "3")
        path = root.screening / f"{who}-001.csv"
        lines = path.read_text("utf-8-sig").splitlines()[1:] if path.exists() else []
        batches[who] = {line.split(",")[0] for line in lines}
    assert [len(b) for b in batches.values()] == [3, 3, 2]
    assert not (batches["ann"] & batches["bob"] or batches["bob"] & batches["cat"]
                or batches["ann"] & batches["cat"])  # fmt: skip
    assert set().union(*batches.values()) == set(dec.latest_decisions(root)) | {
        e["key"] for e in dec.load_events(root)}  # fmt: skip
    r = cli("export", "--root", root.path, "--screener", "dan")
    assert "nothing to screen for dan" in r.output
    # ann's re-export is her same batch, in a new file
    cli("export", "--root", root.path, "--screener", "ann", "--batch-size", "3")
    again = (root.screening / "ann-002.csv").read_text("utf-8-sig").splitlines()[1:]
    assert {line.split(",")[0] for line in again} == batches["ann"]


def test_status_counts_and_png(root):
    path, records = _filled(root, "ann", 4)
    cli("export", "--root", root.path, "--screener", "bob", "--batch-size", "2")
    cli("import", path, "--root", root.path)
    r = cli("status", "--root", root.path)
    s = json.loads(root.report("screening").read_text())
    assert s["events"] == 8
    assert s["totals"] == {"keep": 2, "reject": 2, "unsure": 0, "undecided": 4}
    assert s["claimed"] == 2 and s["claimed_by"] == {"bob": 2}
    assert s["unclaimed_undecided"] == 2
    latest = dec.latest_decisions(root)
    events = dec.load_events(root)
    for cat in CATEGORIES:
        mine = [e["key"] for e in events if e["category"] == cat]
        want = sum(latest[k]["decision"] == "keep" for k in mine if k in latest)
        assert s["per_category"][cat]["keep"] == want
        assert sum(s["per_category"][cat].values()) == len(mine)
    assert "claimed (undecided): 2 (bob 2)" in r.output
    png = root.plot("screening", "status")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fig = status_figure(screening_status(root))
    ax = fig.axes[0]
    assert ax.get_xlabel() and ax.get_ylabel() == "event videos"
    assert all(float(t).is_integer() for t in ax.get_yticks())
    assert [t.get_text() for t in ax.get_xticklabels()] == sorted(CATEGORIES)


def test_contact_sheet_remade_only_when_stale(root):
    event = dec.load_events(root)[0]
    sheet = contact_sheet(root, event)
    made = sheet.stat().st_mtime_ns
    assert contact_sheet(root, event).stat().st_mtime_ns == made
    mp4 = root.path / event["path"]
    os.utime(mp4, ns=(made + 10**9, made + 10**9))
    assert contact_sheet(root, event).stat().st_mtime_ns > made
    assert frame_indices(81) == [0, 11, 23, 34, 46, 57, 69, 80]
    assert frame_indices(5) == [0, 1, 2, 3, 4]


def test_unreadable_video_is_a_rejects_row(root):
    events = dec.load_events(root)
    (root.path / events[0]["path"]).write_bytes(b"not a video")
    r = cli("export", "--root", root.path, "--screener", "ann", "--batch-size", "2")
    assert "1 videos without a contact sheet" in r.output
    rejects = pq.read_table(root.rejects("screening-export")).to_pylist()
    assert [(x["key"], x["reason"]) for x in rejects] == [(events[0]["key"], "unreadable_video")]


def test_cli_user_errors(tmp_path):
    r = cli("export", "--root", tmp_path, "--screener", "ann", ok=False)
    assert r.exit_code == 1 and "error:" in r.output and "yume-data events" in r.output
    root = event_root(tmp_path / "r", 2, videos=False)
    r = cli("export", "--root", root.path, "--screener", "a b", ok=False)
    assert r.exit_code == 2 and "error: screener name 'a b'" in r.output
    r = cli("import", tmp_path / "nope.csv", "--root", root.path, ok=False)
    assert r.exit_code == 2 and "error:" in r.output and "Traceback" not in r.output


@pytest.mark.slow
def test_demo_round_trip_feeds_training(tmp_path):
    """The demo's path as subprocesses: export, fill as a person, import, then `yume-train
    base --dataset event=0.5` trains on shards/event (t2v and i2v windows from its json)."""
    import subprocess
    import sys

    root = event_root(tmp_path / "data", 8, frames=17)
    bin_dir = Path(sys.executable).parent

    def run(*args: str) -> str:
        done = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    py = sys.executable
    run(py, "-m", "jobs.screening", "export", "--root", root.path, "--screener", "demo")
    csv_path = root.screening / "demo-001.csv"
    assert "keep 5, reject 3" in run(py, "-m", "curation.screening.fill", csv_path,
                                     "--keep-share", "0.6", "--seed", "0")  # fmt: skip
    run(py, "-m", "jobs.screening", "import", csv_path, "--root", root.path)
    status = run(py, "-m", "jobs.screening", "status", "--root", root.path).splitlines()
    assert [line.split()[1:] for line in status if line.startswith("total")] == [
        ["5", "3", "0", "0"]
    ]
    assert len(read_index(root.shards("event"))) == 5
    out = tmp_path / "run"
    run(bin_dir / "yume-train", "base", "--preset", "tiny", "--root", root.path,
        "--dataset", "event=0.5", "--out", out, "--steps", "2", "--overwrite")  # fmt: skip
    steps = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == [1, 2]
    assert {s["task"] for s in steps} == {"t2v", "i2v"}
    assert all(np.isfinite(s["loss"]) for s in steps)


def test_concurrent_appends_lose_nothing(tmp_path):
    """The lock serialises writers: four threads appending at once keep every row, and the
    seq numbers stay 1..n without a gap or a repeat."""
    from concurrent.futures import ThreadPoolExecutor

    root = DataRoot.at(tmp_path)

    def screen(who: str) -> None:
        for i in range(8):
            dec.append_decisions(root, [{"key": f"{who}{i}", "decision": "keep", "note": None,
                                         "screener": who, "source": "web"}])  # fmt: skip

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(screen, ["a", "b", "c", "d"]))
    rows = dec.read_decisions(root)
    assert [r["seq"] for r in rows] == list(range(1, 33))
    assert len({r["key"] for r in rows}) == 32


def test_swap_replaces_a_folder_whole(tmp_path):
    from curation.screening.publish import _swap_in

    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "a.tar").write_text("old")
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "b.tar").write_text("new")
    _swap_in(tmp_path / "new", tmp_path / "old")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]
    assert [p.name for p in (tmp_path / "old").iterdir()] == ["b.tar"]
