"""A user's mistake on a stage command is one line (or typer's usage box) with the fix,
found before Ray starts, with exit code 2 for usage and 1 when the job cannot run."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

import jobs.command as command
from jobs.cli import app
from jobs.encode_latents import PRESETS as ENCODE_PRESETS


def _run(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.fixture()
def captured(monkeypatch):
    """The config a command would run with, without running it (the parsing is under test)."""
    seen = {}

    def run_stage(stage_cls, config, opts):
        seen["config"], seen["opts"] = config, opts
        return {"dry_run": True, "stage": stage_cls.name, "found": 0, "would_process": [],
                "would_reject": [], "already_done": 0, "exit_code": 0}  # fmt: skip

    monkeypatch.setattr(command, "run_stage", run_stage)
    return seen


def test_a_preset_is_the_base_of_the_other_settings(captured, tmp_path):
    out = _run("encode-latents", "--preset", "wan22-5b", "--root", str(tmp_path), "--seed", "7")
    assert out.exit_code == 0, out.output
    want = ENCODE_PRESETS["wan22-5b"]
    got = captured["config"]
    assert (got.height, got.width, got.vae) == (want.height, want.width, want.vae)
    assert got.seed == 7  # a named option still wins over the preset
    assert (want.height, want.width) != (
        ENCODE_PRESETS["tiny"].height,
        ENCODE_PRESETS["tiny"].width,
    )


def test_an_unknown_preset_lists_the_known_ones(captured, tmp_path):
    out = _run("encode-latents", "--preset", "wan22", "--root", str(tmp_path))
    assert out.exit_code == 2
    assert out.output.strip() == "error: --preset 'wan22': known presets are tiny, wan22-5b"
    assert "config" not in captured


def test_a_root_that_is_a_file_is_refused_before_the_job(captured, tmp_path):
    afile = tmp_path / "data"
    afile.write_text("")
    out = _run("sekai-actions", "--sekai", str(tmp_path), "--root", str(afile))
    assert out.exit_code == 2
    assert (
        out.output.strip()
        == f"error: --root {afile} is a file, not a folder: pass a folder for the data"
    )
    assert "config" not in captured


@pytest.mark.parametrize(
    ("args", "choice"),
    [(["sekai-actions", "--euler", "xzz"], "zyz"), (["clips", "--preset", "fastt"], "veryslow")],
)
def test_fixed_choices_fail_at_parsing_with_the_choices(captured, tmp_path, args, choice):
    out = _run(*args, "--root", str(tmp_path))
    assert out.exit_code == 2
    assert "Invalid value" in out.output and choice in out.output
    assert "config" not in captured


def test_fixed_choices_are_checked_in_set_and_config_files(captured, tmp_path):
    out = _run("clips", "--set", "preset=fastt", "--root", str(tmp_path))
    assert out.exit_code == 2
    assert out.output.startswith("error: config: preset 'fastt': choose one of ultrafast,")
    cfg = tmp_path / "c.json"
    cfg.write_text('{"euler": "abc"}')
    out = _run("sekai-actions", "--config-file", str(cfg), "--root", str(tmp_path))
    assert out.exit_code == 2 and "euler 'abc': choose one of xyz" in out.output
    out = _run("clips", "--preset", "slow", "--root", str(tmp_path))
    assert out.exit_code == 0 and captured["config"].preset == "slow"


def test_a_wrong_input_path_is_one_line(tmp_path):
    out = _run("sekai-actions", "--sekai", str(tmp_path / "nope"), "--root", str(tmp_path / "r"))
    assert out.exit_code == 1
    assert out.output.strip() == f"error: input folder {tmp_path / 'nope'} does not exist"


@pytest.mark.slow  # end to end on Ray; the default run covers the parts
def test_a_sekai_folder_without_csv_is_said_and_counted(ray_local, tmp_path):
    from curation.sample_sekai import write_sample_release
    from curation.stages.actions import ActionsConfig, ActionsStage
    from jobs.runner import RunOptions, run_stage

    write_sample_release(tmp_path / "sekai", clips=2, frames=120, seed=1)
    for csv in (tmp_path / "sekai").rglob("*.csv"):
        csv.unlink()
    cfg = ActionsConfig(sekai=[tmp_path / "sekai"], min_frames=20)
    s = run_stage(ActionsStage, cfg, RunOptions(root=tmp_path / "data", progress=False))
    assert s["accepted"] == 2 and s["clips_without_caption"] == 2
    assert s["sekai_folders_without_csv"] == [str(tmp_path / "sekai")]
    assert any("no annotation CSV" in n for n in s["notes"])
    assert any("2 of 2 clips have no caption" in n for n in s["notes"])


@pytest.mark.slow  # end to end on Ray; the default run covers the parts
def test_ray_console_noise_is_hidden_and_the_bar_printed_once_without_a_terminal(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from curation.sample_sekai import write_sample_release

    write_sample_release(tmp_path / "sekai", clips=2, frames=120, seed=2)
    exe = Path(sys.executable).with_name("yume-data")
    args = [str(exe), "sekai-actions", "--sekai", str(tmp_path / "sekai"), "--root",
            str(tmp_path / "data"), "--min-frames", "20"]  # fmt: skip
    out = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stderr.splitlines()
    assert lines == ["actions: 2/2 items in " + lines[-1].split(" in ")[-1]], out.stderr
    assert out.stdout.startswith("actions: inputs 2 = accepted 2 + rejected 0")
