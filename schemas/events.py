"""Table schema of the events stage: one row per generated event video.

``manifests/events.parquet`` (``EVENTS_SCHEMA``) is the contract the screening commands read;
the per-dimension scores go to ``manifests/event_scores.parquet`` with
``schemas.synth.SCORES_SCHEMA`` (video, dimension, score, backend, backend_version).
"""

from __future__ import annotations

import pyarrow as pa

EVENTS_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),  # sample key evt_<16 hex>
        pa.field("pair_id", pa.string(), nullable=False),  # <image>#<category>-<text hash>
        pa.field("image", pa.string(), nullable=False),  # absolute path of the conditioning image
        pa.field(
            "category", pa.string(), nullable=False
        ),  # urban_daily_life|sci_fi|fantasy|weather
        pa.field("event_text", pa.string(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("path", pa.string(), nullable=False),  # the mp4, relative to the data root
        pa.field("frames", pa.int32(), nullable=False),
        pa.field("fps", pa.float32(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("steps", pa.int32(), nullable=False),
        pa.field("guidance_scale", pa.float32(), nullable=False),  # high-noise expert
        pa.field("guidance_scale_2", pa.float32()),  # low-noise expert; null with one expert
        pa.field("boundary_ratio", pa.float32()),  # expert switch; null with one expert
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("tiny_random", pa.bool_(), nullable=False),
        pa.field("tasks", pa.list_(pa.string()), nullable=False),  # e.g. ["t2v", "i2v"]
        pa.field("total", pa.float64(), nullable=False),  # VBench-normalised (curation.scores)
        pa.field("total_dimensions", pa.list_(pa.string()), nullable=False),
        pa.field("scorer", pa.string(), nullable=False),  # "<family> <version>"
    ]
)
