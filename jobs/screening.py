"""`yume-data screening export|import|status`: people screen the event videos.

``export`` claims a batch of undecided event videos for one screener (batches of several
screeners never overlap) and writes its CSV and contact sheets under ``<root>/screening/``;
``import`` validates filled-in CSVs, records their decisions in
``manifests/screening_decisions.parquet`` and rebuilds ``shards/event/`` from the kept
videos; ``status`` counts decisions per category. The lead registers the group in
jobs/cli.py: ``app.add_typer(jobs.screening.app, name="screening")`` (and the web page's
``serve`` on this app: ``app.command("serve")(jobs.screening_serve.serve)``).
"""

from __future__ import annotations

import getpass
from pathlib import Path

import typer

from curation.dataroot import DataRoot, DataRootError
from curation.screening.csvio import export_batch, import_csvs
from curation.screening.publish import write_event_shards
from curation.screening.status import STATES, write_status
from jobs.command import USER_ERRORS, fail
from jobs.runner import refresh_card

app = typer.Typer(
    help="Screen event videos: export CSV batches, import decisions, see the status, or "
    "screen in the browser (serve).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ROOT = typer.Option(Path("data"), help="Data root.")


@app.command("export")
def export(
    root: Path = ROOT,
    screener: str = typer.Option(
        None, help="Who screens this batch (default: the login name); recorded as the reviewer."
    ),
    batch_size: int = typer.Option(200, min=1, help="Videos in the batch."),
    out: Path | None = typer.Option(None, help="CSV path (default: screening/<screener>-N.csv)."),
) -> None:
    """Claim a batch of undecided event videos and write its CSV and contact sheets.

    Run again by the same screener, it gives the same videos (its claims) first; another
    screener gets other videos. Fill the decision column with keep, reject or unsure.
    """
    screener = screener or getpass.getuser()
    try:
        r = export_batch(root, screener, batch_size, out)
    except DataRootError as e:
        fail(str(e), 2)
    except USER_ERRORS as e:
        fail(str(e))
    if not r["rows"]:
        typer.echo(f"nothing to screen for {screener}: every event video is decided or claimed")
        return
    typer.echo(f"{r['csv']}: {r['rows']} videos for {screener}")
    if r["rejected"]:
        typer.echo(f"  {r['rejected']} videos without a contact sheet (unreadable): see "
                   "manifests/screening-export.rejects.parquet")  # fmt: skip


@app.command("import")
def import_(
    csvs: list[Path] = typer.Argument(..., help="Filled-in screening CSVs."),
    root: Path = ROOT,
    screener: str | None = typer.Option(
        None, help="Screener of rows whose screener cell is empty (or a CSV without one)."
    ),
    publish: bool = typer.Option(True, help="Rebuild shards/event from the kept videos."),
) -> None:
    """Validate the CSVs and record their decisions; kept videos go into shards/event.

    Nothing is recorded from a file with an error; every error names the file, row and
    column. Re-importing a file changes nothing; an edited one updates its decisions.
    """
    for path in csvs:
        if not path.is_file():
            fail(f"{path}: no such file", 2)
    try:
        results = import_csvs(root, csvs, screener)
        shards = write_event_shards(root) if publish else None
    except USER_ERRORS as e:
        fail(str(e))
    if shards is not None and shards["rebuilt"]:
        refresh_card(DataRoot.at(root))  # the card lists shards/event
    bad = [r for r in results if r["errors"]]
    for r in results:
        state = f"{len(r['errors'])} errors, nothing recorded" if r["errors"] else (
            f"recorded {r['recorded']}, unchanged {r['unchanged']}")  # fmt: skip
        typer.echo(f"{r['csv']}: {r['decided']} decided, {r['undecided']} undecided; {state}")
        for e in r["errors"]:
            typer.echo(f"error: {e}", err=True)
    if shards is not None:
        how = "rebuilt" if shards["rebuilt"] else "unchanged"
        typer.echo(f"shards/event {how}: {shards['samples']} samples in {shards['shards']} "
                   f"shards ({shards['kept']} kept, {shards['rejected']} could not be packed)")  # fmt: skip
    if bad:
        fail(f"{len(bad)} of {len(results)} files had errors; fix them and import again")


@app.command("status")
def status(root: Path = ROOT) -> None:
    """Counts per decision and category, undecided and claimed; writes a report and PNG."""
    try:
        s = write_status(root)
    except USER_ERRORS as e:
        fail(str(e))
    width = max([len("category"), *map(len, s["per_category"])])
    typer.echo("  ".join(["category".ljust(width), *(f"{h:>9}" for h in STATES)]))
    for cat, counts in [*s["per_category"].items(), ("total", s["totals"])]:
        typer.echo("  ".join([cat.ljust(width), *(f"{counts[h]:>9}" for h in STATES)]))
    claimed = ", ".join(f"{k} {n}" for k, n in s["claimed_by"].items()) or "none"
    typer.echo(f"claimed (undecided): {s['claimed']} ({claimed}); plot: {s['plot']}")


if __name__ == "__main__":
    app()
