"""Ray job: ``yume-data synth-score`` (curation/stages/synth_score.py; the runner does the rest).

Local:    yume-data synth-score --root ./data
Cluster:  ray job submit --address http://<head>:8265 --working-dir . -- \
              python -m jobs.synth_score --root /shared/data
"""

from curation.stages.synth_score import SynthScoreStage
from jobs.command import standalone

STAGE = SynthScoreStage
COMMAND = "synth-score"
PRESETS = None
ALIASES: tuple[str, ...] = ()

if __name__ == "__main__":
    standalone(STAGE, PRESETS)()
