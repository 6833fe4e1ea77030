"""The synth-generate stage: prompts -> text-to-video clips (Wan2.1 T2V through diffusers).

Yume-1.5 generated 80,000 videos at 720p with Wan 2.1 14B T2V from the deduplicated
OpenVid captions. One item per prompt (resumable per prompt): the prompts come from
``manifests/captions_kept.parquet`` (the sampled rows of ``dedup-captions``) or from
``--prompts`` (a .txt with one prompt a line, or a CSV/parquet with an id and a caption).
An actor per model copy (``--gpus 1``: one per GPU) loads the pipeline once in ``setup``;
each prompt gets its own seed (from ``--seed`` and the prompt id), its mp4 at ``--fps``
with the settings in the container's ``comment`` tag and in a ``<key>.json`` beside it,
under ``clips/synthetic-generated/``. ``tiny-random`` is marked in every row and json.

A prompt is rejected ``empty_prompt``, ``prompt_too_long`` (over ``MAX_PROMPT_CHARS``) or,
a CSV row with more or fewer fields than the header (where a file cut off mid-row ends),
``bad_csv_row``; a prompt merely longer than the text encoder's ``--max-sequence-length``
tokens is cut to them by the pipeline, as Wan does. A ``--prompts`` file that cannot be read
(``bad_csv``, ``bad_parquet``, ``bad_txt``, ``no_caption_column``, ``unsupported_file``) is
the run's one input: the run stops with that reason in one line and records nothing, so the
fixed file then runs as if it were the first.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curation.config import option
from curation.manifest import atomic_write_bytes
from curation.provenance import code_version
from curation.stages.base import Reject, Resources, Stage
from curation.video import H264Writer, parse_resolution
from schemas.synth import CAPTIONS_KEPT_SCHEMA, GENERATED_SCHEMA

GENERATED_DATASET = "synthetic-generated"  # clips/<this>/: generated, not yet selected

# Five times what the text encoder reads (512 UMT5 tokens, about 2,000 characters): no caption
# is this long, but a CSV quote left open swallows the rows after it into one "prompt", and a
# video of its first tokens would be made from the wrong text.
MAX_PROMPT_CHARS = 10_000


def prompt_key(prompt_id: str) -> str:
    """The sample key of a prompt's video: stable, shard-safe (no dots)."""
    return "syn_" + hashlib.sha1(prompt_id.encode()).hexdigest()[:16]


def prompt_seed(seed: int, prompt_id: str) -> int:
    """The generator seed of one prompt: fixed by the run's seed and the prompt id."""
    return int(hashlib.sha256(f"{seed}/{prompt_id}".encode()).hexdigest()[:8], 16) % 2**31


def write_video(path: Path, frames: np.ndarray, fps: float, comment: str, crf: int) -> int:
    """H.264 mp4 with ``comment`` in the container metadata, written atomically; bytes."""
    tmp = path.with_name(f".{path.name}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        w = H264Writer(tmp, fps, frames.shape[2], frames.shape[1], crf=crf, threads=1)
        w._container.metadata["comment"] = comment  # noqa: SLF001 (set before the header)
        with w:
            w.write(frames)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path.stat().st_size


@dataclass(frozen=True)
class SynthGenerateConfig:
    """The generator and its sampling settings (the paper's: 720p, 81 frames, 16 fps)."""

    prompts: Path | None = option(
        None,
        "Prompt file (.txt a line each, or CSV/parquet with id+caption); default: the "
        "sampled rows of manifests/captions_kept.parquet (yume-data dedup-captions).",
        output=False,
        path=True,
    )
    t2v: str = option(
        "diffusers:/weights/Wan2.1-T2V-14B-Diffusers",
        "Text-to-video backend: a local Wan2.1-T2V Diffusers folder, or tiny-random.",
    )
    resolution: str = option("720x1280", "HEIGHTxWIDTH, multiples of 16 (720p: 720x1280).")
    frames: int = option(81, "Frames per video, 4k+1 (Wan's VAE).")
    fps: float = option(16.0, "Frame rate of the mp4 (Wan2.1: 16).")
    steps: int = option(50, "Denoising steps.")
    guidance_scale: float = option(5.0, "Classifier-free guidance scale (CFG when > 1).")
    flow_shift: float = option(5.0, "UniPC flow shift: 5.0 for 720p, 3.0 for 480p.")
    negative_prompt: str | None = option(None, "Negative prompt (default: none).")
    max_sequence_length: int = option(
        512, "Prompt tokens the text encoder (UMT5) reads; a longer prompt is cut to them."
    )
    seed: int = option(0, "Base seed; each prompt's seed derives from it and the prompt id.")
    crf: int = option(18, "libx264 constant rate factor of the mp4.")
    id_column: str = option("video", "Id column of a CSV/parquet --prompts.", output=False)
    caption_column: str = option("caption", "Prompt column of a CSV/parquet --prompts.")
    gpus: float = option(0.0, "GPUs per generator actor (1: one model per GPU).", output=False)

    def __post_init__(self) -> None:
        h, w = parse_resolution(self.resolution)
        if h % 16 or w % 16:
            raise ValueError(f"resolution {self.resolution}: height and width must be /16")
        if self.frames < 1 or (self.frames - 1) % 4:
            raise ValueError(f"frames {self.frames} must be 4k+1 (5, 9, ..., 81)")
        if self.steps < 1 or self.fps <= 0:
            raise ValueError("steps >= 1 and fps > 0")

    @property
    def size(self) -> tuple[int, int]:
        return parse_resolution(self.resolution)


class SynthGenerateStage(Stage[SynthGenerateConfig]):
    """Generate one video per prompt with Wan2.1 T2V (diffusers WanPipeline), resumable.

    Prompts: the sampled captions of `yume-data dedup-captions`, or --prompts. Writes
    clips/synthetic-generated/<key>.mp4 + .json (prompt, seed, settings, model), and
    manifests/synth_generate.parquet; one actor per model (--gpus 1 per GPU). A rerun skips
    prompts already generated. --t2v tiny-random builds the same pipeline from tiny random
    components (tests and demos; marked in every output).
    """

    name = "synth_generate"
    config_cls = SynthGenerateConfig
    tables = {"synth_generate": GENERATED_SCHEMA}
    # the input (``file:row``, ``captions_kept:id``) names no file: a prompt edited under
    # the same id is generated again through its text
    version_fields = ("prompt",)

    @property
    def resources(self) -> Resources:  # type: ignore[override]
        return Resources(cpus=1, gpus=self.config.gpus, actor=True, batch_size=1)

    @property
    def staging(self) -> Path:
        return self.root.staging(GENERATED_DATASET)

    def owned_outputs(self) -> list[Path]:
        return [self.staging]

    def describe_inputs(self) -> str:
        return str(self.config.prompts or self.root.manifest("captions_kept"))

    def provenance_extra(self) -> dict:
        return {"prompts": str(self.config.prompts or self.root.manifest("captions_kept"))}

    def _prompt_rows(self) -> Iterator[tuple[str, str, str, tuple[str, str] | None]]:
        """(prompt id, prompt, input, the row's reject or None) of every prompt, in order;
        a Reject when the --prompts file cannot be read (see the module docstring)."""
        cfg = self.config
        if cfg.prompts is None:
            path = self.root.manifest("captions_kept")
            if not path.exists():
                raise FileNotFoundError(f"{path} not found: run `yume-data dedup-captions` first")
            for r in pq.read_table(path, schema=CAPTIONS_KEPT_SCHEMA).to_pylist():
                if r["sampled"]:
                    yield r["id"], r["caption"], f"{path}:{r['id']}", None
            return
        path = Path(cfg.prompts)
        if not path.is_file():
            raise FileNotFoundError(f"--prompts {path} not found")
        if path.suffix.lower() == ".txt":
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except UnicodeDecodeError as e:
                raise Reject("bad_txt", f"--prompts {path}: not UTF-8 text ({e})") from e
            for n, line in enumerate(lines):
                if line.strip():
                    yield f"{path.stem}:{n}", line.strip(), f"{path}:{n + 1}", None
            return
        from curation.stages.dedup_captions import read_caption_file

        rows = read_caption_file(path, cfg.id_column, cfg.caption_column)  # Rejects: bad_csv, ...
        for n, (pid, cap) in enumerate(zip(rows.ids, rows.captions, strict=True)):
            yield pid, cap, f"{path}:{n}", rows.bad.get(n)

    def discover(self) -> Iterator[dict]:
        for tmp in self.staging.glob(".*.tmp"):  # a killed run's temporaries
            tmp.unlink(missing_ok=True)
        for pid, prompt, where, bad in self._prompt_rows():
            item = {"key": prompt_key(pid), "input": where, "prompt_id": pid, "prompt": prompt}
            if bad:  # a CSV row with more or fewer fields than the header: bad_csv_row
                item["reject"] = (bad[0], f"{where}: {bad[1]}")
            elif not prompt.strip():
                item["reject"] = ("empty_prompt", f"prompt {pid!r} ({where}) has no text")
            elif len(prompt) > MAX_PROMPT_CHARS:
                item["reject"] = (
                    "prompt_too_long",
                    f"prompt {pid!r} ({where}) has {len(prompt):,} characters, more than "
                    f"{MAX_PROMPT_CHARS:,}: is a quote left open? It starts {prompt[:40]!r}",
                )
            yield item

    def setup(self) -> None:
        from model.backends import load

        cfg = self.config
        self.t2v = load(
            "text_to_video", cfg.t2v, steps=cfg.steps, guidance_scale=cfg.guidance_scale,
            flow_shift=cfg.flow_shift, max_sequence_length=cfg.max_sequence_length,
            negative_prompt=cfg.negative_prompt,
        )  # fmt: skip
        self.staging.mkdir(parents=True, exist_ok=True)
        self.code_version = code_version()

    def settings(self) -> dict:
        cfg = self.config
        h, w = cfg.size
        return {"height": h, "width": w, "frames": cfg.frames, "fps": cfg.fps,
                "steps": cfg.steps, "guidance_scale": cfg.guidance_scale,
                "flow_shift": cfg.flow_shift, "negative_prompt": cfg.negative_prompt,
                "max_sequence_length": cfg.max_sequence_length}  # fmt: skip

    def process_item(self, item: dict) -> dict[str, list[dict]]:
        cfg = self.config
        h, w = cfg.size
        seed = prompt_seed(cfg.seed, item["prompt_id"])
        t0 = time.perf_counter()
        frames = self.t2v.generate(item["prompt"], seed=seed, num_frames=cfg.frames,
                                   height=h, width=w)  # fmt: skip
        seconds = time.perf_counter() - t0
        meta = {
            "key": item["key"], "prompt_id": item["prompt_id"], "prompt": item["prompt"],
            "seed": seed, "settings": self.settings(), "model": self.t2v.model_id,
            "backend": self.t2v.family, "tiny_random": bool(self.t2v.tiny_random),
            "stage": self.name, "config_hash": self.config_hash,
            "code_version": self.code_version,
        }  # fmt: skip
        mp4 = self.staging / f"{item['key']}.mp4"
        write_video(mp4, frames, cfg.fps, json.dumps(meta, sort_keys=True), cfg.crf)
        side = {**meta, "generation_s": round(seconds, 3)}  # wall time: not in the manifest
        atomic_write_bytes(
            self.staging / f"{item['key']}.json", json.dumps(side, indent=1).encode()
        )
        row = {
            "key": item["key"], "prompt_id": item["prompt_id"], "prompt": item["prompt"],
            "seed": seed, "path": str(mp4.relative_to(self.root.path)),
            "frames": int(frames.shape[0]), "fps": cfg.fps, "width": w, "height": h,
            "steps": cfg.steps, "guidance_scale": cfg.guidance_scale,
            "flow_shift": cfg.flow_shift, "model_id": self.t2v.model_id,
            "tiny_random": bool(self.t2v.tiny_random),
        }  # fmt: skip
        return {"synth_generate": [row]}

    def finalize(self, tables: dict[str, pa.Table]) -> dict:
        rows = tables["synth_generate"].to_pylist()
        tiny = any(r["tiny_random"] for r in rows)
        return {
            "videos": len(rows),
            "frames": sum(r["frames"] for r in rows),
            "models": sorted({r["model_id"] for r in rows}),
            "tiny_random": tiny,
            "notes": ["tiny-random generator: these videos are noise, for tests"] if tiny else [],
        }
