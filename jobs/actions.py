"""Ray job: Sekai camera trajectories -> keyboard/mouse action segments (``yume-data actions``).

Local:    yume-data actions --sekai /data/sekai-real-walking-hq --root ./data
Cluster:  ray job submit --address http://<head>:8265 --working-dir . -- \
              python -m jobs.actions --sekai /shared/sekai --root /shared/data
``yume-data sekai-actions`` is the same command. The stage is curation/stages/actions.py;
the runner (jobs/runner.py) does the rest.
"""

from curation.stages.actions import ActionsStage
from jobs.command import standalone

STAGE = ActionsStage
COMMAND = "actions"
PRESETS = None
ALIASES = ("sekai-actions",)

if __name__ == "__main__":
    standalone(STAGE, PRESETS)()
