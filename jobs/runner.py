"""The one job runner: every stage runs through ``run_stage``.

What it does for every stage, so no stage does it itself:

1. makes the root and every path in the config absolute (Ray workers on other nodes run in
   other working directories), refuses a root holding this stage's output made with another
   config (``--overwrite`` starts over);
2. discovers the inputs, de-duplicates keys (reason ``duplicate_key``), records the rejects
   found while discovering, refuses a known key that now names another input;
3. skips what is done (``curation/stages/parts.py`` has the one resume rule), redoes items
   whose version changed (their input file, upstream rows or CSV row) and, for a stage whose
   inputs are upstream records, drops keys those no longer hold; runs the rest as Ray tasks
   or an actor pool, as the stage's ``resources`` say, with a progress bar; each batch's
   parts are written by the worker that processed it;
4. writes every table, the rejects table and ``reports/<stage>.json`` with provenance,
   atomically; checks that inputs = accepted + rejected and fails loudly when not;
5. returns the summary, whose ``exit_code`` is 0 (all accepted), 3 (finished with rejects)
   or 1 (nothing found to work on).

A rerun with more inputs adds them: the tables and the accounting cover every run, and the
report lists the runs. ``--retry-rejected`` processes earlier rejects again.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from curation import locks
from curation.config import absolute_paths, option
from curation.dataroot import DataRoot
from curation.manifest import atomic_write_json, write_table
from curation.provenance import provenance
from curation.stages.base import (
    FatalError,
    Outcome,
    Result,
    Stage,
    StaleConfigError,
    raise_if_fatal,
    unexpected,
)
from curation.stages.parts import (
    item_version,
    part_name,
    read_status,
    read_table_parts,
    remove_uncommitted,
    stale_batches,
    write_part,
)
from jobs.runtime import init_ray
from schemas.common import REJECTS_SCHEMA

log = logging.getLogger(__name__)

DUPLICATE = "duplicate_key"
DROPPED = "dropped"  # status of a key the upstream records no longer hold
FATAL = "fatal"  # a worker's status row for a FatalError


class JobError(RuntimeError):
    """A job cannot run as asked; the message says what to change."""


@dataclass(frozen=True)
class RunOptions:
    """Where and how a stage runs; none of it changes the output."""

    root: Path = option(Path("data"), "Data root: manifests/, reports/, shards/ ... live here.")
    overwrite: bool = option(False, "Discard this stage's earlier results in --root first.")
    retry_rejected: bool = option(False, "Process inputs an earlier run rejected again.")
    workers: int | None = option(None, "Parallel workers (default: the cluster's CPUs).")
    batch_size: int | None = option(None, "Items per worker call (default: the stage's).")
    address: str | None = option(
        None, "Ray cluster address (default: $RAY_ADDRESS, else a Ray on this machine)."
    )
    num_cpus: int | None = option(None, "CPUs of the Ray started on this machine.")
    limit: int | None = option(None, "Process at most N new inputs (to try a job on a few).")
    dry_run: bool = option(False, "List what the run would process, and process nothing.")
    verbose: bool = option(False, "Show Ray's own console lines too.")
    progress: bool = option(True, "Show a progress bar.", cli=False)


# ---- the worker side ----------------------------------------------------------------------------

_STAGES: dict[tuple, Stage] = {}  # one set-up stage per worker process (tasks reuse workers)


def _stage_for(cls: type[Stage], config, root: str) -> Stage:
    key = (cls.__module__, cls.__qualname__, repr(config), root)
    if key not in _STAGES:
        stage = cls(config, DataRoot.at(root))
        stage.setup()
        _STAGES[key] = stage
    return _STAGES[key]


def process_batch(stage: Stage, items: list[dict], run: int) -> list[dict]:
    """Process one batch and write its parts; returns one status row per item.

    A batch whose ``process`` raises is processed again one item at a time, and an item
    that still raises is rejected as ``unexpected_error``: one bad input never ends a job.
    A ``FatalError`` (a full disk) ends it: no later input could succeed.
    """
    try:
        result = stage.process(items)
    except FatalError:
        raise
    except Exception:
        outcomes, tables = [], {name: [] for name in stage.tables}
        for item in items:
            try:
                one = stage.process([item])
            except Exception as e:
                raise_if_fatal(e, item)
                outcomes.append(unexpected(item, e))
                continue
            outcomes += one.outcomes
            for name, rows in one.tables.items():
                rows = rows.to_pylist() if isinstance(rows, pa.Table) else rows
                tables[name].extend(rows)
        result = Result(outcomes, tables)
    got = Counter((o.key, o.input) for o in result.outcomes)
    want = Counter((it["key"], it["input"]) for it in items)
    if got != want:
        raise RuntimeError(
            f"stage {stage.name!r} returned outcomes for {sorted(got)[:3]} but was given "
            f"{sorted(want)[:3]}: every item needs exactly one outcome (a bug in the stage)"
        )
    name = part_name(want, run)
    write_part(
        stage.root.parts(stage.name),
        name,
        result.outcomes,
        result.tables,
        stage.tables,
        stage.config_hash,
        run,
        versions={it["key"]: it.get("version") for it in items},
    )
    return [{"key": o.key, "status": o.status} for o in result.outcomes]


def _status_rows(stage: Stage, payloads, run: int) -> dict:
    """Status rows of a worker's batches, or one ``fatal`` row holding a FatalError's message.

    The FatalError is returned, not raised: Ray Data would log a raised one with its stack
    trace before the driver could print its one line.
    """
    rows = []
    try:
        for payload in payloads:
            rows += process_batch(stage, json.loads(payload), run)
    except FatalError as e:
        return {"key": [str(e)], "status": [FATAL]}
    return {"key": [r["key"] for r in rows], "status": [r["status"] for r in rows]}


def _task_fn(batch: dict, stage_cls, config, root: str, run: int) -> dict:
    return _status_rows(_stage_for(stage_cls, config, root), batch["payload"], run)


def _actor_class(stage_cls, config, root: str, run: int) -> type:
    """The pool's actor class, its arguments inside the class rather than passed to it.

    Why: constructor arguments go to Ray's object store, and an actor that may restart with
    arguments there makes every worker print a warning; the stage, config and root are small.
    """

    class StageActor:
        """An actor of the pool: the stage is set up once, then one batch per call."""

        def __init__(self) -> None:
            self.stage = stage_cls(config, DataRoot.at(root))
            self.stage.setup()

        def __call__(self, batch: dict) -> dict:
            return _status_rows(self.stage, batch["payload"], run)

    StageActor.__qualname__ = StageActor.__name__ = f"{stage_cls.__name__}Actor"
    return StageActor


def _run_on_ray(stage: Stage, batches: list[list[dict]], opts: RunOptions, run: int) -> None:
    import ray

    init_ray(opts.address, opts.num_cpus, opts.verbose)
    res = stage.resources
    cluster_cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    workers = max(
        1, min(opts.workers or max(1, int(cluster_cpus // max(res.cpus, 1))), len(batches))
    )
    ds = ray.data.from_items(
        [{"payload": json.dumps(b, default=str)} for b in batches],
        override_num_blocks=len(batches),
    )
    args = dict(stage_cls=type(stage), config=stage.config, root=str(stage.root), run=run)
    ray_args = {"num_cpus": res.cpus, "num_gpus": res.gpus} if res.gpus else {"num_cpus": res.cpus}
    if res.actor:
        ds = ds.map_batches(
            _actor_class(**args),
            batch_size=1,
            compute=ray.data.ActorPoolStrategy(size=workers),
            **ray_args,
        )
    else:
        ds = ds.map_batches(
            _task_fn, fn_kwargs=args, batch_size=1,
            compute=ray.data.TaskPoolStrategy(size=workers), **ray_args,
        )  # fmt: skip
    total = sum(len(b) for b in batches)
    live = opts.progress and sys.stderr.isatty()  # no terminal: one line at the end instead
    t0 = time.perf_counter()
    with tqdm(total=total, desc=stage.name, unit="item", disable=not live) as bar:
        for out in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            status = out.column("status").to_pylist()
            if FATAL in status:  # a full disk: stop here, finished batches are kept
                raise JobError(f"{stage.name}: {out.column('key')[status.index(FATAL)].as_py()}")
            bar.update(out.num_rows)
    if opts.progress and not live:
        print(f"{stage.name}: {total}/{total} items in {time.perf_counter() - t0:.1f} s",
              file=sys.stderr)  # fmt: skip


# ---- the driver side ----------------------------------------------------------------------------


def discover(stage: Stage) -> tuple[list[dict], list[Outcome]]:
    """The stage's items, first per key; later duplicates and discovery rejects as outcomes."""
    items, rejected, seen, inputs = [], [], {}, Counter()
    for item in stage.discover():
        if not isinstance(item.get("key"), str) or not isinstance(item.get("input"), str):
            raise RuntimeError(f"stage {stage.name!r} discovered an item without key/input")
        item = {**item, "version": item_version(item, stage.version_fields)}
        inputs[(item["key"], item["input"])] += 1
        if inputs[(item["key"], item["input"])] > 1:  # the very same input listed again
            item = {
                **item,
                "input": f"{item['input']} (repeat {inputs[(item['key'], item['input'])]})",
            }
        if item.get("reject"):
            reason, detail = item["reject"]
            rejected.append(Outcome.rejected(item, reason, detail))
        elif item["key"] in seen:
            detail = f"key {item['key']!r} is also {seen[item['key']]!r}; the first is kept"
            rejected.append(Outcome.rejected(item, DUPLICATE, detail))
        else:
            seen[item["key"]] = item["input"]
            items.append(item)
    return items, rejected


def _check_config(stage: Stage, status: pa.Table) -> None:
    found = set(status.column("config_hash").to_pylist()) - {stage.config_hash}
    if found:
        raise StaleConfigError(
            f"{stage.root} holds {stage.name} results made with another config "
            f"({', '.join(sorted(found))}; this run {stage.config_hash}): rerun with "
            "--overwrite to start over, or use another --root"
        )


def _check_inputs(stage: Stage, items: list[dict], status: pa.Table) -> set[str]:
    """Refuse a key that now names another input; return the keys whose version (input file,
    upstream rows, CSV row) changed since they were processed: they are redone."""
    rows = [r for r in status.to_pylist() if r["reason"] != DUPLICATE and r["status"] != DROPPED]
    recorded = {r["key"]: r["input"] for r in rows}
    versions = {r["key"]: r["input_version"] for r in rows}
    changed = set()
    for item in items:
        old = recorded.get(item["key"])
        if old is not None and old != item["input"]:
            raise JobError(
                f"{stage.name}: key {item['key']!r} was made from {old!r}, this run gives "
                f"{item['input']!r}; rerun with --overwrite to start over, or use another --root"
            )
        was = versions.get(item["key"])
        if was is not None and item["version"] not in (None, was):
            changed.add(item["key"])
    return changed


def _gone(
    stage: Stage, items: list[dict], rejected: list[Outcome], status: pa.Table
) -> list[Outcome]:
    """Drop outcomes for the keys a stage fed by upstream records no longer finds."""
    if not stage.drops_missing:
        return []
    found = {it["key"] for it in items} | {o.key for o in rejected}
    return [
        Outcome(r["key"], r["input"], DROPPED, "upstream_gone",
                "its upstream record is gone (the upstream stage was rerun)")
        for r in status.to_pylist()
        if r["key"] not in found and r["status"] != DROPPED and r["reason"] != DUPLICATE
    ]  # fmt: skip


def clear(stage: Stage) -> None:
    """Remove this stage's parts, tables, report and its own outputs (``--overwrite``)."""
    shutil.rmtree(stage.root.parts(stage.name), ignore_errors=True)
    for table in stage.tables:
        stage.root.manifest(table).unlink(missing_ok=True)
    stage.root.rejects(stage.name).unlink(missing_ok=True)
    stage.root.report(stage.name).unlink(missing_ok=True)
    for path in stage.owned_outputs():
        shutil.rmtree(path, ignore_errors=True)


def run_stage(stage_cls: type[Stage], config, opts: RunOptions | None = None) -> dict:
    """Run ``stage_cls`` with ``config`` to completion; returns the summary (see module).

    The run holds the stage's lock on the root: a second run of the stage on the same root
    fails at once naming the first (two runs would mix their outputs). A dry run only reads.
    """
    opts = opts or RunOptions()
    root = DataRoot.at(opts.root)
    if opts.dry_run:
        return _run_stage(stage_cls, config, opts, root)
    what = f"the {stage_cls.name} stage of {root}"
    with locks.hold(root.lock(stage_cls.name), what, "wait for it to end or use another --root"):
        return _run_stage(stage_cls, config, opts, root)


def _run_stage(stage_cls: type[Stage], config, opts: RunOptions, root: DataRoot) -> dict:
    t0 = time.perf_counter()
    stage = stage_cls(absolute_paths(config), root)
    parts = root.parts(stage.name)
    if opts.overwrite:
        clear(stage)
    status = read_status(parts)
    _check_config(stage, status)
    remove_uncommitted(parts, stage.tables)
    items, rejected = discover(stage)
    changed = _check_inputs(stage, items, status)
    dropped = _gone(stage, items, rejected, status)

    run = 1 + max(status.column("run").to_pylist(), default=0)
    latest = {r["key"]: r["status"] for r in status.to_pylist() if r["reason"] != DUPLICATE}
    redo = {"rejected"} if opts.retry_rejected else set()
    # a changed or dropped key's batch-mates are redone with it (see curation/stages/parts.py)
    stale = stale_batches(status, changed | {o.key for o in dropped}) - {o.key for o in dropped}
    todo = [
        it
        for it in items
        if latest.get(it["key"], "todo") in {"todo", DROPPED} | redo or it["key"] in stale
    ]
    if opts.limit is not None:
        todo = todo[: max(opts.limit, 0)]
        items = [it for it in items if it["key"] in latest or it in todo]
    if opts.dry_run:
        return {
            "stage": stage.name,
            "dry_run": True,
            "found": len(items) + len(rejected),
            "would_process": [it["input"] for it in todo],
            "would_redo_changed": sorted(stale & {it["key"] for it in todo}),
            "would_drop": sorted(o.key for o in dropped),
            "would_reject": [(o.input, o.reason) for o in rejected],
            "already_done": len(items) - len(todo),
            "exit_code": 0,
        }
    stage.forget(stale | {o.key for o in dropped})
    for outcomes in (rejected, dropped):
        if outcomes:
            name = part_name(((o.key, o.input) for o in outcomes), run)
            versions = {it["key"]: it["version"] for it in items}
            write_part(parts, name, outcomes, {}, stage.tables, stage.config_hash, run, versions)
    if todo:
        size = opts.batch_size or stage.resources.batch_size
        batches = [todo[i : i + size] for i in range(0, len(todo), size)]
        _run_on_ray(stage, batches, opts, run)

    status = read_status(parts)
    summary = write_outputs(stage, status, run_items=items, run_rejected=rejected)
    summary["this_run"] = {
        "run": run,
        "found": len(items) + len(rejected),
        "processed": len(todo),
        "redone_changed": len(stale & {it["key"] for it in todo}),
        "dropped": len(dropped),
        "skipped_done": len(items) - len(todo),
        "wall_s": round(time.perf_counter() - t0, 2),
    }
    if not items and not rejected:
        summary["exit_code"] = 1
        summary["error"] = f"{stage.name}: found no inputs ({stage.describe_inputs()})"
    summary["rejects_plot"] = plot_rejects(stage.name, summary, root)
    atomic_write_json(root.report(stage.name), summary)
    refresh_card(root)
    return summary


def plot_rejects(stage: str, summary: dict, root: DataRoot) -> str | None:
    """``reports/<stage>_rejects.png``: the stage's rejects by reason (none: no plot)."""
    plot = root.plot(stage, "rejects")
    reasons = summary.get("rejects_by_reason") or {}
    if not reasons:
        plot.unlink(missing_ok=True)  # an earlier run's chart would now be wrong
        return None
    from curation.reports import bar_chart, save_figure

    title = f"{stage}: {sum(reasons.values())} of {summary['inputs']} inputs rejected"
    return str(save_figure(bar_chart(reasons, title, "reason", "inputs"), plot))


def refresh_card(root: DataRoot) -> None:
    """Rewrite the data root's dataset card; a card that cannot be written never fails a job."""
    from curation.card import write_card

    try:
        write_card(root)
    except Exception as e:  # noqa: BLE001 - the job's own outputs are already written
        log.warning("could not refresh the dataset card %s/README.md: %s", root, e)


def write_outputs(
    stage: Stage, status: pa.Table, run_items: list[dict], run_rejected: list[Outcome]
) -> dict:
    """Consolidate the parts into the tables, rejects and report fields; check accounting."""
    root = stage.root
    status = status.filter(pc.not_equal(status["status"], DROPPED))  # gone: not an input now
    have = {(r["key"], r["input"]) for r in status.to_pylist()}
    missing = [
        (it["key"], it["input"])
        for it in [*run_items, *({"key": o.key, "input": o.input} for o in run_rejected)]
        if (it["key"], it["input"]) not in have
    ]
    if missing:
        raise RuntimeError(
            f"{stage.name}: {len(missing)} inputs have no outcome after the run "
            f"(e.g. {missing[:3]}): inputs != accepted + rejected"
        )
    prov = provenance(stage.name, stage.output_config(), **stage.provenance_extra())
    committed = set(status.column("part").to_pylist())
    done = status.filter(pc.equal(status["status"], "done"))
    tables = {}
    for name, schema in stage.tables.items():
        table = read_table_parts(root.parts(stage.name), name, schema, committed)
        order = stage.sort_by.get(name) or [schema.names[0]]
        table = table.sort_by([(c, "ascending") for c in order])
        tables[name] = write_table(table, root.manifest(name), schema, prov)
    rejected = status.filter(pc.equal(status["status"], "rejected"))
    rejects = pa.table(
        {
            "stage": [stage.name] * rejected.num_rows,
            "input": rejected.column("input"),
            "key": rejected.column("key"),
            "reason": rejected.column("reason"),
            "detail": rejected.column("detail"),
        }
    )
    write_table(rejects, root.rejects(stage.name), REJECTS_SCHEMA, prov)
    by_reason = dict(Counter(rejected.column("reason").to_pylist()).most_common())
    summary = {
        "stage": stage.name,
        "inputs": status.num_rows,
        "accepted": done.num_rows,
        "rejected": rejected.num_rows,
        "accounted": True,  # checked above: every input of this run has an outcome
        "rejects_by_reason": by_reason,
        "runs": sorted(set(status.column("run").to_pylist())),
        "tables": {name: t.num_rows for name, t in tables.items()},
        "provenance": prov,
    }
    summary |= stage.finalize(tables)
    summary["exit_code"] = 3 if rejected.num_rows else 0
    return summary
