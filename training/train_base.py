"""Base training of the TSCM model: one readable loop, every knob in ``TrainConfig``.

Each step takes the step's task (T2V and I2V alternate), draws a batch from the dataset
mixture, splits it into history and prediction latents, noises the prediction block with
Wan's shifted rectified flow and regresses the velocity on prediction tokens only.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from curation.manifest import atomic_write_json
from curation.video import write_mp4
from model import flow
from model.sampling import Batch, predict_velocity, sample_block
from model.text import ActionEmbeddingCache, TextEncoder
from model.tscm import TSCMTransformer, select_history
from model.vae import VideoVAE
from training import distributed
from training.conditioning import Conditioner, stored_action_cache
from training.config import TrainConfig
from training.ema import EMA
from training.metrics import MetricsLog
from training.mixture import Mixture, Stream
from training.run import (
    check_run_folder,
    open_run,
    provenance_labels,
    rng_state,
    run_lock,
    save_checkpoint,
    save_config,
    save_sharded_checkpoint,
    seed_rngs,
    set_rng_state,
)
from training.sources import shard_streams


def build_transformer(cfg: TrainConfig) -> TSCMTransformer:
    """Wan2.2 weights from a local folder (TSCM branches at their identity init), or random."""
    if cfg.weights:
        root = Path(cfg.weights)
        sub = "transformer" if (root / "transformer").is_dir() else None
        model = TSCMTransformer.from_pretrained(
            root, subfolder=sub, low_cpu_mem_usage=False, local_files_only=True
        )
    else:
        with torch.random.fork_rng():
            torch.manual_seed(cfg.seed)
            model = TSCMTransformer.from_config_name(cfg.model)
    if cfg.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    return model


def flow_matching_loss(
    model: nn.Module, batch: Batch, cfg: TrainConfig, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss on the prediction block; noise and sigmas from ``gen`` (CPU, checkpointed)."""
    x0 = batch.prediction  # (B, 48, Fp, h, w) clean prediction latents
    noise = torch.randn(x0.shape, generator=gen).to(x0.device)
    sigma = flow.sample_sigmas(
        x0.shape[0], generator=gen, mode=cfg.sigma_sampling, shift=cfg.shift
    )  # (B,)
    keep = None
    if batch.history is not None:  # random temporal sampling of far history (1 in 32)
        keep = select_history(batch.history.shape[2], generator=gen)
    xt = flow.add_noise(x0, noise, sigma.to(x0.device))
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if x0.device.type == "cuda" and cfg.mixed_precision == "bf16"
        else contextlib.nullcontext()
    )
    with autocast:
        v = predict_velocity(model, xt, sigma, batch, keep)
    return flow.flow_loss(v, x0, noise), sigma


def write_video(path: Path, video: torch.Tensor, fps: float = 16.0) -> None:
    """uint8 (T, H, W, 3) -> H.264 mp4, written atomically."""
    write_mp4(path, [video.numpy()], fps, width=video.shape[2], height=video.shape[1])


class Trainer:
    """Holds what the loop needs; ``run`` is the loop."""

    def __init__(
        self,
        cfg: TrainConfig,
        *,
        streams: dict[tuple[str, str], Stream] | None = None,
        resume: bool = False,
        overwrite: bool = False,
    ):
        self.cfg = cfg
        self.t0 = time.perf_counter()
        self.ctx = distributed.context(cfg.parallel)
        self.out = Path(cfg.out_dir)
        rank = self.ctx.rank
        self.noise_gen = seed_rngs(cfg.seed, rank)

        # latent shards carry VAE latents and event embeddings: the encoders load only when
        # needed (the action cache missing -> UMT5 once; validation samples -> the VAE)
        self._vae: VideoVAE | None = None
        self._text: TextEncoder | None = None
        cache_path = self.out / f"action_cache-{cfg.action_style}.safetensors"
        self.actions = (cfg.latents and stored_action_cache(cache_path, cfg)) or (
            ActionEmbeddingCache.load_or_build(self.text, cache_path, cfg.action_style)
        )
        raw = not cfg.latents
        self.cond = Conditioner(
            cfg, self.vae if raw else None, self.text if raw else None, self.actions
        )
        self.batch_size = max(1, cfg.batch_size // self.ctx.world_size)  # per rank

        streams = streams if streams is not None else shard_streams(cfg, rank)
        self.mixture = Mixture(streams, cfg.datasets, cfg.tasks, seed=cfg.seed + 17 * rank)
        self.val_batch = self._validation_batch(streams)
        self.data_tiny_random = self.val_batch is not None and self.val_batch.tiny_random

        self.model = distributed.wrap(build_transformer(cfg).to(self.ctx.device), self.ctx)
        # from the wrapped model: under FSDP the shadow is sharded like the parameters
        self.ema = EMA(distributed.unwrap(self.model), cfg.ema_decay)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(
            params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay
        )
        warm = max(cfg.warmup_steps, 1)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: min(1.0, (s + 1) / warm))

        self.step = 0
        state = open_run(self.out, cfg, self.ctx, resume=resume, overwrite=overwrite)
        if state is not None:
            self._restore(state)
        if self.ctx.is_main:
            save_config(self.out, cfg)
        self.log = MetricsLog(self.out, resume_step=self.step) if self.ctx.is_main else None

    @property
    def vae(self) -> VideoVAE:
        if self._vae is None:
            self._vae = VideoVAE.load(self.cfg.vae).to(self.ctx.device)
        return self._vae

    @property
    def text(self) -> TextEncoder:
        if self._text is None:
            self._text = TextEncoder.load(
                self.cfg.text_encoder, event_len=self.cfg.event_len, action_len=self.cfg.action_len
            ).to(self.ctx.device)
        return self._text

    # ---- state ---------------------------------------------------------------------------

    def _labels(self) -> dict:
        """Provenance labels; tiny-random when any model or any sample seen so far is."""
        vae_id = self._vae.model_id if self._vae is not None else None
        return provenance_labels(self.cfg, data_tiny_random=self.data_tiny_random, vae_id=vae_id)

    def _state(self) -> dict:
        """The checkpoint state: whole tensors, or under FSDP this rank's shards."""
        model_sd, opt_sd = distributed.model_optimizer_state(self.model, self.opt, self.ctx)
        ema = {"decay": self.ema.decay, "shadow": dict(self.ema.shadow)}
        return {
            "step": self.step,
            "model": model_sd,
            "optimizer": opt_sd,
            "scheduler": self.sched.state_dict(),
            "ema": ema,
            "data": self.mixture.state_dict(),
            "rng": rng_state(self.noise_gen),
            "config": self.cfg.to_dict(),
            "labels": self._labels(),
        }

    def _restore(self, state: dict) -> None:
        distributed.load_model_optimizer_state(
            self.model, self.opt, state["model"], state["optimizer"], self.ctx
        )
        self.sched.load_state_dict(state["scheduler"])
        shadow = {
            n: distributed.shard_like(t, self.ema.shadow[n], f"ema/{n}")
            for n, t in state["ema"]["shadow"].items()
        }
        self.ema.load_state_dict({"decay": state["ema"]["decay"], "shadow": shadow})
        self.mixture.load_state_dict(state["data"])
        set_rng_state(state["rng"], self.noise_gen)
        self.step = state["step"]
        self.data_tiny_random |= bool(state["labels"]["tiny_random"])

    def save(self) -> None:
        state = self._state()  # collective when distributed: every rank builds it
        keep = self.cfg.keep_checkpoints
        if self.ctx.fsdp:  # every rank writes its shards
            save_sharded_checkpoint(self.out, self.step, state, self.ctx, keep=keep)
        elif self.ctx.is_main:
            save_checkpoint(self.out, self.step, state, keep=keep)

    # ---- validation ----------------------------------------------------------------------

    def _validation_batch(self, streams: dict[tuple[str, str], Stream]) -> Batch | None:
        """A fixed batch of one sample, I2V from one frame when there is I2V data."""
        if not self.cfg.val_every or not streams:
            return None
        (dataset, task) = next((k for k in sorted(streams) if k[1] == "i2v"), sorted(streams)[0])
        sample = Stream(streams[(dataset, task)].factory, seed=10_007 + self.cfg.seed).next()
        samples = self.cond.to_latent_samples([sample])
        batch = self.cond.batch(samples, task, np.random.default_rng(0))
        if batch.history is not None:
            batch = batch.keep_nearest(1)  # I2V from one image: the frame just before
        return batch.to(self.ctx.device)

    def _validating(self) -> bool:
        # under FSDP every rank runs the forwards (each holds a shard), rank 0 writes
        return self.val_batch is not None and (self.ctx.is_main or self.ctx.fsdp)

    def validate(self) -> dict:
        """Validation loss at fixed noise, and an Euler-sampled block decoded to mp4 (EMA).

        The EMA weights are swapped into the trained model in place and back after, so no
        second copy is needed; under FSDP every rank swaps its shards and runs the forwards
        (they are collectives) and rank 0 writes the sample."""
        batch = self.val_batch
        model = self.model if self.ctx.fsdp else distributed.unwrap(self.model)
        gen = torch.Generator().manual_seed(1234)
        with self.ema.swapped_in(model), torch.no_grad():
            model.eval()
            val_loss, _ = flow_matching_loss(model, batch, self.cfg, gen)
            pred = sample_block(model, batch, self.cfg.val_sampling_steps, self.cfg.shift, gen)
            if self.ctx.fsdp:
                model.reshard()  # the root stays gathered after a forward: shards again
        model.train()
        if not self.ctx.is_main:
            return {}
        parts = [batch.history, pred] if batch.history is not None else [pred]
        video = self.vae.decode(torch.cat(parts, dim=2))[0].cpu()  # (T, H, W, 3)
        tag = "tiny-random" if self._labels()["tiny_random"] else "model"
        path = self.out / "samples" / f"step-{self.step:06d}.{tag}.mp4"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_video(path, video)
        atomic_write_json(
            path.with_suffix(".json"),
            {"step": self.step, "task": batch.task, "val_loss": val_loss.item(), **self._labels()},
        )
        return {"val_loss": val_loss.item(), "sample": str(path)}

    # ---- the loop ------------------------------------------------------------------------

    def run(self) -> dict:
        cfg = self.cfg
        losses: list[float] = []
        bar = tqdm(
            range(self.step, cfg.steps), desc=f"train {cfg.name}", disable=not self.ctx.is_main
        )
        t0 = time.perf_counter()
        for _ in bar:
            task, samples = self.mixture.draw(self.step, self.batch_size)
            samples = self.cond.to_latent_samples(samples)
            batch = self.cond.batch(samples, task, self.mixture.rng).to(self.ctx.device)

            self.model.train()
            loss, sigma = flow_matching_loss(self.model, batch, cfg, self.noise_gen)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.opt.step()
            self.sched.step()
            self.ema.update(distributed.unwrap(self.model))
            self.step += 1

            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.4f}", task=task)
            row = {
                "step": self.step,
                "loss": losses[-1],
                "task": task,
                "history_frames": 0 if batch.history is None else batch.history.shape[2],
                "sigma_mean": sigma.mean().item(),
                "grad_norm": float(grad_norm),
                "lr": self.sched.get_last_lr()[0],
                "elapsed_s": round(time.perf_counter() - t0, 3),
                "tiny_random": cfg.tiny_random or batch.tiny_random,
            }
            self.data_tiny_random |= batch.tiny_random
            if self._validating() and self.step % cfg.val_every == 0:
                row |= self.validate()
            if self.log is not None and (self.step % cfg.log_every == 0 or "val_loss" in row):
                self.log.log(row)
            if self.step % cfg.ckpt_every == 0 or self.step == cfg.steps:
                self.save()
        return self.finish(losses)

    def finish(self, losses: list[float]) -> dict:
        summary = {
            "steps": self.step,
            "losses": losses,
            "datasets": self.cfg.datasets,
            # samples drawn per stream over the whole run (resumes included)
            "samples_read": {f"{d}/{t}": s.consumed for (d, t), s in self.mixture.streams.items()},
            "wall_s": round(time.perf_counter() - self.t0, 3),
            **self._labels(),
        }
        if self.log is None:
            return summary
        rows = [r for r in self.log.read() if "loss" in r]
        k = max(1, min(5, len(rows) // 4))
        if rows:
            summary |= {
                "loss_first_mean": sum(r["loss"] for r in rows[:k]) / k,
                "loss_last_mean": sum(r["loss"] for r in rows[-k:]) / k,
            }
        label = " (tiny-random)" if self._labels()["tiny_random"] else ""
        summary["loss_png"] = str(self.log.plot(f"{self.cfg.name} base training{label}"))
        atomic_write_json(
            self.out / "summary.json", {k: v for k, v in summary.items() if k != "losses"}
        )
        self.log.close()
        return summary


def train(cfg: TrainConfig, *, streams=None, resume: bool = False, overwrite: bool = False) -> dict:
    """Train ``cfg`` (or continue from ``<out>/checkpoints`` with ``resume``; ``overwrite``
    discards an earlier run's checkpoints there); returns a summary. On several workers:
    ``training.distributed.run_ray(train, cfg, resume=..., overwrite=...)``. The main rank
    holds the run folder's lock throughout (a second run into it fails at once) and checks
    the folder first (``check_run_folder``), before any shard scan or model load."""
    main = distributed.context(cfg.parallel).is_main
    if main:
        check_run_folder(cfg, resume, overwrite)
    with run_lock(cfg.out_dir) if main else contextlib.nullcontext():
        return Trainer(cfg, streams=streams, resume=resume, overwrite=overwrite).run()
