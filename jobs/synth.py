"""``yume-data synth --top-k K``: generate -> score -> select -> shards, one stage after another.

Each step is its own stage and command (``synth-generate``, ``synth-score``,
``synth-select``) that runs alone and resumes; this command runs the three in order on one
root with the same run options, stopping at the first that finds nothing or fails. A rerun
resumes every step. The lead registers it in jobs/cli.py:
``app.command("synth")(jobs.synth.synth)``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from curation.stages.synth_generate import SynthGenerateConfig, SynthGenerateStage
from curation.stages.synth_score import SynthScoreConfig, SynthScoreStage
from curation.stages.synth_select import SynthSelectConfig, SynthSelectStage
from jobs.command import USER_ERRORS, fail, print_summary
from jobs.runner import RunOptions, run_stage


def run_synth(
    generate: SynthGenerateConfig, score: SynthScoreConfig, select: SynthSelectConfig,
    opts: RunOptions,
) -> list[dict]:  # fmt: skip
    """Run the three stages in order; the summaries of those that ran."""
    out = []
    for cls, cfg in ((SynthGenerateStage, generate), (SynthScoreStage, score),
                     (SynthSelectStage, select)):  # fmt: skip
        s = run_stage(cls, cfg, opts)
        out.append(s)
        if s["exit_code"] == 1 or s["accepted"] == 0:
            break
    return out


def synth(
    top_k: int = typer.Option(50_000, help="Videos to keep: the K best totals."),
    prompts: Path | None = typer.Option(
        None, help="Prompt file; default: the sampled captions of dedup-captions."
    ),
    t2v: str = typer.Option(
        "diffusers:/weights/Wan2.1-T2V-14B-Diffusers", help="Text-to-video backend."
    ),
    resolution: str = typer.Option("720x1280", help="HEIGHTxWIDTH (multiples of 16)."),
    frames: int = typer.Option(81, help="Frames per video (4k+1)."),
    steps: int = typer.Option(50, help="Denoising steps."),
    guidance_scale: float = typer.Option(5.0, help="CFG scale."),
    flow_shift: float = typer.Option(5.0, help="Flow shift (5.0 at 720p, 3.0 at 480p)."),
    seed: int = typer.Option(0, help="Base seed of the prompts' seeds."),
    scorer: str = typer.Option("builtin", help="builtin, or vbench:<python of the vbench env>."),
    vbench_cache: Path | None = typer.Option(None, help="VBench weights cache."),
    gpus: float = typer.Option(0.0, help="GPUs per generator / scorer actor."),
    dataset: str = typer.Option("synthetic", help="Dataset of the shards."),
    root: Path = typer.Option(Path("data"), help="Data root."),
    overwrite: bool = typer.Option(False, help="Discard the three stages' results first."),
    workers: int | None = typer.Option(None, help="Parallel workers per stage."),
    address: str | None = typer.Option(None, help="Ray cluster address."),
) -> None:
    """Generate T2V videos, score them (VBench total) and shard the top K (source synthetic)."""
    try:
        gen = SynthGenerateConfig(
            prompts=prompts, t2v=t2v, resolution=resolution, frames=frames, steps=steps,
            guidance_scale=guidance_scale, flow_shift=flow_shift, seed=seed, gpus=gpus,
            max_sequence_length=16 if t2v == "tiny-random" else 512,
        )  # fmt: skip
        sco = SynthScoreConfig(scorer=scorer, vbench_cache=vbench_cache, gpus=gpus)
        sel = SynthSelectConfig(top_k=top_k, dataset=dataset)
    except ValueError as e:
        fail(str(e), 2)
    opts = RunOptions(root=root, overwrite=overwrite, workers=workers, address=address)
    try:
        summaries = run_synth(gen, sco, sel, opts)
    except USER_ERRORS as e:
        fail(str(e))
    for s in summaries:
        print_summary(s)
    worst = max((s["exit_code"] for s in summaries), default=1)
    if worst:
        raise typer.Exit(worst)


if __name__ == "__main__":
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command("synth")(synth)
    app()
