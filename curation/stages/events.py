"""The events stage: first-person images x event descriptions -> Wan2.2 image-to-video clips.

Yume-1.5 (section 3) paired 10,000 first-person images with event descriptions in four
categories (urban daily life, sci-fi, fantasy, weather) and generated a video per pair with
Wan2.2-I2V-A14B; people then screened them (``yume-data screening``, not this stage).

One item per (image, description) pair (``curation.events.pair_events``: ``--per-image N``
descriptions per image, categories in a seeded rotation), keyed by the image's path in the
folder and the description, so the run resumes per pair and a rerun with more images (or a
larger ``--per-image``) only adds pairs; a pair whose image file changed since is made again
(its input ``<image>#<description id>`` names no file, so the image is a ``files`` version
field; the description is its id, a hash of the text). An actor per model copy (``--gpus 1``: one per GPU)
loads the pipeline and the scorer once in ``setup``. Per pair: the image is checked (bad
ones are rejects: ``missing_image`` (gone since discovery), ``empty_image``,
``image_unreadable`` (not an image, or cut short), ``image_too_small``, ``image_not_rgb``;
a bad ``--descriptions`` row refuses the run before any work, naming the row), the output
size is snapped to the image's aspect within ``--max-area`` (multiples of 16), the image is
resized to cover it and centre-cropped, the video is generated with the pair's own seed,
written as ``clips/event-generated/<key>.mp4`` (settings in the container's ``comment``),
``<key>.txt`` (the event text) and, last, ``<key>.json`` (a shard sample: source ``event``,
its scores and VBench-normalised total), after scoring with the synth scorer.

Defaults are Alibaba's I2V-A14B settings (boundary 0.900, shift 5.0, 40 steps, guidance
3.5 / 3.5), 81 frames at 16 fps, and a 720p area budget (720 * 1280 pixels; 480 * 832 is
the 480p one). ``--i2v tiny-random`` builds the same two-expert pipeline from tiny random
parts; it is marked in every row, json and report.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from curation.config import option
from curation.events import (
    CATEGORIES,
    check_image,
    default_descriptions,
    list_images,
    pair_events,
    pair_key,
    pair_seed,
    read_descriptions,
    snap_resolution,
)
from curation.manifest import atomic_write_bytes
from curation.provenance import code_version
from curation.scores import total
from curation.stages.base import Reject, Resources, Stage
from curation.stages.synth_generate import write_video
from curation.stages.synth_score import scorer_spec
from curation.video import resize_crop
from schemas.common import SchemaError
from schemas.events import EVENTS_SCHEMA
from schemas.sample import SAMPLE_SCHEMA_VERSION, TASKS, validate_sample
from schemas.synth import SCORES_SCHEMA

EVENT_GENERATED = "event-generated"  # clips/<this>/: generated, not yet screened
EVENT_DATASET = "event"  # shards/<this>/: the screened dataset (written by screening)


@dataclass(frozen=True)
class EventsConfig:
    """Inputs, the image-to-video model and its sampling settings, the scorer."""

    images: Path | None = option(
        None, "Folder of first-person images (searched recursively: jpg, png, webp, bmp, tif).",
        output=False, path=True,
    )  # fmt: skip
    descriptions: Path | None = option(
        None, "CSV of category,text event descriptions (default: the shipped starter set).",
        output=False, path=True,
    )  # fmt: skip
    per_image: int = option(
        1, "Descriptions per image, categories in turn (4: one of each); raising it adds pairs.",
        output=False,
    )  # fmt: skip
    i2v: str = option(
        "diffusers:/weights/Wan2.2-I2V-A14B-Diffusers",
        "Image-to-video backend: a local Wan2.2-I2V-A14B Diffusers folder, or tiny-random.",
    )
    max_area: int = option(720 * 1280, "Pixel budget of a frame: 921600 (720p) or 399360 (480p).")
    frames: int = option(81, "Frames per video, 4k+1 (Wan's VAE).")
    fps: float = option(16.0, "Frame rate of the mp4 (Wan2.2 A14B: 16).")
    steps: int = option(40, "Denoising steps.")
    guidance_scale: float = option(3.5, "Guidance of the high-noise expert (CFG when > 1).")
    guidance_scale_2: float | None = option(3.5, "Guidance of the low-noise expert.")
    boundary_ratio: float | None = option(
        0.9, "Expert switch: transformer for t >= ratio * 1000, transformer_2 below."
    )
    flow_shift: float = option(5.0, "UniPC flow shift (I2V-A14B: 5.0).")
    negative_prompt: str | None = option(None, "Negative prompt (default: none).")
    max_sequence_length: int = option(512, "Prompt tokens (UMT5).")
    seed: int = option(0, "Base seed: the pairing and each pair's generator seed derive from it.")
    min_image_side: int = option(256, "Images whose shorter side is smaller are rejected.")
    tasks: list[str] = option(
        factory=lambda: ["t2v", "i2v"], help="Tasks the event samples train (t2v, i2v)."
    )
    scorer: str = option(
        "builtin", "Scorer: builtin, or vbench:<path to the python of a vbench venv>."
    )
    crf: int = option(18, "libx264 constant rate factor of the mp4.")
    gpus: float = option(0.0, "GPUs per generator actor (1: one model per GPU).", output=False)

    def __post_init__(self) -> None:
        if self.frames < 1 or (self.frames - 1) % 4:
            raise ValueError(f"frames {self.frames} must be 4k+1 (5, 9, ..., 81)")
        if self.steps < 1 or self.fps <= 0 or self.per_image < 1 or self.min_image_side < 1:
            raise ValueError("steps >= 1, fps > 0, per_image >= 1 and min_image_side >= 1")
        if self.max_area < 16 * 16:
            raise ValueError(f"max_area {self.max_area} must be at least 256 (16x16)")
        if self.boundary_ratio is not None and not 0 < self.boundary_ratio < 1:
            raise ValueError(f"boundary_ratio {self.boundary_ratio} must be in (0, 1)")
        if (
            not self.tasks
            or set(self.tasks) - set(TASKS)
            or len(set(self.tasks)) != len(self.tasks)
        ):
            raise ValueError(f"tasks {self.tasks}: distinct values of {', '.join(TASKS)}")
        if self.descriptions is not None and Path(self.descriptions).is_file():
            read_descriptions(self.descriptions)  # a bad row is a config mistake: one line


class EventsStage(Stage[EventsConfig]):
    """Generate event videos from first-person images with Wan2.2 I2V (diffusers), resumable.

    Pairs every image of --images with --per-image event descriptions (--descriptions CSV of
    category,text; default: the shipped starter set), generates one video per pair, scores
    it, and stages clips/event-generated/<key>.mp4 + .txt + .json (source event) for
    screening. Writes manifests/events.parquet, manifests/event_scores.parquet, the rejects
    (bad images: missing_image, empty_image, image_unreadable, image_too_small, image_not_rgb;
    a bad --descriptions row refuses the run, naming the row) and reports/events.json
    with a plot per category. --i2v tiny-random: tiny random weights (tests, demos; marked).
    """

    name = "events"
    config_cls = EventsConfig
    tables = {"events": EVENTS_SCHEMA, "event_scores": SCORES_SCHEMA}
    sort_by = {"event_scores": ["video", "dimension"]}
    version_fields = ("files",)  # the image; the description text is in the key already

    @property
    def resources(self) -> Resources:  # type: ignore[override]
        return Resources(cpus=1, gpus=self.config.gpus, actor=True, batch_size=1)

    @property
    def staging(self) -> Path:
        return self.root.staging(EVENT_GENERATED)

    @property
    def descriptions_path(self) -> Path:
        return Path(self.config.descriptions or default_descriptions())

    def owned_outputs(self) -> list[Path]:
        return [self.staging]

    def describe_inputs(self) -> str:
        return f"no images in {self.config.images}"

    def provenance_extra(self) -> dict:
        return {"images": str(self.config.images), "descriptions": str(self.descriptions_path)}

    def discover(self) -> Iterator[dict]:
        cfg = self.config
        if cfg.images is None:
            raise FileNotFoundError("--images DIR is required: a folder of first-person images")
        folder = Path(cfg.images)
        if not folder.is_dir():
            raise FileNotFoundError(f"--images {folder} is not a folder")
        descriptions = read_descriptions(self.descriptions_path)
        for tmp in self.staging.glob(".*.tmp"):  # a killed run's temporaries
            tmp.unlink(missing_ok=True)
        names = [p.relative_to(folder).as_posix() for p in list_images(folder)]
        for name, d in pair_events(names, descriptions, cfg.per_image, cfg.seed):
            pair_id = f"{name}#{d.id}"
            image = folder / name
            yield {"key": pair_key(pair_id), "input": f"{image}#{d.id}", "pair_id": pair_id,
                   "image": str(image), "files": [str(image)], "category": d.category,
                   "text": d.text}  # fmt: skip

    def forget(self, keys: set[str]) -> None:
        """Delete the staged files of ``keys`` (their image changed): the pair is made
        afresh, and a redo that rejects the new image leaves no video of the old one."""
        for path in self.staging.iterdir() if self.staging.is_dir() else []:
            if path.name.split(".", 1)[0] in keys:
                path.unlink(missing_ok=True)

    def setup(self) -> None:
        from model.backends import load

        cfg = self.config
        self.i2v = load(
            "image_to_video", cfg.i2v, steps=cfg.steps, guidance_scale=cfg.guidance_scale,
            guidance_scale_2=cfg.guidance_scale_2, boundary_ratio=cfg.boundary_ratio,
            flow_shift=cfg.flow_shift, max_sequence_length=cfg.max_sequence_length,
            negative_prompt=cfg.negative_prompt,
        )  # fmt: skip
        self.scorer = load("scorer", scorer_spec(cfg.scorer))
        self.staging.mkdir(parents=True, exist_ok=True)
        self.code_version = code_version()

    def settings(self, height: int, width: int) -> dict:
        """What the video was made with (the backend's effective boundary and scales)."""
        cfg = self.config
        return {"height": height, "width": width, "frames": cfg.frames, "fps": cfg.fps,
                "steps": cfg.steps, "guidance_scale": cfg.guidance_scale,
                "guidance_scale_2": self.i2v.guidance_scale_2,
                "boundary_ratio": self.i2v.boundary_ratio, "flow_shift": cfg.flow_shift,
                "max_area": cfg.max_area, "negative_prompt": cfg.negative_prompt,
                "max_sequence_length": cfg.max_sequence_length}  # fmt: skip

    def process_item(self, item: dict) -> dict[str, list[dict]]:
        cfg = self.config
        check = check_image(item["image"], cfg.min_image_side)
        if check.rgb is None:
            raise Reject(check.reason, check.detail)
        h, w = snap_resolution(check.rgb.shape[1], check.rgb.shape[0], cfg.max_area)
        seed = pair_seed(cfg.seed, item["pair_id"])
        t0 = time.perf_counter()
        frames = self.i2v.generate_from_image(
            resize_crop(check.rgb, h, w), item["text"], seed=seed, num_frames=cfg.frames,
            height=h, width=w,
        )  # fmt: skip
        seconds = time.perf_counter() - t0
        key, settings = item["key"], self.settings(h, w)
        tiny = bool(self.i2v.tiny_random)
        made = {"pair_id": item["pair_id"], "image": item["image"], "category": item["category"],
                "event_text": item["text"], "seed": seed, "settings": settings,
                "model": self.i2v.model_id, "backend": self.i2v.family, "tiny_random": tiny}  # fmt: skip
        mp4 = self.staging / f"{key}.mp4"
        comment = {**made, "key": key, "stage": self.name, "config_hash": self.config_hash}
        write_video(mp4, frames, cfg.fps, json.dumps(comment, sort_keys=True), cfg.crf)
        atomic_write_bytes(self.staging / f"{key}.txt", item["text"].encode())
        scores, t, used, label = self._score(mp4)
        meta = {
            "schema_version": SAMPLE_SCHEMA_VERSION, "key": key, "source": "event",
            "tasks": list(cfg.tasks), "fps": cfg.fps, "frames": int(frames.shape[0]),
            "width": w, "height": h, "source_video": mp4.name, "source_fps": cfg.fps,
            "source_frame_range": [0, int(frames.shape[0]) - 1], "keys": [], "mouse": [],
            "segments": [], "captions": {"scene": None, "event": item["text"], "action": None},
            "scores": {**scores, "total": t}, "screening": None,
            "meta": {**made, "generation_s": round(seconds, 3)},
            "provenance": {"stage": self.name, "code_version": self.code_version,
                           "config_hash": self.config_hash, "backend": self.i2v.family,
                           "tiny_random": tiny, "generated": True,
                           "generator": self.i2v.model_id},
        }  # fmt: skip
        try:
            validate_sample(meta)
        except SchemaError as e:
            self._discard(key)
            raise Reject("invalid_sample", str(e)) from e
        atomic_write_bytes(
            self.staging / f"{key}.json", json.dumps(meta, ensure_ascii=False, indent=1).encode()
        )  # last: the sample is complete once its json exists
        row = {
            "key": key, "pair_id": item["pair_id"], "image": item["image"],
            "category": item["category"], "event_text": item["text"], "seed": seed,
            "path": str(mp4.relative_to(self.root.path)), "frames": int(frames.shape[0]),
            "fps": cfg.fps, "width": w, "height": h, "steps": cfg.steps,
            "guidance_scale": cfg.guidance_scale, "guidance_scale_2": self.i2v.guidance_scale_2,
            "boundary_ratio": self.i2v.boundary_ratio, "model_id": self.i2v.model_id,
            "tiny_random": tiny, "tasks": list(cfg.tasks), "total": t,
            "total_dimensions": used, "scorer": f"{label['backend']} {label['backend_version']}",
        }  # fmt: skip
        long = [
            {"video": key, "dimension": d, "score": s, **label} for d, s in sorted(scores.items())
        ]
        return {"events": [row], "event_scores": long}

    def _score(self, mp4: Path) -> tuple[dict[str, float], float, list[str], dict]:
        """Finite scores per dimension, the total, its dimensions and the scorer label."""
        key = mp4.stem
        try:
            raw = self.scorer.score(mp4)
        except Exception as e:  # the video is there but unscored: not a sample
            self._discard(key)
            raise Reject("scorer_failed", f"{type(e).__name__}: {str(e)[:300]}") from e
        scores = {d: float(v) for d, v in raw.items() if math.isfinite(float(v))}
        t, used = total(scores)
        if not math.isfinite(t):
            self._discard(key)
            raise Reject("no_score", f"no finite score of a totalled dimension: {raw}")
        version = str(getattr(self.scorer, "version", self.scorer.model_id))
        return scores, t, used, {"backend": self.scorer.family, "backend_version": version}

    def _discard(self, key: str) -> None:
        for ext in ("mp4", "txt"):
            (self.staging / f"{key}.{ext}").unlink(missing_ok=True)

    def finalize(self, tables: dict[str, pa.Table]) -> dict:
        rows = tables["events"].to_pylist()
        tiny = any(r["tiny_random"] for r in rows)
        per_cat = {c: [r["total"] for r in rows if r["category"] == c] for c in CATEGORIES}
        plot = str(self._plot(per_cat)) if rows else None
        notes = []
        if tiny:
            notes.append("tiny-random generator: these event videos are noise, for tests")
        return {
            "videos": len(rows),
            "frames": sum(r["frames"] for r in rows),
            "videos_per_category": {c: len(v) for c, v in per_cat.items()},
            "total_mean_per_category": {
                c: round(float(np.mean(v)), 6) if v else None for c, v in per_cat.items()
            },
            "images": len({r["image"] for r in rows}),
            "tasks": sorted({t for r in rows for t in r["tasks"]}),
            "models": sorted({r["model_id"] for r in rows}),
            "scorers": sorted({r["scorer"] for r in rows}),
            "tiny_random": tiny,
            "category_plot": plot,
            "notes": notes,
        }

    def _plot(self, per_cat: dict[str, list[float]]) -> Path:
        """Videos per category (bars) with each category's mean total written on its bar."""
        from curation.reports import plt, save_figure  # reports picks the Agg backend first

        fig, ax = plt.subplots(figsize=(6, 3.5))
        cats = list(per_cat)
        counts = [len(per_cat[c]) for c in cats]
        bars = ax.bar(cats, counts, color="#3b7dd8")
        for bar, c in zip(bars, cats, strict=True):
            if per_cat[c]:
                ax.annotate(f"mean total {np.mean(per_cat[c]):.3f}", (bar.get_x() + bar.get_width() / 2,
                            bar.get_height()), ha="center", va="bottom", fontsize=8)  # fmt: skip
        ax.set(title=f"{sum(counts)} event videos per category", ylabel="videos")
        return save_figure(fig, self.root.plot(self.name, "categories"))
