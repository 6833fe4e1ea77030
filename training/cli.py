"""`yume-train`: the model command line (base training of the TSCM model)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import typer

from training.config import PRESETS, TrainConfig, preset

app = typer.Typer(
    help="Train Yume-1.5-style TSCM world models on yume-data shards.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    """Keeps `base` a subcommand even while it is the only one."""


def parse_datasets(specs: list[str]) -> dict[str, float]:
    """``NAME=W`` (both tasks) or ``NAME:TASK=W`` (one task) -> mixture weights."""
    out = {}
    for spec in specs:
        name, _, weight = spec.partition("=")
        out[name] = float(weight) if weight else 1.0
    return out


def parse_overrides(specs: list[str]) -> dict[str, Any]:
    """``key=value`` pairs for TrainConfig fields; values are JSON when they parse, else text."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    out: dict[str, Any] = {}
    for spec in specs:
        key, sep, value = spec.partition("=")
        if not sep or key not in fields:
            raise typer.BadParameter(f"--set {spec!r}: want key=value with key in {sorted(fields)}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


@app.command()
def base(
    config: str = typer.Option("tiny", help=f"preset: {', '.join(sorted(PRESETS))}"),
    config_file: Path = typer.Option(
        None, help="JSON object of TrainConfig fields merged over the preset"
    ),
    data: str = typer.Option(None, help="data root with shards/ (or latents/)"),
    out: str = typer.Option(None, help="run folder: checkpoints, metrics, samples"),
    steps: int = typer.Option(None, help="total optimiser steps"),
    lr: float = typer.Option(None, help="AdamW learning rate"),
    weights: str = typer.Option(None, help="local Wan2.2-TI2V-5B diffusers folder (transformer)"),
    vae: str = typer.Option(None, help="VAE: a local Wan2.2 folder or tiny-random"),
    text_encoder: str = typer.Option(None, help="UMT5: a local Wan2.2 folder or tiny-random"),
    resume: bool = typer.Option(False, help="continue from <out>/checkpoints/latest.json"),
    overwrite: bool = typer.Option(False, help="start again in an --out that holds a run"),
    latents: bool = typer.Option(None, help="read pre-encoded latent shards (fast path)"),
    dataset: list[str] = typer.Option(
        None,
        help="NAME=WEIGHT (both tasks) or NAME:TASK=WEIGHT (t2v or i2v), repeatable; "
        "replaces the preset's mixture",
    ),
    batch_size: int = typer.Option(None, help="global batch size"),
    set_: list[str] = typer.Option(
        None,
        "--set",
        help="KEY=VALUE for any TrainConfig field, repeatable (VALUE as JSON: --set shift=5 "
        '--set tasks=\'{"t2v": 1, "i2v": 2}\'); applied last',
    ),
    workers: int = typer.Option(None, help="Ray Train workers (1 = plain single process)"),
    gpus_per_worker: float = typer.Option(None, help="GPUs per Ray Train worker"),
    address: str = typer.Option(None, help="Ray cluster address for --workers > 1"),
) -> None:
    """Base training: alternating T2V / I2V flow-matching steps over the shard mixture.

    Settings apply in order: the preset, --config-file, the named options, then --set.
    """
    cfg = preset(config)
    if config_file is not None:
        cfg = TrainConfig.from_dict(cfg.to_dict() | json.loads(config_file.read_text()))
    named = dict(
        data_root=data, out_dir=out, steps=steps, lr=lr, weights=weights, vae=vae,
        text_encoder=text_encoder, latents=latents, batch_size=batch_size, workers=workers,
        gpus_per_worker=gpus_per_worker,
        datasets=parse_datasets(dataset) if dataset else None,
    )  # fmt: skip
    named = {k: v for k, v in named.items() if v is not None} | parse_overrides(set_ or [])
    cfg = TrainConfig.from_dict(cfg.to_dict() | named)
    if cfg.tiny_random:
        typer.echo(
            f"[{cfg.name}] tiny-random / randomly initialised models: outputs are labelled so"
        )
    if cfg.workers > 1 or cfg.gpus_per_worker > 0:
        from training.distributed import run_ray

        run_ray(cfg, resume=resume, address=address, overwrite=overwrite)
        return
    from training.train_base import train

    summary = train(cfg, resume=resume, overwrite=overwrite)
    summary.pop("losses")
    typer.echo(json.dumps(summary, indent=2))


if __name__ == "__main__":
    app()
