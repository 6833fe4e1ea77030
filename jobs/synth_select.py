"""Ray job: ``yume-data synth-select`` (curation/stages/synth_select.py; the runner does the rest).

Local:    yume-data synth-select --root ./data
Cluster:  ray job submit --address http://<head>:8265 --working-dir . -- \
              python -m jobs.synth_select --root /shared/data
"""

from curation.stages.synth_select import SynthSelectStage
from jobs.command import standalone

STAGE = SynthSelectStage
COMMAND = "synth-select"
PRESETS = None
ALIASES: tuple[str, ...] = ()

if __name__ == "__main__":
    standalone(STAGE, PRESETS)()
