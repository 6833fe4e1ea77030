"""The latent sample contract: the `json` member of a latent shard sample, and its table.

A latent sample is one training window pre-encoded by ``jobs.encode_latents``: members
``latents.pth`` (48, F, h, w) float16 VAE latents, ``event_emb.pth`` (Le, D) float16 event
text embedding and ``json`` (this schema). Latent shards are written by the one shard
writer (curation.shards, kind LATENT_SAMPLE), so they share its index and stats files.
"""

from __future__ import annotations

import jsonschema
import pyarrow as pa

from schemas.common import SchemaError
from schemas.sample import SOURCES, TASKS

LATENT_SCHEMA_VERSION = 1

# Per input clip shard, the encoder's done record: <latents>/<dataset>/encoded/<shard>.json.
LATENT_DONE_DIR = "encoded"

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
        "config_hash": {"type": "string"},  # training.data.latent_config_hash
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
