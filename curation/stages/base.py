"""The stage protocol every curation stage follows (no Ray in it).

A stage X lives in ``curation/stages/X.py`` as ``XStage`` with its frozen ``XConfig``; the job
runner (``jobs/runner.py``) runs it and ``jobs/X.py`` gives it its command ``yume-data X``.

- ``name``: the stage's name; it names ``manifests/<name>.parquet``, ``<name>.rejects.parquet``
  and ``reports/<name>.json``.
- ``resources``: what one worker needs (CPUs, GPUs, tasks or an actor pool, the environment).
- ``tables``: the schema of each output table; the one named ``name`` is the main manifest;
  ``sort_by`` the columns each is sorted by.
- ``discover()``: the input items, plain JSON-able dicts with a ``key`` (unique per output)
  and an ``input`` (the path or id a person recognises); an item may already carry a
  ``reject`` (reason, detail) found while discovering it.
- ``version_fields``: the item fields holding what the item was made from besides its input
  file (upstream table rows, a CSV row); a rerun redoes an item whose input file or these
  fields changed. ``drops_missing``: the inputs are another stage's records, so a key they
  no longer hold is dropped from this stage's tables (and its shards). ``forget(keys)``
  removes per-item outputs (staged files) before those keys are redone or dropped.
- ``setup()``: once per worker, before the first batch (model loads belong here).
- ``process(batch)``: one ``Outcome`` per item, done or rejected, plus the batch's rows.
- ``finalize(tables)``: once, on the driver, after the tables are written (pack shards,
  plots); returns extra report fields.

Everything that changes a stage's output is in its config (fields marked ``output=False`` are
where-and-how knobs, not hashed), so a rerun with another config is detected and refused.
"""

from __future__ import annotations

import errno
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Generic, TypeVar

import pyarrow as pa

from curation.config import output_config
from curation.dataroot import DataRoot
from curation.manifest import config_hash


class Reject(Exception):  # noqa: N818 (it is raised for an input, not an error of the code)
    """An input the stage does not accept: it becomes a rejects row with ``reason``.

    ``reason`` is a short code (``too_short``, ``corrupt_file``); ``detail`` says what was
    wrong in words a person can act on.
    """

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class FatalError(RuntimeError):
    """No later input could succeed either (the disk is full): the run stops, exit code 1.

    Rejecting every remaining input for it would bury the cause in the rejects table; the
    runner ends the job with one line instead, and a rerun resumes once space is freed.
    """


# Errors of the output disk, not of an input.
FATAL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def raise_if_fatal(error: BaseException, item: dict | None = None) -> None:
    """Re-raise ``error`` as a ``FatalError`` when it ends the run (a full disk or quota)."""
    if isinstance(error, FatalError):
        raise error
    if isinstance(error, OSError) and error.errno in FATAL_ERRNOS:
        what = error.strerror or errno.errorcode[error.errno]
        where = f" writing {error.filename}" if error.filename else ""
        during = f" (processing {item['input']})" if item else ""
        raise FatalError(
            f"{what}{where}{during}: free space and rerun, finished inputs are kept"
        ) from error


class StaleConfigError(RuntimeError):
    """The data root holds this stage's output made with another config."""


@dataclass(frozen=True)
class Resources:
    """What one worker of a stage needs; the runner turns it into Ray options.

    ``actor``: run an actor pool (``setup`` loads a model once per actor) rather than tasks.
    ``environment``: ``core`` (this project's environment) or the name of one that cannot
    share it (``lmdeploy``, ``vbench``); such a stage's backend reaches that environment
    through a server or a separate interpreter named in the stage's config.
    """

    cpus: float = 1.0
    gpus: float = 0.0
    actor: bool = False
    batch_size: int = 1  # items per process() call
    environment: str = "core"


@dataclass
class Outcome:
    """What became of one input item: ``done`` or ``rejected`` with a reason (or, decided
    by the runner, ``dropped``: its upstream record is gone)."""

    key: str
    input: str
    status: str  # "done" | "rejected" | "dropped"
    reason: str | None = None
    detail: str | None = None

    @classmethod
    def done(cls, item: dict) -> Outcome:
        return cls(item["key"], item["input"], "done")

    @classmethod
    def rejected(cls, item: dict, reason: str, detail: str) -> Outcome:
        return cls(item["key"], item["input"], "rejected", reason, detail)


@dataclass
class Result:
    """A processed batch: one outcome per item and the rows of each output table."""

    outcomes: list[Outcome]
    tables: dict[str, list[dict] | pa.Table] = field(default_factory=dict)


def unexpected(item: dict, error: BaseException) -> Outcome:
    """The outcome of an item whose processing raised something no stage foresaw."""
    where = traceback.extract_tb(error.__traceback__)[-1:] if error.__traceback__ else []
    at = f" at {where[0].filename.rsplit('/', 1)[-1]}:{where[0].lineno}" if where else ""
    detail = f"{type(error).__name__}: {str(error)[:300]}{at}"
    return Outcome.rejected(item, "unexpected_error", detail)


C = TypeVar("C")


class Stage(Generic[C]):
    """Base class of every stage; see the module docstring for the protocol."""

    name: ClassVar[str]
    config_cls: ClassVar[type]
    resources: ClassVar[Resources] = Resources()
    tables: ClassVar[dict[str, pa.Schema]]
    # the columns each table is sorted by when written (default: its first column), so a
    # table's bytes do not depend on how the work was batched
    sort_by: ClassVar[dict[str, list[str]]] = {}
    # what an item was made from besides its input file (see the module docstring)
    version_fields: ClassVar[tuple[str, ...]] = ()
    drops_missing: ClassVar[bool] = False

    def __init__(self, config: C, root: DataRoot):
        self.config = config
        self.root = DataRoot.at(root)

    # -- identity -----------------------------------------------------------------------------
    def output_config(self) -> dict:
        """The config fields that change the output (hashed into provenance and parts)."""
        return output_config(self.config)

    @property
    def config_hash(self) -> str:
        return config_hash(self.output_config())

    def provenance_extra(self) -> dict:
        """More provenance (inputs, models) recorded with the stage's tables and report."""
        return {}

    # -- work ---------------------------------------------------------------------------------
    def discover(self) -> Iterable[dict]:
        raise NotImplementedError

    def setup(self) -> None:
        """Once per worker before the first batch; load models here, never per item."""

    def process(self, batch: list[dict]) -> Result:
        """Default: ``process_item`` per item; a Reject or any error rejects only that item."""
        outcomes: list[Outcome] = []
        tables: dict[str, list[dict]] = {name: [] for name in self.tables}
        for item in batch:
            try:
                rows = self.process_item(item)
            except Reject as e:
                outcomes.append(Outcome.rejected(item, e.reason, e.detail))
                continue
            except Exception as e:  # one odd input must not end the job; it is recorded
                raise_if_fatal(e, item)  # ... but a full disk ends it
                outcomes.append(unexpected(item, e))
                continue
            outcomes.append(Outcome.done(item))
            for name, table_rows in rows.items():
                tables[name].extend(table_rows)
        return Result(outcomes, tables)

    def process_item(self, item: dict) -> dict[str, list[dict]]:
        """The output rows of one item per table, or raise Reject."""
        raise NotImplementedError

    def finalize(self, tables: dict[str, pa.Table]) -> dict:
        """Driver-side work after the tables are written; returns extra report fields."""
        return {}

    def forget(self, keys: set[str]) -> None:
        """Remove the per-item outputs of ``keys`` (about to be redone or dropped), so no
        output of an old version outlives it. Default: the stage keeps none."""

    def owned_outputs(self) -> list[Path]:
        """Folders only this stage writes (staging, its shards): removed by ``--overwrite``."""
        return []

    def describe_inputs(self) -> str:
        """Where the stage looked for inputs, for the message when it found none."""
        return "no input options given"
