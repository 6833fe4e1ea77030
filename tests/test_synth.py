"""Synthetic T2V data: tiny-random Wan generation, builtin scores + VBench total, top-k
selection into shards/synthetic, the chained `synth` command and the vbench request path."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import shutil
from pathlib import Path

import av
import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from curation.dataroot import DataRoot
from curation.manifest import write_table
from curation.scores import NORMALIZE, top_k, total
from curation.shards import read_index
from curation.stages.synth_generate import (
    GENERATED_DATASET,
    MAX_PROMPT_CHARS,
    SynthGenerateConfig,
    SynthGenerateStage,
    prompt_key,
    write_video,
)
from curation.stages.synth_score import SynthScoreConfig, SynthScoreStage
from curation.stages.synth_select import SynthSelectConfig, SynthSelectStage
from jobs.cli import app
from jobs.runner import RunOptions, run_stage
from jobs.synth import run_synth
from schemas.synth import GENERATED_SCHEMA
from tests.conftest import empty, garbage, truncate

TINY = dict(t2v="tiny-random", resolution="32x32", frames=9, steps=2, max_sequence_length=16)


def _prompts(path: Path, rows: list[tuple[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["video", "caption"])
        w.writerows(rows)
    return path


PROMPTS = [("p0", "a red fox walks through snow"), ("p1", "a boat on a lake at sunset"),
           ("p2", "an aerial view of a city at night")]  # fmt: skip


def _opts(root: Path, **kw) -> RunOptions:
    return RunOptions(root=root, progress=False, **kw)


def _frames(path: Path) -> np.ndarray:
    cap = cv2.VideoCapture(str(path))
    out = []
    while True:
        ok, f = cap.read()
        if not ok:
            return np.stack(out)
        out.append(f)


# ---- generation --------------------------------------------------------------------------------


@pytest.mark.slow  # the stage contract test runs generation and its resume by default
def test_tiny_random_generation_frames_fps_metadata_resume(ray_local, tmp_path):
    prompts = _prompts(tmp_path / "prompts.csv", [*PROMPTS[:2], ("p9", "")])
    cfg = SynthGenerateConfig(prompts=prompts, **TINY)
    s = run_stage(SynthGenerateStage, cfg, _opts(tmp_path / "data"))
    assert s["accepted"] == 2 and s["rejects_by_reason"] == {"empty_prompt": 1}
    assert s["tiny_random"] and s["videos"] == 2
    root = DataRoot.at(tmp_path / "data")
    rows = pq.read_table(root.manifest("synth_generate")).to_pylist()
    for r in rows:
        mp4 = root.path / r["path"]
        cap = cv2.VideoCapture(str(mp4))
        n = 0
        while cap.read()[0]:
            n += 1
        assert n == r["frames"] == 9 and r["tiny_random"]
        with av.open(str(mp4)) as c:
            assert float(c.streams.video[0].average_rate) == 16.0
            assert (c.streams.video[0].width, c.streams.video[0].height) == (32, 32)
            meta = json.loads(c.metadata["comment"])
        side = json.loads(mp4.with_suffix(".json").read_text())
        assert side.pop("generation_s") >= 0 and meta == side
        assert meta["prompt"] == r["prompt"] and meta["seed"] == r["seed"]
        assert meta["settings"]["frames"] == 9 and meta["settings"]["steps"] == 2
        assert meta["model"] == "tiny-random-wan2.1-t2v" and meta["tiny_random"] is True
    before = {r["key"]: _frames(root.path / r["path"]) for r in rows}
    again = run_stage(SynthGenerateStage, cfg, _opts(tmp_path / "data"))
    assert again["this_run"]["processed"] == 0
    # the same seed gives the same video in a fresh root (up to float reduction order in
    # another worker process, then H.264: a few levels at most)
    run_stage(SynthGenerateStage, cfg, _opts(tmp_path / "fresh"))
    fresh = DataRoot.at(tmp_path / "fresh")
    for key, frames in before.items():
        other = _frames(fresh.staging(GENERATED_DATASET) / f"{key}.mp4").astype(int)
        assert np.abs(other - frames).mean() < 2.0


def test_wan_settings_are_checked():
    with pytest.raises(ValueError, match="4k\\+1"):
        SynthGenerateConfig(frames=80)
    with pytest.raises(ValueError, match="/16"):
        SynthGenerateConfig(resolution="720x1000")
    d = SynthGenerateConfig()
    assert (d.size, d.frames, d.fps, d.flow_shift) == ((720, 1280), 81, 16.0, 5.0)


@pytest.mark.parametrize(
    ("name", "spoil", "reason"),
    [("garbage.csv", garbage, "bad_csv"), ("empty.csv", empty, "bad_csv"),
     ("garbage.parquet", garbage, "bad_parquet"), ("garbage.txt", garbage, "bad_txt"),
     ("other.csv", lambda p: p.write_text("id,words\np0,a fox\n"), "no_caption_column")],
)  # fmt: skip
def test_an_unreadable_prompts_file_stops_the_run_in_one_line(tmp_path, name, spoil, reason):
    """The one --prompts file is the run's input: no traceback, nothing recorded."""
    spoil(tmp_path / name)
    root = tmp_path / "data"
    out = CliRunner().invoke(app, ["synth-generate", "--prompts", str(tmp_path / name),
                                   "--t2v", "tiny-random", "--root", str(root)])  # fmt: skip
    assert out.exit_code == 1 and out.output.startswith(f"error: {reason}: "), out.output
    assert len(out.output.strip().splitlines()) == 1
    assert not DataRoot.at(root).rejects("synth_generate").exists()


def test_a_prompt_too_long_for_any_caption_is_rejected_a_long_one_is_kept(tmp_path):
    """100k characters is a quote left open that swallowed the rows after it; a prompt over
    the encoder's tokens but of caption size is cut by the pipeline, as Wan does."""
    long = "a fox walks " * 300  # over max_sequence_length tokens, under MAX_PROMPT_CHARS
    rows = [("p0", long), ("p1", "x" * 100_000)]
    cfg = SynthGenerateConfig(prompts=_prompts(tmp_path / "p.csv", rows), **TINY)
    items = list(SynthGenerateStage(cfg, DataRoot.at(tmp_path / "data")).discover())
    assert [it.get("reject", (None,))[0] for it in items] == [None, "prompt_too_long"]
    assert len(long) < MAX_PROMPT_CHARS and "100,000 characters" in items[1]["reject"][1]


# ---- builtin scores ----------------------------------------------------------------------------


def known_videos(n: int = 17, h: int = 64, w: int = 64) -> dict[str, np.ndarray]:
    """RGB uint8 videos whose properties are known by construction."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:h, 0:w]
    tex = 127 + 60 * np.sin(xx / 3.0) * np.cos(yy / 4.0) + rng.normal(0, 20, (h, w))
    tex = tex.clip(0, 255)
    base = np.stack([tex, np.roll(tex, 7, 0), 255 - tex], -1).astype(np.uint8)
    return {
        "static": np.stack([base] * n),
        "flickering": np.stack(
            [
                np.clip(base.astype(int) + (40 if i % 2 else -40), 0, 255).astype(np.uint8)
                for i in range(n)
            ]
        ),  # fmt: skip
        "moving": np.stack([np.roll(base, 4 * i, axis=1) for i in range(n)]),
        "blurred": np.stack([cv2.GaussianBlur(base, (0, 0), 3)] * n),
    }


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    from curation.stages.synth_score import scorer_spec
    from model.backends import load

    folder = tmp_path_factory.mktemp("known")
    scorer = load("scorer", scorer_spec("builtin"))
    out = {}
    for name, frames in known_videos().items():
        path = folder / f"{name}.mp4"
        write_video(path, frames, 16.0, "{}", 18)
        out[name] = (path, scorer.score(path))
    return out


def test_builtin_scores_rank_known_videos(scored):
    s = {k: v[1] for k, v in scored.items()}
    tf = {k: v["temporal_flickering"] for k, v in s.items()}
    assert tf["static"] > 0.999 and tf["flickering"] < tf["moving"] < tf["static"]
    assert s["moving"]["dynamic_degree_farneback"] == 1.0
    assert s["static"]["dynamic_degree_farneback"] == 0.0 == s["flickering"][
        "dynamic_degree_farneback"]  # fmt: skip
    assert s["moving"]["motion_farneback"] > 10 * s["static"]["motion_farneback"]
    assert s["static"]["static_flag"] == 1.0 and s["moving"]["static_flag"] == 0.0
    assert s["blurred"]["sharpness_laplacian"] < 0.5 * s["static"]["sharpness_laplacian"]
    totals = {k: total(v)[0] for k, v in s.items()}
    assert totals["static"] > totals["flickering"] and totals["static"] > totals["blurred"]
    assert totals["moving"] > totals["static"]  # it moves, and dynamic degree counts


def test_temporal_flickering_is_vbenchs_formula(scored):
    path, s = scored["flickering"]
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, f = cap.read()
        if not ok:
            break
        frames.append(f.astype(np.float32))
    mae = [np.mean(np.abs(a - b)) for a, b in zip(frames[:-1], frames[1:], strict=True)]
    assert s["temporal_flickering"] == pytest.approx((255 - np.mean(mae)) / 255, abs=1e-7)


def test_total_uses_vbench_normalisation_over_present_dimensions():
    t, dims = total({"temporal_flickering": 0.6293, "dynamic_degree": 1.0, "other": 5.0})
    assert dims == ["dynamic_degree", "temporal_flickering"]
    assert t == pytest.approx((0.0 + 0.5 * 1.0) / 1.5)
    t2, _ = total({"subject_consistency": 1.0, "motion_smoothness": 0.706})
    assert t2 == pytest.approx(0.5)
    assert NORMALIZE["dynamic_degree"][2] == 0.5 and math.isnan(total({"x": 1.0})[0])


def test_top_k_ties_and_k_larger_than_input():
    got = top_k({"b": 0.5, "a": 0.5, "c": 0.9, "d": float("nan")}, 2)
    assert got == [("c", 1, 0.9, True), ("a", 2, 0.5, True), ("b", 3, 0.5, False),
                   ("d", 4, got[3][2], False)]  # fmt: skip
    assert [sel for *_, sel in top_k({"x": 1.0, "y": 0.0}, 10)] == [True, True]
    assert top_k({}, 3) == [] and not any(s for *_, s in top_k({"x": 1.0}, 0))


# ---- the chain ---------------------------------------------------------------------------------


def test_synth_chain_generate_score_select_shards(ray_local, tmp_path):
    prompts = _prompts(tmp_path / "prompts.csv", PROMPTS)
    root = tmp_path / "data"
    gen = SynthGenerateConfig(prompts=prompts, **TINY)
    out = run_synth(gen, SynthScoreConfig(), SynthSelectConfig(top_k=2), _opts(root))
    assert [s["stage"] for s in out] == ["synth_generate", "synth_score", "synth_select"]
    sel = out[-1]
    assert sel["selected"] == 2 and sel["below_top_k"] == 1 and sel["top_k"] == 2
    assert sel["rejects_by_reason"] == {"below_top_k": 1}
    data = DataRoot.at(root)
    scores = pq.read_table(data.manifest("scores")).to_pylist()
    assert {r["backend"] for r in scores} == {"builtin"}
    assert {r["dimension"] for r in scores} >= {"temporal_flickering", "exposure_ok"}
    totals = {r["key"]: r["total"] for r in pq.read_table(data.manifest("synth_score")).to_pylist()}
    ranked = sorted(totals, key=lambda k: (-totals[k], k))
    assert sel["cut_score"] == totals[ranked[1]]
    index = read_index(data.shards("synthetic")).to_pylist()
    assert sorted(r["key"] for r in index) == sorted(ranked[:2])
    assert all(r["source"] == "synthetic" and r["tasks"] == ["t2v"] and r["tiny_random"]
               for r in index)  # fmt: skip
    rejects = pq.read_table(data.rejects("synth_select")).to_pylist()
    assert rejects[0]["key"] == ranked[2] and "rank 3 of 3" in rejects[0]["detail"]
    assert Path(sel["score_plot"]).stat().st_size > 1000
    staged = json.loads((data.staging("synthetic") / f"{ranked[0]}.json").read_text())
    assert staged["scores"]["total"] == totals[ranked[0]]
    assert staged["provenance"]["generated"] and staged["captions"]["scene"]
    again = run_synth(gen, SynthScoreConfig(), SynthSelectConfig(top_k=2), _opts(root))
    assert [s["this_run"]["processed"] for s in again] == [0, 0, 0]


# ---- contract cases (registered by the lead in tests/test_stage_contract.py) --------------------


class SynthGenerateCase:
    """Three prompts (one empty) in a CSV; tiny-random Wan at 32x32, 5 frames, 1 step."""

    stage = SynthGenerateStage
    tiny = dict(TINY, frames=5, steps=1)

    def build(self, tmp: Path) -> tuple[SynthGenerateConfig, dict]:
        p = _prompts(tmp / "prompts" / "prompts.csv", [*PROMPTS[:2], ("p9", " ")])
        return SynthGenerateConfig(prompts=p, **self.tiny), {"empty_prompt": 1}

    def changed(self, config: SynthGenerateConfig) -> SynthGenerateConfig:
        return dataclasses.replace(config, seed=1)

    def more(self, tmp: Path, config: SynthGenerateConfig) -> tuple[SynthGenerateConfig, int]:
        _prompts(config.prompts, [*PROMPTS[:2], ("p9", " "), PROMPTS[2]])
        return config, 1

    def moved(self, tmp: Path, config: SynthGenerateConfig) -> SynthGenerateConfig:
        # the same prompt ids at other rows of the file: another input for a known key
        _prompts(config.prompts, [PROMPTS[1], PROMPTS[0]])
        return config

    def empty(self, tmp: Path) -> SynthGenerateConfig:
        return SynthGenerateConfig(prompts=_prompts(tmp / "none.csv", []), **self.tiny)

    def relative(self, config: SynthGenerateConfig, base: Path) -> SynthGenerateConfig:
        return dataclasses.replace(config, prompts=config.prompts.relative_to(base))

    not_applicable = {
        "garbage": "the one --prompts file is the run's input: an unreadable one stops the run "
        "in one line, recording nothing (test_an_unreadable_prompts_file_stops_the_run_in_one_line)",
        "empty": "an empty --prompts file is bad_csv in one line, as garbage; a header alone "
        "is found no inputs (the empty case)",
        "truncated": "the one file again; cut mid-way it keeps its whole rows, and its cut row is "
        "bad_csv_row when it lost fields (as the missing_field row) or else a shorter prompt",
        "vanished": "an item carries its prompt: nothing is read from the file after discovery",
    }

    def damage(self, tmp: Path, config: SynthGenerateConfig) -> tuple[SynthGenerateConfig, dict]:
        """Three more rows in the prompts file: an empty prompt, a 100k-character one and
        one without its prompt field."""
        _prompts(config.prompts, [*PROMPTS[:2], ("p9", " "), ("d_empty", ""),
                                  ("d_long", "snow " * 20_000)])  # fmt: skip
        with config.prompts.open("a") as f:
            f.write("d_nofield\n")
        return config, {
            prompt_key("d_empty"): ("empty_text", "empty_prompt"),
            prompt_key("d_long"): ("long_text", "prompt_too_long"),
            prompt_key("prompts:5"): ("missing_field", "bad_csv_row"),  # the row's id is gone
        }

    def vanish(self, tmp: Path, items: list[dict]) -> dict:
        return {}


def _spoil_generated(tmp: Path) -> None:
    """Make the mp4s of syn_static_g, _e and _t garbage, empty and cut in half."""
    folder = DataRoot.at(tmp / "data").staging(GENERATED_DATASET)
    garbage(folder / "syn_static_g.mp4")
    empty(folder / "syn_static_e.mp4")
    truncate(folder / "syn_static_t.mp4")


def _fake_generated(tmp: Path, names: list[str], missing: tuple[str, ...] = ()) -> None:
    """Generated-video rows + mp4s (known videos) under <tmp>/data, as synth-generate."""
    root = DataRoot.at(tmp / "data")
    folder = root.staging(GENERATED_DATASET)
    videos = known_videos(n=9, h=32, w=32)
    path = root.manifest("synth_generate")
    rows = pq.read_table(path).to_pylist() if path.exists() else []
    for n, name in enumerate(names):
        key = f"syn_{name}"
        if name not in missing:
            write_video(folder / f"{key}.mp4", videos[name.split("_")[0]], 16.0, "{}", 18)
        rows.append({"key": key, "prompt_id": name, "prompt": f"prompt {name}", "seed": n,
                     "path": f"clips/{GENERATED_DATASET}/{key}.mp4", "frames": 9, "fps": 16.0,
                     "width": 32, "height": 32, "steps": 1, "guidance_scale": 5.0,
                     "flow_shift": 3.0, "model_id": "test", "tiny_random": True})  # fmt: skip
    write_table(pa.Table.from_pylist(rows, GENERATED_SCHEMA), path, GENERATED_SCHEMA)


class SynthScoreCase:
    """Three known videos and one row whose mp4 is missing; the builtin scorer."""

    stage = SynthScoreStage

    def build(self, tmp: Path) -> tuple[SynthScoreConfig, dict]:
        _fake_generated(tmp, ["static", "moving", "flickering", "blurred"], missing=("blurred",))
        return SynthScoreConfig(batch=2, inputs_root=tmp / "data"), {"missing_video": 1}

    def changed(self, config: SynthScoreConfig) -> SynthScoreConfig:
        return dataclasses.replace(config, dimensions=["temporal_flickering"])

    def more(self, tmp: Path, config: SynthScoreConfig) -> tuple[SynthScoreConfig, int]:
        _fake_generated(tmp, ["moving_2"])
        return config, 1

    def moved(self, tmp: Path, config: SynthScoreConfig) -> SynthScoreConfig:
        root = DataRoot.at(tmp / "data")
        path = root.manifest("synth_generate")
        rows = pq.read_table(path).to_pylist()
        shutil.copy(root.path / rows[0]["path"], root.path / "clips" / "moved.mp4")
        rows[0]["path"] = "clips/moved.mp4"
        write_table(pa.Table.from_pylist(rows, GENERATED_SCHEMA), path, GENERATED_SCHEMA)
        return config

    def empty(self, tmp: Path) -> SynthScoreConfig:
        root = DataRoot.at(tmp / "data")
        write_table(GENERATED_SCHEMA.empty_table(), root.manifest("synth_generate"),
                    GENERATED_SCHEMA)  # fmt: skip
        return SynthScoreConfig(inputs_root=tmp / "data")

    def relative(self, config: SynthScoreConfig, base: Path) -> SynthScoreConfig:
        return dataclasses.replace(config, inputs_root=config.inputs_root.relative_to(base))

    not_applicable = {
        "empty_text": "the inputs are videos; prompts are checked by synth_generate",
        "long_text": "the inputs are videos; prompts are checked by synth_generate",
        "missing_field": "the rows come from synth_generate's schema-checked table",
    }

    def damage(self, tmp: Path, config: SynthScoreConfig) -> tuple[SynthScoreConfig, dict]:
        """Three more generated rows whose mp4s are garbage, empty and cut in half."""
        _fake_generated(tmp, ["static_g", "static_e", "static_t"])
        _spoil_generated(tmp)
        return config, {
            "syn_static_g": ("garbage", "unreadable_video"),
            "syn_static_e": ("empty", "empty_video"),
            "syn_static_t": ("truncated", "unreadable_video"),
        }

    def vanish(self, tmp: Path, items: list[dict]) -> dict:
        """The mp4 of a discovered row is deleted before it is scored."""
        item = next(it for it in items if it["key"] == "syn_moving")
        Path(item["input"]).unlink()
        return {"syn_moving": ("vanished", "missing_video")}


class SynthSelectCase:
    """Three scored videos and one scored row whose mp4 is gone; K larger than the input."""

    stage = SynthSelectStage

    def _score(self, tmp: Path) -> None:
        root = tmp / "data"
        run_stage(SynthScoreStage, SynthScoreConfig(), RunOptions(root=root, progress=False))

    def build(self, tmp: Path) -> tuple[SynthSelectConfig, dict]:
        _fake_generated(tmp, ["static", "moving", "flickering", "blurred"])
        self._score(tmp)
        (DataRoot.at(tmp / "data").staging(GENERATED_DATASET) / "syn_blurred.mp4").unlink()
        config = SynthSelectConfig(top_k=100, max_samples=2, inputs_root=tmp / "data")
        return config, {"missing_video": 1}

    def changed(self, config: SynthSelectConfig) -> SynthSelectConfig:
        return dataclasses.replace(config, top_k=2)

    def more(self, tmp: Path, config: SynthSelectConfig) -> tuple[SynthSelectConfig, int]:
        _fake_generated(tmp, ["moving_2"])
        self._score(tmp)
        return config, 1

    def moved(self, tmp: Path, config: SynthSelectConfig) -> SynthSelectConfig:
        """The same scored videos read from a copy of the upstream root."""
        shutil.copytree(tmp / "data" / "manifests", tmp / "copy" / "manifests",
                        ignore=shutil.ignore_patterns("synth_select*"))  # fmt: skip
        shutil.copytree(tmp / "data" / "clips" / GENERATED_DATASET,
                        tmp / "copy" / "clips" / GENERATED_DATASET)  # fmt: skip
        return dataclasses.replace(config, inputs_root=tmp / "copy")

    def empty(self, tmp: Path) -> SynthSelectConfig:
        root = DataRoot.at(tmp / "data")
        from schemas.synth import SCORED_SCHEMA

        write_table(SCORED_SCHEMA.empty_table(), root.manifest("synth_score"), SCORED_SCHEMA)
        return SynthSelectConfig(inputs_root=tmp / "data")

    def relative(self, config: SynthSelectConfig, base: Path) -> SynthSelectConfig:
        return dataclasses.replace(config, inputs_root=config.inputs_root.relative_to(base))

    not_applicable = {
        "empty_text": "a scored video's prompt is an accepted synth_generate row: that stage "
        "rejects empty_prompt",
        "long_text": "a scored video's prompt is an accepted synth_generate row: that stage "
        "rejects prompt_too_long",
    }

    def damage(self, tmp: Path, config: SynthSelectConfig) -> tuple[SynthSelectConfig, dict]:
        """Three more scored videos whose mp4s are then garbage, empty and cut in half, and
        one whose synth_generate row is then gone."""
        _fake_generated(tmp, ["static_g", "static_e", "static_t", "moving_x"])
        self._score(tmp)
        _drop_generated(tmp, "syn_moving_x")
        _spoil_generated(tmp)
        return config, {
            "syn_static_g": ("garbage", "not_a_video"),
            "syn_static_e": ("empty", "empty_video"),
            "syn_static_t": ("truncated", "truncated_video"),
            "syn_moving_x": ("missing_field", "missing_generate_row"),
        }

    def vanish(self, tmp: Path, items: list[dict]) -> dict:
        """The mp4 of a discovered scored video is deleted before it is probed."""
        item = next(it for it in items if it["key"] == "syn_moving")
        Path(item["input"]).unlink()
        return {"syn_moving": ("vanished", "missing_video")}


def _drop_generated(tmp: Path, key: str) -> None:
    """Remove ``key``'s synth_generate row, as a synth-generate rerun without its prompt."""
    path = DataRoot.at(tmp / "data").manifest("synth_generate")
    rows = [r for r in pq.read_table(path).to_pylist() if r["key"] != key]
    write_table(pa.Table.from_pylist(rows, GENERATED_SCHEMA), path, GENERATED_SCHEMA)


def test_a_scored_video_without_its_generate_row_is_named(ray_local, tmp_path):
    """Once it was missing_video, though its mp4 was there: the row was what was missing."""
    _fake_generated(tmp_path, ["static", "moving"])
    SynthSelectCase()._score(tmp_path)
    _drop_generated(tmp_path, "syn_moving")
    stage = SynthSelectStage(SynthSelectConfig(), DataRoot.at(tmp_path / "data"))
    got = {it["key"]: it.get("reject", (None,))[0] for it in stage.discover()}
    assert got == {"syn_static": None, "syn_moving": "missing_generate_row"}


# ---- the vbench request path, against a stand-in vbench package ---------------------------------

FAKE_VBENCH = """
import json, os
__version__ = "0.0-standin"

class VBench:
    def __init__(self, device, full_info_dir, output_path):
        self.out = output_path
        assert os.path.basename(full_info_dir) == "VBench_full_info.json"

    def evaluate(self, videos_path, name, prompt_list=[], dimension_list=None, local=False,
                 read_frame=False, mode="vbench_standard", **kwargs):
        mode_env = os.environ.get("FAKE_VBENCH", "")
        if mode_env == "crash":
            import sys
            print("Traceback: CUDA out of memory (stand-in)", file=sys.stderr)
            os._exit(3)
        assert mode == "custom_input" and local is True and isinstance(prompt_list, dict)
        assert os.environ.get("VBENCH_CACHE_DIR"), "no weights cache"
        files = sorted(os.listdir(videos_path))
        assert set(prompt_list) == set(files)
        out = {}
        for dim in dimension_list:
            if mode_env == "partial" and dim == "imaging_quality":
                continue
            per = [{"video_path": os.path.join(videos_path, f),
                    "video_results": (True if dim == "dynamic_degree" else
                                      0.5 + 0.01 * n + 0.001 * len(dim))}
                   for n, f in enumerate(files)]
            vals = [float(p["video_results"]) for p in per]
            out[dim] = [sum(vals) / len(vals), per]
        with open(os.path.join(self.out, name + "_eval_results.json"), "w") as f:
            json.dump(out, f)
"""


@pytest.fixture
def fake_vbench(tmp_path, monkeypatch):
    pkg = tmp_path / "fake-env" / "vbench"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(FAKE_VBENCH)
    (pkg / "VBench_full_info.json").write_text("[]")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "fake-env"))
    (tmp_path / "cache").mkdir()
    return tmp_path / "cache"


def _vbench(cache: Path):
    import sys

    from model.backends import load

    return load("scorer", f"vbench:{sys.executable}", cache_dir=cache, device="cpu")


def test_vbench_request_reads_per_video_results(fake_vbench, scored):
    scorer = _vbench(fake_vbench)
    paths = [str(scored["static"][0]), str(scored["moving"][0])]
    got = scorer.score_many(paths, dimensions=["temporal_flickering", "dynamic_degree",
                                               "imaging_quality"])  # fmt: skip
    assert got[paths[0]]["dynamic_degree"] == 1.0
    assert got[paths[0]]["temporal_flickering"] == pytest.approx(0.5 + 0.019)
    assert got[paths[1]]["imaging_quality"] == pytest.approx(0.51 + 0.015)
    assert scorer.version == "0.0-standin"
    assert set(scorer.dimensions) == {
        "subject_consistency", "background_consistency", "motion_smoothness",
        "dynamic_degree", "aesthetic_quality", "imaging_quality", "temporal_flickering",
    }  # fmt: skip


def test_vbench_crash_and_missing_results_reject_the_videos(fake_vbench, scored, monkeypatch):
    from model.backends.scorer_vbench import VBenchError

    scorer = _vbench(fake_vbench)
    path = str(scored["static"][0])
    monkeypatch.setenv("FAKE_VBENCH", "crash")
    got = scorer.score_many([path], dimensions=["temporal_flickering"])
    assert isinstance(got[path], VBenchError) and "exited 3" in str(got[path])
    assert "out of memory" in str(got[path])
    monkeypatch.setenv("FAKE_VBENCH", "partial")
    got = scorer.score_many([path], dimensions=["temporal_flickering", "imaging_quality"])
    assert isinstance(got[path], VBenchError) and "imaging_quality" in str(got[path])


def test_vbench_through_the_score_stage(fake_vbench, tmp_path, monkeypatch):
    import sys

    _fake_generated(tmp_path, ["static", "moving"])
    cfg = SynthScoreConfig(scorer=f"vbench:{sys.executable}", vbench_cache=fake_vbench,
                           dimensions=["temporal_flickering", "dynamic_degree"])  # fmt: skip
    stage = SynthScoreStage(cfg, DataRoot.at(tmp_path / "data"))
    stage.setup()
    items = list(stage.discover())
    res = stage.process(items)
    assert [o.status for o in res.outcomes] == ["done", "done"]
    assert {r["backend"] for r in res.tables["scores"]} == {"vbench"}
    assert {r["backend_version"] for r in res.tables["scores"]} == {"0.0-standin"}
    t = res.tables["synth_score"][0]
    assert t["total_dimensions"] == ["dynamic_degree", "temporal_flickering"]
    monkeypatch.setenv("FAKE_VBENCH", "crash")
    res = stage.process(items)
    assert {(o.status, o.reason) for o in res.outcomes} == {("rejected", "scorer_failed")}
