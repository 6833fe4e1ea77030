"""Typed configs: one dataclass per job, its fields the single place for defaults and help.

Every job (a curation stage or a training loop) keeps its knobs in a dataclass whose fields
are declared with ``option(default, help)``. From it come:

- ``from_dict``: strict construction from JSON-like data: an unknown key is an error naming
  the key (and the nearest known one), a value of the wrong type is an error naming the
  field and the type it wants (``steps=ten`` is refused, ``"3"`` for an int is accepted);
- ``layered``: preset < ``--config-file`` < named options < ``--set KEY=VALUE``;
- ``command``: a typer command whose options are the fields (help and default written once);
- ``output_config``: the fields that change a job's output, for its config hash.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import inspect
import json
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

_MISSING = dataclasses.MISSING


class ConfigError(ValueError):
    """A config file, option or ``--set`` that does not fit the job's config."""


def option(
    default: Any = _MISSING,
    help: str = "",
    *,
    factory: Callable[[], Any] | None = None,
    output: bool = True,
    path: bool = False,
    cli: bool = True,
    flag: str | None = None,
    choices: tuple[str, ...] | None = None,
) -> Any:
    """A config field with its help text.

    Args:
        default: the default value (or ``factory`` for a mutable one).
        help: one line for ``--help``.
        output: whether the field changes the job's output (hashed); where-and-how knobs
            (paths to inputs, worker counts) are not.
        path: a local path, made absolute before it reaches a worker on another node.
        cli: whether the field is a named option (every field is settable with ``--set``).
        flag: the option name when it is not ``--<field-name>``.
        choices: the only values allowed (a typo fails at parsing, with the choices listed).
    """
    meta = {"help": help, "output": output, "path": path, "cli": cli, "flag": flag,
            "choices": choices}  # fmt: skip
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def output_config(config: Any) -> dict:
    """The fields of ``config`` that change its output, as JSON-able values."""
    d = to_dict(config)
    return {k: d[k] for k, f in fields(type(config)).items() if f.metadata.get("output", True)}


def to_dict(config: Any) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(config), default=str))


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(name: str, tp: Any, value: Any) -> Any:
    """``value`` as type ``tp`` (int, float, bool, str, Path, optional, list, tuple, dict,
    literal) or ConfigError naming the field."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(name, arg, value)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{name}: cannot be {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{name}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (list, tuple) or tp in (list, tuple):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{name}: want a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{name}: want {len(args)} values, got {list(value)!r}")
            return tuple(coerce(name, a, v) for a, v in zip(args, value, strict=True))
        item = args[0] if args else Any
        out = [coerce(name, item, v) for v in value]
        return tuple(out) if (origin or tp) is tuple else out
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name}: want a JSON object, got {value!r}")
        kt, vt = args if args else (Any, Any)
        return {coerce(name, kt, k): coerce(f"{name}.{k}", vt, v) for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"{name}: want true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{name}: want an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{name}: want an integer, got {value!r}")
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{name}: want a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: want a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, str | Path):
            return str(value)
        raise ConfigError(f"{name}: want a string, got {value!r}")
    if tp is Path:
        if isinstance(value, str | Path):
            return Path(value)
        raise ConfigError(f"{name}: want a path, got {value!r}")
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{name}: cannot use {value!r} as {_type_name(tp)}")


def check_keys(cls: type, keys: typing.Iterable[str], where: str) -> None:
    """ConfigError for the first key that is not a field of ``cls``, with a suggestion."""
    known = fields(cls)
    for key in keys:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{where}: unknown key {key!r}{hint}")


def from_dict(cls: type, data: dict, where: str = "config") -> Any:
    """An instance of ``cls`` from ``data``, strictly checked (see the module docstring)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: want a JSON object of {cls.__name__} fields")
    check_keys(cls, data, where)
    hints = _hints(cls)
    values = {k: coerce(k, hints[k], v) for k, v in data.items()}
    for name, f in fields(cls).items():
        choices = f.metadata.get("choices")
        if choices and name in values and values[name] not in choices:
            raise ConfigError(
                f"{where}: {name} {values[name]!r}: choose one of {', '.join(choices)}"
            )
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from e


def parse_sets(specs: typing.Iterable[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; VALUE is JSON when it parses as JSON, else the plain text."""
    out: dict[str, Any] = {}
    for spec in specs:
        key, sep, value = spec.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {spec!r}: want KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def layered(
    cls: type,
    base: Any = None,
    config_file: Path | None = None,
    named: dict[str, Any] | None = None,
    sets: typing.Iterable[str] = (),
) -> Any:
    """``base`` (a preset instance, or the defaults) < config file < named options < --set."""
    data = to_plain(base) if base is not None else {}
    if config_file is not None:
        try:
            text = Path(config_file).read_text()
        except OSError as e:
            raise ConfigError(f"--config-file {config_file}: {e.strerror}") from None
        try:
            from_file = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"--config-file {config_file}: not JSON ({e})") from None
        if not isinstance(from_file, dict):
            raise ConfigError(f"--config-file {config_file}: want a JSON object")
        check_keys(cls, from_file, f"--config-file {config_file}")
        data |= from_file
    data |= {k: v for k, v in (named or {}).items() if v is not None}
    overrides = parse_sets(sets)
    check_keys(cls, overrides, "--set")
    hints = _hints(cls)
    for k, v in overrides.items():
        coerce(f"--set {k}", hints[k], v)  # the error names the option
    return from_dict(cls, data | overrides, "config")


def to_plain(config: Any) -> dict:
    """The init fields of a config instance as a dict (values kept as they are)."""
    return {k: getattr(config, k) for k in fields(type(config))}


def absolute_paths(config: Any) -> Any:
    """``config`` with every ``path=True`` field made absolute (workers run elsewhere)."""
    changes = {}
    for name, f in fields(type(config)).items():
        value = getattr(config, name)
        if not f.metadata.get("path") or value in (None, "", "tiny-random"):
            continue
        if isinstance(value, list | tuple):
            changes[name] = type(value)(_absolute(v) for v in value)
        else:
            changes[name] = _absolute(value)
    return dataclasses.replace(config, **changes) if changes else config


def _absolute(value: str | Path) -> str | Path:
    text = str(value)
    if "://" in text or text == "tiny-random" or ":" in text.split("/", 1)[0]:
        return value  # a URI or a backend spec such as lmdeploy:/weights/x
    resolved = Path(text).expanduser().resolve()
    return resolved if isinstance(value, Path) else str(resolved)


# ---- command-line options from fields ----------------------------------------------------------


def cli_parameters(cls: type, defaults: Any = None) -> list[inspect.Parameter]:
    """Typer options for the ``cli=True`` fields of ``cls``; each defaults to None so that
    only options given on the command line override the preset and config file. The help
    shows the effective default (``defaults``, an instance, or the field default)."""
    import typer

    hints = _hints(cls)
    params = []
    for name, f in fields(cls).items():
        if not f.metadata.get("cli", True):
            continue
        tp = hints[name]
        shown = getattr(defaults, name) if defaults is not None else _default(f)
        flag = f.metadata.get("flag") or "--" + name.replace("_", "-")
        opt_type, decls = _cli_type(tp), [flag]
        if opt_type is bool and shown:
            decls = [f"{flag}/--no-{flag[2:]}"]
        help_text = f.metadata.get("help", "")
        show = _show(shown)
        choices = f.metadata.get("choices")
        if choices:  # an Enum: typer lists the choices and refuses a typo at parsing
            opt_type = enum.Enum(f"{name}_choices", {c: c for c in choices}, type=str)
        default = typer.Option(
            None, *decls, help=f"{help_text} (default: {show})" if show else help_text,
            show_default=False, metavar=None if choices else _metavar(opt_type),
        )  # fmt: skip
        params.append(
            inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=opt_type | None
            )
        )
    return params


def _metavar(tp: Any) -> str | None:
    """How an option's value is shown in --help (repeatable options take one value each)."""
    inner = typing.get_args(tp)[0] if typing.get_origin(tp) is list else tp
    return {Path: "PATH", int: "INT", float: "NUMBER", str: "TEXT"}.get(inner)


def _default(f: dataclasses.Field) -> Any:
    if f.default is not _MISSING:
        return f.default
    if f.default_factory is not _MISSING:
        return f.default_factory()
    return None


def _show(value: Any) -> str:
    if value is None or value is False or value == [] or value == ():
        return ""
    if isinstance(value, list | tuple):
        return ", ".join(map(str, value))
    return str(value)


def _unwrap(tp: Any) -> Any:
    """``X`` for ``X | None``, else ``tp``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return inner[0] if len(inner) == 1 else tp
    return tp


def _cli_type(tp: Any) -> Any:
    """The type typer parses for a field: optionals unwrapped, lists kept, others as text."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _cli_type(inner[0]) if len(inner) == 1 else str
    if origin is list and args and args[0] in (str, Path, int, float):
        return list[args[0]]
    if tp in (int, float, bool, str, Path):
        return tp
    return str  # dicts, tuples, literals: text, coerced (JSON or comma list) by from_dict


def cli_values(cls: type, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The named options a user gave (None means not given), decoded for ``from_dict``."""
    hints = _hints(cls)
    out = {}
    for name, value in kwargs.items():
        if value is None or name not in hints or value == []:
            continue
        if isinstance(value, enum.Enum):  # an option with choices
            value = value.value
        if isinstance(value, str) and _unwrap(hints[name]) not in (str, Path):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
        out[name] = value
    return out
