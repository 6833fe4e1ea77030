"""One run of a stage per data root: a second one fails at once naming the first, so two runs
never mix their outputs; the kernel lock goes with a killed holder."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from curation.dataroot import DataRoot
from curation.locks import InUseError, hold
from jobs.cli import app

HOLD = """
import sys, time
from curation.locks import hold
with hold(sys.argv[1], "x", "y"):
    print("held", flush=True)
    time.sleep(60)
"""


@pytest.fixture()
def holder(tmp_path):
    """A separate process holding the actions stage's lock on a data root."""
    root = DataRoot.at(tmp_path / "data")
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(root.lock("actions"))],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout.readline().strip() == "held"
    yield root, proc
    proc.kill()
    proc.wait()


def test_a_second_run_of_a_stage_fails_at_once_naming_the_holder(holder, tmp_path):
    root, proc = holder
    t0 = time.perf_counter()
    out = CliRunner().invoke(app, ["sekai-actions", "--sekai", str(tmp_path), "--root", str(root)])
    assert time.perf_counter() - t0 < 10  # before Ray starts
    assert out.exit_code == 1
    line = out.output.strip()
    assert line.startswith(
        f"error: the actions stage of {root.path} is in use by another run (pid {proc.pid} on host "
    )
    assert line.endswith("wait for it to end or use another --root")
    assert not root.manifests.joinpath("actions.parquet").exists()


def test_a_killed_holder_leaves_no_stale_lock(holder):
    root, proc = holder
    with pytest.raises(InUseError):
        with hold(root.lock("actions"), "the actions stage", "wait"):
            pass
    proc.kill()
    proc.wait()
    with hold(root.lock("actions"), "the actions stage", "wait"):
        pass  # free again
