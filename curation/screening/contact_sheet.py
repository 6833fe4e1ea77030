"""Contact sheets: 8 frames of an event video in a grid with its event text under them.

Why: a person screens hundreds of videos faster from one still image per video than by
playing each; the sheet is remade only when missing or older than its mp4.
"""

from __future__ import annotations

import io
import textwrap
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from curation.dataroot import DataRoot
from curation.manifest import atomic_write_bytes

FRAMES = 8
COLS = 4
TILE_W = 192  # pixels per frame in the sheet; the height keeps the video's aspect
_FONT_PX = 14
_PAD = 6


def sheet_path(root: DataRoot, key: str) -> Path:
    return DataRoot.at(root).screening / "contact_sheets" / f"{key}.jpg"


def frame_indices(total: int, n: int = FRAMES) -> list[int]:
    """``n`` frame indices spread evenly over ``total`` frames, first and last included."""
    if total <= 0:
        return []
    return sorted({round(i) for i in np.linspace(0, total - 1, n)})


def sample_frames(path: str | Path, n: int = FRAMES) -> list[np.ndarray]:
    """``n`` evenly spaced RGB frames of the video at ``path``, decoded front to back once."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        frames = list(container.decode(stream))  # short clips: the count is exact this way
        return [frames[i].to_ndarray(format="rgb24") for i in frame_indices(len(frames), n)]


def render_sheet(frames: list[np.ndarray], text: str, title: str = "") -> bytes:
    """The sheet as JPEG bytes: frames in rows of COLS, then ``title`` and the wrapped text."""
    h, w = frames[0].shape[:2]
    tile_h = max(1, round(TILE_W * h / w))
    rows = -(-len(frames) // COLS)
    font = ImageFont.load_default(_FONT_PX)
    width = COLS * TILE_W
    lines = ([title] if title else []) + textwrap.wrap(text, width=int(width / (_FONT_PX * 0.55)))
    text_h = _PAD * 2 + len(lines) * (_FONT_PX + 4)
    sheet = Image.new("RGB", (width, rows * tile_h + text_h), "white")
    for i, frame in enumerate(frames):
        tile = Image.fromarray(frame).resize((TILE_W, tile_h), Image.Resampling.BILINEAR)
        sheet.paste(tile, ((i % COLS) * TILE_W, (i // COLS) * tile_h))
    draw = ImageDraw.Draw(sheet)
    for j, line in enumerate(lines):
        draw.text((_PAD, rows * tile_h + _PAD + j * (_FONT_PX + 4)), line, fill="black", font=font)
    out = io.BytesIO()
    sheet.save(out, format="JPEG", quality=85)
    return out.getvalue()


def contact_sheet(root: DataRoot, event: dict) -> Path:
    """``<root>/screening/contact_sheets/<key>.jpg`` of an events row, made when missing or
    older than the mp4 (raises OSError or av's errors for an unreadable video)."""
    root = DataRoot.at(root)
    out, mp4 = sheet_path(root, event["key"]), root.path / event["path"]
    if out.exists() and out.stat().st_mtime_ns >= mp4.stat().st_mtime_ns:
        return out
    title = f"{event['key']}  [{event['category']}]"
    atomic_write_bytes(out, render_sheet(sample_frames(mp4), event["event_text"], title))
    return out
