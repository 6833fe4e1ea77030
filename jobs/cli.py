"""`yume-data`: the curation command line. Each command runs one Ray job from jobs/."""

from __future__ import annotations

import typer

app = typer.Typer(
    help="Build Yume-1.5 training data: Sekai actions, clips, shards, captions, synthetic video.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# ---- actions (issue: sekai-actions) -------------------------------------------------------
# ---- end actions ----------------------------------------------------------------------------

# ---- clips -----------------------------------------------------------------------------------
# ---- end clips -------------------------------------------------------------------------------

# ---- shards ----------------------------------------------------------------------------------
# ---- end shards ------------------------------------------------------------------------------

if __name__ == "__main__":
    app()
