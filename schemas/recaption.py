"""The recaption stage's manifest: one row per event caption (sample x window x prompt).

Every caption records what made it (model, backend, prompt version, sampling settings,
seed), so captions of several prompt versions can sit side by side in one table and a
shard says which version it carries.
"""

from __future__ import annotations

import pyarrow as pa

RECAPTION_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),  # <dataset>/<sample>/w<window>/<version>
        pa.field("dataset", pa.string(), nullable=False),  # the source shard set
        pa.field("sample_key", pa.string(), nullable=False),
        pa.field("window", pa.int32(), nullable=False),  # window number in the clip
        pa.field("frame_start", pa.int32(), nullable=False),  # window span, output frames,
        pa.field("frame_end", pa.int32(), nullable=False),  # inclusive
        pa.field("frames_shown", pa.list_(pa.int32()), nullable=False),  # frames sent
        pa.field("prompt_version", pa.string(), nullable=False),
        pa.field("model", pa.string(), nullable=False),  # the model id
        pa.field("backend", pa.string(), nullable=False),  # openai | lmdeploy | ... | tiny-random
        pa.field("tiny_random", pa.bool_(), nullable=False),  # random text: tests only
        pa.field("temperature", pa.float32(), nullable=False),
        pa.field("top_p", pa.float32(), nullable=False),
        pa.field("max_tokens", pa.int32(), nullable=False),
        pa.field("seed", pa.int64(), nullable=False),
        pa.field("caption", pa.string(), nullable=False),
        pa.field("finish_reason", pa.string()),
        pa.field("prompt_tokens", pa.int32()),  # image tokens included, as the server counts
        pa.field("output_tokens", pa.int32()),
        pa.field("attempts", pa.int32(), nullable=False),  # 1, or 2 after one retry
        pa.field("transport_retries", pa.int32(), nullable=False),  # 429/5xx/timeouts retried
        pa.field("seconds", pa.float32()),  # generation wall time (null: timings off)
        pa.field("prepare_seconds", pa.float32()),  # decode + frames + encoding, per window
    ]
)
