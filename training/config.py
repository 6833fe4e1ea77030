"""Every knob of base training in one dataclass, with the ``tiny`` and ``wan22-5b`` presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


@dataclass
class TrainConfig:
    name: str = "tiny"
    # ---- model: backends are "tiny-random" or a local diffusers folder -------------------
    model: str = "tiny"  # model.configs name of the TSCM transformer
    weights: str | None = None  # local Wan2.2-TI2V-5B diffusers folder (transformer/ inside)
    vae: str = "tiny-random"
    text_encoder: str = "tiny-random"
    event_len: int = 64  # text tokens of the event description
    action_len: int = 32  # text tokens of the action description
    action_style: str = "yume"  # phrase set of the action descriptions ("yume" | "yume5b")
    gradient_checkpointing: bool = False
    # ---- data ------------------------------------------------------------------------------
    data_root: str = "./data"
    latents: bool = False  # read pre-encoded latent shards (<root>/latents/) instead of clips
    datasets: dict[str, float] = field(default_factory=lambda: {"sekai-real": 1.0})
    # steps of each task per cycle: {"t2v": 1, "i2v": 1} alternates T2V and I2V steps
    tasks: dict[str, int] = field(default_factory=lambda: {"t2v": 1, "i2v": 1})
    # (H, W): the reader covers it with the aspect kept and centre-crops. 128x224 (0.571) is
    # 544x960's aspect (0.567) to within 1% (about 4 px cropped top and bottom at 544x960);
    # both must be multiples of 32 (VAE stride 16 x patch 2).
    height: int = 128
    width: int = 224
    pred_latent_frames: int = 2  # latent frames of the prediction block
    # most latent frames of I2V history (the prediction block may sit anywhere in the clip and
    # all frames before it up to this cap are history; the model samples and compresses them)
    max_history_latent_frames: int = 40  # tiny: 157 frames, about 10 s of a 16 fps clip
    batch_size: int = 2
    shuffle_buffer: int = 16
    # ---- flow matching ---------------------------------------------------------------------
    shift: float = 3.0
    sigma_sampling: str = "uniform"  # or "logit_normal"
    # ---- optimisation ----------------------------------------------------------------------
    steps: int = 40
    lr: float = 2e-3
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    grad_clip: float = 1.0
    ema_decay: float = 0.9  # short tiny runs; wan22-5b uses 0.999
    mixed_precision: str = "bf16"  # autocast dtype on CUDA; CPU always runs float32
    seed: int = 0
    # ---- outputs ---------------------------------------------------------------------------
    out_dir: str = "./runs/tiny"
    log_every: int = 1
    ckpt_every: int = 20
    keep_checkpoints: int = 3  # newest checkpoints kept on disk
    val_every: int = 20
    val_sampling_steps: int = 4
    # ---- distribution (Ray Train); 1 worker = plain single process -----------------------
    workers: int = 1
    gpus_per_worker: float = 0.0

    # fields a resumed run may change; any other difference from the checkpoint is refused
    RESUMABLE_CHANGES = frozenset(
        {"steps", "out_dir", "data_root", "workers", "gpus_per_worker", "log_every",
         "ckpt_every", "val_every", "keep_checkpoints"}
    )  # fmt: skip

    @property
    def tiny_random(self) -> bool:
        return "tiny-random" in (self.vae, self.text_encoder) or self.weights is None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        d = dict(d)
        d["betas"] = tuple(d.get("betas", (0.9, 0.999)))
        return cls(**{k: v for k, v in d.items() if k in {f.name for f in dataclasses.fields(cls)}})


PRESETS: dict[str, TrainConfig] = {
    # CPU, a few minutes on the demo shards, 128x224 pixels -> 8x14 latents, 4x7 tokens per frame.
    "tiny": TrainConfig(),
    # Yume-1.5 paper: Wan2.2-TI2V-5B, 704x1280, 16 fps, batch 40, Adam lr 1e-5, 10,000 iterations.
    "wan22-5b": TrainConfig(
        name="wan22-5b",
        model="wan22-5b",
        weights="./weights/Wan2.2-TI2V-5B-Diffusers",
        vae="./weights/Wan2.2-TI2V-5B-Diffusers",
        text_encoder="./weights/Wan2.2-TI2V-5B-Diffusers",
        event_len=448,
        action_len=64,
        latents=True,
        datasets={"sekai-real": 1.0, "synthetic": 1.0, "event": 1.0},
        height=704,
        width=1280,
        pred_latent_frames=8,
        max_history_latent_frames=1024,  # the whole clip (over a minute at 16 fps)
        batch_size=40,
        shuffle_buffer=256,
        shift=5.0,
        steps=10_000,
        lr=1e-5,
        weight_decay=0.0,
        warmup_steps=100,
        ema_decay=0.999,
        gradient_checkpointing=True,
        out_dir="./runs/wan22-5b",
        log_every=10,
        ckpt_every=500,
        val_every=500,
        val_sampling_steps=30,
    ),
}


def preset(name: str, **overrides: Any) -> TrainConfig:
    """A copy of preset ``name`` with ``overrides`` (None values are ignored)."""
    if name not in PRESETS:
        raise KeyError(f"unknown train config {name!r}; known: {sorted(PRESETS)}")
    return dataclasses.replace(
        PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}
    )
