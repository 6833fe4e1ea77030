"""Ray job: Sekai source videos + action tokens -> staged training samples -> shards.

Local:    python -m jobs.clips --videos data/sample-sekai/videos --root ./data
Cluster:  ray job submit --address http://<head>:8265 --working-dir . -- \
              python -m jobs.clips --videos /shared/sekai/videos --root /shared/data
(``yume-data clips`` runs the same function.)

Inputs under the root: ``manifests/action_clips.parquet`` and ``manifests/actions.parquet``
(the sekai-actions job). Outputs: ``clips/<dataset>/<key>.{mp4,json,txt}`` (staging),
``shards/<dataset>/``, ``manifests/clips.parquet``, ``manifests/clips.rejects.parquet``
and ``reports/clips.json``. A rerun skips every clip whose sample json is staged.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from curation.clips import STAGE, ClipsConfig, ClipStage, sample_key
from curation.manifest import atomic_write_json, rejects_table, write_table
from curation.provenance import provenance
from curation.shards import write_shards_from_dir
from jobs.runtime import init_ray
from schemas.actions import CLIPS_SCHEMA, SEGMENTS_SCHEMA
from schemas.clips import CLIP_SAMPLES_SCHEMA
from schemas.common import REJECTS_SCHEMA


@dataclass
class ClipsJob:
    """One run: the stage config plus execution and sharding knobs."""

    config: ClipsConfig
    workers: int | None = None  # parallel videos; default: the cluster's CPUs
    address: str | None = None
    shards: bool = True  # pack the staged samples into shards at the end
    max_samples: int = 1000  # per shard
    max_bytes: int = 2**30  # per shard
    progress: bool = True


class _ClipWorker:
    """The Ray actor around ClipStage: setup once, then one batch per call."""

    def __init__(self, config: ClipsConfig):
        self.stage = ClipStage(config)
        self.stage.setup()

    def __call__(self, batch: dict) -> dict:
        return self.stage.process(batch)


def load_tasks(root: Path) -> list[dict]:
    """One task per clip row: the row and its segments, as plain Python values."""
    manifests = root / "manifests"
    clips_path = manifests / "action_clips.parquet"
    if not clips_path.exists():
        raise FileNotFoundError(f"{clips_path} not found: run `yume-data sekai-actions` first")
    clips = pq.read_table(clips_path, schema=CLIPS_SCHEMA).to_pylist()
    seg_path = manifests / "actions.parquet"
    segments: dict[str, list[dict]] = {}
    if seg_path.exists():
        for seg in pq.read_table(seg_path, schema=SEGMENTS_SCHEMA).to_pylist():
            segments.setdefault(seg["clip_id"], []).append(seg)
    return [{"clip": c, "segments": segments.get(c["clip_id"], [])} for c in clips]


def _process(job: ClipsJob, tasks: list[dict]) -> list[dict]:
    """Run ClipStage over ``tasks`` on Ray, one video per call, with a progress bar."""
    if not tasks:
        return []
    import ray

    init_ray(job.address)
    workers = job.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    ds = ray.data.from_items([{"task": json.dumps(t)} for t in tasks])
    ds = ds.map_batches(
        _ClipWorker,
        fn_constructor_kwargs={"config": job.config},
        batch_size=1,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=min(workers, len(tasks))),
        **ClipStage.resources,
    )
    bar = tqdm(total=len(tasks), desc="clips", unit="video", disable=not job.progress)
    rows = []
    for row in ds.iter_rows():
        rows.append(row)
        bar.update()
    bar.close()
    return rows


def run(job: ClipsJob) -> dict:
    cfg = job.config
    root = Path(cfg.root)
    t0 = time.perf_counter()
    tasks, duplicates = _unique_keys(load_tasks(root))
    stage = ClipStage(cfg)
    stage.setup()
    for tmp in cfg.staging_dir.glob(".*.tmp"):  # left by a killed run; never a whole sample
        tmp.unlink(missing_ok=True)
    # Finished samples (json staged) are recognised here, so a rerun schedules only the rest.
    staged = [stage.finished(sample_key(t["clip"]["clip_id"])) is not None for t in tasks]
    rows = [stage.process_one(t) for t, done in zip(tasks, staged, strict=True) if done]
    rows += _process(job, [t for t, done in zip(tasks, staged, strict=True) if not done])
    rows += duplicates
    status = Counter(r["status"] for r in rows)
    accepted = [r for r in rows if r["status"] in ("done", "skipped")]
    rejects = [
        {
            "stage": STAGE,
            "input": r["input"],
            "clip_id": r["clip_id"],
            "reason": r["reason"],
            "detail": r["detail"],
        }
        for r in rows
        if r["status"] == "rejected"
    ]
    prov = provenance(STAGE, cfg.output_config(), videos=cfg.videos)
    manifests = root / "manifests"
    samples = pa.table(
        {
            f.name: [cfg.dataset if f.name == "dataset" else r[f.name] for r in accepted]
            for f in CLIP_SAMPLES_SCHEMA
        }
    )
    write_table(samples, manifests / f"{STAGE}.parquet", CLIP_SAMPLES_SCHEMA, prov)
    write_table(
        rejects_table(rejects), manifests / f"{STAGE}.rejects.parquet", REJECTS_SCHEMA, prov
    )
    shards = None
    if job.shards:
        shards = write_shards_from_dir(
            cfg.staging_dir,
            root / "shards" / cfg.dataset,
            cfg.dataset,
            max_samples=job.max_samples,
            max_bytes=job.max_bytes,
            rejects_path=manifests / f"shards.{cfg.dataset}.rejects.parquet",
        )
        shards.pop("rejects", None)  # in their own rejects table
    frames = sum(r["frames"] for r in accepted)
    summary = {
        "stage": STAGE,
        "inputs": len(tasks) + len(duplicates),
        "accepted": len(accepted),
        "written": status["done"],
        "skipped_existing": status["skipped"],
        "rejected": len(rejects),
        "rejects_by_reason": dict(Counter(r["reason"] for r in rejects)),
        "output_frames": frames,
        "output_hours": round(frames / cfg.fps / 3600, 4),
        "output_bytes": sum(r["bytes"] for r in accepted),
        "segments": sum(r["segments"] for r in accepted),
        # demo renders and other generated videos: never to be mistaken for real footage
        "generated": dict(Counter(r["generator"] for r in accepted if r["generator"])),
        "shards": shards,
        "wall_s": round(time.perf_counter() - t0, 2),
        "config": asdict(cfg),
        "provenance": prov,
    }
    atomic_write_json(root / "reports" / f"{STAGE}.json", summary)
    return summary


def _unique_keys(tasks: list[dict]) -> tuple[list[dict], list[dict]]:
    """Keep the first task per sample key; later ones become ``duplicate_clip`` rejects."""
    seen, unique, rejected = set(), [], []
    for t in tasks:
        clip_id = t["clip"]["clip_id"]
        key = sample_key(clip_id)
        if key in seen:
            rejected.append(
                {
                    "status": "rejected",
                    "key": key,
                    "clip_id": clip_id,
                    "input": t["clip"].get("video_file") or clip_id,
                    "reason": "duplicate_clip",
                    "detail": f"clip id {clip_id!r} appears more than once in action_clips",
                }
            )
        else:
            seen.add(key)
            unique.append(t)
    return unique, rejected


def main(argv: list[str] | None = None) -> None:
    """``python -m jobs.clips``: the same options as ``yume-data clips``."""
    from jobs.cli import app

    app(["clips", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    main()
