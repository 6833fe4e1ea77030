"""Ray job: first-person images x event descriptions -> Wan2.2 I2V videos (``yume-data events``).

Local:    python -m curation.sample_images data/sample-images 4
          yume-data events --preset tiny --images data/sample-images --root ./data
Cluster:  ray job submit --address http://<head>:8265 --working-dir . -- \
              python -m jobs.events --images /shared/fpv-images --per-image 1 \
              --i2v /weights/Wan2.2-I2V-A14B-Diffusers --root /shared/data --workers 8 --gpus 1
The stage is curation/stages/events.py; the runner (jobs/runner.py) does the rest.
"""

from curation.stages.events import EventsConfig, EventsStage
from jobs.command import standalone

STAGE = EventsStage
COMMAND = "events"
# tiny: tiny-random Wan2.2 I2V on the CPU, a 48x48 pixel budget (16:9 images: 32x64), 9 frames,
# 2 steps: under a second a video
PRESETS = {
    "tiny": EventsConfig(
        i2v="tiny-random",
        max_area=48 * 48,
        frames=9,
        steps=2,
        max_sequence_length=16,
        min_image_side=16,
    ),  # fmt: skip
}
ALIASES: tuple[str, ...] = ()

if __name__ == "__main__":
    standalone(STAGE, PRESETS)()
