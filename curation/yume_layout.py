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


def export_segment(
    out: Path, clip_id: str, c2w: np.ndarray, start: int, end: int, keys: str, mouse: str
) -> Path:
    """Write one segment in Yume's layout (``.npy`` slice + ``.txt`` label), atomically."""
    folder = out / segment_folder(keys, mouse)
    stem = f"{clip_id}_frames_{start:05d}-{end:05d}"
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(c2w[start : end + 1], dtype=np.float32))
    atomic_write_bytes(folder / f"{stem}.npy", buf.getvalue())
    atomic_write_bytes(folder / f"{stem}.txt", segment_txt(start, end, keys, mouse).encode())
    return folder / f"{stem}.npy"
