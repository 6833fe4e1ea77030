"""The action-labelling stage: a batch of trajectory items -> segments, clips, rejects.

No Ray here: ``jobs/sekai_actions.py`` runs this stage over Ray Data; tests call it directly.
Each processed batch is written as one set of part files (see ``curation/manifest.py``), so a
killed job resumes from the batches already written.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from curation.actions import (
    LabelConfig,
    action_text,
    codes_from_motion,
    relative_motion,
    reset_features,
    resets_from_features,
    segment_runs,
    segment_speeds_batch,
)
from curation.manifest import (
    config_hash,
    part_name,
    read_parts,
    reject_row,
    rejects_table,
    write_table,
)
from curation.trajectory import (
    TrajectoryError,
    bad_poses,
    check_shape,
    load_trajectory,
    validate_trajectory,
)
from curation.yume_layout import export_segment
from schemas.actions import CLIPS_SCHEMA, CSV_COLUMNS, KEYS, MOUSE, SEGMENTS_SCHEMA
from schemas.common import REJECTS_SCHEMA

STAGE = "actions"


@dataclass(frozen=True)
class ActionStageConfig:
    """Everything that changes the stage's output; its hash is recorded with every row."""

    label: LabelConfig = field(default_factory=LabelConfig)
    fps: float = 30.0  # frame rate of the trajectories (Sekai: 30)
    min_frames: int = 33
    max_frames: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def hash(self) -> str:
        return config_hash(self.to_dict())


@dataclass(frozen=True)
class PartsLayout:
    """Where one output root keeps the stage's in-progress part files."""

    root: Path

    @property
    def dirs(self) -> dict[str, Path]:
        base = self.root / "manifests" / f"{STAGE}.parts"
        return {"segments": base / "segments", "clips": base / "clips", "rejects": base / "rejects"}

    def read(self) -> dict[str, pa.Table]:
        d = self.dirs
        return {
            "segments": read_parts(d["segments"], SEGMENTS_SCHEMA),
            "clips": read_parts(d["clips"], CLIPS_SCHEMA),
            "rejects": read_parts(d["rejects"], REJECTS_SCHEMA),
        }


def _list_array(arrays: list[np.ndarray], value_type: pa.DataType) -> pa.Array:
    """One Arrow list array from numpy arrays without a Python loop over elements."""
    offsets = np.zeros(len(arrays) + 1, dtype=np.int32)
    np.cumsum([len(a) for a in arrays], out=offsets[1:])
    values = np.concatenate(arrays) if arrays else np.array([])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, type=value_type))


class ActionLabelStage:
    """Label a batch of trajectory items and write the batch's part files.

    ``process`` vectorises over the whole batch: all trajectories are concatenated and the
    relative motion of every frame pair is computed in one pass; pairs that straddle two
    files are sliced away.
    """

    def __init__(self, config: ActionStageConfig, root: str | Path, export_yume: str | None = None):
        self.config = config
        self.config_hash = config.hash  # computed once: it is written on every row
        self.parts = PartsLayout(Path(root))
        self.export_yume = Path(export_yume) if export_yume else None

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Ray Data entry point: a batch of items in, one status row per item out."""
        return self.process(batch.to_pylist())

    def process(self, items: list[dict]) -> pa.Table:
        cfg, s = self.config, self.config.label.stride
        rejects: list[dict] = []
        loaded: list[tuple[dict, np.ndarray]] = []
        for it in items:
            try:
                extrinsic, intrinsic = load_trajectory(it["path"])
                c2w = check_shape(extrinsic, intrinsic, min_frames=max(cfg.min_frames, s + 1))
            except TrajectoryError as e:
                rejects.append(reject_row(STAGE, it["path"], e.reason, e.detail, it["clip_id"]))
                continue
            loaded.append((it, c2w))
        loaded = self._drop_bad_poses(loaded, rejects)

        seg_rows: list[dict] = []
        clip_rows: list[dict] = []
        keys_arrays, mouse_arrays, reset_arrays = [], [], []
        if loaded:
            # One pass over every frame of the batch; per-file work below is slicing only.
            big = np.concatenate([c for _, c in loaded])  # (sum N, 4, 4)
            t_rel, r_rel = relative_motion(big, s)
            keys_all, mouse_all = codes_from_motion(t_rel, r_rel, cfg.label)
            off_identity, step, angle = reset_features(big, t_rel, r_rel)
            per_file = []
            offset = 0
            for it, c2w in loaded:
                frames = slice(offset, offset + len(c2w))
                pairs = slice(offset, offset + len(c2w) - s)  # pairs that straddle files dropped
                resets = resets_from_features(
                    off_identity[frames], step[pairs], angle[pairs], cfg.label
                )
                segments = segment_runs(
                    keys_all[pairs],
                    mouse_all[pairs],
                    resets,
                    min_frames=cfg.min_frames,
                    max_frames=cfg.max_frames,
                    stride=s,
                )
                per_file.append((it, c2w, offset, pairs, resets, segments))
                offset += len(c2w)
            starts = np.array([o + g.start for _, _, o, _, _, segs in per_file for g in segs], int)
            ends = np.array([o + g.end for _, _, o, _, _, segs in per_file for g in segs], int)
            speeds = iter(segment_speeds_batch(big, starts, ends, cfg.fps).tolist())
            for it, c2w, _, pairs, resets, segments in per_file:
                for i, seg in enumerate(segments):
                    seg_rows.append(self._segment_row(it["clip_id"], i, seg, tuple(next(speeds))))
                    if self.export_yume:
                        export_segment(
                            self.export_yume,
                            it["clip_id"],
                            c2w,
                            seg.start,
                            seg.end,
                            KEYS[seg.keys],
                            MOUSE[seg.mouse],
                        )
                keys_arrays.append(keys_all[pairs])
                mouse_arrays.append(mouse_all[pairs])
                reset_arrays.append(resets.astype(np.int32))
                clip_rows.append(self._clip_row(it, len(c2w), len(segments)))

        self._write_part(
            items, seg_rows, clip_rows, keys_arrays, mouse_arrays, reset_arrays, rejects
        )
        accepted = {r["clip_id"]: r["num_segments"] for r in clip_rows}
        return pa.table(
            {
                "clip_id": [it["clip_id"] for it in items],
                "accepted": [it["clip_id"] in accepted for it in items],
                "segments": [accepted.get(it["clip_id"], 0) for it in items],
            }
        )

    @staticmethod
    def _drop_bad_poses(
        loaded: list[tuple[dict, np.ndarray]], rejects: list[dict]
    ) -> list[tuple[dict, np.ndarray]]:
        """Check every pose of the batch at once; files with a bad pose become rejects.

        Only a file that fails is validated again on its own, for the precise reason.
        """
        if not loaded:
            return loaded
        lengths = np.array([len(c) for _, c in loaded])
        bad = bad_poses(np.concatenate([c for _, c in loaded]))
        bad_file = np.logical_or.reduceat(bad, np.concatenate([[0], np.cumsum(lengths)[:-1]]))
        kept = []
        for (it, c2w), is_bad in zip(loaded, bad_file, strict=True):
            if not is_bad:
                kept.append((it, c2w))
                continue
            try:
                validate_trajectory(c2w)
            except TrajectoryError as e:
                rejects.append(reject_row(STAGE, it["path"], e.reason, e.detail, it["clip_id"]))
        return kept

    def _segment_row(self, clip_id: str, index: int, seg, speeds: tuple) -> dict:
        keys, mouse = KEYS[seg.keys], MOUSE[seg.mouse]
        return {
            "clip_id": clip_id,
            "segment_index": index,
            "start_frame": seg.start,
            "end_frame": seg.end,
            "num_frames": seg.num_frames,
            "duration_s": seg.num_frames / self.config.fps,
            "keys": keys,
            "mouse": mouse,
            "distance_speed": speeds[0],
            "turn_speed": speeds[1],
            "view_rotation_speed": speeds[2],
            "text_yume": action_text(keys, mouse, "yume"),
            "text_yume_speed": action_text(keys, mouse, "yume", speeds),
            "text_yume5b": action_text(keys, mouse, "yume5b"),
            "text_yume5b_speed": action_text(keys, mouse, "yume5b", speeds),
            "config_hash": self.config_hash,
        }

    def _clip_row(self, it: dict, num_frames: int, num_segments: int) -> dict:
        row = {
            k: it.get(k)
            for k in (
                "clip_id",
                "video_file",
                "youtube_id",
                "clip_start_frame",
                "clip_end_frame",
                "extra",
                "reference_keys",
                "reference_mouse",
                *CSV_COLUMNS,
            )
        }
        row.update(
            source_path=it["path"],
            num_frames=num_frames,
            fps=self.config.fps,
            stride=self.config.label.stride,
            num_segments=num_segments,
            config_hash=self.config_hash,
        )
        return row

    def _write_part(
        self, items, seg_rows, clip_rows, keys_arrays, mouse_arrays, reset_arrays, rejects
    ):
        """Write rejects and segments first and the clips part last: a clip counts as done
        only once its clips row exists, so a kill between the writes redoes the batch."""
        name = part_name(it["clip_id"] for it in items)
        d = self.parts.dirs
        write_table(rejects_table(rejects), d["rejects"] / name, REJECTS_SCHEMA)
        seg = pa.Table.from_pylist(seg_rows, schema=SEGMENTS_SCHEMA)
        write_table(seg, d["segments"] / name, SEGMENTS_SCHEMA)
        scalar = [f.name for f in CLIPS_SCHEMA if f.name not in ("keys", "mouse", "resets")]
        clips = pa.Table.from_pylist(
            clip_rows, schema=pa.schema([CLIPS_SCHEMA.field(n) for n in scalar])
        )
        clips = (
            clips.append_column("keys", _list_array(keys_arrays, pa.uint8()))
            .append_column("mouse", _list_array(mouse_arrays, pa.uint8()))
            .append_column("resets", _list_array(reset_arrays, pa.int32()))
        )
        write_table(clips, d["clips"] / name, CLIPS_SCHEMA)


def done_clip_ids(parts: dict[str, pa.Table]) -> set[str]:
    """Clip ids already finished: accepted (a clips row) or rejected by the stage."""
    ids = set(parts["clips"].column("clip_id").to_pylist())
    ids.update(x for x in parts["rejects"].column("clip_id").to_pylist() if x is not None)
    return ids


def stale_config(parts: dict[str, pa.Table], expected_hash: str) -> set[str]:
    """Config hashes in existing parts that differ from this run's (resuming would mix them)."""
    found = set(parts["clips"].column("config_hash").to_pylist())
    found.update(parts["segments"].column("config_hash").to_pylist())
    return found - {expected_hash}


def consolidate(
    root: str | Path, discovery_rejects: list[dict], provenance: dict
) -> dict[str, pa.Table]:
    """Merge all parts into the final manifests, each written atomically and validated.

    Clips are unique by id (a batch redone after a kill rewrites the same rows); segments
    are kept only for accepted clips and deduplicated by (clip_id, segment_index).
    """
    root = Path(root)
    parts = PartsLayout(root).read()
    clips = _unique(parts["clips"], ["clip_id"])
    accepted = pa.array(clips.column("clip_id").to_pylist())
    segments = parts["segments"].filter(pc.is_in(parts["segments"]["clip_id"], accepted))
    segments = _unique(segments, ["clip_id", "segment_index"])
    rejected = parts["rejects"].filter(pc.invert(pc.is_in(parts["rejects"]["clip_id"], accepted)))
    rejects = pa.concat_tables([rejects_table(discovery_rejects), _unique(rejected, ["input"])])
    manifests = root / "manifests"
    return {
        "segments": write_table(
            segments, manifests / f"{STAGE}.parquet", SEGMENTS_SCHEMA, provenance
        ),
        "clips": write_table(clips, manifests / "action_clips.parquet", CLIPS_SCHEMA, provenance),
        "rejects": write_table(
            rejects, manifests / f"{STAGE}.rejects.parquet", REJECTS_SCHEMA, provenance
        ),
    }


def _unique(table: pa.Table, keys: list[str]) -> pa.Table:
    """First row of each key, sorted by key."""
    if table.num_rows == 0:
        return table
    idx = table.append_column("_row", pa.array(np.arange(table.num_rows)))
    first = idx.group_by(keys, use_threads=False).aggregate([("_row", "min")])
    rows = np.sort(first.column("_row_min").to_numpy())
    return table.take(rows).sort_by([(k, "ascending") for k in keys])
