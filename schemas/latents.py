"""The latent sample contract: the `json` member of a latent shard sample, and its table.

A latent sample is one training window pre-encoded by ``jobs.encode_latents``: members
``latents.pth`` (48, F, h, w) float16 VAE latents, ``event_emb.pth`` (Le, D) float16 event
text embedding and ``json`` (this schema). Latent shards are written by the one shard
writer (curation.shards, kind LATENT_SAMPLE, declared here), so they share its index and
stats files.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable
from pathlib import PurePath

import jsonschema
import pyarrow as pa

from schemas.common import SchemaError
from schemas.kinds import SampleKind, register_kind
from schemas.sample import SOURCES, TASKS

LATENT_SCHEMA_VERSION = 1


# The members every latent sample has.
LATENT_MEMBERS: tuple[str, ...] = ("event_emb.pth", "json", "latents.pth")

_int_list = {"type": "array", "items": {"type": "integer", "minimum": 0}}

LATENT_JSON_SCHEMA: dict = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": f"yume-data/latent-sample/v{LATENT_SCHEMA_VERSION}",
    "title": "yume-data latent shard sample metadata",
    "type": "object",
    "required": [
        "schema_version",
        "key",
        "task",
        "source",
        "source_shard",
        "latent_shape",
        "latent_fps",
        "history_latent_frames",
        "history_starts_at_first_frame",
        "keys",
        "mouse",
        "size",
        "vae",
        "text_encoder",
        "config_hash",
        "tiny_random",
    ],
    "properties": {
        "schema_version": {"const": LATENT_SCHEMA_VERSION},
        "key": {"type": "string"},  # <clip key>-<task>-<pass>
        "task": {"enum": list(TASKS)},
        "source": {"enum": list(SOURCES)},
        "source_shard": {"type": "string"},  # the clip shard the window came from
        "latent_shape": {**_int_list, "minItems": 4, "maxItems": 4},  # (C, F, h, w)
        "latent_fps": {"type": "number", "exclusiveMinimum": 0},
        "history_latent_frames": {"type": "integer", "minimum": 0},
        "history_starts_at_first_frame": {"type": "boolean"},
        "keys": _int_list,  # per pixel frame, codes into schemas.actions KEYS
        "mouse": _int_list,  # per pixel frame, codes into schemas.actions MOUSE
        "size": {**_int_list, "minItems": 2, "maxItems": 2},  # (height, width) in pixels
        "vae": {"type": "string"},
        "text_encoder": {"type": "string"},
        "config_hash": {"type": "string"},  # latent_config_hash below
        "tiny_random": {"type": "boolean"},
    },
}
_VALIDATOR = jsonschema.Draft202012Validator(LATENT_JSON_SCHEMA)


def validate_latent_sample(meta: dict) -> None:
    """Raise SchemaError with the problems of one latent sample's metadata, or return None."""
    errors = sorted(_VALIDATOR.iter_errors(meta), key=lambda e: list(e.absolute_path))
    problems = [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message[:200]}" for e in errors
    ]
    if not errors:
        frames = meta["latent_shape"][1]
        if meta["history_latent_frames"] >= frames:
            problems.append(f"history_latent_frames {meta['history_latent_frames']} >= {frames}")
        if len(meta["keys"]) != len(meta["mouse"]):
            problems.append(f"keys has {len(meta['keys'])} entries, mouse {len(meta['mouse'])}")
    if problems:
        raise SchemaError(f"latent sample {meta.get('key', '?')!r} invalid: " + "; ".join(problems))


# One row per latent sample in `latents/<dataset>/latents.parquet`: what a trainer needs to
# build its per-task streams without opening the tars (the shard index has where and sha256).
LATENT_INDEX_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),  # <clip key>-<task>-<pass>
        pa.field("shard", pa.string(), nullable=False),
        pa.field("task", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("source_shard", pa.string(), nullable=False),
        pa.field("latent_frames", pa.int32(), nullable=False),
        pa.field("history_latent_frames", pa.int32(), nullable=False),
        pa.field("tiny_random", pa.bool_(), nullable=False),
    ]
)


def _latent_index_fields(meta: dict) -> dict:
    """The shard index columns of one latent sample (frames and fps are latent ones)."""
    return {
        "source": meta["source"],
        "frames": meta["latent_shape"][1],
        "fps": meta["latent_fps"],
        "tiny_random": meta["tiny_random"],
        "tasks": [meta["task"]],
    }


def summarize_latent_metas(metas: Iterable[dict]) -> dict:
    """Counts over latent sample metadata (frames are latent frames), for stats files."""
    src, tasks, shapes, hist = Counter(), Counter(), Counter(), Counter()
    count = frames = tiny = 0
    duration = 0.0
    for m in metas:
        count += 1
        f = m["latent_shape"][1]
        frames += f
        duration += f / m["latent_fps"]
        src[m["source"]] += 1
        tasks[m["task"]] += 1
        shapes["x".join(map(str, m["latent_shape"]))] += 1
        hist[str(m["history_latent_frames"])] += 1
        tiny += bool(m["tiny_random"])
    return {
        "count": count,
        "frames": frames,
        "duration_s": round(duration, 3),
        "source_counts": dict(sorted(src.items())),
        "task_counts": dict(sorted(tasks.items())),
        "latent_shape_counts": dict(sorted(shapes.items())),
        "history_latent_frames_counts": dict(sorted(hist.items())),
        "tiny_random_count": tiny,
        "generated_count": 0,
    }


# Latent samples: training windows pre-encoded by jobs.encode_latents (no video to decode).
LATENT_SAMPLE = register_kind(
    SampleKind(
        name="latent",
        members=LATENT_MEMBERS,
        validate=validate_latent_sample,
        index_fields=_latent_index_fields,
        summarize=summarize_latent_metas,
    )
)


# One row per latent sample in `manifests/encode_latents.parquet` (all datasets): the
# latents.parquet row without its shard (not known until packing), plus where it came from.
LATENTS_MANIFEST_SCHEMA = pa.schema(
    [
        LATENT_INDEX_SCHEMA.field("key"),
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("clip_key", pa.string(), nullable=False),
        *(f for f in LATENT_INDEX_SCHEMA if f.name not in ("key", "shard")),
    ]
)


def latent_config(cfg) -> dict:
    """The fields a latent sample depends on, from any config that has them (the training
    config or the encode-latents config): geometry, encoders and text length."""
    return {
        "height": cfg.height,
        "width": cfg.width,
        "pred_latent_frames": cfg.pred_latent_frames,
        "max_history_latent_frames": cfg.max_history_latent_frames,
        "vae": PurePath(cfg.vae).name,  # folder names: a moved weights folder still matches
        "text_encoder": PurePath(cfg.text_encoder).name,
        "event_len": cfg.event_len,
    }


def latent_config_hash(cfg) -> str:
    """The hash every latent sample carries (``config_hash``) and the trainer checks."""
    text = json.dumps(latent_config(cfg), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]
