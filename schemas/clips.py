"""The clips stage's manifest: one row per training sample cut from a source video.

The sample itself (mp4, json validated by schemas.sample, txt) is staged under
``<root>/clips/<dataset>/<key>.*`` and then packed into shards.
"""

from __future__ import annotations

import pyarrow as pa

CLIP_SAMPLES_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),  # shard sample key, no dots
        pa.field("clip_id", pa.string(), nullable=False),  # the actions job's clip id
        pa.field("dataset", pa.string(), nullable=False),
        pa.field("source_video", pa.string(), nullable=False),  # file name in --videos
        pa.field("source_frames", pa.int32(), nullable=False),  # source frames used
        pa.field("frames", pa.int32(), nullable=False),  # output frames
        pa.field("fps", pa.float32(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("segments", pa.int32(), nullable=False),  # segments kept after re-timing
        pa.field("path", pa.string(), nullable=False),  # staged mp4, relative to the root
        pa.field("bytes", pa.int64(), nullable=False),  # mp4 size
        pa.field("generator", pa.string()),  # program that made the video; null if filmed
    ]
)
