"""Yume's segment-folder layout: ``Keys_<keys>_Mouse_<mouse>/<id>.npy`` + ``<id>.txt``.

Read by ``curation.sekai.discover_segments`` and written by ``--export-yume``, so data cut here
loads in Yume's own tools and Yume's published segments load here.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from curation.manifest import atomic_write_bytes
from schemas.actions import MOUSE_FOLDER_NAMES


def parse_segment_txt(text: str) -> dict[str, str]:
    """Yume's segment label file: ``Start Frame:``, ``End Frame:``, ``Keys:``, ``Mouse:`` lines."""
    out = {}
    for line in text.splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            out[k.strip()] = v.strip()
    return out


def segment_folder(keys: str, mouse: str) -> str:
    """Yume's folder name of a label: ``Keys_W_A_Mouse_Left``, ``Keys_None_Mouse_·``."""
    return f"Keys_{keys.replace('+', '_')}_Mouse_{MOUSE_FOLDER_NAMES[mouse]}"


def segment_txt(start: int, end: int, keys: str, mouse: str) -> str:
    """Yume's segment label file text (frames inclusive)."""
    return (
        f"Start Frame: {start}\nEnd Frame: {end}\nDuration: {end - start + 1} frames\n"
        f"Keys: {keys}\nMouse: {mouse}\n"
    )


NAME_MAX = 255  # bytes in one file name on Linux file systems


def _stem(clip_id: str, start: int, end: int) -> str:
    return f"{clip_id}_frames_{start:05d}-{end:05d}"


def export_name_problem(clip_id: str, num_frames: int) -> tuple[str, str] | None:
    """(reason, detail) if a clip's segments cannot be file names under ``--export-yume``.

    Checked before any segment is written, with the longest frame numbers the clip can
    have and the temporary name ``atomic_write_bytes`` uses, so export never fails midway.
    """
    if "/" in clip_id or "\0" in clip_id or clip_id in ("", ".", ".."):
        return "bad_clip_id", f"clip id {clip_id[:80]!r} cannot be a file name"
    last = max(num_frames - 1, 0)
    longest = f".{_stem(clip_id, last, last)}.npy.12345678.tmp"
    size = len(longest.encode("utf-8", "surrogateescape"))
    if size > NAME_MAX:
        return (
            "clip_id_too_long",
            f"clip id of {len(clip_id.encode('utf-8', 'surrogateescape'))} bytes makes "
            f"export file names of {size} bytes (limit {NAME_MAX})",
        )
    return None


def export_segment(
    out: Path, clip_id: str, c2w: np.ndarray, start: int, end: int, keys: str, mouse: str
) -> Path:
    """Write one segment in Yume's layout (``.npy`` slice + ``.txt`` label), atomically."""
    folder = out / segment_folder(keys, mouse)
    stem = _stem(clip_id, start, end)
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(c2w[start : end + 1], dtype=np.float32))
    atomic_write_bytes(folder / f"{stem}.npy", buf.getvalue())
    atomic_write_bytes(folder / f"{stem}.txt", segment_txt(start, end, keys, mouse).encode())
    return folder / f"{stem}.npy"
