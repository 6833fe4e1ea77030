"""``yume-data card ROOT``: rewrite the data root's dataset card (``ROOT/README.md``).

Every stage job refreshes the card when it ends; this command does it by hand, for example
after copying shard folders in or deleting one.
"""

from __future__ import annotations

from pathlib import Path

import typer

from jobs.command import fail


def card(
    root: Path = typer.Argument(Path("data"), help="Data root."),
    license_: str = typer.Option(
        "other", "--license", help="The card's license id (Hub identifiers, e.g. cc-by-4.0)."
    ),
) -> None:
    """Write ROOT/README.md: a Hugging Face dataset card of the shards, stages and rejects."""
    from curation.card import write_card

    if not root.is_dir():
        fail(f"data root {root} is not a folder: pass the --root your jobs wrote to")
    path = write_card(root, license_)
    typer.echo(f"wrote {path}")
