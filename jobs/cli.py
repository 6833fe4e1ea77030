"""`yume-data`: the curation command line. Each stage command is made from its stage's config
(jobs/command.py) and runs through the one job runner (jobs/runner.py)."""

from __future__ import annotations

from pathlib import Path

import typer

import jobs.actions
import jobs.card
import jobs.clips
import jobs.dedup_captions
import jobs.encode_latents
import jobs.events
import jobs.recaption
import jobs.screening
import jobs.screening_serve
import jobs.shards
import jobs.synth
import jobs.synth_generate
import jobs.synth_score
import jobs.synth_select
from jobs.command import stage_command

# Every stage command: jobs/<stage>.py names its stage, command and aliases.
JOBS = (
    jobs.actions,
    jobs.clips,
    jobs.encode_latents,
    jobs.recaption,
    jobs.dedup_captions,
    jobs.synth_generate,
    jobs.synth_score,
    jobs.synth_select,
    jobs.events,
)

app = typer.Typer(
    help="Build Yume-1.5 training data: Sekai action tokens, video clips, WebDataset shards "
    "and latent shards. Every stage command takes --root (the data root), --config-file and "
    "--set KEY=VALUE; `yume-data COMMAND --help` lists its options.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

for _job in JOBS:
    stage_command(app, _job.COMMAND, _job.STAGE, aliases=_job.ALIASES, presets=_job.PRESETS)


@app.command("sample-sekai")
def sample_sekai(
    out: Path = typer.Option(
        Path("data/sample-sekai"), help="Folder to write the sample release to."
    ),
    clips: int = typer.Option(8, min=1, help="Number of clips."),
    frames: int = typer.Option(600, min=2, help="Frames per clip at 30 fps (real Sekai: 1800)."),
    seed: int = typer.Option(0, help="Random seed; the same seed writes the same release."),
    video: bool = typer.Option(
        False, "--video", help="Also render an mp4 per clip from its trajectory."
    ),
    video_size: str = typer.Option("216x384", help="Rendered video size HEIGHTxWIDTH."),
    corrupt: bool = typer.Option(False, "--corrupt", help="Mix in one bad input of each kind."),
) -> None:
    """Write a small Sekai-format release (CSV + npz trajectories [+ mp4]) with known motion.

    The motions (walks, strafes, turns, tilts, standing still, combinations; pose resets every
    300 frames) are saved as ground_truth.parquet, the reference for end-to-end tests.
    """
    from curation.sample_sekai import write_sample_release
    from curation.video import parse_resolution

    height, width = parse_resolution(video_size)
    info = write_sample_release(
        out, clips, frames, seed, video=video, video_size=(width, height), corrupt=corrupt
    )
    typer.echo(f"wrote {info['clips']} clips x {frames} frames to {out}")


app.command("synth")(jobs.synth.synth)
app.command("card")(jobs.card.card)
app.add_typer(jobs.shards.app, name="shards")
jobs.screening.app.command("serve")(jobs.screening_serve.serve)
app.add_typer(jobs.screening.app, name="screening")


if __name__ == "__main__":
    app()
