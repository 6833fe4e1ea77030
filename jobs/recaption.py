"""Ray job: clip shards -> event captions per caption window -> a captioned shard set
(``yume-data recaption``).

Local:    yume-data recaption --datasets sekai-real --captioner tiny-random --root ./data
Cluster:  ray job submit --address http://<head>:8265 --working-dir . -- \
              python -m jobs.recaption --root /shared/data --datasets sekai-real \
              --captioner lmdeploy:/weights/InternVL3-78B --gpus 4 --workers 8 \
              --lmdeploy-python /opt/lmdeploy/bin/python --set 'server_command="..."'
          (each actor launches its own lmdeploy api_server on its GPUs), or against
          running servers: --captioner openai:http://caption-host:23333
The stage is curation/stages/recaption.py; the runner (jobs/runner.py) does the rest.
"""

from curation.stages.recaption import RecaptionConfig, RecaptionStage
from jobs.command import standalone
from model.backends.captioner_lmdeploy import DEFAULT_COMMAND

STAGE = RecaptionStage
COMMAND = "recaption"
PRESETS = {
    # the production captioner of Yume-1.5: InternVL3-78B behind lmdeploy, one per 4 GPUs
    "internvl3-78b": RecaptionConfig(
        captioner="lmdeploy:/weights/InternVL3-78B",
        gpus=4.0,
        server_command=DEFAULT_COMMAND + " --tp 4",
    ),
    "tiny": RecaptionConfig(captioner="tiny-random", frames_per_window=4, frame_size=56),
}
ALIASES: tuple[str, ...] = ()

if __name__ == "__main__":
    standalone(STAGE, PRESETS)()
