"""`yume-data`: the curation command line. Each command runs one Ray job from jobs/."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(
    help="Build Yume-1.5 training data: Sekai action tokens, video clips and WebDataset shards.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# ---- actions (issue: sekai-actions) -------------------------------------------------------
Paths = list[Path]


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


@app.command("sekai-actions")
def sekai_actions(
    sekai: Paths = typer.Option(
        [], help="Sekai release folder: annotation CSV(s) + trajectory .npz files. Repeatable."
    ),
    trajectories: Paths = typer.Option(
        [], help="Folder of bare .npz/.npy (N,4,4) trajectories; clip id = file stem. Repeatable."
    ),
    segments: Paths = typer.Option(
        [], help="Yume segment folders (Keys_*_Mouse_*/<id>.npy + .txt). Repeatable."
    ),
    out: Path = typer.Option(Path("data"), help="Data root: writes manifests/ and reports/ here."),
    translation_threshold: float = typer.Option(
        1e-4, help="Per-frame camera translation that counts as a key press."
    ),
    rotation_threshold: float = typer.Option(
        1e-3, help="Per-frame rotation (radians) that counts as a mouse move."
    ),
    stride: int = typer.Option(
        1, min=1, help="Label frame i against frame i+stride (thresholds scale with it)."
    ),
    euler: str = typer.Option(
        "xyz", help="scipy Euler sequence for the mouse angles (lower case: extrinsic)."
    ),
    fps: float = typer.Option(30.0, help="Trajectory frame rate (Sekai: 30)."),
    min_frames: int = typer.Option(33, min=2, help="Shortest segment kept, in frames."),
    max_frames: int = typer.Option(
        0, min=0, help="Split runs longer than this many frames (0: never)."
    ),
    export_yume: Path | None = typer.Option(
        None, help="Also write segments in Yume's Keys_X_Mouse_Y/<id>.npy+.txt layout here."
    ),
    batch_size: int = typer.Option(256, min=1, help="Trajectory files per Ray task."),
    address: str | None = typer.Option(
        None, envvar="RAY_ADDRESS", help="Ray cluster address; default: start Ray on this machine."
    ),
    num_cpus: int | None = typer.Option(None, help="CPUs for the local Ray (default: all)."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Discard earlier results in --out instead of resuming."
    ),
) -> None:
    """Label camera trajectories with keyboard/mouse action tokens and cut action segments.

    Writes manifests/actions.parquet (one row per segment), manifests/action_clips.parquet
    (per-clip token arrays), manifests/actions.rejects.parquet and reports/actions.json with
    PNG plots. Rerunning on the same --out resumes. Exit code: 0 when every input was accepted,
    3 when the job finished but rejected some inputs, 1 on a fatal error.
    """
    from curation.action_stage import ActionStageConfig
    from curation.actions import LabelConfig
    from jobs.sekai_actions import ActionsJob, run

    if not (sekai or trajectories or segments):
        raise typer.BadParameter("give at least one of --sekai, --trajectories, --segments")
    stage = ActionStageConfig(
        label=LabelConfig(
            translation_threshold=translation_threshold,
            rotation_threshold=rotation_threshold,
            stride=stride,
            euler=euler,
        ),
        fps=fps,
        min_frames=min_frames,
        max_frames=max_frames or None,
    )
    job = ActionsJob(
        out=out,
        sekai=sekai,
        trajectories=trajectories,
        segments=segments,
        stage=stage,
        export_yume=export_yume,
        batch_size=batch_size,
        address=address,
        num_cpus=num_cpus,
        overwrite=overwrite,
    )
    s = run(job)
    typer.echo(
        f"inputs {s['inputs']} = accepted {s['accepted']} + rejected {s['rejected']}; "
        f"{s['segments']} segments; {s['elapsed_s']} s; report {out / 'reports' / 'actions.json'}"
    )
    for reason, n in s["rejects_by_reason"].items():
        typer.echo(f"  rejected {n:5d}  {reason}")
    if s["rejected"]:
        raise typer.Exit(3)


# ---- end actions ----------------------------------------------------------------------------

# ---- clips -----------------------------------------------------------------------------------


@app.command("clips")
def clips(
    videos: Path = typer.Option(
        ..., help="Folder of source videos, named as the CSV's videoFile column."
    ),
    root: Path = typer.Option(
        Path("data"), help="Data root with manifests/action_clips.parquet and actions.parquet."
    ),
    fps: float = typer.Option(16.0, help="Output frame rate; frames are re-timed to nearest."),
    resolution: str = typer.Option(
        "544x960", help="Output HEIGHTxWIDTH (even), e.g. 704x1280; resize + centre crop."
    ),
    dataset: str = typer.Option(
        "sekai-real", help="Dataset name: clips/<dataset>/ staging, shards/<dataset>/ shards."
    ),
    source: str = typer.Option(
        "sekai-real", help="Sample source label: sekai-real, sekai-game, synthetic or event."
    ),
    crf: int = typer.Option(23, min=0, max=51, help="libx264 constant rate factor."),
    preset: str = typer.Option("veryfast", help="libx264 preset (ultrafast ... veryslow)."),
    threads: int = typer.Option(1, min=0, help="Decoder/encoder threads per video (0: auto)."),
    frame_tolerance: int = typer.Option(
        3, min=0, help="Accept a trajectory/video frame-count mismatch up to this many frames."
    ),
    workers: int | None = typer.Option(None, help="Videos in parallel (default: Ray's CPUs)."),
    shards: bool = typer.Option(
        True, "--shards/--no-shards", help="Pack the staged samples into shards at the end."
    ),
    max_samples: int = typer.Option(1000, min=1, help="Samples per shard at most."),
    max_bytes: int = typer.Option(2**30, min=1, help="Bytes per shard at most."),
    address: str | None = typer.Option(
        None, envvar="RAY_ADDRESS", help="Ray cluster address; default: start Ray on this machine."
    ),
) -> None:
    """Cut one training sample per Sekai clip: re-timed, resized H.264 + per-frame actions.

    Reads the sekai-actions manifests under --root, transcodes each clip's video from --videos,
    stages <key>.mp4/.json/.txt under clips/<dataset>/ and packs them into shards/<dataset>/.
    Writes manifests/clips.parquet, manifests/clips.rejects.parquet and reports/clips.json.
    Rerunning resumes (finished videos are skipped). Exit code: 0 when every clip was
    accepted, 3 when some were rejected, 1 on a fatal error.
    """
    from curation.clips import ClipsConfig, StaleSampleError
    from curation.video import parse_resolution
    from jobs.clips import ClipsJob, run

    try:
        height, width = parse_resolution(resolution)
        config = ClipsConfig(
            videos=str(videos),
            root=str(root),
            dataset=dataset,
            source=source,
            fps=fps,
            height=height,
            width=width,
            crf=crf,
            preset=preset,
            threads=threads,
            frame_tolerance=frame_tolerance,
        )
    except ValueError as e:
        raise typer.BadParameter(str(e)) from e
    if not videos.is_dir():
        raise typer.BadParameter(f"{videos} is not a folder", param_hint="--videos")
    job = ClipsJob(
        config,
        workers=workers,
        address=address,
        shards=shards,
        max_samples=max_samples,
        max_bytes=max_bytes,
    )
    try:
        summary = run(job)
    except (FileNotFoundError, StaleSampleError) as e:  # no manifests / other config staged
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from e
    typer.echo(
        f"clips: {summary['inputs']} inputs, {summary['written']} written, "
        f"{summary['skipped_existing']} already done, {summary['rejected']} rejected "
        f"{summary['rejects_by_reason'] or ''}; report: {root / 'reports' / 'clips.json'}"
    )
    for generator, n in summary["generated"].items():
        typer.echo(f"clips: {n} samples are generated videos, not real footage ({generator})")
    if summary["rejected"]:
        raise typer.Exit(3)


# ---- end clips -------------------------------------------------------------------------------

# ---- shards ----------------------------------------------------------------------------------
shards_app = typer.Typer(
    help="WebDataset shards (shards/<dataset>/<dataset>-%06d.tar + index.parquet): "
    "write staged samples, verify them against their index and schema, summarise.",
    no_args_is_help=True,
)
app.add_typer(shards_app, name="shards")


@shards_app.command("write")
def shards_write(
    staging: Path = typer.Option(..., help="Staging folder of <key>.mp4/.txt/.json samples."),
    out: Path = typer.Option(..., help="Data root; shards go to OUT/shards/DATASET/."),
    dataset: str = typer.Option(..., help="Dataset name, e.g. real, synthetic, event."),
    max_samples: int = typer.Option(1000, help="Most samples per shard."),
    max_bytes: int = typer.Option(2**30, help="Most bytes per shard."),
) -> None:
    """Pack complete staged samples not yet indexed into new shards (resumable).

    Bad samples are listed in OUT/manifests/shards.DATASET.rejects.parquet.
    """
    from jobs.shards import run_write

    run_write(staging, out, dataset, max_samples=max_samples, max_bytes=max_bytes)


@shards_app.command("verify")
def shards_verify(
    root: Path = typer.Argument(..., help="Data root (all shards/<dataset>/) or one dataset."),
    decode: str = typer.Option(
        "ends",
        help="mp4 check; the frame count always comes from the container index. 'ends' "
        "decodes the first and last frame, 'full' decodes every frame (the only mode that "
        "does), 'none' reads the header only.",
    ),
    workers: int = typer.Option(2, help="Processes verifying shards in parallel."),
    report: Path | None = typer.Option(None, help="JSON report (ROOT/reports/shards_verify.json)."),
) -> None:
    """Check shards: members, sha256 vs index, json schema, mp4 frames/fps/size.

    Exits non-zero on any failure; details in the JSON report.
    """
    from curation.shards import check_decode_mode
    from jobs.shards import run_verify

    try:
        check_decode_mode(decode)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--decode") from None
    try:
        ok = run_verify(root, decode=decode, workers=workers, report_path=report)["ok"]
    except FileNotFoundError as e:
        raise typer.BadParameter(str(e), param_hint="ROOT") from None
    if not ok:
        raise typer.Exit(1)


@shards_app.command("stats")
def shards_stats(
    root: Path = typer.Argument(..., help="Data root (all shards/<dataset>/) or one dataset."),
) -> None:
    """Samples, hours, fps/resolution/source counts, action distribution, and a PNG.

    Writes ROOT/reports/shards_stats.json and shards_stats.png.
    """
    from jobs.shards import run_stats

    try:
        run_stats(root)
    except FileNotFoundError as e:
        raise typer.BadParameter(str(e), param_hint="ROOT") from None


# ---- end shards ------------------------------------------------------------------------------

if __name__ == "__main__":
    app()
