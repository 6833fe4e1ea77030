"""Ray job: caption tables (OpenVid-1M CSV) -> diverse captions (``yume-data dedup-captions``).

Local:    yume-data dedup-captions --captions data/sample-openvid/OpenVid-sample.csv --root ./data
Cluster:  ray job submit --address http://<head>:8265 --working-dir . -- \
              python -m jobs.dedup_captions --captions /shared/OpenVid-1M.csv \
              --root /shared/data --workers 8 --gpus 1
The stage is curation/stages/dedup_captions.py; the runner (jobs/runner.py) does the rest.
"""

from curation.stages.dedup_captions import DedupCaptionsStage
from jobs.command import standalone

STAGE = DedupCaptionsStage
COMMAND = "dedup-captions"
PRESETS = None
ALIASES: tuple[str, ...] = ()

if __name__ == "__main__":
    standalone(STAGE, PRESETS)()
