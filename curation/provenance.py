"""Provenance recorded with every output: code version (with a dirty flag), config, the
versions of the libraries that shape the output, host, time."""

from __future__ import annotations

import datetime as _dt
import platform
import subprocess
from functools import lru_cache
from importlib import metadata
from pathlib import Path


@lru_cache(maxsize=1)
def code_version() -> str:
    """Package version plus the git commit when running from a checkout."""
    try:
        version = metadata.version("yume-data")
    except metadata.PackageNotFoundError:
        version = "unknown"
    here = Path(__file__).resolve().parent
    try:
        sha = _git(here, "rev-parse", "--short", "HEAD")
        dirty = bool(_git(here, "status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        sha, dirty = "", False
    if not sha:
        return version
    return f"{version}+g{sha}" + (".dirty" if dirty else "")


def _git(cwd: Path, *args: str) -> str:
    out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=5)
    return out.stdout.strip() if out.returncode == 0 else ""


LIBRARIES = ("torch", "ray", "av", "decord", "diffusers", "transformers", "pyarrow", "webdataset")


@lru_cache(maxsize=1)
def library_versions() -> dict[str, str | None]:
    """Installed versions of the libraries whose behaviour decides an output's bytes."""
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def provenance(stage: str, config: dict, **extra: object) -> dict:
    """The provenance record of one run of ``stage`` with ``config``."""
    from curation.manifest import config_hash

    return {
        "stage": stage,
        "code_version": code_version(),
        "libraries": library_versions(),
        "config": config,
        "config_hash": config_hash(config),
        "host": platform.node(),
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        **extra,
    }
