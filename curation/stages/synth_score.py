"""The synth-score stage: generated videos -> per-dimension scores and VBench's total.

One item per video of ``manifests/synth_generate.parquet``. The scorer backend is loaded
once per actor: ``builtin`` (no learned weights: VBench's temporal flickering and OpenCV
stand-ins, ``model/backends/scorer_builtin.py``) or ``vbench:<python of the vbench env>``
(VBench itself in its own interpreter, ``model/backends/scorer_vbench.py``; a batch of
videos per request). Writes ``manifests/scores.parquet`` (video, dimension, score, backend,
backend_version) and ``manifests/synth_score.parquet`` (one row per video with its total,
VBench's normalisation and weights over the dimensions present, and which ones).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curation.config import option
from curation.scores import total
from curation.stages.base import Outcome, Resources, Result, Stage
from schemas.synth import GENERATED_SCHEMA, SCORED_SCHEMA, SCORES_SCHEMA


def scorer_spec(text: str):
    """``builtin`` names the builtin family (it has no path); anything else is a spec."""
    from model.backends import BackendSpec

    return BackendSpec("builtin", "", "builtin") if text == "builtin" else text


@dataclass(frozen=True)
class SynthScoreConfig:
    """Which scorer and dimensions."""

    inputs_root: Path | None = option(
        None, "Data root holding synth_generate's manifest and videos (default: --root).",
        output=False, path=True,
    )  # fmt: skip
    scorer: str = option(
        "builtin", "Scorer: builtin, or vbench:<path to the python of a vbench venv>."
    )
    dimensions: list[str] = option(
        factory=list, help="Dimensions to score (default: all the scorer has)."
    )
    vbench_cache: Path | None = option(
        None, "VBench weights cache (VBENCH_CACHE_DIR) for the vbench scorer.", output=False,
        path=True,
    )  # fmt: skip
    vbench_timeout_s: float = option(3600.0, "Seconds one vbench request may run.", output=False)
    batch: int = option(8, "Videos per scorer call.", output=False)
    gpus: float = option(0.0, "GPUs per scorer actor.", output=False)


class SynthScoreStage(Stage[SynthScoreConfig]):
    """Score generated videos per dimension (builtin or VBench) and VBench's total.

    Reads manifests/synth_generate.parquet under --root; writes manifests/scores.parquet
    (long: video, dimension, score, backend, version), manifests/synth_score.parquet (total
    per video), rejects and reports/synth_score.json. Rerunning resumes per video, scores a
    rewritten mp4 again and drops the scores of videos synth_generate no longer lists.
    """

    name = "synth_score"
    config_cls = SynthScoreConfig
    tables = {"synth_score": SCORED_SCHEMA, "scores": SCORES_SCHEMA}
    sort_by = {"scores": ["video", "dimension"]}
    # the input is the mp4 itself (a regenerated video is scored again); a video that
    # synth_generate's table no longer holds drops its scores
    drops_missing = True

    @property
    def resources(self) -> Resources:  # type: ignore[override]
        return Resources(cpus=1, gpus=self.config.gpus, actor=True, batch_size=self.config.batch)

    @property
    def inputs(self):
        from curation.dataroot import DataRoot

        return DataRoot.at(self.config.inputs_root) if self.config.inputs_root else self.root

    def describe_inputs(self) -> str:
        return f"no videos in {self.inputs.manifest('synth_generate')}"

    def discover(self) -> Iterator[dict]:
        path = self.inputs.manifest("synth_generate")
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: run `yume-data synth-generate` first")
        for r in pq.read_table(path, schema=GENERATED_SCHEMA).to_pylist():
            yield {"key": r["key"], "input": str(self.inputs.path / r["path"]), "path": r["path"],
                   "tiny_random": r["tiny_random"]}  # fmt: skip

    def setup(self) -> None:
        from model.backends import load

        cfg = self.config
        kwargs = {}
        if cfg.scorer != "builtin":
            kwargs = {"cache_dir": cfg.vbench_cache, "timeout_s": cfg.vbench_timeout_s}
        self.scorer = load("scorer", scorer_spec(cfg.scorer), **kwargs)
        dims = tuple(cfg.dimensions) or tuple(self.scorer.dimensions)
        unknown = sorted(set(dims) - set(self.scorer.dimensions))
        if unknown:
            raise ValueError(f"scorer {cfg.scorer} has no dimensions {unknown}")
        self.dims = dims

    def process(self, batch: list[dict]) -> Result:
        todo, outcomes = [], {}
        for it in batch:
            p = Path(it["input"])
            if not p.is_file():
                outcomes[it["key"]] = Outcome.rejected(it, "missing_video", f"{p} not found")
            elif p.stat().st_size == 0:
                outcomes[it["key"]] = Outcome.rejected(it, "empty_video", f"{p} has zero bytes")
            else:
                todo.append(it)
        results: dict[str, dict | Exception] = {}
        if todo and hasattr(self.scorer, "score_many"):
            got = self.scorer.score_many([it["input"] for it in todo], dimensions=self.dims)
            for it in todo:
                results[it["key"]] = got.get(it["input"], RuntimeError("no result"))
        else:
            for it in todo:
                try:
                    results[it["key"]] = self.scorer.score(it["input"])
                except Exception as e:  # one bad video never ends the job
                    results[it["key"]] = e
        rows, long = [], []
        version = str(getattr(self.scorer, "version", self.scorer.model_id))  # after a call
        for it in todo:
            res = results[it["key"]]
            if isinstance(res, Exception):
                reason = "unreadable_video" if isinstance(res, ValueError) else "scorer_failed"
                outcomes[it["key"]] = Outcome.rejected(it, reason, str(res)[:500])
                continue
            scores = {d: float(res[d]) for d in self.dims if d in res}
            t, used = total(scores)
            if not math.isfinite(t):
                outcomes[it["key"]] = Outcome.rejected(
                    it, "no_score", f"no finite score of a totalled dimension: {scores}"
                )
                continue
            outcomes[it["key"]] = Outcome.done(it)
            label = {"backend": self.scorer.family, "backend_version": version}
            long += [{"video": it["key"], "dimension": d, "score": s, **label}
                     for d, s in sorted(scores.items()) if math.isfinite(s)]  # fmt: skip
            rows.append({"key": it["key"], "path": it["path"], "total": t,
                         "total_dimensions": used, "tiny_random": bool(it["tiny_random"]),
                         **label})  # fmt: skip
        return Result([outcomes[it["key"]] for it in batch], {"synth_score": rows, "scores": long})

    def finalize(self, tables: dict[str, pa.Table]) -> dict:
        scored = tables["synth_score"].to_pylist()
        long = tables["scores"].to_pylist()
        per_dim: dict[str, list[float]] = {}
        for r in long:
            per_dim.setdefault(r["dimension"], []).append(r["score"])
        totals = [r["total"] for r in scored]
        return {
            "videos_scored": len(scored),
            "dimension_means": {d: round(float(np.mean(v)), 6) for d, v in sorted(per_dim.items())},
            "total_mean": round(float(np.mean(totals)), 6) if totals else None,
            "total_dimensions": sorted({d for r in scored for d in r["total_dimensions"]}),
            "backends": sorted({f"{r['backend']} {r['backend_version']}" for r in scored}),
        }
