"""The shard sample contract: the `json` member of every clip sample, the shard index, and
the clip sample kind (CLIP_SAMPLE, registered in schemas.kinds).

Every dataset (real Sekai, synthetic, event) writes the same sample layout, so one reader
serves the trainer. The writer validates each sample on write; `yume-data shards verify`
validates again. Bump SAMPLE_SCHEMA_VERSION on any incompatible change.
"""

from __future__ import annotations

import copy
import re
from collections import Counter
from collections.abc import Iterable

import jsonschema
import pyarrow as pa

from schemas.actions import KEYS, MOUSE
from schemas.common import SchemaError
from schemas.kinds import SampleKind, register_kind

SAMPLE_SCHEMA_VERSION = 1

# The members every sample has: the clip, its metadata and its training caption.
REQUIRED_MEMBERS: tuple[str, ...] = ("json", "mp4", "txt")

# WebDataset splits a member name at its first dot, and a key becomes part of a file name:
# letters, digits, `_` and `-` only (Sekai/YouTube ids fit), no dots, no path separators.
KEY_PATTERN = r"^[A-Za-z0-9_-]{1,200}$"
_KEY_RE = re.compile(KEY_PATTERN)
# A member's extension: `mp4`, `json`, `first.jpg`; never a path.
_EXT_RE = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")

SOURCES: tuple[str, ...] = ("sekai-real", "sekai-game", "synthetic", "event")
TASKS: tuple[str, ...] = ("t2v", "i2v")

_nullable_str = {"type": ["string", "null"]}

_SEGMENT = {
    "type": "object",
    "required": [
        "start",
        "end",
        "keys",
        "mouse",
        "distance_speed",
        "turn_speed",
        "view_rotation_speed",
        "text",
        "text_yume5b",
    ],
    "properties": {
        "start": {"type": "integer", "minimum": 0},  # output frame, inclusive
        "end": {"type": "integer", "minimum": 0},  # output frame, inclusive
        "keys": {"enum": list(KEYS)},
        "mouse": {"enum": list(MOUSE)},
        "distance_speed": {"type": "number"},
        "turn_speed": {"type": "number"},
        "view_rotation_speed": {"type": "number"},
        "text": {"type": "string"},
        "text_yume5b": {"type": "string"},
    },
}

# One caption window's event caption: output frames start..end (inclusive), the text, and
# what made it (prompt version, model, backend; tiny_random: random text, tests only).
_EVENT_WINDOW = {
    "type": "object",
    "required": ["start", "end", "text", "prompt_version", "model", "backend", "tiny_random"],
    "properties": {
        "start": {"type": "integer", "minimum": 0},
        "end": {"type": "integer", "minimum": 0},
        "text": {"type": "string"},
        "prompt_version": {"type": "string"},
        "model": {"type": "string"},
        "backend": {"type": "string"},
        "tiny_random": {"type": "boolean"},
    },
}

SAMPLE_JSON_SCHEMA: dict = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": f"yume-data/sample/v{SAMPLE_SCHEMA_VERSION}",
    "title": "yume-data shard sample metadata",
    "type": "object",
    "required": [
        "schema_version",
        "key",
        "source",
        "tasks",
        "fps",
        "frames",
        "width",
        "height",
        "source_video",
        "source_fps",
        "source_frame_range",
        "keys",
        "mouse",
        "segments",
        "captions",
        "scores",
        "screening",
        "meta",
        "provenance",
    ],
    "properties": {
        "schema_version": {"const": SAMPLE_SCHEMA_VERSION},
        "key": {"type": "string", "pattern": KEY_PATTERN},
        "source": {"enum": list(SOURCES)},
        "tasks": {"type": "array", "items": {"enum": list(TASKS)}, "uniqueItems": True},
        "fps": {"type": "number", "exclusiveMinimum": 0},
        "frames": {"type": "integer", "minimum": 1},
        "width": {"type": "integer", "minimum": 1},
        "height": {"type": "integer", "minimum": 1},
        "source_video": {"type": "string"},
        "source_fps": {"type": "number"},
        "source_frame_range": {
            "oneOf": [
                {
                    "type": "array",
                    "items": {"type": "integer"},
                    "minItems": 2,
                    "maxItems": 2,
                },
                {"type": "null"},
            ]
        },
        "keys": {"type": "array", "items": {"enum": list(KEYS)}},
        "mouse": {"type": "array", "items": {"enum": list(MOUSE)}},
        "segments": {"type": "array", "items": _SEGMENT},
        "captions": {
            "type": "object",
            "required": ["scene", "event", "action"],
            "properties": {
                "scene": _nullable_str,
                "event": _nullable_str,
                "action": _nullable_str,
                # Optional (still version 1; absent in older samples): the event caption of
                # each caption window (yume-data recaption); ``event`` is then the first's.
                "event_windows": {"type": "array", "items": _EVENT_WINDOW},
            },
        },
        "scores": {"type": "object", "additionalProperties": {"type": "number"}},
        "screening": {
            "oneOf": [
                {"type": "null"},
                {
                    "type": "object",
                    "required": ["decision", "reviewer", "note"],
                    "properties": {
                        "decision": {"enum": ["accepted", "rejected", "pending"]},
                        "reviewer": _nullable_str,
                        "note": _nullable_str,
                    },
                },
            ]
        },
        "meta": {"type": "object"},
        "provenance": {
            "type": "object",
            "required": ["stage", "code_version", "config_hash", "backend", "tiny_random"],
            "properties": {
                "stage": {"type": "string"},
                "code_version": {"type": "string"},
                "config_hash": {"type": "string"},
                "backend": _nullable_str,
                "tiny_random": {"type": "boolean"},
                # Optional (still version 1; absent reads as real footage): the clip is
                # made by a program, not filmed, and which program made it.
                "generated": {"type": "boolean"},
                "generator": _nullable_str,
            },
        },
    },
}

# The same contract, minus the per-frame token enums, which validate_sample checks as sets:
# jsonschema descends into every item, ~40 ms for a 60 s clip against ~0.1 ms here.
_FAST_SCHEMA = copy.deepcopy(SAMPLE_JSON_SCHEMA)
for _field in ("keys", "mouse"):
    _FAST_SCHEMA["properties"][_field] = {"type": "array"}
_VALIDATOR = jsonschema.Draft202012Validator(_FAST_SCHEMA)
_VOCAB = {"keys": frozenset(KEYS), "mouse": frozenset(MOUSE)}

# One row per sample in a dataset's `index.parquet`: where it is and what it holds, so
# verify can check every byte and a trainer can build mixtures without opening the tars.
SHARD_INDEX_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("shard", pa.string(), nullable=False),  # file name, e.g. real-000003.tar
        pa.field("members", pa.list_(pa.string()), nullable=False),  # extensions, sorted
        pa.field("sizes", pa.list_(pa.int64()), nullable=False),  # bytes per member
        pa.field("sha256", pa.list_(pa.string()), nullable=False),  # hex digest per member
        pa.field("source", pa.string(), nullable=False),
        pa.field("frames", pa.int32(), nullable=False),
        pa.field("fps", pa.float32(), nullable=False),
        pa.field("tiny_random", pa.bool_(), nullable=False),
        # The tasks the sample offers (SampleKind.index_fields). Null: unknown, i.e. a row
        # of an index written before this column, or a kind that does not say; readers
        # that need it then read the sample's json (curation.shards.shards_for does).
        pa.field("tasks", pa.list_(pa.string())),
        # ``ext:size:mtime_ns;...`` of the staged files the sample was packed from; null for
        # samples packed from memory. A restaged sample (its item redone) no longer matches,
        # so its shard is rewritten (curation.shards.write_shards_from_dir).
        pa.field("staged", pa.string()),
    ]
)


def is_generated(meta: dict) -> bool:
    """Whether a sample's video was made by a program (demo renders), not filmed."""
    return bool(meta["provenance"].get("generated", False))


def validate_key(key: str) -> None:
    """Raise SchemaError unless ``key`` is a safe sample key (see KEY_PATTERN)."""
    if not isinstance(key, str) or not _KEY_RE.match(key):
        raise SchemaError(
            f"bad sample key {key!r}: use 1-200 letters, digits, '_' or '-' "
            "(no dots, no path separators)"
        )


def validate_member_name(ext: str) -> None:
    """Raise SchemaError unless ``ext`` is a plain member extension such as ``mp4``."""
    if not isinstance(ext, str) or not _EXT_RE.match(ext):
        raise SchemaError(f"bad member name {ext!r}: not a plain extension")


def validate_sample(meta: dict) -> None:
    """Raise SchemaError with every problem of one sample's metadata, or return None."""
    errors = sorted(_VALIDATOR.iter_errors(meta), key=lambda e: list(e.absolute_path))
    if errors:
        shown = "; ".join(
            f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message[:200]}"
            for e in errors[:5]
        )
        more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
        raise SchemaError(f"sample {meta.get('key', '?')!r} invalid: {shown}{more}")
    frames = meta["frames"]
    problems = []
    for field, vocab in _VOCAB.items():
        unknown = [t for t in meta[field] if not isinstance(t, str) or t not in vocab]
        if unknown:
            problems.append(f"{field}: unknown tokens {unknown[:5]}")
    if meta["keys"] and len(meta["keys"]) != frames:
        problems.append(f"keys has {len(meta['keys'])} entries for {frames} frames")
    if len(meta["mouse"]) != len(meta["keys"]):
        problems.append(f"mouse has {len(meta['mouse'])} entries, keys {len(meta['keys'])}")
    for i, seg in enumerate(meta["segments"]):
        if seg["start"] > seg["end"]:
            problems.append(f"segments/{i}: start {seg['start']} > end {seg['end']}")
        if seg["end"] > frames - 1:
            problems.append(f"segments/{i}: end {seg['end']} beyond last frame {frames - 1}")
    for i, win in enumerate(meta["captions"].get("event_windows") or []):
        if win["start"] > win["end"] or win["end"] > frames - 1:
            problems.append(
                f"captions/event_windows/{i}: span {win['start']}..{win['end']} is not within "
                f"0..{frames - 1}"
            )
    if problems:
        raise SchemaError(f"sample {meta['key']!r} invalid: " + "; ".join(problems))


def _clip_index_fields(meta: dict) -> dict:
    """The shard index columns of one clip sample (frames and fps of the mp4)."""
    return {
        "source": meta["source"],
        "frames": meta["frames"],
        "fps": meta["fps"],
        "tiny_random": meta["provenance"]["tiny_random"],
        "tasks": list(meta["tasks"]),
    }


def summarize_metas(metas: Iterable[dict]) -> dict:
    """Counts over clip sample metadata: what a stats file and `shards stats` report.

    ``actions`` counts frames per "keys|mouse" label; samples without actions add nothing.
    """
    fps, res, src, tasks, actions = Counter(), Counter(), Counter(), Counter(), Counter()
    count = frames = tiny = generated = 0
    duration = 0.0
    for m in metas:
        count += 1
        frames += m["frames"]
        duration += m["frames"] / m["fps"]
        fps[f"{m['fps']:g}"] += 1
        res[f"{m['width']}x{m['height']}"] += 1
        src[m["source"]] += 1
        tasks.update(m["tasks"])
        tiny += bool(m["provenance"]["tiny_random"])
        generated += is_generated(m)
        actions.update(f"{k}|{ms}" for k, ms in zip(m["keys"], m["mouse"], strict=True))
    return {
        "count": count,
        "frames": frames,
        "duration_s": round(duration, 3),
        "fps_counts": dict(sorted(fps.items())),
        "resolution_counts": dict(sorted(res.items())),
        "source_counts": dict(sorted(src.items())),
        "task_counts": dict(sorted(tasks.items())),
        "tiny_random_count": tiny,
        "generated_count": generated,
        "action_frame_counts": dict(sorted(actions.items())),
    }


# Clip samples (mp4 + json + txt): every dataset the curation jobs write.
CLIP_SAMPLE = register_kind(
    SampleKind(
        name="clip",
        members=REQUIRED_MEMBERS,
        validate=validate_sample,
        index_fields=_clip_index_fields,
        summarize=summarize_metas,
        video="mp4",
    )
)
