"""The action vocabulary and the action manifest tables.

Keys come from camera translation, mouse from camera rotation (see curation/actions.py).
Tokens are stored as uint8 codes into these tuples; the strings are the published labels.
"""

from __future__ import annotations

import pyarrow as pa

# 9 key states: at most one of W/S and one of D/A, joined in the order W, S, D, A.
KEYS: tuple[str, ...] = ("None", "W", "S", "D", "A", "W+D", "W+A", "S+D", "S+A")
# 9 mouse states: vertical arrow first when both.
MOUSE: tuple[str, ...] = ("·", "→", "←", "↑", "↓", "↑→", "↑←", "↓→", "↓←")

KEY_CODE = {k: i for i, k in enumerate(KEYS)}
MOUSE_CODE = {m: i for i, m in enumerate(MOUSE)}

# Yume's folder spelling of labels: Keys_W_A_Mouse_Left, Keys_None_Mouse_Up_Right, ...
MOUSE_FOLDER_NAMES = {
    "·": "·",
    "→": "Right",
    "←": "Left",
    "↑": "Up",
    "↓": "Down",
    "↑→": "Up_Right",
    "↑←": "Up_Left",
    "↓→": "Down_Right",
    "↓←": "Down_Left",
}

# One row per action segment (a maximal run of one label, never across a pose reset).
SEGMENTS_SCHEMA = pa.schema(
    [
        pa.field("clip_id", pa.string(), nullable=False),
        pa.field("segment_index", pa.int32(), nullable=False),
        pa.field("start_frame", pa.int32(), nullable=False),  # trajectory frame, inclusive
        pa.field("end_frame", pa.int32(), nullable=False),  # trajectory frame, inclusive
        pa.field("num_frames", pa.int32(), nullable=False),  # end - start + 1
        pa.field("duration_s", pa.float32(), nullable=False),
        pa.field("keys", pa.string(), nullable=False),
        pa.field("mouse", pa.string(), nullable=False),
        pa.field("distance_speed", pa.float32(), nullable=False),
        pa.field("turn_speed", pa.float32(), nullable=False),  # degrees
        pa.field("view_rotation_speed", pa.float32(), nullable=False),  # degrees
        pa.field("text_yume", pa.string(), nullable=False),
        pa.field("text_yume_speed", pa.string(), nullable=False),
        pa.field("text_yume5b", pa.string(), nullable=False),
        pa.field("text_yume5b_speed", pa.string(), nullable=False),
        pa.field("config_hash", pa.string(), nullable=False),
    ]
)

# One row per accepted clip: the per-pair token arrays the clip and training stages re-time.
# keys[i] / mouse[i] label the motion from trajectory frame i*stride to (i+1)*stride.
CLIPS_SCHEMA = pa.schema(
    [
        pa.field("clip_id", pa.string(), nullable=False),
        pa.field("source_path", pa.string(), nullable=False),
        pa.field("video_file", pa.string()),  # the CSV's videoFile, when known
        pa.field("youtube_id", pa.string()),
        pa.field("clip_start_frame", pa.int64()),
        pa.field("clip_end_frame", pa.int64()),
        pa.field("num_frames", pa.int32(), nullable=False),  # trajectory frames N
        pa.field("fps", pa.float32(), nullable=False),
        pa.field("stride", pa.int32(), nullable=False),
        pa.field("keys", pa.list_(pa.uint8()), nullable=False),  # codes into KEYS, length pairs
        pa.field("mouse", pa.list_(pa.uint8()), nullable=False),  # codes into MOUSE
        pa.field("resets", pa.list_(pa.int32()), nullable=False),  # pair indices that are resets
        pa.field("num_segments", pa.int32(), nullable=False),
        pa.field("caption", pa.string()),
        pa.field("location", pa.string()),
        pa.field("scene", pa.string()),
        pa.field("crowdDensity", pa.string()),
        pa.field("weather", pa.string()),
        pa.field("timeOfDay", pa.string()),
        pa.field("extra", pa.string()),  # JSON of any other CSV columns
        pa.field("reference_keys", pa.string()),  # published label, for Yume segment inputs
        pa.field("reference_mouse", pa.string()),
        pa.field("config_hash", pa.string(), nullable=False),
    ]
)

CSV_COLUMNS = ("caption", "location", "scene", "crowdDensity", "weather", "timeOfDay")
