"""`yume-train`: the model command line (base training of the TSCM model)."""

from __future__ import annotations

import json

import typer

from training.config import PRESETS, preset

app = typer.Typer(
    help="Train Yume-1.5-style TSCM world models on yume-data shards.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Keeps `base` a subcommand even while it is the only one."""


@app.command()
def base(
    config: str = typer.Option("tiny", help=f"preset: {', '.join(sorted(PRESETS))}"),
    data: str = typer.Option(None, help="data root with shards/ (or latents/)"),
    out: str = typer.Option(None, help="run folder: checkpoints, metrics, samples"),
    steps: int = typer.Option(None, help="total optimiser steps"),
    resume: bool = typer.Option(False, help="continue from <out>/checkpoints/latest.json"),
    latents: bool = typer.Option(None, help="read pre-encoded latent shards (fast path)"),
    dataset: list[str] = typer.Option(None, help="NAME=WEIGHT, repeatable; replaces the mixture"),
    batch_size: int = typer.Option(None, help="global batch size"),
    workers: int = typer.Option(1, help="Ray Train workers (1 = plain single process)"),
    gpus_per_worker: float = typer.Option(0.0, help="GPUs per Ray Train worker"),
    address: str = typer.Option(None, help="Ray cluster address for --workers > 1"),
) -> None:
    """Base training: alternating T2V / I2V flow-matching steps over the shard mixture."""
    datasets = None
    if dataset:
        datasets = {d.split("=")[0]: float(d.split("=")[1]) if "=" in d else 1.0 for d in dataset}
    cfg = preset(
        config,
        data_root=data,
        out_dir=out,
        steps=steps,
        latents=latents,
        datasets=datasets,
        batch_size=batch_size,
        workers=workers,
        gpus_per_worker=gpus_per_worker,
    )
    if cfg.tiny_random:
        typer.echo(
            f"[{cfg.name}] tiny-random / randomly initialised models: outputs are labelled so"
        )
    if cfg.workers > 1 or cfg.gpus_per_worker > 0:
        from training.distributed import run_ray

        run_ray(cfg, resume=resume, address=address)
        return
    from training.train_base import train

    summary = train(cfg, resume=resume)
    summary.pop("losses")
    typer.echo(json.dumps(summary, indent=2))


if __name__ == "__main__":
    app()
