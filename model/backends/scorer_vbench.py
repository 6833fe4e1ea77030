"""The ``vbench`` scorer: VBench in its own environment, reached through its interpreter.

VBench pins numpy<2 and transformers==4.33.2, so it cannot share the project venv
(REFERENCE.md section 0.2). Spec ``vbench:<python>``: the interpreter of a venv where
``vbench`` imports. Each ``score_many`` call is one request: a JSON file naming the
videos, dimensions, device and weights cache (``VBENCH_CACHE_DIR``, ``local=True``: nothing
is downloaded), run as ``<python> scorer_vbench_worker.py request.json`` in a fresh
process; the worker uses VBench's Python API in custom-input mode (its CLI re-execs
torch.distributed and mangles long prompts) and writes per-video results. A crash, a
timeout or a missing result makes every video of that request an error naming the cause
and the end of the worker's stderr; the next request starts a new process.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from model.backends.protocols import CORE
from model.backends.registry import register
from model.backends.spec import BackendSpec

VBENCH_DIMENSIONS = (
    "subject_consistency", "background_consistency", "motion_smoothness", "dynamic_degree",
    "aesthetic_quality", "imaging_quality", "temporal_flickering",
)  # fmt: skip
WORKER = Path(__file__).with_name("scorer_vbench_worker.py")


class VBenchError(RuntimeError):
    """The vbench process failed; the message says how (exit code, timeout, stderr)."""


@register("scorer", "vbench")
class VBenchScorer:
    environment = CORE  # this class only launches the vbench interpreter
    family = "vbench"
    tiny_random = False
    dimensions = VBENCH_DIMENSIONS

    def __init__(self, python: str, cache_dir: str | None, device: str | None,
                 timeout_s: float, env: dict | None) -> None:  # fmt: skip
        self.python = python
        self.cache_dir = cache_dir
        self.device = device or ("cuda" if os.environ.get("CUDA_VISIBLE_DEVICES") else "cpu")
        self.timeout_s = timeout_s
        self.env = env
        self.model_id = f"vbench ({python})"
        self.version = "unknown"  # set from the worker's first answer

    @classmethod
    def from_spec(
        cls, spec: BackendSpec, cache_dir: str | os.PathLike | None = None,
        device: str | None = None, timeout_s: float = 3600.0, env: dict | None = None,
    ) -> VBenchScorer:  # fmt: skip
        python = os.path.expanduser(spec.path)
        if not Path(python).is_file():
            raise FileNotFoundError(f"vbench interpreter {python} not found (vbench:<python>)")
        return cls(python, str(cache_dir) if cache_dir else None, device, timeout_s, env)

    def score(self, video: str | os.PathLike[str]) -> dict[str, float]:
        got = self.score_many([str(video)])[str(video)]
        if isinstance(got, Exception):
            raise got
        return got

    def score_many(
        self, videos: Sequence[str], dimensions: Sequence[str] | None = None,
        prompts: dict[str, str] | None = None,
    ) -> dict[str, dict[str, float] | Exception]:  # fmt: skip
        """``{video path: {dimension: score}}``, or an exception per video on failure."""
        dims = list(dimensions or self.dimensions)
        names = {f"v{n:05d}": str(v) for n, v in enumerate(videos)}
        with tempfile.TemporaryDirectory(prefix="vbench-") as work:
            result = Path(work) / "result.json"
            request = {
                "videos": names, "prompts": {k: (prompts or {}).get(v, k) for k, v in names.items()},
                "dimensions": dims, "device": self.device, "cache_dir": self.cache_dir,
                "work_dir": work, "result": str(result),
            }  # fmt: skip
            (Path(work) / "request.json").write_text(json.dumps(request))
            env = {**os.environ, **(self.env or {})}
            try:
                proc = subprocess.run(
                    [self.python, str(WORKER), str(Path(work) / "request.json")],
                    capture_output=True, text=True, timeout=self.timeout_s, env=env,
                )  # fmt: skip
            except subprocess.TimeoutExpired:
                return self._fail(videos, f"vbench ran past {self.timeout_s:.0f} s")
            tail = (proc.stderr or "").strip()[-800:]
            if proc.returncode != 0:
                return self._fail(videos, f"vbench exited {proc.returncode}: {tail}")
            if not result.exists():
                return self._fail(videos, f"vbench wrote no result: {tail}")
            answer = json.loads(result.read_text())
        self.version = str(answer.get("version", "unknown"))
        out: dict[str, dict[str, float] | Exception] = {}
        for name, path in names.items():
            scores = answer["scores"].get(name) or {}
            missing = [d for d in dims if d not in scores]
            out[path] = (VBenchError(f"vbench gave no {missing} for {path}") if missing
                         else {d: float(scores[d]) for d in dims})  # fmt: skip
        return out

    @staticmethod
    def _fail(videos: Sequence[str], why: str) -> dict[str, Exception]:
        return {str(v): VBenchError(why) for v in videos}
