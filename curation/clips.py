"""Clip samples: sample keys, re-timing of action tokens and segments, staged sample files.

A sample is a whole source clip re-timed to the dataset fps (default 16) and resized +
centre-cropped (default 544x960), with a keys and a mouse token per output frame and the
action segments re-timed to output frames, so the trainer can take any prediction window
with all the history before it.

Re-timing: output frame ``j`` shows source frame ``i_j`` (``curation.video.resample_indices``,
nearest frame). Its tokens are the label of trajectory pair ``min(i_j, pairs - 1)``, i.e. the
motion from frame ``i_j`` to frame ``i_j + stride`` (pairs overlap: there are N - stride). A segment covering trajectory frames
``[a, b]`` covers the output frames whose source frame lies in ``[a, b]``; segments shorter
than two output frames are dropped.

The stage itself is ``curation/stages/clips.py``.

Staging contract with the shard writer (``curation.shards.write_shards_from_dir``): each
sample is written as ``<key>.mp4``, ``<key>.txt`` and last ``<key>.json`` under
``<root>/clips/<dataset>/``, each atomically, so a sample is complete iff its json exists.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np

from curation.manifest import atomic_write_bytes
from curation.stages.base import Reject
from schemas.actions import CSV_COLUMNS

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def sample_key(clip_id: str) -> str:
    """A shard key for ``clip_id``: letters, digits, ``_`` and ``-`` only, at most 200 chars.

    Other characters (dots, path separators, ...) become ``_`` and a short hash of the
    original id is appended, so two ids never share a key and no key is a path.
    """
    safe = _UNSAFE.sub("_", clip_id)[:180]
    if safe == clip_id and safe:
        return safe
    return f"{safe}-{hashlib.sha256(clip_id.encode()).hexdigest()[:10]}"


def retime_tokens(
    codes: list[int], vocab: tuple[str, ...], source_indices: np.ndarray
) -> list[str]:
    """Token string of every output frame: the label of the pair starting at its source frame."""
    if not len(codes):
        raise Reject("trajectory_too_short", "no frame pairs to take tokens from")
    if max(codes) >= len(vocab):
        raise Reject("bad_tokens", f"token code {max(codes)} outside the {len(vocab)} labels")
    pair = np.minimum(np.asarray(source_indices), len(codes) - 1)
    return [vocab[int(c)] for c in np.asarray(codes)[pair]]


def retime_segments(segments: list[dict], source_indices: np.ndarray) -> list[dict]:
    """Segments (trajectory frames, inclusive) -> output frames; drop those under 2 frames."""
    out = []
    for seg in sorted(segments, key=lambda s: s["start_frame"]):
        start = int(np.searchsorted(source_indices, seg["start_frame"], side="left"))
        end = int(np.searchsorted(source_indices, seg["end_frame"], side="right")) - 1
        if end - start + 1 < 2:
            continue
        out.append(
            {
                "start": start,
                "end": end,
                "keys": seg["keys"],
                "mouse": seg["mouse"],
                "distance_speed": float(seg["distance_speed"]),
                "turn_speed": float(seg["turn_speed"]),
                "view_rotation_speed": float(seg["view_rotation_speed"]),
                "text": seg["text_yume"],
                "text_yume5b": seg["text_yume5b"],
            }
        )
    return out


def csv_meta(clip: dict) -> dict:
    """The CSV's columns (caption and the scene tags, then any extra ones) and the clip id."""
    meta = {"clip_id": clip["clip_id"], "videoFile": clip.get("video_file")}
    meta.update({c: clip.get(c) for c in CSV_COLUMNS})
    if clip.get("extra"):
        extra = json.loads(clip["extra"])
        meta.update({k: v for k, v in extra.items() if k not in meta})
    return meta


def write_staged_sample(staging_dir: Path, key: str, mp4: bytes, meta: dict, text: str) -> None:
    """Stage ``<key>.mp4``, ``<key>.txt`` and, last, ``<key>.json``, each atomically."""
    atomic_write_bytes(staging_dir / f"{key}.mp4", mp4)
    atomic_write_bytes(staging_dir / f"{key}.txt", text.encode())
    atomic_write_bytes(
        staging_dir / f"{key}.json", json.dumps(meta, ensure_ascii=False, indent=1).encode()
    )
