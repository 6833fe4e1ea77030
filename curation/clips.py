"""The clips stage: one Sekai source clip + its action tokens -> one staged training sample.

A sample is a whole source clip re-timed to the dataset fps (default 16) and resized +
centre-cropped (default 544x960), with a keys and a mouse token per output frame and the
action segments re-timed to output frames, so the trainer can take any prediction window
with all the history before it.

Re-timing: output frame ``j`` shows source frame ``i_j`` (``curation.video.resample_indices``,
nearest frame). Its tokens are the label of trajectory pair ``min(i_j // stride, pairs - 1)``,
i.e. the motion from frame ``i_j`` to the next one. A segment covering trajectory frames
``[a, b]`` covers the output frames whose source frame lies in ``[a, b]``; segments shorter
than two output frames are dropped.

Staging contract with the shard writer (``curation.shards.write_shards_from_dir``): each
sample is written as ``<key>.mp4``, ``<key>.txt`` and last ``<key>.json`` under
``<root>/clips/<dataset>/``, each atomically, so a sample is complete iff its json exists.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from curation.manifest import atomic_write_bytes, config_hash
from curation.provenance import code_version
from curation.video import SourceVideo, VideoError, transcode
from schemas.actions import CSV_COLUMNS, KEYS, MOUSE
from schemas.common import SchemaError
from schemas.sample import SAMPLE_SCHEMA_VERSION, SOURCES, validate_sample

STAGE = "clips"
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,100}$")


@dataclass(frozen=True)
class ClipsConfig:
    """Everything that decides a sample's bytes, plus where inputs and outputs live."""

    videos: str  # folder of source videos, named by the CSV's videoFile
    root: str  # data root: clips/<dataset>/ staging lives under it
    dataset: str = "sekai-real"
    source: str = "sekai-real"  # schemas.sample.SOURCES
    fps: float = 16.0
    height: int = 544
    width: int = 960
    crf: int = 23
    preset: str = "veryfast"
    threads: int = 1  # decoder and encoder threads per video
    frame_tolerance: int = 3  # allowed |trajectory frames - video frames|

    def __post_init__(self) -> None:
        if not _NAME_RE.match(self.dataset):
            raise ValueError(f"dataset name {self.dataset!r}: use letters, digits, '_' or '-'")
        if self.source not in SOURCES:
            raise ValueError(f"source {self.source!r} is not one of {SOURCES}")
        if self.height % 2 or self.width % 2 or self.height <= 0 or self.width <= 0:
            raise ValueError(f"resolution {self.height}x{self.width} must be positive and even")
        if self.fps <= 0:
            raise ValueError(f"fps must be positive, got {self.fps}")

    @property
    def staging_dir(self) -> Path:
        return Path(self.root) / "clips" / self.dataset

    def output_config(self) -> dict:
        """The knobs that change a sample's content (hashed into its provenance)."""
        d = asdict(self)
        return {
            k: d[k]
            for k in (
                "dataset",
                "source",
                "fps",
                "height",
                "width",
                "crf",
                "preset",
                "frame_tolerance",
            )
        }


class StaleSampleError(RuntimeError):
    """The staging folder holds samples made with a different output config."""


class ClipReject(Exception):
    """An input the stage does not accept; becomes a rejects row."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


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
    codes: list[int], vocab: tuple[str, ...], source_indices: np.ndarray, stride: int = 1
) -> list[str]:
    """Token string of every output frame: the label of the pair starting at its source frame."""
    if not len(codes):
        raise ClipReject("trajectory_too_short", "no frame pairs to take tokens from")
    if max(codes) >= len(vocab):
        raise ClipReject("bad_tokens", f"token code {max(codes)} outside the {len(vocab)} labels")
    pair = np.minimum(np.asarray(source_indices) // max(stride, 1), len(codes) - 1)
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


def _csv_meta(clip: dict) -> dict:
    """The CSV's columns (caption and the scene tags, then any extra ones) and the clip id."""
    meta = {"clip_id": clip["clip_id"], "videoFile": clip.get("video_file")}
    meta.update({c: clip.get(c) for c in CSV_COLUMNS})
    if clip.get("extra"):
        extra = json.loads(clip["extra"])
        meta.update({k: v for k, v in extra.items() if k not in meta})
    return meta


class ClipStage:
    """Cut one sample per clip row. ``setup()`` once per worker, then ``process(batch)``.

    A batch is ``{"task": [json str, ...]}``; each task holds ``clip`` (a row of
    schemas.actions.CLIPS_SCHEMA) and ``segments`` (its SEGMENTS_SCHEMA rows). The result
    has one row per task: status ``done`` / ``skipped`` / ``rejected`` and the manifest or
    rejects fields.
    """

    resources = {"num_cpus": 1}

    def __init__(self, config: ClipsConfig):
        self.config = config

    def setup(self) -> None:
        self.config.staging_dir.mkdir(parents=True, exist_ok=True)
        self.code_version = code_version()
        self.config_hash = config_hash(self.config.output_config())

    def process(self, batch: dict) -> dict:
        rows = [self.process_one(json.loads(str(t))) for t in batch["task"]]
        return {k: [r.get(k) for r in rows] for k in RESULT_FIELDS}

    def process_one(self, task: dict) -> dict:
        clip = task["clip"]
        key = sample_key(clip["clip_id"])
        base = {
            "key": key,
            "clip_id": clip["clip_id"],
            "input": clip.get("video_file") or clip["clip_id"],
        }
        done = self.finished(key)
        if done is not None:
            return {**base, **manifest_row(done, self.config), "status": "skipped"}
        try:
            meta = self._make_sample(clip, task["segments"], key)
        except (ClipReject, VideoError) as e:
            return {**base, "status": "rejected", "reason": e.reason, "detail": e.detail}
        except SchemaError as e:
            return {**base, "status": "rejected", "reason": "invalid_sample", "detail": str(e)}
        except Exception as e:  # one odd input must not end the job; it is recorded instead
            detail = f"{type(e).__name__}: {e}"
            return {**base, "status": "rejected", "reason": "unexpected_error", "detail": detail}
        return {**base, **manifest_row(meta, self.config), "status": "done"}

    def finished(self, key: str) -> dict | None:
        """The staged metadata of ``key`` when its sample is complete, else None.

        Raises StaleSampleError when it was made with another output config: resuming
        would mix two configurations in one dataset.
        """
        json_path = self.config.staging_dir / f"{key}.json"
        if not (json_path.exists() and json_path.with_suffix(".mp4").exists()):
            return None
        meta = json.loads(json_path.read_bytes())
        if meta["provenance"]["config_hash"] != self.config_hash:
            raise StaleSampleError(
                f"{json_path} was made with config {meta['provenance']['config_hash']}, "
                f"this run is {self.config_hash}: use another --dataset or remove "
                f"{self.config.staging_dir}"
            )
        return meta

    def video_path(self, clip: dict) -> Path:
        """The clip's source video inside ``videos``; never a path outside it."""
        name = clip.get("video_file") or f"{clip['clip_id']}.mp4"
        if Path(name).name != name or name in ("", ".", "..") or "\\" in name:
            raise ClipReject("unsafe_path", f"video file name {name!r} is not a plain file name")
        return Path(self.config.videos) / name

    def _make_sample(self, clip: dict, segments: list[dict], key: str) -> dict:
        cfg = self.config
        path = self.video_path(clip)
        src = SourceVideo(path, threads=cfg.threads)  # opened once: checked, then transcoded
        n_traj = int(clip["num_frames"])
        if abs(src.num_frames - n_traj) > cfg.frame_tolerance:
            longer = "longer" if n_traj > src.num_frames else "shorter"
            raise ClipReject(
                f"trajectory_{longer}_than_video",
                f"trajectory has {n_traj} frames, video {src.num_frames} (tolerance {cfg.frame_tolerance})",
            )
        if abs(src.fps - float(clip["fps"])) > 0.01 * float(clip["fps"]):
            raise ClipReject(
                "fps_mismatch", f"video at {src.fps:.3f} fps, trajectory at {clip['fps']} fps"
            )
        used = min(n_traj, src.num_frames)
        for seg in segments:
            if seg["end_frame"] > used - 1 + cfg.frame_tolerance or seg["start_frame"] > used - 1:
                where = "video" if seg["end_frame"] > src.num_frames - 1 else "trajectory"
                raise ClipReject(
                    f"segment_beyond_{where}",
                    f"segment {seg['segment_index']} ends at frame {seg['end_frame']}, "
                    f"the {where} has {src.num_frames if where == 'video' else n_traj} frames",
                )
        clipped = [{**s, "end_frame": min(s["end_frame"], used - 1)} for s in segments]
        stride = int(clip.get("stride") or 1)
        video = transcode(
            src,
            out_fps=cfg.fps,
            size=(cfg.height, cfg.width),
            crf=cfg.crf,
            preset=cfg.preset,
            threads=cfg.threads,
            max_source_frames=used,
        )
        idx = video.source_indices
        segs = retime_segments(clipped, idx)
        caption = clip.get("caption") or None
        csv_meta = _csv_meta(clip)
        generator = csv_meta.get("generator") or None  # demo releases name their renderer
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
            "keys": retime_tokens(clip["keys"], KEYS, idx, stride),
            "mouse": retime_tokens(clip["mouse"], MOUSE, idx, stride),
            "segments": segs,
            "captions": {"scene": caption, "event": None, "action": None},
            "scores": {},
            "screening": None,
            "meta": csv_meta,
            "provenance": {
                "stage": STAGE,
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
        write_staged_sample(cfg.staging_dir, key, video.data, meta, text)
        return meta


# The columns ClipStage.process returns: status plus manifest and rejects fields.
RESULT_FIELDS = (
    "status",
    "key",
    "clip_id",
    "input",
    "reason",
    "detail",
    "source_video",
    "source_frames",
    "frames",
    "fps",
    "width",
    "height",
    "segments",
    "path",
    "bytes",
    "generator",
)


def manifest_row(meta: dict, config: ClipsConfig) -> dict:
    """The schemas.clips.CLIP_SAMPLES_SCHEMA fields of one staged sample."""
    first, last = meta["source_frame_range"]
    mp4 = config.staging_dir / f"{meta['key']}.mp4"
    return {
        "source_video": meta["source_video"],
        "source_frames": last + 1,
        "frames": meta["frames"],
        "fps": meta["fps"],
        "width": meta["width"],
        "height": meta["height"],
        "segments": len(meta["segments"]),
        "path": str(mp4.relative_to(config.root)),
        "bytes": mp4.stat().st_size,
        "generator": meta["provenance"].get("generator"),
    }


def write_staged_sample(staging_dir: Path, key: str, mp4: bytes, meta: dict, text: str) -> None:
    """Stage ``<key>.mp4``, ``<key>.txt`` and, last, ``<key>.json``, each atomically."""
    atomic_write_bytes(staging_dir / f"{key}.mp4", mp4)
    atomic_write_bytes(staging_dir / f"{key}.txt", text.encode())
    atomic_write_bytes(
        staging_dir / f"{key}.json", json.dumps(meta, ensure_ascii=False, indent=1).encode()
    )
