"""Screening benchmark: exporting a batch (rows + contact sheets) and importing a big CSV.

(a) export of N_SHEETS generated event videos (81 frames, 256x144, like a short tiny-random
    event video): seconds, the share spent decoding frames (the rest: reading the manifest,
    claims, drawing and JPEG-encoding the sheets, writing the CSV), and the projection to
    10,000 videos; the share is of a one-thread export (export itself uses a thread per
    CPU). Target: decoding is at least half the time (the sheet itself is cheap).
(b) import of a 10,000-row filled CSV against an events manifest of fake keys (rows only):
    validation and recording seconds, against a plain ``csv.reader`` pass over the same file
    as the baseline; then the same file again (everything unchanged). Target: under 10 s.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from curation.dataroot import DataRoot
from curation.screening.contact_sheet import sample_frames
from curation.screening.csvio import export_batch, import_csvs, write_csv
from curation.screening.decisions import load_events
from curation.video import write_mp4
from tests.test_screening import event_root

N_SHEETS, N_ROWS, PROJECT_TO = 200, 10_000, 10_000
FRAMES, WIDTH, HEIGHT, DISTINCT = 81, 256, 144, 4


def _videos(root: DataRoot) -> None:
    """Replace the fixture's tiny mp4s by DISTINCT larger clips, copied to every key."""
    rng = np.random.default_rng(0)
    clips = []
    for i in range(DISTINCT):
        path = root.path / f"clip{i}.mp4"
        base = rng.integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)
        write_mp4(path, (np.roll(base, 3 * t, axis=1) for t in range(FRAMES)), 16.0, WIDTH, HEIGHT)
        clips.append(path)
    for j, e in enumerate(load_events(root)):
        shutil.copyfile(clips[j % DISTINCT], root.path / e["path"])


def _export(work: Path, name: str, workers: int | None) -> float:
    root = event_root(work / name, N_SHEETS, frames=9)
    _videos(root)
    t0 = time.perf_counter()
    r = export_batch(root, "bench", N_SHEETS, workers=workers)
    assert r["rows"] == N_SHEETS and not r["rejected"]
    return time.perf_counter() - t0


def bench_export(work: Path) -> dict:
    serial_s = _export(work, "serial", 1)  # one thread: the decode share is a share of it
    t0 = time.perf_counter()
    root = DataRoot.at(work / "serial")
    for e in load_events(root):
        sample_frames(root.path / e["path"])
    decode_s = time.perf_counter() - t0
    export_s = _export(work, "threads", None)
    return {
        "export_videos": N_SHEETS,
        "export_s": round(export_s, 3),
        "export_one_thread_s": round(serial_s, 3),
        "export_decode_s": round(decode_s, 3),
        "export_decode_share": round(min(1.0, decode_s / serial_s), 3),
        "export_ms_per_video": round(1000 * export_s / N_SHEETS, 2),
        "export_projected_10k_s": round(export_s * PROJECT_TO / N_SHEETS, 1),
    }


def bench_import(work: Path) -> dict:
    root = event_root(work / "import", N_ROWS, videos=False)
    rng = np.random.default_rng(0)
    rows = [{"key": e["key"], "category": e["category"], "event_text": e["event_text"],
             "video": e["path"], "contact_sheet": "", "total": e["total"], "screener": "bench",
             "decision": ("Keep", " reject", "unsure")[rng.integers(3)],
             "note": "note, with; separators" if rng.random() < 0.3 else ""}
            for e in load_events(root)]  # fmt: skip
    path = root.screening / "bench.csv"
    write_csv(path, rows)
    t0 = time.perf_counter()
    n = sum(1 for _ in csv.reader(io.StringIO(path.read_text("utf-8-sig"), newline="")))
    plain_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    (first,) = import_csvs(root, [path])
    import_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    (again,) = import_csvs(root, [path])
    reimport_s = time.perf_counter() - t0
    assert first["recorded"] == N_ROWS and again["recorded"] == 0 and n == N_ROWS + 1
    return {
        "import_rows": N_ROWS,
        "import_s": round(import_s, 3),
        "reimport_unchanged_s": round(reimport_s, 3),
        "csv_reader_s": round(plain_s, 4),
        "import_vs_csv_reader": round(import_s / plain_s, 1),
    }


def main() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        result = {**bench_import(work), **bench_export(work)}
    result["targets_met"] = {
        "import_10k<10s": result["import_s"] < 10.0,
        "export_decode_share>=0.5": result["export_decode_share"] >= 0.5,
    }
    return result


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
