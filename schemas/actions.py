"""The action vocabulary, its published text descriptions and the action manifest tables.

Keys come from camera translation, mouse from camera rotation (see curation/actions.py).
Tokens are stored as uint8 codes into these tuples; the strings are the published labels.
The descriptions (``action_text``) are pure text, shared by curation and the text encoder.
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

# The action descriptions: 9 key phrases + 9 mouse phrases per published phrase set, Yume
# (Yume 1 data code) and Yume-5B (its later release); a description is key + mouse phrase.
YUME_KEYS = {
    "W": "Person moves forward (W).",
    "A": "Person moves left (A).",
    "S": "Person moves backward (S).",
    "D": "Person moves right (D).",
    "W+A": "Person moves forward and left (W+A).",
    "W+D": "Person moves forward and right (W+D).",
    "S+D": "Person moves backward and right (S+D).",
    "S+A": "Person moves backward and left (S+A).",
    "None": "Person stands still (·).",
}
YUME_MOUSE = {
    "→": "Camera turns right (→).",
    "←": "Camera turns left (←).",
    "↑": "Camera tilts up (↑).",
    "↓": "Camera tilts down (↓).",
    "↑→": "Camera tilts up and turns right (↑→).",
    "↑←": "Camera tilts up and turns left (↑←).",
    "↓→": "Camera tilts down and turns right (↓→).",
    "↓←": "Camera tilts down and turns left (↓←).",
    "·": "Camera remains still (·).",
}
YUME5B_KEYS = {
    "W": "The camera pushes forward (W).",
    "A": "The camera moves to the left (A).",
    "S": "The camera pulls back (S).",
    "D": "The camera moves to the right (D).",
    "W+A": "The camera pushes forward and moves to the left (W+A).",
    "W+D": "The camera pushes forward and moves to the right (W+D).",
    "S+A": "The camera pulls back and moves to the left (S+A).",
    "S+D": "The camera pulls back and moves to the right (S+D).",
    "None": "The camera's movement direction remains stationary (·).",
}
YUME5B_MOUSE = {
    "→": "The camera pans to the right (→).",
    "←": "The camera pans to the left (←).",
    "↑": "The camera tilts up (↑).",
    "↓": "The camera tilts down (↓).",
    "↑→": "The camera tilts up and pans to the right (↑→).",
    "↑←": "The camera tilts up and pans to the left (↑←).",
    "↓→": "The camera tilts down and pans to the right (↓→).",
    "↓←": "The camera tilts down and pans to the left (↓←).",
    "·": "The rotation direction of the camera remains stationary (·).",
}
PHRASES = {"yume": (YUME_KEYS, YUME_MOUSE), "yume5b": (YUME5B_KEYS, YUME5B_MOUSE)}


def _fmt(v: float) -> str:
    return f"{round(float(v), 2):g}"


def action_text(
    keys: str,
    mouse: str,
    style: str = "yume",
    speeds: tuple[float, float, float] | None = None,
) -> str:
    """The action description of one (keys, mouse) label, optionally with Yume's speed suffix."""
    key_phrases, mouse_phrases = PHRASES[style]
    sentences = [key_phrases[keys], mouse_phrases[mouse]]
    if speeds is not None:
        distance, turn, view = speeds
        sentences += [
            f"Actual distance moved:{_fmt(distance)} at 100 meters per second.",
            f"Angular change rate (turn speed):{_fmt(turn)}.",
            f"View rotation speed:{_fmt(view)}.",
        ]
    # Yume's own strings run the sentences together ("(W).Camera"); a space keeps the text a
    # text-encoder reads well formed.
    return " ".join(sentences)


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
