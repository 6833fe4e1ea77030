"""Ray job: Sekai camera trajectories -> keyboard/mouse action segments.

Local:    python -m jobs.sekai_actions --sekai /data/sekai-real-walking-hq --out ./data
Cluster:  ray job submit --address http://<head>:8265 --working-dir . -- \
              python -m jobs.sekai_actions --sekai /shared/sekai --out /shared/data
(``yume-data sekai-actions`` runs the same function.)
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from curation.action_stage import (
    STAGE,
    ActionLabelStage,
    ActionStageConfig,
    PartsLayout,
    consolidate,
    done_clip_ids,
    stale_config,
)
from curation.manifest import atomic_write_json
from curation.provenance import provenance
from curation.reports import heatmap, histogram, save_figure
from curation.sekai import dedupe, discover_segments, discover_sekai, discover_trajectories
from jobs.runtime import init_ray
from schemas.actions import KEYS, MOUSE


@dataclass
class ActionsJob:
    """Inputs, output root and execution knobs of one run."""

    out: Path
    sekai: list[Path] = field(default_factory=list)
    trajectories: list[Path] = field(default_factory=list)
    segments: list[Path] = field(default_factory=list)
    stage: ActionStageConfig = field(default_factory=ActionStageConfig)
    export_yume: Path | None = None
    batch_size: int = 256
    address: str | None = None
    num_cpus: int | None = None
    overwrite: bool = False
    progress: bool = True


class StaleOutputError(RuntimeError):
    """The output root holds results of a different configuration."""


def discover(job: ActionsJob) -> tuple[list[dict], list[dict]]:
    """All input items of the job, and the inputs rejected before labelling."""
    items, rejects = [], []
    for finder, roots in (
        (discover_sekai, job.sekai),
        (discover_trajectories, job.trajectories),
        (discover_segments, job.segments),
    ):
        for root in roots:
            if not Path(root).is_dir():
                raise FileNotFoundError(f"input folder {root} does not exist")
            found, bad = finder(root)
            items += found
            rejects += bad
    items, dups = dedupe(items)
    return items, rejects + dups


def run(job: ActionsJob) -> dict:
    """Run the job to completion (resuming earlier partial runs) and return its summary."""
    t0 = time.perf_counter()
    parts_layout = PartsLayout(job.out)
    if job.overwrite:
        shutil.rmtree(job.out / "manifests" / f"{STAGE}.parts", ignore_errors=True)
    items, discovery_rejects = discover(job)
    parts = parts_layout.read()
    stale = stale_config(parts, job.stage.hash)
    if stale:
        raise StaleOutputError(
            f"{job.out} holds '{STAGE}' results made with config {sorted(stale)}, this run is "
            f"{job.stage.hash}; use another --out or --overwrite"
        )
    done = done_clip_ids(parts)
    todo = [it for it in items if it["clip_id"] not in done]

    if todo:
        init_ray(job.address, job.num_cpus)
        _label_on_ray(job, todo)

    inputs = [str(p) for p in job.sekai + job.trajectories + job.segments]
    prov = provenance(STAGE, job.stage.to_dict(), inputs=inputs)
    tables = consolidate(job.out, discovery_rejects, prov)
    summary = summarize(tables, len(items) + len(discovery_rejects), prov)
    summary.update(
        resumed_done=len(items) - len(todo),
        processed_this_run=len(todo),
        elapsed_s=round(time.perf_counter() - t0, 3),
    )
    write_report(job.out, tables, summary)
    return summary


def _label_on_ray(job: ActionsJob, todo: list[dict]) -> None:
    """Label ``todo`` in parallel batches; each batch writes its own part files."""
    import ray

    num_blocks = max(1, math.ceil(len(todo) / job.batch_size))
    # Plain tasks, not an actor pool: the stage loads no model, and tasks reuse Ray's
    # already-started workers instead of paying an actor start-up per worker.
    ds = ray.data.from_items(todo, override_num_blocks=num_blocks).map_batches(
        _label_batch,
        fn_kwargs={
            "config": job.stage,
            "root": str(job.out),
            "export_yume": str(job.export_yume) if job.export_yume else None,
        },
        batch_size=job.batch_size,
        batch_format="pyarrow",
        num_cpus=1,
    )
    with tqdm(total=len(todo), desc="sekai-actions", unit="clip", disable=not job.progress) as bar:
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            bar.update(batch.num_rows)


def _label_batch(
    batch: pa.Table, config: ActionStageConfig, root: str, export_yume: str | None
) -> pa.Table:
    return ActionLabelStage(config, root, export_yume)(batch)


def summarize(tables: dict[str, pa.Table], inputs: int, prov: dict) -> dict:
    """Counts, label distribution and speeds of the consolidated outputs."""
    seg, clips, rej = tables["segments"], tables["clips"], tables["rejects"]
    reasons: dict[str, int] = {}
    for r in rej.column("reason").to_pylist():
        reasons[r] = reasons.get(r, 0) + 1
    frames = np.asarray(seg.column("num_frames").to_numpy()) if seg.num_rows else np.zeros(0)
    labels: dict[str, int] = {}
    for k, m in zip(seg.column("keys").to_pylist(), seg.column("mouse").to_pylist(), strict=True):
        labels[f"{k} {m}"] = labels.get(f"{k} {m}", 0) + 1
    return {
        "stage": STAGE,
        "inputs": inputs,
        "accepted": clips.num_rows,
        "rejected": rej.num_rows,
        "accounted": inputs == clips.num_rows + rej.num_rows,
        "rejects_by_reason": reasons,
        "segments": seg.num_rows,
        "clips_without_segments": int(
            sum(1 for n in clips.column("num_segments").to_pylist() if n == 0)
        ),
        "segment_frames": {
            "total": int(frames.sum()),
            "mean": float(frames.mean()) if len(frames) else 0.0,
            "min": int(frames.min()) if len(frames) else 0,
            "max": int(frames.max()) if len(frames) else 0,
        },
        "segments_by_label": dict(sorted(labels.items(), key=lambda kv: -kv[1])),
        "provenance": prov,
    }


def write_report(root: Path, tables: dict[str, pa.Table], summary: dict) -> None:
    """``reports/actions.json`` plus the keys x mouse heat map and segment-length histogram."""
    reports = Path(root) / "reports"
    seg = tables["segments"]
    counts = np.zeros((len(KEYS), len(MOUSE)))
    for k, m, n in zip(
        seg.column("keys").to_pylist(),
        seg.column("mouse").to_pylist(),
        seg.column("num_frames").to_pylist(),
        strict=True,
    ):
        counts[KEYS.index(k), MOUSE.index(m)] += n
    save_figure(
        heatmap(
            counts, list(KEYS), list(MOUSE), "Action segments: frames per label", "mouse", "keys"
        ),
        reports / "actions_keys_mouse.png",
    )
    lengths = np.asarray(seg.column("num_frames").to_numpy()) if seg.num_rows else np.zeros(0)
    save_figure(
        histogram(lengths, f"Segment length ({len(lengths)} segments)", "frames"),
        reports / "actions_segment_length.png",
    )
    summary["plots"] = ["actions_keys_mouse.png", "actions_segment_length.png"]
    atomic_write_json(reports / "actions.json", summary)


def main(argv: list[str] | None = None) -> None:
    """``python -m jobs.sekai_actions``: the same options as ``yume-data sekai-actions``."""
    from jobs.cli import app

    app(["sekai-actions", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    main()
