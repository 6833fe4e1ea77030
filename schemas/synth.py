"""Table schemas of the synthetic T2V stages: dedup-captions, synth-generate, -score, -select.

- ``dedup_captions``: one row per embedded caption (the stage's manifest; the embedding is
  kept so the global dedup in ``finalize`` reruns without re-embedding);
- ``captions_kept``: the captions kept after exact + near-duplicate removal, with
  ``sampled`` marking the seeded random sample of ``--n`` that generation uses;
- ``captions_removed``: every caption not kept, with the kept id it duplicates, the cosine
  similarity and why (``exact_duplicate``, ``near_duplicate``); a row without a caption
  is a ``missing_caption`` reject, not a removed caption;
- ``synth_generate``: one row per generated video;
- ``synth_score``: one row per scored video with its total, and ``scores`` the long table
  (video, dimension, score, backend, backend_version);
- ``synth_select``: the videos selected into ``shards/synthetic``.
"""

from __future__ import annotations

import pyarrow as pa

CAPTION_EMBEDDINGS_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),  # the caption's id (OpenVid: `video`)
        pa.field("chunk", pa.string(), nullable=False),  # the stage item it was embedded in
        pa.field("source", pa.string(), nullable=False),  # the input file
        pa.field("row", pa.int64(), nullable=False),  # 0-based data row in that file
        pa.field("caption", pa.string(), nullable=False),  # "" when the row had none
        pa.field("text_hash", pa.string(), nullable=False),  # of the normalised caption
        # L2-normalised; empty for a missing caption and for a text already embedded in the
        # same chunk (an exact copy takes its first occurrence's embedding)
        pa.field("embedding", pa.list_(pa.float32()), nullable=False),
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("tiny_random", pa.bool_(), nullable=False),
    ]
)

CAPTIONS_KEPT_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("caption", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("row", pa.int64(), nullable=False),
        pa.field("order", pa.int64(), nullable=False),
        pa.field("nn_similarity", pa.float32()),  # to its nearest other caption found
        pa.field("duplicates", pa.int32(), nullable=False),  # captions removed in its favour
        pa.field("sampled", pa.bool_(), nullable=False),  # in the seeded sample of --n
    ]
)

CAPTIONS_REMOVED_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("caption", pa.string()),
        pa.field("source", pa.string(), nullable=False),
        pa.field("row", pa.int64(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),  # exact_/near_duplicate, missing_*
        pa.field("duplicate_of", pa.string()),  # the kept caption's id
        pa.field("similarity", pa.float32()),  # cosine to it (1.0 for exact copies)
    ]
)

GENERATED_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("prompt_id", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("path", pa.string(), nullable=False),  # mp4, relative to the root
        pa.field("frames", pa.int32(), nullable=False),
        pa.field("fps", pa.float32(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("steps", pa.int32(), nullable=False),
        pa.field("guidance_scale", pa.float32(), nullable=False),
        pa.field("flow_shift", pa.float32(), nullable=False),
        pa.field("model_id", pa.string(), nullable=False),
        pa.field("tiny_random", pa.bool_(), nullable=False),
    ]
)

SCORES_SCHEMA = pa.schema(
    [
        pa.field("video", pa.string(), nullable=False),  # the generated sample key
        pa.field("dimension", pa.string(), nullable=False),
        pa.field("score", pa.float64(), nullable=False),
        pa.field("backend", pa.string(), nullable=False),  # builtin | vbench
        pa.field("backend_version", pa.string(), nullable=False),
    ]
)

SCORED_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),  # the mp4, relative to the root
        pa.field("total", pa.float64(), nullable=False),
        pa.field("total_dimensions", pa.list_(pa.string()), nullable=False),  # used in total
        pa.field("backend", pa.string(), nullable=False),
        pa.field("backend_version", pa.string(), nullable=False),
        pa.field("tiny_random", pa.bool_(), nullable=False),  # of the generator
    ]
)

SELECTED_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),
        pa.field("rank", pa.int32(), nullable=False),  # 1 = best total
        pa.field("total", pa.float64(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("path", pa.string(), nullable=False),  # staged sample mp4, relative
        pa.field("tiny_random", pa.bool_(), nullable=False),
    ]
)
