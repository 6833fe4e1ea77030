"""Ray job: clip shards -> latent shards for `yume-train base --latents` (``yume-data
encode-latents``).

Local:    yume-data encode-latents --preset tiny --root ./data
Cluster:  ray job submit --address http://<head>:8265 --working-dir . -- \
              python -m jobs.encode_latents --preset wan22-5b --root /shared/data \
              --workers 8 --gpus 1
``--preset`` takes the geometry and encoders of a training preset (training/config.py), so
the latents match what that preset trains on. The stage is curation/stages/encode_latents.py.
"""

from curation.stages.encode_latents import EncodeLatentsConfig, EncodeLatentsStage
from jobs.command import standalone
from training.config import PRESETS as TRAIN_PRESETS
from training.config import TrainConfig
from training.mixture import mixture_datasets

STAGE = EncodeLatentsStage
COMMAND = "encode-latents"
ALIASES: tuple[str, ...] = ()


def from_train_config(cfg: TrainConfig) -> EncodeLatentsConfig:
    """The encode-latents config whose latents ``cfg`` trains on."""
    same = (
        "height", "width", "pred_latent_frames", "max_history_latent_frames", "vae",
        "text_encoder", "event_len", "action_len", "seed",
    )  # fmt: skip
    return EncodeLatentsConfig(
        datasets=mixture_datasets(cfg.datasets), **{f: getattr(cfg, f) for f in same}
    )


PRESETS = {name: from_train_config(cfg) for name, cfg in TRAIN_PRESETS.items()}

if __name__ == "__main__":
    standalone(STAGE, PRESETS)()
