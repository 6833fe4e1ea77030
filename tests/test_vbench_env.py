"""The real VBench, in the venv ``make vbench-env`` builds: its temporal_flickering against
the builtin scorer's on the same H.264 files, through the project's ``vbench`` backend.

Uses ``.venv-vbench`` beside the project venv; set YUME_BUILD_VBENCH=1 to build it first
(2-3 minutes, about 2 GB). Without it and without that variable the tests skip.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from curation.stages.synth_generate import write_video
from curation.stages.synth_score import scorer_spec
from model.backends import load
from model.backends.vbench_env import STAMP, build, check, patch_torchvision
from tests.test_synth import known_videos

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
VBENCH_ENV = ROOT / ".venv-vbench"
KNOWN = ("static", "flickering", "moving")


@pytest.fixture(scope="module")
def vbench_python() -> Path:
    python = VBENCH_ENV / "bin" / "python"
    if os.environ.get("YUME_BUILD_VBENCH"):
        build(VBENCH_ENV)  # a failed build fails the test: it was asked for
    elif not ((VBENCH_ENV / STAMP).is_file() and check(python)):
        pytest.skip(f"no vbench env at {VBENCH_ENV} (make vbench-env, or YUME_BUILD_VBENCH=1)")
    return python


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("known-h264")
    out = {}
    for name, frames in known_videos(n=9, h=48, w=64).items():
        if name in KNOWN:
            out[name] = folder / f"{name}.mp4"
            write_video(out[name], frames, 16.0, "{}", 18)
    return out


@pytest.fixture(scope="module")
def vbench_run(vbench_python, videos):
    """One request to the real VBench: (version before it, the scorer, its answer)."""
    scorer = load("scorer", f"vbench:{vbench_python}", device="cpu", timeout_s=600)
    before = scorer.version
    got = scorer.score_many([str(p) for p in videos.values()], ["temporal_flickering"])
    return before, scorer, got


def test_builtin_temporal_flickering_equals_vbenchs(vbench_run, videos):
    builtin = load("scorer", scorer_spec("builtin"))
    ours = {name: builtin.score(p)["temporal_flickering"] for name, p in videos.items()}
    theirs = {}
    for name, path in videos.items():
        res = vbench_run[2][str(path)]
        assert not isinstance(res, Exception), res
        theirs[name] = res["temporal_flickering"]
    print({n: (ours[n], theirs[n]) for n in KNOWN})  # shown with -s
    for name in KNOWN:
        assert abs(ours[name] - theirs[name]) <= 1e-6, (name, ours[name], theirs[name])
    # the videos differ as built, so equality is not two constants agreeing
    assert theirs["static"] > 0.999 > theirs["moving"] > theirs["flickering"]


def test_vbench_backend_reports_the_real_package_version(vbench_run, vbench_python):
    before, scorer, _ = vbench_run
    assert before == "unknown"  # known only once the worker has answered
    assert scorer.version == check(vbench_python) == "0.1.5"


def test_rebuild_is_a_no_op_and_the_patch_idempotent(vbench_python):
    proc = subprocess.run(
        [sys.executable, "-m", "model.backends.vbench_env",
         str(VBENCH_ENV)], capture_output=True, text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "nothing to do" in proc.stdout
    site = subprocess.run(
        [str(vbench_python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert patch_torchvision(Path(site)) is False
