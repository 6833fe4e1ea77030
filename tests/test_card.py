"""The dataset card and the tools users already have: ``README.md`` at the data root in the
Hub's convention, and shard folders read by plain WebDataset, Ray Data and HF datasets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import webdataset as wds
import yaml
from typer.testing import CliRunner

from curation.card import build_card, size_category, write_card
from curation.dataroot import DataRoot
from curation.manifest import atomic_write_json
from curation.shards import INDEX_NAME, read_index, verify_dataset, write_shards
from tests.test_shards import make_mp4, make_sample

KEYS = [f"clip_{i:02d}" for i in range(5)]


def _sample(key: str, mp4: bytes | None = None, **provenance) -> dict[str, bytes]:
    """A test sample marked as real footage unless ``provenance`` says otherwise."""
    members = make_sample(key, mp4=mp4)
    meta = json.loads(members["json"])
    meta["provenance"].update({"tiny_random": False, "backend": None, **provenance})
    members["json"] = json.dumps(meta).encode()
    return members


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """A data root: 5 clips in shards of 2, one tiny-random synthetic sample, two reports."""
    path = tmp_path_factory.mktemp("root")
    mp4 = make_mp4(12)
    samples = ((k, _sample(k, mp4=mp4)) for k in KEYS)
    write_shards(samples, path / "shards" / "sekai-real", "sekai-real", max_samples=2)
    tiny = _sample("syn_0", mp4, tiny_random=True, generated=True, generator="tiny-random-wan")
    meta = json.loads(tiny["json"])
    meta["source"], meta["tasks"] = "synthetic", ["t2v"]
    tiny["json"] = json.dumps(meta).encode()
    write_shards([("syn_0", tiny)], path / "shards" / "synthetic", "synthetic")
    reports = {"clips": {"stage": "clips", "inputs": 7, "accepted": 5, "rejected": 2,
                         "rejects_by_reason": {"truncated_video": 2},
                         "provenance": {"code_version": "0.1.0+gabc", "config_hash": "c1"}},
               "synth_generate": {"stage": "synth_generate", "inputs": 1, "accepted": 1,
                                  "rejected": 0, "rejects_by_reason": {}, "tiny_random": True}}  # fmt: skip
    for name, report in reports.items():
        atomic_write_json(path / "reports" / f"{name}.json", report)
    atomic_write_json(path / "reports" / "shards_stats.json", {"not": "a stage report"})
    write_card(path)
    return path


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_card_front_matter_follows_the_hub_convention(root):
    meta = _front_matter((root / "README.md").read_text())
    assert meta["license"] == "other"
    assert set(meta["task_categories"]) == {"text-to-video", "image-to-video"}
    assert meta["size_categories"] == ["n<1K"]
    configs = {c["config_name"]: c["data_files"] for c in meta["configs"]}
    assert configs == {
        "sekai-real": [{"split": "train", "path": "shards/sekai-real/*.tar"}],
        "synthetic": [{"split": "train", "path": "shards/synthetic/*.tar"}],
    }


def test_card_body_counts_rejects_and_warns_of_tiny_random(root):
    text = (root / "README.md").read_text()
    body = text.split("---\n", 2)[2]
    warning = body.index("tiny-random models")
    assert warning < body.index("## Datasets")  # the notice comes before anything else
    assert "1 samples come from tiny-random models (stages: synth_generate)" in body
    assert "| shards/sekai-real | 5 | 3 |" in body  # samples, shards (of 2)
    assert "| shards/synthetic | 1 | 1 |" in body
    assert "| clips | 7 | 5 | 2 | truncated_video 2 |" in body
    assert "shards_stats" not in body  # not a stage report
    assert "| clips | 0.1.0+gabc | c1 |" in body


def test_card_without_tiny_or_generated_has_no_notice(tmp_path):
    write_shards([("a", _sample("a"))], tmp_path / "shards" / "real", "real")
    text = build_card(DataRoot.at(tmp_path))
    assert "Warning" not in text and "generated videos" not in text


def test_card_names_a_damaged_dataset_and_still_writes(tmp_path, root):
    write_shards([("a", make_sample("a"))], tmp_path / "shards" / "real", "real")
    (tmp_path / "shards" / "real" / INDEX_NAME).write_bytes(b"not parquet")
    text = build_card(DataRoot.at(tmp_path))
    assert "| shards/real | damaged |" in text


def test_size_category_buckets():
    assert [size_category(n) for n in (0, 999, 1000, 50_000, 2_000_000, 10**8)] == [
        "n<1K", "n<1K", "1K<n<10K", "10K<n<100K", "1M<n<10M", "n>10M"]  # fmt: skip


def test_card_command_and_one_line_error(root, tmp_path):
    from jobs.cli import app

    (root / "README.md").unlink()
    out = CliRunner().invoke(app, ["card", str(root), "--license", "cc-by-4.0"])
    assert out.exit_code == 0, out.output
    assert _front_matter((root / "README.md").read_text())["license"] == "cc-by-4.0"
    write_card(root)
    out = CliRunner().invoke(app, ["card", str(tmp_path / "missing")])
    assert out.exit_code == 1 and out.output.strip().startswith("error: data root")


def test_a_shard_folder_holds_only_tars_at_its_top(root):
    folder = root / "shards" / "sekai-real"
    top = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    assert top == ["__meta__", *[f"sekai-real-00000{i}.tar" for i in range(3)]]
    assert verify_dataset(folder)["ok"]


def test_plain_webdataset_reads_the_folder(root):
    urls = sorted(str(p) for p in (root / "shards" / "sekai-real").glob("*.tar"))
    keys = [s["__key__"] for s in wds.WebDataset(urls, shardshuffle=False)]
    assert keys == KEYS


def test_ray_data_reads_the_folder_without_arguments(ray_local, root):
    import ray.data

    rows = ray.data.read_webdataset(str(root / "shards" / "sekai-real")).take_all()
    assert sorted(r["__key__"] for r in rows) == KEYS
    assert all(r["json"]["key"] == r["__key__"] for r in rows)


def test_hf_datasets_reads_the_folder_and_the_card_configs(root, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(root.parent / "hf-cache"))
    ds = datasets.load_dataset(str(root / "shards" / "sekai-real"), split="train")
    ds = ds.cast_column("mp4", datasets.Video(decode=False))  # decoding needs torchcodec
    assert sorted(ds["__key__"]) == KEYS
    assert ds[0]["json"]["key"] == ds[0]["__key__"]
    # the card's configs: one name per dataset folder, from the data root itself
    syn = datasets.load_dataset(str(root), "synthetic", split="train")
    syn = syn.cast_column("mp4", datasets.Video(decode=False))
    assert syn["__key__"] == ["syn_0"] and syn[0]["json"]["source"] == "synthetic"


def test_writer_moves_an_older_layout_into_meta(tmp_path):
    folder = tmp_path / "shards" / "real"
    write_shards([("a", make_sample("a"))], folder, "real")
    meta = folder / "__meta__"
    (meta / "index.parquet").replace(folder / "index.parquet")  # as an older version wrote
    (meta / "real-000000_stats.json").replace(folder / "real-000000_stats.json")
    meta.rmdir()
    assert read_index(folder).column("key").to_pylist() == ["a"]  # readers fall back
    write_shards([("b", make_sample("b"))], folder, "real")
    assert not (folder / "index.parquet").exists()
    assert sorted(read_index(folder).column("key").to_pylist()) == ["a", "b"]
    assert verify_dataset(folder)["ok"]
