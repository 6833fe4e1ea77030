"""`yume-train`: the model command line (base training, self-forcing distillation, sampling,
export of a run's weights as a diffusers folder).

Its options are ``TrainConfig``'s fields (help and defaults written once, on the fields),
layered like every yume-data command: the preset < ``--config-file`` < named options <
``--set KEY=VALUE``. Mistakes are one line on stderr, not a traceback; a run folder that
cannot be used (``training.run.check_run_folder``) is refused before anything heavy loads.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import typer

from curation.config import ConfigError, cli_parameters, cli_values, layered
from training.config import (
    DISTILL_PRESETS,
    PRESETS,
    SAMPLE_PRESETS,
    DistillConfig,
    SampleConfig,
    TrainConfig,
)

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
        try:
            out[name] = float(weight) if weight else 1.0
        except ValueError:
            raise ConfigError(f"--dataset {spec!r}: want NAME=WEIGHT with a number") from None
    return out


def _fail(message: str, code: int) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _check_run_folder(cfg, resume: bool, overwrite: bool) -> None:
    """One ``error:`` line (exit 1) for an unusable --out, before shards or models load."""
    from training.run import check_run_folder

    try:
        check_run_folder(cfg, resume, overwrite)
    except (FileExistsError, ValueError) as e:
        _fail(str(e), 1)


def base(**kwargs) -> None:
    """Base training: alternating T2V / I2V flow-matching steps over the shard mixture.

    Settings apply in order: the preset, --config-file, the named options, then --set.
    """
    name, config_file, sets = kwargs.pop("preset"), kwargs.pop("config_file"), kwargs.pop("set_")
    resume, overwrite, address = (
        kwargs.pop("resume"),
        kwargs.pop("overwrite"),
        kwargs.pop("address"),
    )
    datasets = kwargs.pop("dataset")
    try:
        if name not in PRESETS:
            raise ConfigError(f"--preset {name!r}: known presets are {sorted(PRESETS)}")
        named = cli_values(TrainConfig, kwargs)
        if datasets:
            named["datasets"] = parse_datasets(datasets)
        cfg = layered(TrainConfig, PRESETS[name], config_file, named, sets or [])
    except ConfigError as e:
        _fail(str(e), 2)
    if cfg.tiny_random:
        typer.echo(
            f"[{cfg.name}] tiny-random / randomly initialised models: outputs are labelled so"
        )
    _check_run_folder(cfg, resume, overwrite)
    from training.train_base import train

    try:
        if cfg.workers > 1 or cfg.gpus_per_worker > 0:
            from training.distributed import run_ray

            run_ray(train, cfg, resume=resume, address=address, overwrite=overwrite)
            return
        summary = train(cfg, resume=resume, overwrite=overwrite)
    except (FileExistsError, FileNotFoundError, ValueError) as e:  # a run folder or data problem
        _fail(str(e), 1)
    summary.pop("losses")
    typer.echo(json.dumps(summary, indent=2))


def _parameters() -> list[inspect.Parameter]:
    kw = inspect.Parameter.KEYWORD_ONLY

    def param(name, annotation, *decls, default=None, help=""):
        return inspect.Parameter(
            name, kw, default=typer.Option(default, *decls, help=help), annotation=annotation
        )

    return [
        param("preset", str, "--preset", "--config", default="tiny",
              help=f"Preset: {', '.join(sorted(PRESETS))}."),
        *cli_parameters(TrainConfig),
        param("dataset", list[str] | None, "--dataset",
              help="NAME=WEIGHT (both tasks) or NAME:TASK=WEIGHT (t2v or i2v), repeatable; "
              "replaces the preset's mixture."),
        param("resume", bool, "--resume", default=False,
              help="Continue from <out>/checkpoints/latest.json."),
        param("overwrite", bool, "--overwrite", default=False,
              help="Start again in an --out that holds a run."),
        param("address", str | None, "--address", help="Ray cluster address for --workers > 1."),
        param("config_file", Path | None, "--config-file",
              help="JSON object of TrainConfig fields over the preset."),
        param("set_", list[str] | None, "--set",
              help="KEY=VALUE for any TrainConfig field (VALUE as JSON: --set shift=5 "
              "--set tasks='{\"t2v\": 1, \"i2v\": 2}'), repeatable; applied last."),
    ]  # fmt: skip


base.__signature__ = inspect.Signature(_parameters())
app.command("base")(base)


def _layered(cls, presets: dict, kwargs: dict):
    """The preset < --config-file < named options < --set config of a command."""
    name, config_file, sets = kwargs.pop("preset"), kwargs.pop("config_file"), kwargs.pop("set_")
    if name not in presets:
        raise ConfigError(f"--preset {name!r}: known presets are {sorted(presets)}")
    named = cli_values(cls, kwargs)
    if "datasets" in cls.__dataclass_fields__ and kwargs.get("dataset"):
        named["datasets"] = parse_datasets(kwargs["dataset"])
    return layered(cls, presets[name], config_file, named, sets or [])


def distill(**kwargs) -> None:
    """Self-forcing DMD distillation of a base run into a few-step TSCM generator.

    Settings apply in order: the preset, --config-file, the named options, then --set.
    """
    resume, overwrite = kwargs.pop("resume"), kwargs.pop("overwrite")
    try:
        cfg = _layered(DistillConfig, DISTILL_PRESETS, kwargs)
    except ConfigError as e:
        _fail(str(e), 2)
    if cfg.tiny_random:
        typer.echo(
            f"[{cfg.name}] tiny-random / randomly initialised models: outputs are labelled so"
        )
    _check_run_folder(cfg, resume, overwrite)
    from training.distill import distill as run

    try:
        summary = run(cfg, resume=resume, overwrite=overwrite)
    except (FileExistsError, FileNotFoundError, ValueError) as e:
        _fail(str(e), 1)
    summary.pop("losses")
    typer.echo(json.dumps(summary, indent=2))


def sample(**kwargs) -> None:
    """Generate N blocks under per-block actions (`W,W,W+A,←`) from an image or a text.

    Settings apply in order: the preset, --config-file, the named options, then --set.
    """
    try:
        cfg = _layered(SampleConfig, SAMPLE_PRESETS, kwargs)
    except ConfigError as e:
        _fail(str(e), 2)
    from training.sample import sample as run

    try:
        summary = run(cfg, echo=typer.echo)
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e), 1)
    typer.echo(json.dumps({k: v for k, v in summary.items() if k != "blocks"}, indent=2))


def _command_parameters(cls, presets: dict, run_folder: bool) -> list[inspect.Parameter]:
    kw = inspect.Parameter.KEYWORD_ONLY

    def param(name, annotation, *decls, default=None, help=""):
        return inspect.Parameter(
            name, kw, default=typer.Option(default, *decls, help=help), annotation=annotation
        )

    extra = [
        param("dataset", list[str] | None, "--dataset",
              help="NAME=WEIGHT or NAME:TASK=WEIGHT, repeatable; replaces the preset's mixture."),
        param("resume", bool, "--resume", default=False,
              help="Continue from <out>/checkpoints/latest.json."),
        param("overwrite", bool, "--overwrite", default=False,
              help="Start again in an --out that holds a run."),
    ] if run_folder else []  # fmt: skip
    return [
        param("preset", str, "--preset", "--config", default="tiny",
              help=f"Preset: {', '.join(sorted(presets))}."),
        *cli_parameters(cls),
        *extra,
        param("config_file", Path | None, "--config-file",
              help=f"JSON object of {cls.__name__} fields over the preset."),
        param("set_", list[str] | None, "--set",
              help=f"KEY=VALUE for any {cls.__name__} field (VALUE as JSON), repeatable; "
              "applied last."),
    ]  # fmt: skip


distill.__signature__ = inspect.Signature(
    _command_parameters(DistillConfig, DISTILL_PRESETS, run_folder=True)
)
app.command("distill")(distill)
sample.__signature__ = inspect.Signature(
    _command_parameters(SampleConfig, SAMPLE_PRESETS, run_folder=False)
)
app.command("sample")(sample)


@app.command("export")
def export(
    run: Path = typer.Argument(..., help="A `yume-train base` or `distill` run folder."),
    out: Path = typer.Option(..., "--out", help="The diffusers folder to write."),
    ema: bool = typer.Option(False, "--ema", help="Export the EMA weights (else the raw ones)."),
    variant: str | None = typer.Option(
        None, "--variant", help="Name the weights diffusion_pytorch_model.<VARIANT>.safetensors."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier export."),
) -> None:
    """Write a run's newest checkpoint as a diffusers folder (config + safetensors) that
    `TSCMTransformer.from_pretrained`, `sample --weights` and `distill --base` load."""
    from training.export import export as run_export

    try:
        info = run_export(run, out, ema=ema, variant=variant, overwrite=overwrite)
    except (FileExistsError, FileNotFoundError, ValueError) as e:
        _fail(str(e), 1)
    typer.echo(json.dumps({k: v for k, v in info.items() if k != "config"} | {"out": str(out)}))


if __name__ == "__main__":
    app()
