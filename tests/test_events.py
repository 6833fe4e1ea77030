"""Event videos: descriptions, pairing, image checks, size snapping, the tiny-random Wan2.2 I2V
backend (two experts split at the boundary) and the events stage end to end."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from collections import Counter
from pathlib import Path

import av
import cv2
import decord
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from curation.dataroot import DataRoot
from curation.events import (
    CATEGORIES,
    Description,
    DescriptionsError,
    check_image,
    default_descriptions,
    pair_events,
    read_descriptions,
    snap_resolution,
)
from curation.sample_images import write_sample_images
from curation.shards.writer import staged_samples
from curation.stages.events import EVENT_GENERATED, EventsConfig, EventsStage
from jobs import runner
from jobs.command import standalone
from jobs.events import PRESETS
from jobs.runner import RunOptions, run_stage
from schemas.events import EVENTS_SCHEMA
from schemas.sample import validate_sample
from schemas.synth import SCORES_SCHEMA
from tests.conftest import empty, garbage, truncate

TINY = dict(i2v="tiny-random", max_area=48 * 48, frames=9, steps=2, max_sequence_length=16,
            min_image_side=16)  # fmt: skip


def _opts(root: Path, **kw) -> RunOptions:
    return RunOptions(root=root, progress=False, **kw)


def _csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["category", "text"])
        w.writerows(rows)
    return path


def write_bad_images(folder: Path) -> dict[str, str]:
    """One image per rejection reason (file name -> the reason it must get)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    photo = Image.fromarray((rng.random((64, 96, 3)) * 255).astype(np.uint8))
    photo.save(folder / "whole.jpg", quality=90)
    data = (folder / "whole.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "whole.jpg").unlink()
    Image.fromarray((rng.random((8, 8, 3)) * 255).astype(np.uint8)).save(folder / "tiny.png")
    Image.fromarray((rng.random((64, 64)) * 255).astype(np.uint8), "L").save(folder / "gray.png")
    (folder / "notes.jpg").write_text("this is a text file, not a JPEG\n")
    (folder / "empty.jpg").write_bytes(b"")
    return {"truncated.jpg": "image_unreadable", "tiny.png": "image_too_small",
            "gray.png": "image_not_rgb", "notes.jpg": "image_unreadable",
            "empty.jpg": "empty_image"}  # fmt: skip


# ---- descriptions and pairing --------------------------------------------------------------------


def test_the_starter_descriptions_cover_four_categories():
    descs = read_descriptions(default_descriptions())
    counts = Counter(d.category for d in descs)
    assert set(counts) == set(CATEGORIES) and min(counts.values()) >= 50
    assert len({d.text.lower() for d in descs}) == len(descs)  # no repeats at all
    assert len({d.id for d in descs}) == len(descs)


def test_bad_description_rows_are_named_by_row_number(tmp_path):
    bad = _csv(tmp_path / "d.csv", [("weather", "rain starts"), ("scifi", "a ship lands"),
                                    ("fantasy", "  "), ("weather", "Rain   starts")])  # fmt: skip
    with pytest.raises(DescriptionsError) as e:
        read_descriptions(bad)
    msg = str(e.value)
    assert "row 3: unknown category 'scifi'" in msg and "row 4: empty text" in msg
    assert "row 5: repeats row 2" in msg and "row 2:" not in msg
    (tmp_path / "h.csv").write_text("kind,sentence\nweather,rain\n")
    with pytest.raises(DescriptionsError, match="header must have category,text"):
        read_descriptions(tmp_path / "h.csv")
    with pytest.raises(ValueError, match="row 3"):  # the config reports it as one line
        EventsConfig(descriptions=bad)


def test_damaged_description_files_are_refused_naming_the_row(tmp_path):
    """The text failure classes of the descriptions: each refuses the run in one line."""
    rows = {
        "long": "category,text\nweather,rain\nfantasy," + "a" * 200_000 + "\n",  # > csv's limit
        "missing": "category,text\nweather,rain\nfantasy\n",
        "extra": "category,text\nweather,rain, then snow\n",  # an unquoted comma
    }
    for name, text in rows.items():
        (tmp_path / f"{name}.csv").write_text(text)
    for name, want in [("long", "row 3: not readable as CSV (field larger"),
                       ("missing", "row 3: no text field"),
                       ("extra", "row 2: 3 fields, the header has 2")]:  # fmt: skip
        with pytest.raises(DescriptionsError) as e:
            read_descriptions(tmp_path / f"{name}.csv")
        assert want in str(e.value) and str(tmp_path / f"{name}.csv") in str(e.value), name
    garbage(tmp_path / "garbage.csv")
    with pytest.raises(DescriptionsError, match="garbage.csv: not UTF-8 text"):
        read_descriptions(tmp_path / "garbage.csv")
    (tmp_path / "bom.csv").write_text("\ufeffcategory,text\nweather,rain\n")  # a spreadsheet's
    assert [d.text for d in read_descriptions(tmp_path / "bom.csv")] == ["rain"]


def test_pairing_is_seeded_balanced_and_only_grows():
    descs = read_descriptions(default_descriptions())
    images = [f"img_{i}.jpg" for i in range(6)]
    four = pair_events(images, descs, 4, seed=0)
    assert four == pair_events(images, descs, 4, seed=0)
    for img in images:  # per_image 4: one description of each category
        assert sorted(d.category for i, d in four if i == img) == sorted(CATEGORIES)
    assert len({(i, d.id) for i, d in four}) == len(four) == 24
    one = pair_events(images, descs, 1, seed=0)
    assert set(one) <= set(four)  # a larger per_image extends, never reshuffles
    more = pair_events([*images, "img_new.jpg"], descs, 4, seed=0)
    assert [p for p in more if p[0] != "img_new.jpg"] == four  # other images do not matter
    assert pair_events(images, descs, 4, seed=1) != four
    few = [Description("weather", "rain", 2), Description("fantasy", "a dragon", 3)]
    assert len(pair_events(["a.jpg"], few, 10, seed=0)) == 2  # at most every description


# ---- images and sizes ----------------------------------------------------------------------------


def test_image_checks_give_each_bad_image_its_reason(tmp_path, fixtures_dir):
    expected = write_bad_images(tmp_path)
    for name, reason in expected.items():
        got = check_image(tmp_path / name, min_side=16)
        assert got.rgb is None and got.reason == reason and name in got.detail, name
    rgba = Image.new("RGBA", (40, 40), (10, 20, 30, 128))
    rgba.save(tmp_path / "alpha.png")
    Image.new("CMYK", (40, 40)).save(tmp_path / "cmyk.jpg")
    Image.new("P", (40, 40)).save(tmp_path / "palette.png")
    for name in ("alpha.png", "cmyk.jpg", "palette.png"):
        assert check_image(tmp_path / name, 16).reason == "image_not_rgb"
    for p in sorted((fixtures_dir / "fpv_images").glob("*.jpg")):
        ok = check_image(p, min_side=256)
        w, h = Image.open(p).size
        assert ok.reason is None and ok.rgb.shape == (h, w, 3) and ok.rgb.dtype == np.uint8
        assert check_image(p, min_side=h + 1).reason == "image_too_small"


def test_a_truncated_image_is_rejected_even_if_pil_is_told_to_load_truncated(tmp_path, monkeypatch):
    """Another library may set PIL's process-wide flag; a half JPEG must not pass as a
    half-grey image."""
    from PIL import ImageFile

    path = write_sample_images(tmp_path, 1, size=(96, 40))[0]
    truncate(path)
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    got = check_image(path, min_side=16)
    assert got.rgb is None and got.reason == "image_unreadable" and "truncated" in got.detail
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # put back as it was


def test_an_image_gone_since_discovery_is_missing_image(tmp_path):
    got = check_image(tmp_path / "gone.jpg", min_side=16)
    assert got.reason == "missing_image" and "gone.jpg" in got.detail


def test_exif_orientation_is_applied(tmp_path):
    img = Image.fromarray(np.zeros((30, 50, 3), np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    img.save(tmp_path / "rot.jpg", exif=exif)
    assert check_image(tmp_path / "rot.jpg", 16).rgb.shape == (50, 30, 3)


def test_snap_resolution_keeps_aspect_in_multiples_of_16():
    assert snap_resolution(1280, 720, 720 * 1280) == (720, 1280)
    assert snap_resolution(832, 480, 480 * 832) == (480, 832)
    assert snap_resolution(1920, 1080, 480 * 832) == (464, 832)  # the docstring's rule
    for w, h in [(1649, 668), (1791, 833), (600, 900), (1000, 1000)]:
        sh, sw = snap_resolution(w, h, 720 * 1280)
        assert sh % 16 == 0 == sw % 16 and sh * sw <= 720 * 1280
        assert abs(sw / sh - w / h) / (w / h) < 0.05
    assert snap_resolution(10_000, 10, 32 * 48) == (16, 1232)  # never a zero side
    with pytest.raises(ValueError):
        snap_resolution(100, 100, 100)


# ---- the backend ---------------------------------------------------------------------------------


def test_tiny_wan22_i2v_runs_both_experts_split_at_the_boundary(tmp_path):
    from model.backends import ImageToVideoBackend, load

    i2v = load("image_to_video", "tiny-random", steps=2)
    assert isinstance(i2v, ImageToVideoBackend) and i2v.tiny_random
    pipe = i2v.pipe
    assert pipe.transformer.config.in_channels == 36 == pipe.transformer_2.config.in_channels
    assert pipe.image_encoder is None and pipe.config.boundary_ratio == 0.9
    calls = Counter()
    pipe.transformer.register_forward_hook(lambda *_: calls.update(["high"]))
    pipe.transformer_2.register_forward_hook(lambda *_: calls.update(["low"]))
    img = (np.random.default_rng(0).random((32, 48, 3)) * 255).astype(np.uint8)
    a = i2v.generate_from_image(img, "rain starts", seed=1, num_frames=5, height=32, width=48)
    assert a.shape == (5, 32, 48, 3) and a.dtype == np.uint8
    # shift 5, 2 steps: t = 999 (>= 900: the high-noise expert), then 833; CFG: 2 calls a step
    assert calls == {"high": 2, "low": 2}
    c = i2v.generate_from_image(img, "rain starts", seed=2, num_frames=5, height=32, width=48)
    assert not np.array_equal(a, c)
    with pytest.raises(ValueError, match="uint8"):
        i2v.generate_from_image(img[:16], "x", seed=1, num_frames=5, height=32, width=48)
    # saved as a Diffusers folder (the Wan2.2-I2V-A14B layout: no image encoder, two experts,
    # boundary 0.9), a bare path loads it as the diffusers family: the same video for the seed
    pipe.save_pretrained(tmp_path / "wan")
    index = json.loads((tmp_path / "wan" / "model_index.json").read_text())
    assert index["image_encoder"] == [None, None] and index["boundary_ratio"] == 0.9
    local = load("image_to_video", str(tmp_path / "wan"), steps=2, max_sequence_length=16)
    assert (local.family, local.tiny_random, local.model_id) == (
        "diffusers",
        False,
        str(tmp_path / "wan"),
    )
    got = local.generate_from_image(img, "rain starts", seed=1, num_frames=5, height=32, width=48)
    assert np.array_equal(got, a)


# ---- the stage -----------------------------------------------------------------------------------


@pytest.mark.slow  # end to end on Ray; the stage contract test runs the stage by default
def test_tiny_random_events_frames_fps_metadata_resume_bad_images(
    ray_local, tmp_path, fixtures_dir
):
    images = tmp_path / "images"
    bad = write_bad_images(images / "bad")
    for p in sorted((fixtures_dir / "fpv_images").glob("*.jpg"))[:2]:
        shutil.copy(p, images / p.name)
    cfg = EventsConfig(images=images, **TINY)
    s = run_stage(EventsStage, cfg, _opts(tmp_path / "data"))
    assert s["accepted"] == 2 and s["tiny_random"] and s["videos"] == 2
    assert s["rejects_by_reason"] == {"image_unreadable": 2, "image_too_small": 1,
                                      "image_not_rgb": 1, "empty_image": 1}  # fmt: skip
    assert sum(s["videos_per_category"].values()) == 2 and "tiny-random" in s["notes"][0]
    root = DataRoot.at(tmp_path / "data")
    assert Path(s["category_plot"]).is_file()
    rejects = pq.read_table(root.rejects("events")).to_pylist()
    assert {Path(r["input"].split("#")[0]).name: r["reason"] for r in rejects} == bad
    rows = pq.read_table(root.manifest("events"), schema=EVENTS_SCHEMA).to_pylist()
    scores = pq.read_table(root.manifest("event_scores"), schema=SCORES_SCHEMA).to_pylist()
    staging = root.staging(EVENT_GENERATED)
    complete, incomplete = staged_samples(staging)
    assert sorted(complete) == sorted(r["key"] for r in rows) and incomplete == 0
    assert len({r["seed"] for r in rows}) == 2 and len({r["image"] for r in rows}) == 2
    for r in rows:
        w, h = Image.open(r["image"]).size
        assert (r["height"], r["width"]) == snap_resolution(w, h, 48 * 48)
        assert r["width"] == 64  # (decord misreads some widths, 48 among them)
        mp4 = root.path / r["path"]
        cap = cv2.VideoCapture(str(mp4))
        n = 0
        while cap.read()[0]:
            n += 1
        assert n == r["frames"] == 9
        first = decord.VideoReader(str(mp4))[0].asnumpy()  # what shards verify decodes with
        assert first.shape == (r["height"], r["width"], 3)
        with av.open(str(mp4)) as c:
            v = c.streams.video[0]
            assert float(v.average_rate) == 16.0 and (v.width, v.height) == (64, r["height"])
            assert v.codec_context.name == "h264"
            comment = json.loads(c.metadata["comment"])
        meta = json.loads(mp4.with_suffix(".json").read_text())
        validate_sample(meta)
        assert mp4.with_suffix(".txt").read_text() == r["event_text"]
        assert meta["source"] == "event" and meta["tasks"] == r["tasks"] == ["t2v", "i2v"]
        assert meta["captions"] == {"scene": None, "event": r["event_text"], "action": None}
        assert meta["screening"] is None and meta["scores"]["total"] == r["total"]
        assert meta["provenance"]["tiny_random"] and meta["provenance"]["generated"]
        assert meta["provenance"]["generator"] == r["model_id"] == "tiny-random-wan2.2-i2v-a14b"
        for k in ("category", "image", "pair_id", "seed", "event_text"):
            assert meta["meta"][k] == comment[k] == r[k]
        assert comment["settings"]["boundary_ratio"] == pytest.approx(r["boundary_ratio"]) == 0.9
        assert comment["settings"]["steps"] == r["steps"] == 2 and r["guidance_scale_2"] == 3.5
        mine = {x["dimension"]: x["score"] for x in scores if x["video"] == r["key"]}
        assert set(r["total_dimensions"]) <= set(mine) and r["scorer"].startswith("builtin ")
        assert {k: v for k, v in meta["scores"].items() if k != "total"} == mine
    before = {n: pq.read_table(root.manifest(n)).to_pylist() for n in ("events", "event_scores")}
    again = run_stage(EventsStage, cfg, _opts(tmp_path / "data"))
    assert again["this_run"]["processed"] == 0
    assert before == {n: pq.read_table(root.manifest(n)).to_pylist() for n in before}


def test_defaults_are_the_i2v_a14b_settings_and_user_mistakes_are_one_line(tmp_path):
    d = EventsConfig()
    assert (d.boundary_ratio, d.flow_shift, d.steps, d.guidance_scale, d.guidance_scale_2) == (
        0.9, 5.0, 40, 3.5, 3.5)  # fmt: skip
    assert (d.frames, d.fps, d.max_area, d.tasks) == (81, 16.0, 720 * 1280, ["t2v", "i2v"])
    with pytest.raises(ValueError, match="4k\\+1"):
        EventsConfig(frames=80)
    with pytest.raises(ValueError, match="tasks"):
        EventsConfig(tasks=["v2v"])
    app = standalone(EventsStage, PRESETS)
    cli = CliRunner()
    got = cli.invoke(app, ["--preset", "tiny", "--root", str(tmp_path / "data")])
    assert got.exit_code == 1 and "error: --images DIR is required" in got.output
    bad = _csv(tmp_path / "d.csv", [("weather", "rain"), ("scifi", "a ship")])
    got = cli.invoke(app, ["--images", str(tmp_path), "--descriptions", str(bad),
                           "--root", str(tmp_path / "data")])  # fmt: skip
    assert got.exit_code == 2 and "row 3: unknown category 'scifi'" in got.output
    assert "Traceback" not in got.output


def test_sample_images_are_rgb_jpegs_the_stage_accepts(tmp_path):
    paths = write_sample_images(tmp_path / "a", 3, seed=1)
    again = write_sample_images(tmp_path / "b", 3, seed=1)
    assert [p.read_bytes() for p in paths] == [p.read_bytes() for p in again]
    assert len({p.read_bytes() for p in paths}) == 3
    for p in paths:
        got = check_image(p, min_side=256)
        assert got.reason is None and got.rgb.shape == (360, 640, 3) and got.rgb.std() > 10


# ---- the stage contract case ---------------------------------------------------------------------


class EventsCase:
    """One rendered image and one text file named .jpg, one pair each; tiny-random at 16x64
    (max area 48x48), 5 frames, 1 step."""

    stage = EventsStage
    tiny = dict(TINY, frames=5, steps=1)

    def build(self, tmp: Path) -> tuple[EventsConfig, dict]:
        images = tmp / "images"
        write_sample_images(images, 1, size=(96, 40))
        (images / "broken.jpg").write_text("not an image")
        return EventsConfig(images=images, **self.tiny), {"image_unreadable": 1}

    def changed(self, config: EventsConfig) -> EventsConfig:
        return dataclasses.replace(config, seed=1)

    def more(self, tmp: Path, config: EventsConfig) -> tuple[EventsConfig, int]:
        shutil.copy(config.images / "fpv_sample_0000.jpg", config.images / "another.jpg")
        return config, 1

    def moved(self, tmp: Path, config: EventsConfig) -> EventsConfig:
        """The same image names in another folder: the same keys from other inputs."""
        shutil.copytree(config.images, tmp / "moved")
        return dataclasses.replace(config, images=tmp / "moved")

    def empty(self, tmp: Path) -> EventsConfig:
        (tmp / "no-images").mkdir()
        return EventsConfig(images=tmp / "no-images", **self.tiny)

    def relative(self, config: EventsConfig, base: Path) -> EventsConfig:
        return dataclasses.replace(config, images=config.images.relative_to(base))

    _why = (
        "the descriptions are not inputs of their own: a bad --descriptions row refuses the "
        "run before any work, naming the row (test_damaged_description_files_are_refused_"
        "naming_the_row), as every pair draws on the whole list"
    )
    not_applicable = {"empty_text": _why, "long_text": _why, "missing_field": _why}

    def damage(self, tmp: Path, config: EventsConfig) -> tuple[EventsConfig, dict]:
        """Three copies of the good image, garbage, empty and cut in half, and one kept
        whole (``vanish`` deletes the original)."""
        source = config.images / "fpv_sample_0000.jpg"
        spoil = {"dmg_garbage.jpg": garbage, "dmg_empty.jpg": empty,
                 "dmg_truncated.jpg": truncate}  # fmt: skip
        for name in [*spoil, "second.jpg"]:
            shutil.copy(source, config.images / name)
        for name, spoiled in spoil.items():
            spoiled(config.images / name)
        keys = self._keys(tmp, config)
        return config, {
            keys["dmg_garbage.jpg"]: ("garbage", "image_unreadable"),
            keys["dmg_empty.jpg"]: ("empty", "empty_image"),
            keys["dmg_truncated.jpg"]: ("truncated", "image_unreadable"),
        }

    def vanish(self, tmp: Path, items: list[dict]) -> dict:
        """The good image of the build is deleted before its pair is made."""
        item = next(it for it in items if Path(it["image"]).name == "fpv_sample_0000.jpg")
        Path(item["image"]).unlink()
        return {item["key"]: ("vanished", "missing_image")}

    def _keys(self, tmp: Path, config: EventsConfig) -> dict[str, str]:
        """Image file name -> the key of its one pair (per_image 1), as the stage finds them."""
        items, _ = runner.discover(EventsStage(config, DataRoot.at(tmp / "data")))
        return {Path(it["image"]).name: it["key"] for it in items}
