"""``yume-data screening serve ROOT``: screen event videos in the browser, one key per decision.

The page records into the same decisions manifest as ``yume-data screening import``, so the
CSV round trip and the page can be used together, by several screeners at once. The lead
registers it beside export and import: ``jobs.screening.app.command("serve")(serve)``.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import typer

from curation.screening.server import make_server
from jobs.command import USER_ERRORS, fail


def _default_screener() -> str:
    return os.environ.get("USER") or "screener"


def serve(
    root: Path = typer.Argument(..., help="The data root (with manifests/events.parquet)."),
    port: int = typer.Option(8765, help="Port to listen on (0: any free port)."),
    host: str = typer.Option(
        "127.0.0.1", help="Address to bind; keep the default unless others must reach it."
    ),
    screener: str | None = typer.Option(
        None, help="Your name, recorded with every decision (default: $USER, else 'screener')."
    ),
) -> None:
    """Screen the event videos in the browser, one key press per decision.

    The page shows one undecided video at a time, looping, with its event text, category,
    score and contact sheet: k keep, r reject, u unsure, n note, left/right move, z undo.
    Each decision is written at once to the decisions manifest that `screening import`
    writes; each video shown is claimed for you, so two screeners never get the same one.
    Ctrl-C stops the server; reopening the page resumes at the first undecided video.
    """
    screener = screener or _default_screener()
    try:
        server = make_server(root, screener, host, port)
    except ValueError as e:
        fail(str(e), 2)
    except USER_ERRORS as e:
        fail(str(e))
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            fail(f"port {port} on {host} is in use: pick another with --port")
        fail(f"cannot listen on {host}:{port}: {e.strerror or e}")
    n = len(server.screening.events())
    typer.echo(f"screening {n} event videos as {screener!r}: open {server.url} (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        typer.echo("stopped")
    finally:
        server.server_close()
