"""Ray job: prompts -> Wan2.1 T2V videos (``yume-data synth-generate``).

Local:    yume-data synth-generate --t2v tiny-random --resolution 32x32 --frames 9 \
              --steps 2 --root ./data
Cluster:  ray job submit --address http://<head>:8265 --working-dir . -- \
              python -m jobs.synth_generate --t2v /weights/Wan2.1-T2V-14B-Diffusers \
              --root /shared/data --workers 8 --gpus 1
The stage is curation/stages/synth_generate.py; the runner (jobs/runner.py) does the rest.
"""

from curation.stages.synth_generate import SynthGenerateStage
from jobs.command import standalone

STAGE = SynthGenerateStage
COMMAND = "synth-generate"
PRESETS = None
ALIASES: tuple[str, ...] = ()

if __name__ == "__main__":
    standalone(STAGE, PRESETS)()
