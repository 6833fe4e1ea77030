"""The synth-select stage: the top K scored videos -> ``shards/synthetic`` (task t2v).

Yume-1.5 kept the best 50,000 of 80,000 generated videos by VBench. ``discover`` ranks
every scored video of ``manifests/synth_score.parquet`` by total (descending, ties by key;
``curation.scores.top_k``): the first K are items, the rest are rejected ``below_top_k``
with their rank; a selected video without a synth_generate row is rejected
``missing_generate_row`` (synth_generate changed, synth_score was not rerun). ``process``
probes each selected video (``missing_video``; one that does not open as a video of the
frames synth_generate recorded is rejected with the reason) and stages it as a clip
sample (source ``synthetic``, task ``t2v``, its scores and prompt) under
``clips/synthetic/``; ``finalize`` packs them through the one shard writer into
``shards/synthetic/`` and plots the score distribution with the cut line.

A selected video's version is its mp4, its synth_generate row and its scores: a rerun
redoes a regenerated or rescored video, and drops (down to the shards) a video that
synth_score no longer holds. The ranking itself is made when the stage runs: a video that
later scores push below the cut stays selected until ``--overwrite`` (the report says so).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curation.clips import write_staged_sample
from curation.config import option
from curation.dataroot import check_name
from curation.provenance import code_version
from curation.scores import top_k
from curation.shards import write_shards_from_dir
from curation.stages.base import Reject, Resources, Stage
from curation.stages.synth_generate import GENERATED_DATASET
from curation.video import SourceVideo
from schemas.common import SchemaError
from schemas.sample import SAMPLE_SCHEMA_VERSION, validate_sample
from schemas.synth import GENERATED_SCHEMA, SCORED_SCHEMA, SCORES_SCHEMA, SELECTED_SCHEMA

BELOW = "below_top_k"


@dataclass(frozen=True)
class SynthSelectConfig:
    """How many to keep and where they go."""

    inputs_root: Path | None = option(
        None, "Data root holding the synth_generate/_score manifests and videos "
        "(default: --root).", output=False, path=True,
    )  # fmt: skip
    top_k: int = option(50_000, "Videos to keep: the K best totals (all when fewer).")
    dataset: str = option("synthetic", "Dataset name: clips/<dataset>/, shards/<dataset>/.")
    shards: bool = option(True, "Pack the selected samples into shards.", output=False)
    max_samples: int = option(1000, "Samples per shard at most.", output=False)

    def __post_init__(self) -> None:
        check_name(self.dataset)
        if self.top_k < 0:
            raise ValueError("top_k >= 0")


def probe(mp4: Path, frames: int) -> None:
    """Reject a video that does not open (``empty_video``, ``not_a_video``,
    ``truncated_video``, ``no_video_stream``) or holds other than ``frames`` frames
    (``frame_count_mismatch``): it would pass into the shards and fail only in training."""
    video = SourceVideo(mp4)  # reads the packets' timestamps only, decodes nothing
    video.container.close()
    if video.num_frames != frames:
        raise Reject(
            "frame_count_mismatch",
            f"{mp4.name} has {video.num_frames} frames, synth_generate recorded {frames}",
        )


class SynthSelectStage(Stage[SynthSelectConfig]):
    """Keep the top --top-k scored synthetic videos and pack them into shards/synthetic.

    Ranks manifests/synth_score.parquet by VBench total (ties by key); the rest are rejected
    below_top_k with their rank. Writes manifests/synth_select.parquet, the rejects,
    shards/<dataset>/ (source synthetic, task t2v), reports/synth_select.json and
    reports/synth_select_scores.png (distribution with the cut line).
    """

    name = "synth_select"
    config_cls = SynthSelectConfig
    resources = Resources(cpus=1, batch_size=16)
    tables = {"synth_select": SELECTED_SCHEMA}
    sort_by = {"synth_select": ["rank", "key"]}
    # what a sample is made from besides its mp4 (its rank is not: a video added above
    # it must not redo it); a video synth_score no longer holds is dropped
    version_fields = ("generated", "scores", "total")
    drops_missing = True

    @property
    def staging(self) -> Path:
        return self.root.staging(self.config.dataset)

    def owned_outputs(self) -> list[Path]:
        return [self.staging, self.root.shards(self.config.dataset)]

    @property
    def inputs(self):
        from curation.dataroot import DataRoot

        return DataRoot.at(self.config.inputs_root) if self.config.inputs_root else self.root

    def describe_inputs(self) -> str:
        return f"no scored videos in {self.inputs.manifest('synth_score')}"

    def _ranking(self) -> list[tuple[str, int, float, bool]]:
        path = self.inputs.manifest("synth_score")
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: run `yume-data synth-score` first")
        rows = pq.read_table(path, schema=SCORED_SCHEMA).to_pylist()
        return top_k({r["key"]: r["total"] for r in rows}, self.config.top_k)

    def discover(self) -> Iterator[dict]:
        for tmp in self.staging.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
        ranking = self._ranking()
        n = len(ranking)
        cut = min((t for _, _, t, sel in ranking if sel), default=None)
        if not ranking:
            return
        gen = self.inputs.staging(GENERATED_DATASET)
        table_path = self.inputs.manifest("synth_generate")
        table = pq.read_table(table_path, schema=GENERATED_SCHEMA)
        generated = {r["key"]: r for r in table.to_pylist()}
        scores: dict[str, dict] = {}
        for r in pq.read_table(self.inputs.manifest("scores"), schema=SCORES_SCHEMA).to_pylist():
            scores.setdefault(r["video"], {})[r["dimension"]] = r["score"]
        for key, rank, t, selected in ranking:
            item = {"key": key, "input": str(gen / f"{key}.mp4"), "rank": rank, "total": t,
                    "generated": generated.get(key), "scores": scores.get(key, {})}  # fmt: skip
            if not selected:
                item["reject"] = (BELOW, f"rank {rank} of {n}, total {t:.6f} < cut {cut:.6f}")
            elif item["generated"] is None:
                item["reject"] = ("missing_generate_row", f"{key} is scored but {table_path} "
                                  "has no row of it: rerun `yume-data synth-score`")  # fmt: skip
            yield item

    def forget(self, keys: set[str]) -> None:
        """Delete the staged files of ``keys``: a redone video is staged afresh, a dropped
        one is not packed again."""
        for path in self.staging.iterdir() if self.staging.is_dir() else []:
            if path.name.split(".", 1)[0] in keys:
                path.unlink(missing_ok=True)

    def setup(self) -> None:
        self.staging.mkdir(parents=True, exist_ok=True)
        self.code_version = code_version()  # inputs travel in the items: workers are reused

    def process_item(self, item: dict) -> dict[str, list[dict]]:
        mp4 = Path(item["input"])
        g = item["generated"]
        if not mp4.is_file():
            raise Reject("missing_video", f"{mp4} not found")
        probe(mp4, g["frames"])
        meta = {
            "schema_version": SAMPLE_SCHEMA_VERSION, "key": item["key"], "source": "synthetic",
            "tasks": ["t2v"], "fps": g["fps"], "frames": g["frames"], "width": g["width"],
            "height": g["height"], "source_video": mp4.name, "source_fps": g["fps"],
            "source_frame_range": [0, g["frames"] - 1], "keys": [], "mouse": [],
            "segments": [], "captions": {"scene": g["prompt"], "event": None, "action": None},
            "scores": {**item["scores"], "total": item["total"]},
            "screening": None,
            "meta": {"prompt_id": g["prompt_id"], "seed": g["seed"], "steps": g["steps"],
                     "guidance_scale": g["guidance_scale"], "flow_shift": g["flow_shift"],
                     "rank": item["rank"]},
            "provenance": {"stage": self.name, "code_version": self.code_version,
                           "config_hash": self.config_hash, "backend": g["model_id"],
                           "tiny_random": g["tiny_random"], "generated": True,
                           "generator": g["model_id"]},
        }  # fmt: skip
        try:
            validate_sample(meta)
        except SchemaError as e:
            raise Reject("invalid_sample", str(e)) from e
        write_staged_sample(self.staging, item["key"], mp4.read_bytes(), meta, g["prompt"])
        row = {"key": item["key"], "rank": item["rank"], "total": item["total"],
               "prompt": g["prompt"], "tiny_random": g["tiny_random"],
               "path": str((self.staging / f"{item['key']}.mp4").relative_to(self.root.path))}  # fmt: skip
        return {"synth_select": [row]}

    def finalize(self, tables: dict[str, pa.Table]) -> dict:
        cfg = self.config
        selected = tables["synth_select"].to_pylist()
        ranking = self._ranking() if self.inputs.manifest("synth_score").exists() else []
        totals = np.array([t for _, _, t, _ in ranking], float)
        cut = min((r["total"] for r in selected), default=None)
        shards = None
        folder = self.root.shards(cfg.dataset)
        if cfg.shards and self.staging.is_dir() and (selected or folder.is_dir()):
            shards = write_shards_from_dir(
                self.staging, folder, cfg.dataset, max_samples=cfg.max_samples,
                rejects_path=self.root.rejects(f"shards-{cfg.dataset}"),
                keys={r["key"] for r in selected},
            )  # fmt: skip
            shards.pop("rejects", None)
        plot = None
        if len(totals):
            plot = str(self._plot(totals, cut))
        now = {k for k, _, _, sel in ranking if sel}
        stale = sorted({r["key"] for r in selected} ^ now)
        notes = []
        if stale:
            notes.append(f"{len(stale)} videos differ from the current top-{cfg.top_k}: the "
                         "scores changed since they were selected; rerun with --overwrite")  # fmt: skip
        if any(r["tiny_random"] for r in selected):
            notes.append("tiny-random generator: the synthetic shards are for tests only")
        return {
            "top_k": cfg.top_k, "cut_score": cut, "scored": len(ranking),
            "selected": len(selected), "below_top_k": max(0, len(ranking) - len(now)),
            "score_plot": plot, "shards": shards, "notes": notes,
        }  # fmt: skip

    def _plot(self, totals: np.ndarray, cut: float | None) -> Path:
        from curation.reports import histogram, save_figure

        fig = histogram(totals, f"total score of {len(totals)} videos", "VBench-normalised total",
                        bins=min(40, max(5, len(totals))))  # fmt: skip
        if cut is not None:
            fig.axes[0].axvline(cut, color="#d83b3b", linestyle="--",
                                label=f"cut (top {self.config.top_k}): {cut:.4f}")  # fmt: skip
            fig.axes[0].legend()
        return save_figure(fig, self.root.plot(self.name, "scores"))
