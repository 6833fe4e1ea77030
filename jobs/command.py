"""One command surface: each stage's ``yume-data`` command is made from its config dataclass.

The options of ``yume-data X`` are the fields of ``XConfig`` (their help and default written
once, on the field) and of ``RunOptions`` (``--root`` and the execution knobs, the same on
every command), plus ``--config-file`` and ``--set KEY=VALUE``. Settings apply in order:
the defaults < ``--config-file`` < named options < ``--set``. A user's mistake (an unknown
key, a bad value, a root made with another config) is one line on stderr and exit code 2
(usage) or 1 (cannot run); the job's own exit code is 0 (all accepted) or 3 (some rejected).
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

import typer

from curation.config import ConfigError, cli_parameters, cli_values, fields, layered
from curation.dataroot import DataRootError
from curation.locks import InUseError
from curation.shards.read import IndexPathError
from curation.shards.writer import ShardRewriteError
from curation.stages.base import Reject, Stage, StaleConfigError
from curation.stages.parts import PartRecordError
from jobs.runner import JobError, RunOptions, run_stage

# (a Reject out of a stage's discover: its one input file is unreadable, e.g. --prompts)
USER_ERRORS = (
    StaleConfigError, JobError, DataRootError, FileNotFoundError, NotADirectoryError,
    PartRecordError, IndexPathError, InUseError, ShardRewriteError, Reject,
)  # fmt: skip


def fail(message: str, code: int = 1) -> None:
    """One line on stderr, then exit: a user's mistake is not a traceback."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def check_root(root: Path) -> None:
    """Refuse, before Ray starts, a data root that is a file or cannot be made."""
    root = Path(root).expanduser()
    if root.exists() and not root.is_dir():
        raise DataRootError(f"--root {root} is a file, not a folder: pass a folder for the data")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataRootError(f"--root {root}: cannot create it ({e.strerror})") from None
    if not os.access(root, os.W_OK):
        raise DataRootError(f"--root {root}: not writable by this user")


def _common_parameters() -> list[inspect.Parameter]:
    kw = inspect.Parameter.KEYWORD_ONLY
    return [
        inspect.Parameter(
            "config_file",
            kw,
            default=typer.Option(None, help="JSON object of config fields, over the defaults."),
            annotation=Path | None,
        ),
        inspect.Parameter(
            "set_",
            kw,
            default=typer.Option(
                None, "--set", help="KEY=VALUE for any config field (VALUE as JSON), repeatable."
            ),
            annotation=list[str] | None,
        ),
    ]


def stage_command(
    app: typer.Typer,
    name: str,
    stage_cls: type[Stage],
    aliases: tuple[str, ...] = (),
    presets: dict | None = None,
) -> None:
    """Register ``yume-data <name>`` for ``stage_cls``; its help is the stage's docstring.

    ``aliases`` are further (hidden) names of the same command; ``presets`` (name -> config)
    adds ``--preset NAME``, the base the other settings apply over.
    """
    config_cls = stage_cls.config_cls
    clash = set(fields(config_cls)) & (set(fields(RunOptions)) | ({"preset"} if presets else set()))
    if clash:
        raise TypeError(f"{config_cls.__name__} fields {clash} clash with RunOptions")

    def command(**kwargs) -> None:
        config_file, sets = kwargs.pop("config_file"), kwargs.pop("set_") or []
        preset = kwargs.pop("preset", None) if presets else None
        run_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in fields(RunOptions)}
        if preset is not None and preset not in (presets or {}):
            fail(f"--preset {preset!r}: known presets are {', '.join(sorted(presets))}", 2)
        base = presets[preset] if preset is not None else None
        try:
            config = layered(config_cls, base, config_file, cli_values(config_cls, kwargs), sets)
            opts = layered(RunOptions, None, None, cli_values(RunOptions, run_kwargs))
        except ConfigError as e:
            fail(str(e), 2)
        try:
            check_root(opts.root)
        except DataRootError as e:
            fail(str(e), 2)
        try:
            summary = run_stage(stage_cls, config, opts)
        except USER_ERRORS as e:
            fail(str(e))
        if summary.get("dry_run"):
            print_dry_run(summary)
            return
        print_summary(summary)
        if summary["exit_code"]:
            raise typer.Exit(summary["exit_code"])

    params = cli_parameters(config_cls) + cli_parameters(RunOptions) + _common_parameters()
    if presets:
        help_text = f"Start from a preset: {', '.join(sorted(presets))} (default: the defaults)."
        params.insert(0, inspect.Parameter(
            "preset", inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(None, help=help_text), annotation=str | None,
        ))  # fmt: skip
    command.__signature__ = inspect.Signature(params)
    command.__name__ = name.replace("-", "_")
    command.__doc__ = reflow(stage_cls.__doc__ or "")
    app.command(name)(command)
    for alias in aliases:
        app.command(alias, hidden=True)(command)


def standalone(stage_cls: type[Stage], presets: dict | None = None) -> typer.Typer:
    """A one-command app for ``python -m jobs.X`` (e.g. under ``ray job submit``)."""
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    stage_command(app, stage_cls.name, stage_cls, presets=presets)
    return app


def reflow(doc: str) -> str:
    """A docstring's paragraphs each on one line (the help formatter wraps them itself)."""
    paragraphs = inspect.cleandoc(doc).split("\n\n")
    return "\n\n".join(" ".join(p.split()) for p in paragraphs)


def print_dry_run(s: dict) -> None:
    """What a run would do: the inputs it would process and the rejects found already."""
    typer.echo(
        f"{s['stage']} (dry run): found {s['found']}, would process "
        f"{len(s['would_process'])}, already done {s['already_done']}, "
        f"rejected while discovering {len(s['would_reject'])}"
    )
    for name in s["would_process"]:
        typer.echo(f"  process  {name}")
    for name, reason in s["would_reject"]:
        typer.echo(f"  reject   {name}  ({reason})")


def print_summary(s: dict) -> None:
    """The summary a person reads after a run: accounting, rejects by reason, the report."""
    if s.get("error"):
        typer.echo(f"error: {s['error']}", err=True)
    run = s["this_run"]
    typer.echo(
        f"{s['stage']}: inputs {s['inputs']} = accepted {s['accepted']} + rejected "
        f"{s['rejected']} (this run: found {run['found']}, processed {run['processed']}, "
        f"already done {run['skipped_done']}; {run['wall_s']} s)"
    )
    for reason, n in s["rejects_by_reason"].items():
        typer.echo(f"  rejected {n:6d}  {reason}")
    for note in s.get("notes", []):
        typer.echo(f"  {note}")
