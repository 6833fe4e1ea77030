"""The actions stage: Sekai camera trajectories -> keyboard/mouse action segments.

Inputs: Sekai releases (annotation CSVs + ``.npz`` trajectories), folders of bare
trajectories, or Yume segment folders (``curation/sekai.py`` finds them). Outputs:
``manifests/actions.parquet`` (one row per segment), ``manifests/action_clips.parquet`` (per
clip: token codes per frame pair, resets, CSV metadata) and the report's plots.

``process`` vectorises over the whole batch: every trajectory is concatenated and the
relative motion of every frame pair is computed in one pass; pairs that straddle two files
are sliced away.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from curation.actions import (
    EULER_SEQUENCES,
    LabelConfig,
    action_text,
    codes_from_motion,
    relative_motion,
    reset_features,
    resets_from_features,
    segment_runs,
    segment_speeds_batch,
)
from curation.config import option
from curation.manifest import reject_row
from curation.reports import heatmap, histogram, save_figure
from curation.sekai import discover_segments, discover_sekai, discover_trajectories
from curation.stages.base import Outcome, Resources, Result, Stage, unexpected
from curation.trajectory import (
    TrajectoryError,
    bad_poses,
    check_shape,
    load_trajectory,
    validate_trajectory,
)
from curation.yume_layout import export_name_problem, export_segment
from schemas.actions import CLIPS_SCHEMA, CSV_COLUMNS, KEYS, MOUSE, SEGMENTS_SCHEMA


@dataclass(frozen=True)
class ActionsConfig:
    """Inputs and labelling options; the labelling ones are hashed into every row."""

    sekai: list[Path] = option(
        factory=list,
        help="Sekai release folder: annotation CSV(s) + trajectory .npz files. Repeatable.",
        output=False,
        path=True,
    )
    trajectories: list[Path] = option(
        factory=list,
        help="Folder of bare .npz/.npy (N,4,4) trajectories; clip id = file stem. Repeatable.",
        output=False,
        path=True,
    )
    segments: list[Path] = option(
        factory=list,
        help="Yume segment folders (Keys_*_Mouse_*/<id>.npy + .txt). Repeatable.",
        output=False,
        path=True,
    )
    translation_threshold: float = option(
        1e-4, "Per-frame camera translation that counts as a key press."
    )
    rotation_threshold: float = option(
        1e-3, "Per-frame rotation (radians) that counts as a mouse move."
    )
    stride: int = option(1, "Label frame i against frame i+stride (thresholds scale with it).")
    euler: str = option(
        "xyz", "scipy Euler sequence for the mouse angles (lower case: extrinsic).",
        choices=EULER_SEQUENCES,
    )  # fmt: skip
    fps: float = option(30.0, "Trajectory frame rate (Sekai: 30).")
    min_frames: int = option(33, "Shortest segment kept, in frames.")
    max_frames: int = option(0, "Split runs longer than this many frames (0: never).")
    max_trajectory_bytes: int = option(
        512 * 2**20,
        "Refuse a trajectory file, or an array in it, of more bytes than this (checked "
        "before reading: a hostile .npy header or a zip bomb is a reject, not out-of-memory).",
    )
    export_yume: Path | None = option(
        None,
        "Also write segments in Yume's Keys_X_Mouse_Y/<id>.npy+.txt layout here.",
        output=False,
        path=True,
    )

    def __post_init__(self) -> None:
        if self.stride < 1 or self.min_frames < 2 or self.max_frames < 0 or self.fps <= 0:
            raise ValueError("stride >= 1, min_frames >= 2, max_frames >= 0 and fps > 0")
        limits = (self.fps, self.translation_threshold, self.rotation_threshold)
        if not all(math.isfinite(v) for v in limits) or self.max_trajectory_bytes < 1:
            raise ValueError("fps and thresholds must be finite, max_trajectory_bytes >= 1")

    @property
    def label(self) -> LabelConfig:
        return LabelConfig(
            translation_threshold=self.translation_threshold,
            rotation_threshold=self.rotation_threshold,
            stride=self.stride,
            euler=self.euler,
        )


def _list_array(arrays: list[np.ndarray], value_type: pa.DataType) -> pa.Array:
    """One Arrow list array from numpy arrays without a Python loop over elements."""
    offsets = np.zeros(len(arrays) + 1, dtype=np.int32)
    np.cumsum([len(a) for a in arrays], out=offsets[1:])
    values = np.concatenate(arrays) if arrays else np.array([])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, type=value_type))


class ActionsStage(Stage[ActionsConfig]):
    """Label camera trajectories with keyboard/mouse action tokens and cut action segments.

    Writes manifests/actions.parquet (one row per segment), manifests/action_clips.parquet
    (per-clip token arrays), manifests/actions.rejects.parquet and reports/actions.json with
    PNG plots. Rerunning on the same --root resumes. Exit code: 0 when every input was
    accepted, 3 when the job finished but rejected some inputs, 1 on a fatal error.
    """

    name = "actions"
    config_cls = ActionsConfig
    # Plain tasks, not an actor pool: no model to load, and tasks reuse started workers.
    resources = Resources(cpus=1, batch_size=256)
    tables = {"actions": SEGMENTS_SCHEMA, "action_clips": CLIPS_SCHEMA}
    # a clip is its trajectory file and its CSV row: an edited caption redoes the clip
    version_fields = ("video_file", "extra", *CSV_COLUMNS)
    sort_by = {"actions": ["clip_id", "segment_index"], "action_clips": ["clip_id"]}

    def describe_inputs(self) -> str:
        c = self.config
        folders = [*c.sekai, *c.trajectories, *c.segments]
        return ", ".join(map(str, folders)) or "give --sekai, --trajectories or --segments"

    def provenance_extra(self) -> dict:
        c = self.config
        return {"inputs": [str(p) for p in (*c.sekai, *c.trajectories, *c.segments)]}

    def discover(self) -> Iterator[dict]:
        c = self.config
        for finder, folders in (
            (discover_sekai, c.sekai),
            (discover_trajectories, c.trajectories),
            (discover_segments, c.segments),
        ):
            for folder in folders:
                if not Path(folder).is_dir():
                    raise FileNotFoundError(f"input folder {folder} does not exist")
                try:
                    found, bad = finder(folder)
                except Exception as e:  # a finder's bug must not hide the other folders
                    found = []
                    bad = [reject_row("actions", str(folder), "unexpected_error", repr(e)[:300])]
                for it in found:
                    yield {**it, "key": it["clip_id"], "input": it["path"]}
                for r in bad:
                    yield {
                        "key": r["key"] or r["input"],
                        "input": r["input"],
                        "reject": (r["reason"], r["detail"]),
                    }

    def process(self, batch: list[dict]) -> Result:
        cfg, s = self.config, self.config.stride
        label = cfg.label
        outcomes: dict[str, Outcome] = {}
        loaded: list[tuple[dict, np.ndarray]] = []
        for it in batch:
            try:
                extrinsic, intrinsic = load_trajectory(it["path"], cfg.max_trajectory_bytes)
                c2w = check_shape(extrinsic, intrinsic, min_frames=max(cfg.min_frames, s + 1))
            except TrajectoryError as e:
                outcomes[it["key"]] = Outcome.rejected(it, e.reason, e.detail)
                continue
            except Exception as e:  # an odd file must not end the batch
                outcomes[it["key"]] = unexpected(it, e)
                continue
            loaded.append((it, c2w))
        loaded = self._drop_bad_poses(loaded, outcomes)

        seg_rows: list[dict] = []
        clip_rows: list[dict] = []
        keys_arrays, mouse_arrays, reset_arrays = [], [], []
        if loaded:
            # One pass over every frame of the batch; per-file work below is slicing only.
            big = np.concatenate([c for _, c in loaded])  # (sum N, 4, 4)
            with np.errstate(over="ignore", invalid="ignore"):  # overflow: rejected below
                t_rel, r_rel = relative_motion(big, s)
                keys_all, mouse_all = codes_from_motion(t_rel, r_rel, label)
                off_identity, step, angle = reset_features(big, t_rel, r_rel)
            per_file = []
            offset = 0
            for it, c2w in loaded:
                frames = slice(offset, offset + len(c2w))
                pairs = slice(offset, offset + len(c2w) - s)  # pairs that straddle files dropped
                resets = resets_from_features(
                    off_identity[frames], step[pairs], angle[pairs], label
                )
                segments = segment_runs(
                    keys_all[pairs],
                    mouse_all[pairs],
                    resets,
                    min_frames=cfg.min_frames,
                    max_frames=cfg.max_frames or None,
                    stride=s,
                )
                per_file.append((it, c2w, offset, pairs, resets, segments))
                offset += len(c2w)
            starts = np.array([o + g.start for _, _, o, _, _, segs in per_file for g in segs], int)
            ends = np.array([o + g.end for _, _, o, _, _, segs in per_file for g in segs], int)
            speeds = segment_speeds_batch(big, starts, ends, cfg.fps)  # each segment on its own
            motion_ok = np.isfinite(t_rel).all(axis=1) & np.isfinite(r_rel).all(axis=(1, 2))
            first = 0
            for it, c2w, _, pairs, resets, segments in per_file:
                clip_speeds = speeds[first : first + len(segments)]
                first += len(segments)
                problem = self._clip_problem(it, c2w, motion_ok[pairs], clip_speeds)
                if problem:
                    outcomes[it["key"]] = Outcome.rejected(it, *problem)
                    continue
                for i, seg in enumerate(segments):
                    seg_rows.append(
                        self._segment_row(it["clip_id"], i, seg, tuple(clip_speeds[i].tolist()))
                    )
                    if cfg.export_yume:
                        export_segment(
                            cfg.export_yume,
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
                outcomes[it["key"]] = Outcome.done(it)

        scalar = [f.name for f in CLIPS_SCHEMA if f.name not in ("keys", "mouse", "resets")]
        clips = pa.Table.from_pylist(
            clip_rows, schema=pa.schema([CLIPS_SCHEMA.field(n) for n in scalar])
        )
        clips = (
            clips.append_column("keys", _list_array(keys_arrays, pa.uint8()))
            .append_column("mouse", _list_array(mouse_arrays, pa.uint8()))
            .append_column("resets", _list_array(reset_arrays, pa.int32()))
        )
        return Result(
            [outcomes[it["key"]] for it in batch],
            {
                "actions": pa.Table.from_pylist(seg_rows, schema=SEGMENTS_SCHEMA),
                "action_clips": clips,
            },
        )

    def _clip_problem(
        self, it: dict, c2w: np.ndarray, motion_ok: np.ndarray, speeds: np.ndarray
    ) -> tuple[str, str] | None:
        """Why a loaded clip cannot be written (reason, detail), or None.

        Poses can be finite and rigid yet so large that their differences overflow, or their
        speeds overflow the tables' float32; such a clip would put ``inf``/``NaN`` into speeds
        and texts, so it is refused instead.
        """
        if not motion_ok.all():
            i = int(np.flatnonzero(~motion_ok)[0])
            return "non_finite_values", f"relative motion overflows at frame pair {i}"
        with np.errstate(over="ignore"):
            stored = np.isfinite(speeds.astype(np.float32)).all(axis=1)  # the tables' type
        if not stored.all():
            i = int(np.flatnonzero(~stored)[0])
            return (
                "non_finite_values",
                f"speeds of segment {i} are {speeds[i].tolist()}: not finite as float32",
            )
        if self.config.export_yume:
            return export_name_problem(it["clip_id"], len(c2w))
        return None

    @staticmethod
    def _drop_bad_poses(
        loaded: list[tuple[dict, np.ndarray]], outcomes: dict[str, Outcome]
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
                raise TrajectoryError("bad_pose", "a pose failed the batch check")
            except TrajectoryError as e:
                outcomes[it["key"]] = Outcome.rejected(it, e.reason, e.detail)
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
            stride=self.config.stride,
            num_segments=num_segments,
            config_hash=self.config_hash,
        )
        return row

    def finalize(self, tables: dict[str, pa.Table]) -> dict:
        """Label counts and speeds, and the keys x mouse heat map and length histogram."""
        seg, clips = tables["actions"], tables["action_clips"]
        frames = np.asarray(seg.column("num_frames").to_numpy()) if seg.num_rows else np.zeros(0)
        labels = Counter(
            f"{k} {m}"
            for k, m in zip(
                seg.column("keys").to_pylist(), seg.column("mouse").to_pylist(), strict=True
            )
        )
        counts = np.zeros((len(KEYS), len(MOUSE)))
        for k, m, n in zip(
            seg.column("keys").to_pylist(),
            seg.column("mouse").to_pylist(),
            seg.column("num_frames").to_pylist(),
            strict=True,
        ):
            counts[KEYS.index(k), MOUSE.index(m)] += n
        heat, lengths = (
            self.root.plot(self.name, "keys_mouse"),
            self.root.plot(self.name, "segment_length"),
        )
        save_figure(
            heatmap(
                counts,
                list(KEYS),
                list(MOUSE),
                "Action segments: frames per label",
                "mouse",
                "keys",
                unit=f"trajectory frames ({self.config.fps:g} fps)",
            ),
            heat,
        )
        save_figure(
            histogram(frames, f"Segment length ({len(frames)} segments)",
                      f"trajectory frames ({self.config.fps:g} fps)"),
            lengths,
        )  # fmt: skip
        no_csv = [str(f) for f in self.config.sekai if not any(Path(f).rglob("*.csv"))]
        uncaptioned = clips.column("caption").null_count if clips.num_rows else 0
        notes = []
        if no_csv:
            notes.append(f"no annotation CSV in {', '.join(no_csv)}: those clips get no caption")
        if uncaptioned:
            notes.append(f"{uncaptioned} of {clips.num_rows} clips have no caption (no CSV row): "
                         "their samples train on the action text alone")  # fmt: skip
        return {
            "sekai_folders_without_csv": no_csv,
            "clips_without_caption": uncaptioned,
            "notes": notes,
            "segments": seg.num_rows,
            "clips_without_segments": sum(n == 0 for n in clips.column("num_segments").to_pylist()),
            "segment_frames": {
                "total": int(frames.sum()),
                "mean": float(frames.mean()) if len(frames) else 0.0,
                "min": int(frames.min()) if len(frames) else 0,
                "max": int(frames.max()) if len(frames) else 0,
            },
            "segments_by_label": dict(labels.most_common()),
            "plots": [heat.name, lengths.name],
        }
