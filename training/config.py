"""Every knob of base training in one dataclass, with the ``tiny`` and ``wan22-5b`` presets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from curation.config import from_dict, option

PARALLEL = ("auto", "fsdp", "ddp")  # TrainConfig.parallel


@dataclass
class RunConfig:
    """The knobs base training and distillation share: the model and its encoders, the data
    it reads (geometry, mixture, tasks) and the run's bookkeeping. Each run's own dataclass
    adds the rest; a field it declares again keeps its place here with the new default."""

    name: str = option("tiny", "Run name (the preset's).", cli=False)
    # ---- model: backends are "tiny-random" or a local diffusers folder -------------------
    model: str = option("tiny", "model.configs name of the TSCM transformer.", cli=False)
    vae: str = option("tiny-random", "VAE: a local Wan2.2 folder or tiny-random.")
    text_encoder: str = option("tiny-random", "UMT5: a local Wan2.2 folder or tiny-random.")
    event_len: int = option(64, "Text tokens of the event description.", cli=False)
    action_len: int = option(32, "Text tokens of the action description.", cli=False)
    action_style: str = option("yume", "Action phrase set: yume or yume5b.", cli=False)
    gradient_checkpointing: bool = option(False, "Recompute block activations.", cli=False)
    # ---- data ------------------------------------------------------------------------------
    data_root: str = option("./data", "Data root with shards/ (or latents/).", flag="--root")
    latents: bool = option(False, "Read pre-encoded latent shards (latents/) instead of clips.")
    datasets: dict[str, float] = option(
        factory=lambda: {"sekai-real": 1.0},
        help="Mixture weights per dataset or dataset:task.",
        cli=False,
    )
    # steps of each task per cycle: {"t2v": 1, "i2v": 1} alternates T2V and I2V steps
    tasks: dict[str, int] = option(
        factory=lambda: {"t2v": 1, "i2v": 1}, help="Steps of each task per cycle.", cli=False
    )
    # a damaged shard (a tar member header that does not parse, a truncated tar) is skipped
    # and counted; past this share of a dataset's shards the run stops (bad storage or a bad
    # copy, not bad luck): raise it on --resume to finish a run on what is readable
    max_damaged_share: float = option(
        0.05, "Share of a dataset's shards that may be damaged before the run stops.", cli=False
    )
    # (H, W): the reader covers it with the aspect kept and centre-crops. 128x224 (0.571) is
    # 544x960's aspect (0.567) to within 1% (about 4 px cropped top and bottom at 544x960);
    # both must be multiples of 32 (VAE stride 16 x patch 2).
    height: int = option(128, "Frame height (multiple of 32).", cli=False)
    width: int = option(224, "Frame width (multiple of 32).", cli=False)
    pred_latent_frames: int = option(2, "Latent frames of the prediction block.", cli=False)
    # most latent frames of I2V history (the prediction block may sit anywhere in the clip and
    # all frames before it up to this cap are history; the model samples and compresses them)
    max_history_latent_frames: int = option(
        40, "Most latent frames of I2V history (tiny: about 10 s at 16 fps).", cli=False
    )
    shuffle_buffer: int = option(16, "Reader shuffle buffer (samples).", cli=False)
    shift: float = option(3.0, "Wan's timestep shift.", cli=False)
    mixed_precision: str = option("bf16", "Autocast dtype on CUDA (CPU: float32).", cli=False)
    seed: int = option(0, "Seed of everything random.", cli=False)
    # ---- outputs ---------------------------------------------------------------------------
    log_every: int = option(1, "Log every N steps.", cli=False)
    keep_checkpoints: int = option(3, "Newest checkpoints kept on disk.", cli=False)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TrainConfig(RunConfig):
    """Every knob of a base training run; ``--set KEY=VALUE`` sets any of them."""

    weights: str | None = option(
        None, "Local Wan2.2-TI2V-5B diffusers folder (transformer/ inside); none: random init."
    )
    batch_size: int = option(2, "Global batch size.")
    # ---- flow matching ---------------------------------------------------------------------
    sigma_sampling: str = option("uniform", "uniform or logit_normal.", cli=False)
    # ---- optimisation ----------------------------------------------------------------------
    steps: int = option(40, "Total optimiser steps.")
    lr: float = option(2e-3, "AdamW learning rate.")
    weight_decay: float = option(0.0, "AdamW weight decay.", cli=False)
    betas: tuple[float, float] = option((0.9, 0.999), "AdamW betas.", cli=False)
    warmup_steps: int = option(0, "Linear learning-rate warm-up steps.", cli=False)
    grad_clip: float = option(1.0, "Gradient-norm clip.", cli=False)
    ema_decay: float = option(0.9, "EMA decay (short tiny runs; wan22-5b: 0.999).", cli=False)
    # ---- outputs ---------------------------------------------------------------------------
    out_dir: str = option("./runs/tiny", "Run folder: checkpoints, metrics, samples.", flag="--out")
    ckpt_every: int = option(20, "Checkpoint every N steps.", cli=False)
    val_every: int = option(20, "Validation sample every N steps (0: never).", cli=False)
    val_sampling_steps: int = option(4, "Euler steps of a validation sample.", cli=False)
    # ---- distribution (Ray Train); 1 worker = plain single process -----------------------
    workers: int = option(1, "Ray Train workers (1: a plain single process).")
    gpus_per_worker: float = option(0.0, "GPUs per Ray Train worker.")
    # fsdp: each rank holds and checkpoints a shard of weights, optimiser and EMA (any device,
    # gloo on CPU); ddp: every rank a whole copy, rank 0 writes it; auto: fsdp on CUDA only
    parallel: str = option(
        "auto", "Several workers: fsdp, ddp or auto (fsdp on CUDA, ddp on CPU).", cli=False,
        choices=PARALLEL,
    )  # fmt: skip

    # fields a resumed run may change; any other difference from the checkpoint is refused
    RESUMABLE_CHANGES = frozenset(
        {"steps", "out_dir", "data_root", "workers", "gpus_per_worker", "parallel", "log_every",
         "ckpt_every", "val_every", "keep_checkpoints", "max_damaged_share"}
    )  # fmt: skip

    def __post_init__(self) -> None:
        if self.parallel not in PARALLEL:  # from_dict checks it too; this also covers code
            raise ValueError(f"parallel {self.parallel!r}: choose one of {', '.join(PARALLEL)}")

    @property
    def tiny_random(self) -> bool:
        return "tiny-random" in (self.vae, self.text_encoder) or self.weights is None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Strict: an unknown key or a value of the wrong type is a ConfigError naming it."""
        return from_dict(cls, d, "train config")


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


# ---- self-forcing distillation (`yume-train distill`) ------------------------------------------


@dataclass
class DistillConfig(RunConfig):
    """Every knob of a self-forcing DMD distillation run; ``--set KEY=VALUE`` sets any of them."""

    # ---- models: generator, real score and fake score all start from the base ----------------
    base: str | None = option(
        None,
        "Base model: a `yume-train base` run folder (its EMA weights) or a local Wan2.2 "
        "diffusers folder; none: random init of --set model (tests only).",
    )
    # ---- data: real windows give the first block's context and every block's texts -----------
    batch_size: int = option(1, "Rollouts per update.")
    # ---- the generator's few-step rollout ----------------------------------------------------
    shift: float = option(3.0, "Wan's timestep shift (the base run's).", cli=False)
    denoising_steps: tuple[int, ...] = option(
        (1000, 750, 500, 250), "Few-step timesteps (Self-Forcing denoising_step_list).", cli=False
    )
    warp_denoising_steps: bool = option(True, "Shift the few-step timesteps.", cli=False)
    rollout_blocks: int = option(3, "Prediction blocks per rollout.")
    same_exit_across_blocks: bool = option(
        True, "One random exit step for all blocks of a rollout (else one per block).", cli=False
    )
    # ---- DMD --------------------------------------------------------------------------------
    guidance_scale: float = option(
        3.0, "Real-score CFG: real = cond + g (cond - uncond) (effective scale g + 1).", cli=False
    )
    negative_prompt: str = option("", "Event text of the unconditional branch.", cli=False)
    min_score_sigma: float = option(0.02, "Lowest score noise level (after the shift).", cli=False)
    max_score_sigma: float = option(0.98, "Highest score noise level (after the shift).", cli=False)
    critic_updates: int = option(5, "Critic (fake-score) updates per generator update.")
    # ---- optimisation -----------------------------------------------------------------------
    steps: int = option(20, "Generator updates.")
    gen_lr: float = option(1e-4, "Generator AdamW learning rate.")
    critic_lr: float = option(1e-4, "Critic AdamW learning rate.")
    gen_betas: tuple[float, float] = option((0.0, 0.999), "Generator AdamW betas.", cli=False)
    critic_betas: tuple[float, float] = option((0.0, 0.999), "Critic AdamW betas.", cli=False)
    weight_decay: float = option(0.01, "AdamW weight decay (both).", cli=False)
    grad_clip: float = option(10.0, "Gradient-norm clip (both).", cli=False)
    ema_decay: float = option(0.9, "Generator EMA decay (wan22-5b: 0.99).", cli=False)
    ema_start_step: int = option(0, "EMA follows the weights exactly before this step.", cli=False)
    # ---- outputs ----------------------------------------------------------------------------
    out_dir: str = option("./runs/distill-tiny", "Run folder.", flag="--out")
    ckpt_every: int = option(10, "Checkpoint every N steps.", cli=False)
    val_every: int = option(10, "Validation rollout every N steps (0: never).", cli=False)
    val_blocks: int = option(4, "Blocks of a validation rollout.", cli=False)

    RESUMABLE_CHANGES = frozenset(
        {"steps", "out_dir", "data_root", "log_every", "ckpt_every", "val_every",
         "keep_checkpoints", "val_blocks", "max_damaged_share"}
    )  # fmt: skip

    @property
    def tiny_random(self) -> bool:
        return "tiny-random" in (self.vae, self.text_encoder) or self.base is None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DistillConfig:
        return from_dict(cls, d, "distill config")

    def data_config(self) -> TrainConfig:
        """The reader's view: a ``TrainConfig`` with this run's data, geometry and encoders (so
        latent shards from ``encode-latents`` with the base's config match)."""
        names = {f.name for f in dataclasses.fields(TrainConfig)}
        keep = {k: v for k, v in self.to_dict().items() if k in names}
        return TrainConfig(**keep | {"weights": None, "steps": self.steps})


DISTILL_PRESETS: dict[str, DistillConfig] = {
    # CPU, seconds per step on the demo shards; from the demo's tiny base run.
    "tiny": DistillConfig(),
    # Self-Forcing DMD (configs/self_forcing_dmd.yaml) on Yume-1.5's 5B: 600 generator steps.
    "wan22-5b": DistillConfig(
        name="wan22-5b",
        base="./runs/wan22-5b",
        model="wan22-5b",
        vae="./weights/Wan2.2-TI2V-5B-Diffusers",
        text_encoder="./weights/Wan2.2-TI2V-5B-Diffusers",
        event_len=448,
        action_len=64,
        latents=True,
        datasets={"sekai-real": 1.0, "synthetic": 1.0, "event": 1.0},
        height=704,
        width=1280,
        pred_latent_frames=8,
        max_history_latent_frames=1024,
        shuffle_buffer=256,
        shift=5.0,
        rollout_blocks=3,
        steps=600,
        gen_lr=2e-6,
        critic_lr=4e-7,
        ema_decay=0.99,
        ema_start_step=200,
        gradient_checkpointing=True,
        out_dir="./runs/distill-wan22-5b",
        log_every=10,
        ckpt_every=100,
        val_every=100,
    ),
}


def distill_preset(name: str, **overrides: Any) -> DistillConfig:
    """A copy of distill preset ``name`` with ``overrides`` (None values are ignored)."""
    if name not in DISTILL_PRESETS:
        raise KeyError(f"unknown distill config {name!r}; known: {sorted(DISTILL_PRESETS)}")
    return dataclasses.replace(
        DISTILL_PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}
    )


# ---- block-by-block sampling (`yume-train sample`) ----------------------------------------------


@dataclass
class SampleConfig:
    """Interactive few-step generation: N blocks under per-block actions and event texts."""

    name: str = option("tiny", "Preset name.", cli=False)
    weights: str | None = option(
        None,
        "A distill or base run folder (EMA weights; its model, encoders and geometry win) or "
        "a local Wan2.2 diffusers folder; none: random init (tiny-random).",
    )
    model: str = option("tiny", "model.configs name of the TSCM transformer.", cli=False)
    vae: str = option("tiny-random", "VAE: a local Wan2.2 folder or tiny-random.")
    text_encoder: str = option("tiny-random", "UMT5: a local Wan2.2 folder or tiny-random.")
    event_len: int = option(64, "Text tokens of the event description.", cli=False)
    action_len: int = option(32, "Text tokens of the action description.", cli=False)
    action_style: str = option("yume", "Action phrase set: yume or yume5b.", cli=False)
    height: int = option(128, "Frame height (multiple of 32).")
    width: int = option(224, "Frame width (multiple of 32).")
    pred_latent_frames: int = option(2, "Latent frames per block.", cli=False)
    shift: float = option(3.0, "Wan's timestep shift.", cli=False)
    denoising_steps: tuple[int, ...] = option(
        (1000, 750, 500, 250), "Few-step timesteps.", cli=False
    )
    warp_denoising_steps: bool = option(True, "Shift the few-step timesteps.", cli=False)
    image: str | None = option(None, "First frame (I2V); none: text-to-video.")
    prompt: str = option(
        "A first-person walk through a city street.",
        "Event description (the first block's; `ACTION|TEXT` in --actions switches it).",
    )
    actions: str = option(
        "W,W,W+A,←",
        "Per-block actions `W,W+A,←,S+D+↑→` (`ACTION|EVENT TEXT` switches the event from that "
        "block on), or a file with one block per line.",
    )
    blocks: int | None = option(None, "Blocks to generate (default: one per action; the last "
                                "action repeats).")  # fmt: skip
    out: str = option("./samples/sample.mp4", "Output mp4 (a .json beside it).", flag="--out")
    fps: float = option(16.0, "Output frame rate.", cli=False)
    seed: int = option(0, "Noise seed.")
    device: str = option("auto", "cpu, cuda or auto.")
    mixed_precision: str = option("bf16", "Autocast dtype on CUDA (CPU: float32).", cli=False)
    compile: bool = option(False, "torch.compile the transformer (GPU).")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SampleConfig:
        return from_dict(cls, d, "sample config")


SAMPLE_PRESETS: dict[str, SampleConfig] = {
    "tiny": SampleConfig(),
    "wan22-5b": SampleConfig(
        name="wan22-5b",
        weights="./runs/distill-wan22-5b",
        model="wan22-5b",
        vae="./weights/Wan2.2-TI2V-5B-Diffusers",
        text_encoder="./weights/Wan2.2-TI2V-5B-Diffusers",
        event_len=448,
        action_len=64,
        height=544,
        width=960,
        pred_latent_frames=8,
        shift=5.0,
    ),
}
