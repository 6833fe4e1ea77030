"""The clips stage: one Sekai source clip + its action tokens -> one staged training sample.

Inputs: the actions stage's ``manifests/action_clips.parquet`` and ``actions.parquet`` under
the root, and a folder of source videos. Each clip's video is decoded once (PyAV, in YUV),
re-timed to ``fps``, resized and centre-cropped, encoded as H.264 and staged with its json
and txt under ``clips/<dataset>/``; ``finalize`` packs the staged samples into
``shards/<dataset>/``. Re-timing rules are in ``curation/clips.py``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from curation.clips import csv_meta, retime_segments, retime_tokens, sample_key, write_staged_sample
from curation.config import option
from curation.dataroot import check_name
from curation.provenance import code_version
from curation.shards import write_shards_from_dir
from curation.stages.base import Reject, Resources, Stage
from curation.video import X264_PRESETS, SourceVideo, parse_resolution, transcode
from schemas.actions import CLIPS_SCHEMA, KEYS, MOUSE, SEGMENTS_SCHEMA
from schemas.clips import CLIP_SAMPLES_SCHEMA
from schemas.common import SchemaError
from schemas.sample import SAMPLE_SCHEMA_VERSION, SOURCES, validate_sample


@dataclass(frozen=True)
class ClipsConfig:
    """What decides a sample's bytes, plus where the videos are and how shards are cut."""

    videos: Path = option(
        Path("data/sample-sekai/videos"),
        "Folder of source videos, named as the CSV's videoFile column.",
        output=False,
        path=True,
    )
    dataset: str = option(
        "sekai-real", "Dataset name: clips/<dataset>/ staging, shards/<dataset>/ shards."
    )
    source: str = option(
        "sekai-real", "Sample source label: sekai-real, sekai-game, synthetic or event."
    )
    fps: float = option(16.0, "Output frame rate; frames are re-timed to the nearest.")
    resolution: str = option("544x960", "Output HEIGHTxWIDTH (even), e.g. 704x1280.")
    crf: int = option(23, "libx264 constant rate factor (0-51).")
    preset: str = option("veryfast", "libx264 speed preset.", choices=X264_PRESETS)
    threads: int = option(1, "Decoder/encoder threads per video (0: auto).", output=False)
    frame_tolerance: int = option(
        3, "Accept a trajectory/video frame-count mismatch up to this many frames."
    )
    min_side: int = option(64, "Reject videos whose shorter side has fewer pixels than this.")
    shards: bool = option(True, "Pack the staged samples into shards at the end.", output=False)
    max_samples: int = option(1000, "Samples per shard at most.", output=False)
    max_bytes: int = option(2**30, "Bytes per shard at most.", output=False)

    def __post_init__(self) -> None:
        check_name(self.dataset)
        if self.source not in SOURCES:
            raise ValueError(f"source {self.source!r} is not one of {', '.join(SOURCES)}")
        parse_resolution(self.resolution)
        if self.fps <= 0 or not 0 <= self.crf <= 51 or self.frame_tolerance < 0:
            raise ValueError("fps must be positive, crf in 0..51, frame_tolerance >= 0")
        if self.min_side < 1:
            raise ValueError(f"min_side must be at least 1, got {self.min_side}")

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the output frames."""
        return parse_resolution(self.resolution)


class ClipsStage(Stage[ClipsConfig]):
    """Cut one training sample per Sekai clip: re-timed, resized H.264 + per-frame actions.

    Reads the actions manifests under --root, transcodes each clip's video from --videos,
    stages <key>.mp4/.json/.txt under clips/<dataset>/ and packs them into shards/<dataset>/.
    Writes manifests/clips.parquet, manifests/clips.rejects.parquet and reports/clips.json.
    Rerunning resumes (finished clips are skipped). Exit code: 0 when every clip was
    accepted, 3 when some were rejected, 1 on a fatal error.
    """

    name = "clips"
    config_cls = ClipsConfig
    resources = Resources(cpus=1, actor=True, batch_size=1)
    tables = {"clips": CLIP_SAMPLES_SCHEMA}
    # a clip is made from its actions rows: other thresholds, or a clip the actions stage no
    # longer holds, redo or drop it (and rewrite its shard)
    version_fields = ("clip", "segments")
    drops_missing = True

    @property
    def staging(self) -> Path:
        return self.root.staging(self.config.dataset)

    def owned_outputs(self) -> list[Path]:
        return [self.staging, self.root.shards(self.config.dataset)]

    def describe_inputs(self) -> str:
        return f"no clip rows in {self.root.manifest('action_clips')}"

    def provenance_extra(self) -> dict:
        return {"videos": str(self.config.videos)}

    def discover(self) -> Iterator[dict]:
        """One item per clip row of the actions stage, with its segments."""
        clips_path = self.root.manifest("action_clips")
        if not clips_path.exists():
            raise FileNotFoundError(f"{clips_path} not found: run `yume-data actions` first")
        if not Path(self.config.videos).is_dir():
            raise NotADirectoryError(f"--videos {self.config.videos} is not a folder")
        for tmp in self.staging.glob(".*.tmp"):  # left by a killed run; never a whole sample
            tmp.unlink(missing_ok=True)
        segments: dict[str, list[dict]] = {}
        seg_path = self.root.manifest("actions")
        if seg_path.exists():
            for seg in pq.read_table(seg_path, schema=SEGMENTS_SCHEMA).to_pylist():
                segments.setdefault(seg["clip_id"], []).append(seg)
        for clip in pq.read_table(clips_path, schema=CLIPS_SCHEMA).to_pylist():
            name = clip.get("video_file") or f"{clip['clip_id']}.mp4"
            yield {
                "key": sample_key(clip["clip_id"]),
                "input": str(Path(self.config.videos) / name),
                "clip": clip,
                "segments": segments.get(clip["clip_id"], []),
            }

    def forget(self, keys: set[str]) -> None:
        """Delete the staged files of ``keys``: a redone clip is staged afresh, a dropped one
        is not packed again."""
        if not self.staging.is_dir():
            return
        for path in self.staging.iterdir():
            if path.name.split(".", 1)[0] in keys:
                path.unlink(missing_ok=True)

    def setup(self) -> None:
        self.staging.mkdir(parents=True, exist_ok=True)
        self.code_version = code_version()

    def process_item(self, item: dict) -> dict[str, list[dict]]:
        try:
            meta = self._make_sample(item["clip"], item["segments"], item["key"])
        except SchemaError as e:
            raise Reject("invalid_sample", str(e)) from e
        return {"clips": [self._manifest_row(item, meta)]}

    def video_path(self, clip: dict) -> Path:
        """The clip's source video inside ``videos``; never a path outside it."""
        name = clip.get("video_file") or f"{clip['clip_id']}.mp4"
        if Path(name).name != name or name in ("", ".", "..") or "\\" in name:
            raise Reject("unsafe_path", f"video file name {name!r} is not a plain file name")
        return Path(self.config.videos) / name

    def _make_sample(self, clip: dict, segments: list[dict], key: str) -> dict:
        cfg = self.config
        path = self.video_path(clip)
        src = SourceVideo(path, threads=cfg.threads)  # opened once: checked, then transcoded
        if len(segments) != clip["num_segments"]:  # the actions table lost this clip's rows
            raise Reject(
                "missing_segments",
                f"the clip has {clip['num_segments']} segments, "
                f"{self.root.manifest('actions').name} holds {len(segments)} of them",
            )
        if min(src.width, src.height) < cfg.min_side:
            raise Reject(
                "video_too_small",
                f"{path.name} is {src.width}x{src.height}, under --min-side {cfg.min_side}",
            )
        n_traj = int(clip["num_frames"])
        if abs(src.num_frames - n_traj) > cfg.frame_tolerance:
            longer = "longer" if n_traj > src.num_frames else "shorter"
            raise Reject(
                f"trajectory_{longer}_than_video",
                f"trajectory has {n_traj} frames, video {src.num_frames} "
                f"(tolerance {cfg.frame_tolerance})",
            )
        if abs(src.fps - float(clip["fps"])) > 0.01 * float(clip["fps"]):
            raise Reject(
                "fps_mismatch", f"video at {src.fps:.3f} fps, trajectory at {clip['fps']} fps"
            )
        used = min(n_traj, src.num_frames)
        for seg in segments:
            if seg["end_frame"] > used - 1 + cfg.frame_tolerance or seg["start_frame"] > used - 1:
                where = "video" if seg["end_frame"] > src.num_frames - 1 else "trajectory"
                raise Reject(
                    f"segment_beyond_{where}",
                    f"segment {seg['segment_index']} ends at frame {seg['end_frame']}, "
                    f"the {where} has {src.num_frames if where == 'video' else n_traj} frames",
                )
        clipped = [{**s, "end_frame": min(s["end_frame"], used - 1)} for s in segments]
        video = transcode(
            src,
            out_fps=cfg.fps,
            size=cfg.size,
            crf=cfg.crf,
            preset=cfg.preset,
            threads=cfg.threads,
            max_source_frames=used,
        )
        idx = video.source_indices
        segs = retime_segments(clipped, idx)
        caption = clip.get("caption") or None
        meta_csv = csv_meta(clip)
        generator = meta_csv.get("generator") or None  # demo releases name their renderer
        meta = {
            "schema_version": SAMPLE_SCHEMA_VERSION,
            "key": key,
            "source": cfg.source,
            "tasks": ["t2v", "i2v"],
            "fps": video.fps,
            "frames": video.frames,
            "width": video.width,
            "height": video.height,
            "source_video": path.name,
            "source_fps": src.fps,
            "source_frame_range": [int(idx[0]), int(idx[-1])],
            "keys": retime_tokens(clip["keys"], KEYS, idx),
            "mouse": retime_tokens(clip["mouse"], MOUSE, idx),
            "segments": segs,
            "captions": {"scene": caption, "event": None, "action": None},
            "scores": {},
            "screening": None,
            "meta": meta_csv,
            "provenance": {
                "stage": self.name,
                "code_version": self.code_version,
                "config_hash": self.config_hash,
                "actions_config_hash": clip.get("config_hash"),
                "backend": None,
                "tiny_random": False,
                "generated": generator is not None,
                "generator": generator,
            },
        }
        validate_sample(meta)
        text = caption or (segs[0]["text"] if segs else "")
        write_staged_sample(self.staging, key, video.data, meta, text)
        return meta

    def _manifest_row(self, item: dict, meta: dict) -> dict:
        """The schemas.clips.CLIP_SAMPLES_SCHEMA row of one staged sample."""
        first, last = meta["source_frame_range"]
        mp4 = self.staging / f"{meta['key']}.mp4"
        return {
            "key": meta["key"],
            "clip_id": item["clip"]["clip_id"],
            "dataset": self.config.dataset,
            "source_video": meta["source_video"],
            "source_frames": last + 1,
            "frames": meta["frames"],
            "fps": meta["fps"],
            "width": meta["width"],
            "height": meta["height"],
            "segments": len(meta["segments"]),
            "path": str(mp4.relative_to(self.root.path)),
            "bytes": mp4.stat().st_size,
            "generator": meta["provenance"].get("generator"),
        }

    def finalize(self, tables: dict[str, pa.Table]) -> dict:
        """Pack the staged samples into shards; hours, bytes and generated-video counts."""
        rows = tables["clips"].to_pylist()
        cfg = self.config
        shards = None
        if cfg.shards and self.staging.is_dir():
            shards = write_shards_from_dir(
                self.staging,
                self.root.shards(cfg.dataset),
                cfg.dataset,
                max_samples=cfg.max_samples,
                max_bytes=cfg.max_bytes,
                rejects_path=self.root.rejects(f"shards-{cfg.dataset}"),
                keys=set(tables["clips"].column("key").to_pylist()),
            )
            shards.pop("rejects", None)  # in their own rejects table
        frames = sum(r["frames"] for r in rows)
        generated = dict(Counter(r["generator"] for r in rows if r["generator"]))
        notes = [
            f"{n} samples are generated videos, not real footage ({g})"
            for g, n in generated.items()
        ]
        return {
            "output_frames": frames,
            "output_hours": round(frames / cfg.fps / 3600, 4),
            "output_bytes": sum(r["bytes"] for r in rows),
            "segments": sum(r["segments"] for r in rows),
            # demo renders and other generated videos: never to be mistaken for real footage
            "generated": generated,
            "shards": shards,
            "notes": notes,
        }
