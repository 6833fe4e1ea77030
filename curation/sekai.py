"""Sekai release layouts: finding trajectory inputs, and Yume's segment-folder format.

Three input layouts become one list of items, each a plain dict (so Ray can ship it):
- a Sekai release: annotation CSV(s) whose first column is ``<youtubeId>_<start>_<end>.mp4``
  plus ``<youtubeId>_<start>_<end>.npz`` trajectories anywhere below the folder;
- a folder of bare ``.npz`` / ``.npy`` trajectories (clip id = file stem);
- Yume segment folders ``Keys_<keys>_Mouse_<mouse>/<id>.npy`` with a ``<id>.txt`` label.
Anything that cannot become an item becomes a rejects row instead.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from pathlib import Path

from curation.manifest import reject_row
from curation.yume_layout import parse_segment_txt
from schemas.actions import CSV_COLUMNS, KEYS, MOUSE

_CLIP_NAME = re.compile(r"^(?P<yt>.+)_(?P<start>\d+)_(?P<end>\d+)$")
_SEGMENT_DIR = re.compile(r"^Keys_.+_Mouse_.+$")


def parse_clip_name(name: str) -> tuple[str, int, int]:
    """``<youtubeId>_<startFrame>_<endFrame>[.mp4]`` -> (youtubeId, start, end).

    YouTube ids may contain ``_``, so the two numbers are taken from the right.
    """
    stem = name[:-4] if name.endswith(".mp4") else name
    m = _CLIP_NAME.match(stem)
    if not m or int(m["end"]) <= int(m["start"]):
        raise ValueError(f"{name!r} is not <youtubeId>_<startFrame>_<endFrame>.mp4")
    return m["yt"], int(m["start"]), int(m["end"])


def _item(clip_id: str, path: Path, kind: str, **fields: object) -> dict:
    item = {
        "clip_id": clip_id,
        "path": str(path),
        "kind": kind,
        "video_file": None,
        "youtube_id": None,
        "clip_start_frame": None,
        "clip_end_frame": None,
        "extra": None,
        "reference_keys": None,
        "reference_mouse": None,
        **{c: None for c in CSV_COLUMNS},
    }
    item.update(fields)
    return item


def _clip_fields(name: str) -> dict:
    try:
        yt, start, end = parse_clip_name(name)
    except ValueError:
        return {}
    return {"youtube_id": yt, "clip_start_frame": start, "clip_end_frame": end}


def _read_csv(csv_path: Path, rejects: list[dict]) -> Iterator[tuple[str, list[str], dict]]:
    """Rows of one annotation CSV as (``path:line``, header, {column: text}).

    Read with the csv module rather than pandas so that one ragged row (more or fewer
    fields than the header) is a ``bad_csv_row`` reject instead of losing the whole file;
    a file that cannot be read at all is one ``bad_csv`` reject.
    """
    try:
        with open(csv_path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if not header or not any(h.strip() for h in header):
                rejects.append(reject_row("actions", str(csv_path), "bad_csv", "CSV is empty"))
                return
            line = reader.line_num + 1
            for record in reader:
                where, line = f"{csv_path}:{line}", reader.line_num + 1
                if not record:  # a blank line
                    continue
                if len(record) != len(header):
                    rejects.append(
                        reject_row(
                            "actions",
                            where,
                            "bad_csv_row",
                            f"line has {len(record)} fields, the header has {len(header)}",
                        )
                    )
                    continue
                row: dict[str, str] = {}
                for name, value in zip(header, record, strict=True):
                    row.setdefault(name, value)  # a repeated column name: the first counts
                yield where, header, row
    except (csv.Error, UnicodeDecodeError, OSError) as e:
        rejects.append(
            reject_row("actions", str(csv_path), "bad_csv", f"cannot read CSV: {e}; rest skipped")
        )


def _trajectories_by_stem(
    root: Path, suffixes: tuple[str, ...], rejects: list[dict]
) -> dict[str, Path]:
    """Trajectory files by clip id (file stem); a second file with a known stem is a reject.

    The stem is the join key to the CSV row and to ``<id>.mp4``: renaming one copy would
    invent a clip id no video or caption has, and which copy is right cannot be known.
    """
    found: dict[str, Path] = {}
    for p in sorted(root.rglob("*")):
        if p.suffix not in suffixes:
            continue
        if p.stem in found:
            rejects.append(
                reject_row(
                    "actions",
                    str(p),
                    "duplicate_clip_id",
                    f"clip id {p.stem!r} is both {found[p.stem]} and {p}; the first is kept",
                )
            )
            continue
        found[p.stem] = p
    return found


def discover_sekai(root: str | Path) -> tuple[list[dict], list[dict]]:
    """Items and rejects for a Sekai release folder (CSV rows joined to npz by file stem)."""
    root = Path(root)
    items: list[dict] = []
    rejects: list[dict] = []
    npz = _trajectories_by_stem(root, (".npz",), rejects)
    referenced: set[str] = set()
    for csv_path in sorted(root.rglob("*.csv")):
        for where, header, row in _read_csv(csv_path, rejects):
            first = header[0]
            others = [c for c in header[1:] if c not in CSV_COLUMNS]
            video_file = row[first].strip()
            try:
                yt, start, end = parse_clip_name(video_file)
            except ValueError as e:
                rejects.append(reject_row("actions", where, "bad_video_file_name", str(e)))
                continue
            clip_id = video_file[:-4] if video_file.endswith(".mp4") else video_file
            referenced.add(clip_id)
            path = npz.get(clip_id)
            if path is None:
                rejects.append(
                    reject_row(
                        "actions",
                        where,
                        "missing_trajectory",
                        f"no {clip_id}.npz under {root}",
                        clip_id,
                    )
                )
                continue
            meta = {c: (row.get(c) or None) for c in CSV_COLUMNS}
            extra = {c: row[c] for c in others if row[c] != ""}
            items.append(
                _item(
                    clip_id,
                    path,
                    "sekai",
                    video_file=video_file,
                    youtube_id=yt,
                    clip_start_frame=start,
                    clip_end_frame=end,
                    extra=json.dumps(extra, ensure_ascii=False) if extra else None,
                    **meta,
                )
            )
    for stem, path in npz.items():
        if stem not in referenced:  # a trajectory with no CSV row still counts as an input
            items.append(_item(stem, path, "sekai", **_clip_fields(stem)))
    return items, rejects


def discover_trajectories(root: str | Path) -> tuple[list[dict], list[dict]]:
    """Items for a folder of bare ``.npz`` / ``.npy`` trajectories; clip id = file stem."""
    paths = sorted(p for p in Path(root).rglob("*") if p.suffix in (".npz", ".npy"))
    return [_item(p.stem, p, "trajectory", **_clip_fields(p.stem)) for p in paths], []


def discover_segments(root: str | Path) -> tuple[list[dict], list[dict]]:
    """Items for Yume segment folders ``Keys_*_Mouse_*/<id>.npy`` with their published label."""
    items, rejects = [], []
    for folder in sorted(
        p for p in Path(root).rglob("*") if p.is_dir() and _SEGMENT_DIR.match(p.name)
    ):
        for npy in sorted(folder.glob("*.npy")):
            txt = npy.with_suffix(".txt")
            try:
                label = parse_segment_txt(txt.read_text(encoding="utf-8")) if txt.exists() else {}
            except (UnicodeDecodeError, OSError) as e:
                rejects.append(
                    reject_row("actions", str(npy), "bad_label_file", f"cannot read {txt}: {e}")
                )
                continue
            keys, mouse = label.get("Keys"), label.get("Mouse")
            if keys not in KEYS or mouse not in MOUSE:
                rejects.append(
                    reject_row(
                        "actions",
                        str(npy),
                        "bad_label_file",
                        f"{txt.name}: keys={keys!r} mouse={mouse!r}",
                    )
                )
                continue
            items.append(
                _item(
                    npy.stem,
                    npy,
                    "yume_segment",
                    **_clip_fields(npy.stem.split("_frames_")[0]),
                    reference_keys=keys,
                    reference_mouse=mouse,
                )
            )
    return items, rejects
