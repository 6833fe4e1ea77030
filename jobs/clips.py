"""Ray job: Sekai source videos + action tokens -> staged training samples -> shards.

Local:    yume-data clips --videos data/sample-sekai/videos --root ./data
Cluster:  ray job submit --address http://<head>:8265 --working-dir . -- \
              python -m jobs.clips --videos /shared/sekai/videos --root /shared/data
The stage is curation/stages/clips.py; the runner (jobs/runner.py) does the rest.
"""

from curation.stages.clips import ClipsStage
from jobs.command import standalone

STAGE = ClipsStage
COMMAND = "clips"
PRESETS = None
ALIASES: tuple[str, ...] = ()

if __name__ == "__main__":
    standalone(STAGE, PRESETS)()
