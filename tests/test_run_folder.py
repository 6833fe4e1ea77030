"""The run folder is refused before anything heavy; config.json, summary fields, loss.png."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.test_training import streams, tiny_cfg
from training.cli import app
from training.config import DistillConfig
from training.distill import distill
from training.metrics import MetricsLog, loss_figure
from training.run import CONFIG, RunFolderError, check_run_folder, save_config
from training.train_base import train


def _unwritable(tmp_path: Path) -> Path:
    """A folder this process cannot write in (root ignores permission bits: /proc then)."""
    if os.geteuid() == 0:
        return Path("/proc/self")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    return locked


def test_check_run_folder_refuses_file_unwritable_and_old_runs(tmp_path) -> None:
    fresh = tiny_cfg(tmp_path / "a" / "b")
    check_run_folder(fresh, resume=False, overwrite=False)
    assert not (tmp_path / "a").exists()  # a check creates nothing

    (tmp_path / "f").write_text("x")
    with pytest.raises(RunFolderError, match="is a file"):
        check_run_folder(tiny_cfg(tmp_path / "f"), resume=False, overwrite=True)
    with pytest.raises(RunFolderError, match="is a file"):
        check_run_folder(tiny_cfg(tmp_path / "f" / "run"), resume=False, overwrite=False)
    with pytest.raises(RunFolderError, match="cannot write"):
        check_run_folder(tiny_cfg(_unwritable(tmp_path) / "run"), resume=False, overwrite=False)

    old = tmp_path / "old"
    save_config(old, tiny_cfg(old))  # a run that died before its first checkpoint
    with pytest.raises(FileExistsError, match="config.json.*--resume .* --overwrite"):
        check_run_folder(tiny_cfg(old), resume=False, overwrite=False)
    check_run_folder(tiny_cfg(old), resume=False, overwrite=True)
    check_run_folder(tiny_cfg(old, lr=0.5), resume=True, overwrite=False)  # no checkpoint yet

    (old / "checkpoints").mkdir()
    (old / "checkpoints" / "latest.json").write_text('{"step": 1, "path": "../../x.pt"}')
    with pytest.raises(RunFolderError, match="pickle checkpoints are not read"):
        check_run_folder(tiny_cfg(old), resume=True, overwrite=False)


def test_train_and_distill_refuse_before_reading_data_or_loading_models(tmp_path) -> None:
    """No streams and a data root that does not exist: a check that ran late would fail on
    the data (or the base model) instead, with another message."""
    old = tmp_path / "old"
    save_config(old, tiny_cfg(old))
    with pytest.raises(FileExistsError, match="holds a run"):
        train(tiny_cfg(old, data_root=str(tmp_path / "none")))
    (tmp_path / "f").write_text("x")
    dcfg = DistillConfig(out_dir=str(tmp_path / "f"), base=str(tmp_path / "no-base"))
    with pytest.raises(RunFolderError, match="is a file"):
        distill(dcfg)


@pytest.mark.parametrize("command", ["base", "distill"])
def test_cli_refuses_a_bad_run_folder_with_one_error_line(tmp_path, command) -> None:
    old = tmp_path / "old"
    save_config(old, DistillConfig() if command == "distill" else tiny_cfg(old))
    (tmp_path / "f").write_text("x")
    for out, want in ((old, "holds a run"), (tmp_path / "f", "is a file")):
        args = [command, "--out", str(out), "--root", str(tmp_path / "none")]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 1, result.output
        lines = [x for x in result.output.splitlines() if x.strip()]
        errors = [x for x in lines if x.startswith("error:")]
        assert len(errors) == 1 and want in errors[0], result.output
        assert "Traceback" not in result.output


@pytest.mark.slow  # a real 2-step run; tests/test_training.py runs the loop by default
def test_run_writes_effective_config_and_summary_counts(tmp_path) -> None:
    out = tmp_path / "run"
    cfg = tiny_cfg(out, steps=2, ckpt_every=2, lr=0.003)
    summary = train(cfg, streams=streams())
    saved = json.loads((out / CONFIG).read_text())
    assert saved == json.loads(json.dumps(cfg.to_dict())) and saved["lr"] == 0.003
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["datasets"] == {"synthetic": 1.0}
    # 2 steps (t2v, i2v) of batch 2: two samples read from each stream
    assert on_disk["samples_read"] == {"synthetic/t2v": 2, "synthetic/i2v": 2}
    assert 0 < on_disk["wall_s"] and on_disk["wall_s"] == summary["wall_s"]
    # a resume with another config is refused from config.json, before any data is read
    with pytest.raises(ValueError, match=r"lr: 0\.003 -> 0\.1"):
        train(tiny_cfg(out, steps=3, lr=0.1, data_root=str(tmp_path / "none")), resume=True)


def test_loss_plot_has_validation_loss_integer_steps_and_labels(tmp_path) -> None:
    log = MetricsLog(tmp_path)
    for step in (1, 2, 3):
        row = {"step": step, "loss": 1.0 / step, "task": "t2v" if step % 2 else "i2v"}
        log.log(row | ({"val_loss": 0.9} if step == 2 else {}))
    log.log({"step": 3, "val_loss": 0.7})
    rows = log.read()
    fig = loss_figure(rows, "t")
    (ax,) = fig.axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    val = lines["validation loss"]
    assert list(val.get_xdata()) == [2, 3] and list(val.get_ydata()) == [0.9, 0.7]
    assert {"train loss (t2v)", "train loss (i2v)"} <= set(lines)
    assert "validation loss" in [t.get_text() for t in ax.get_legend().get_texts()]
    assert ax.get_xlabel() == "step" and "loss" in ax.get_ylabel()
    fig.canvas.draw()
    ticks = [t for t in ax.get_xticks() if 1 <= t <= 3]
    assert ticks and all(float(t).is_integer() for t in ticks)  # no 1.5 steps
    png = log.plot("t")
    assert png.name == "loss.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
