"""Self-forcing DMD distillation with TSCM history: one readable loop, every knob in
``DistillConfig``.

Three copies of the base model: the **generator** (trainable, few-step), the **real score**
(frozen, with classifier-free guidance) and the **fake score** or critic (trainable). Each step:

1. a generator update: an autoregressive rollout of ``rollout_blocks`` blocks, each denoised
   with the few-step schedule (``[1000, 750, 500, 250]`` warped by the shift) up to one random
   exit step, with gradient only at that step; each later block sees the generator's own
   earlier clean outputs, detached, through the TSCM history (never real frames). The DMD
   loss ``0.5 ||x - sg(x - g)||^2``, ``g = (fake_x0 - real_x0) / mean|x - real_x0|`` per
   sample, is taken per block at a score noise level drawn with the shift and clamped;
2. ``critic_updates`` critic updates: a rollout without gradient, its blocks noised and the
   critic trained with the flow loss on them (each update on a fresh draw of windows).

Real windows (``training.sources`` / ``training.conditioning``) give only what conditions the
rollout: the first block's context (I2V: the window's first latent frame; T2V: none), the
event embedding, and each block's action (the most frequent per-frame action token over the
window frames the block stands for). Outputs: ``metrics.jsonl``, ``loss.png``, validation
rollouts ``samples/step-*.{tiny-random,model}.mp4`` with their per-block actions, checkpoints
with a bit-identical resume (``training.run``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import pickle
import time
from dataclasses import dataclass
from pathlib import Path, PurePath

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from curation.manifest import atomic_write_json
from curation.provenance import code_version
from model import flow
from model.sampling import (
    Batch,
    autocast,
    few_step_sigmas,
    predict_velocity,
    rollout,
)
from model.text import ActionEmbeddingCache, TextEncoder, encoder_id
from model.tscm import TSCMTransformer
from model.vae import STRIDE, VideoVAE
from schemas.actions import KEYS, MOUSE
from training import distributed
from training.conditioning import Conditioner, _mode, stored_action_cache
from training.config import DistillConfig
from training.ema import EMA
from training.metrics import MetricsLog
from training.mixture import Mixture, Stream
from training.run import (
    check_run_folder,
    load_latest,
    open_run,
    rng_state,
    run_lock,
    save_checkpoint,
    save_config,
    seed_rngs,
    set_rng_state,
)
from training.sources import shard_streams

log = logging.getLogger(__name__)

# fields a base run must share with the distillation (the weights only work with them)
BASE_FIELDS = ("model", "vae", "text_encoder", "event_len", "action_len", "action_style")


# ---- the base model ------------------------------------------------------------------------


def load_transformer(source: str | None, model: str, seed: int = 0) -> tuple[TSCMTransformer, dict]:
    """A TSCM transformer and where it came from.

    ``source`` is a run folder of ``yume-train base`` or ``distill`` (its latest checkpoint's
    EMA weights; the info carries the run's config), a local diffusers folder (Wan2.2, with
    ``transformer/`` inside or the transformer folder itself), or None (random init of config
    ``model`` seeded with ``seed``). Returns (model in float32 train mode, info)."""
    if source is None:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            net = TSCMTransformer.from_config_name(model)
        return net, {"transformer": f"random-init:{model}", "config": None, "tiny_random": True}
    root = Path(source)
    found = load_latest(root)
    if found is not None:
        ckpt, state = found
        saved = state["config"]
        with torch.random.fork_rng():
            net = TSCMTransformer.from_config_name(saved["model"])
        shadow = state["ema"]["shadow"]
        names = dict(net.named_parameters())
        if set(shadow) != set(names):
            missing = sorted(set(names) - set(shadow))[:3]
            raise ValueError(f"{ckpt}: EMA weights do not fit model {saved['model']} ({missing})")
        with torch.no_grad():
            for n, p in names.items():
                p.copy_(shadow[n])
        info = {
            "transformer": f"{root}:{ckpt.name}:ema",
            "config": saved,
            "tiny_random": bool(state["labels"].get("tiny_random", True)),
        }
        return net.train(), info
    if not root.is_dir():
        raise FileNotFoundError(f"base {root}: neither a run folder nor a diffusers folder")
    sub = "transformer" if (root / "transformer").is_dir() else None
    net = TSCMTransformer.from_pretrained(
        root, subfolder=sub, low_cpu_mem_usage=False, local_files_only=True
    )
    # a folder from `yume-train export` keeps its run's labels (a tiny-random run stays one)
    exported = root / "export.json"
    labels = json.loads(exported.read_text()).get("labels", {}) if exported.is_file() else {}
    info = {"transformer": str(root), "config": None,
            "tiny_random": bool(labels.get("tiny_random", False))}  # fmt: skip
    return net.float().train(), info


def check_base(cfg, saved: dict | None) -> None:
    """Refuse a base run made with another model, encoders or text lengths (named)."""
    if saved is None:
        return
    norm = lambda k, v: PurePath(str(v)).name if k in ("vae", "text_encoder") else v  # noqa: E731
    differ = [
        k for k in BASE_FIELDS if k in saved and norm(k, saved[k]) != norm(k, getattr(cfg, k))
    ]
    if differ:
        lines = ", ".join(f"{k}: base {saved[k]!r}, here {getattr(cfg, k)!r}" for k in differ)
        raise ValueError(f"the base run was made with other settings ({lines})")


# ---- conditioning of a rollout from real windows -------------------------------------------


def block_pixel_ranges(task: str, fp: int, blocks: int) -> list[tuple[int, int]]:
    """Pixel frames of a window each block stands for. Latent frame 0 is pixel frame 0 and
    latent frame j >= 1 is pixel frames [1 + 4(j-1), 1 + 4j). I2V: latent frame 0 is the
    context and block k is latent frames [1 + k fp, 1 + (k+1) fp); T2V: block k is
    [k fp, (k+1) fp)."""
    ft = STRIDE[0]
    first = 1 if task == "i2v" else 0
    out = []
    for k in range(blocks):
        a, b = first + k * fp, first + (k + 1) * fp
        out.append((0 if a == 0 else 1 + ft * (a - 1), 1 + ft * (b - 1)))
    return out


@dataclass
class RolloutStart:
    """What conditions a rollout: context latents, per-block texts and action labels."""

    context: torch.Tensor | None  # (B, C, 1, h, w) or None (T2V)
    texts: list[torch.Tensor]  # per block (B, Le + La, D)
    labels: list[list[tuple[int, int]]]  # per block, per sample (keys, mouse) codes
    tiny_random: bool


def rollout_start(
    samples: list[dict], task: str, blocks: int, fp: int, actions: ActionEmbeddingCache
) -> RolloutStart:
    """The start of a rollout from latent samples (``Conditioner.to_latent_samples``): I2V
    from each window's first latent frame, every block's action the most frequent label of the
    window frames it stands for (a block past the window's end keeps the last label)."""
    ranges = block_pixel_ranges(task, fp, blocks)
    labels: list[list[tuple[int, int]]] = []
    for k, (a, b) in enumerate(ranges):
        row = []
        for j, s in enumerate(samples):
            n = len(s["keys"])
            if a < n:
                row.append(_mode(s["keys"][a : min(b, n)], s["mouse"][a : min(b, n)]))
            else:  # past the window: the previous block's action
                row.append(labels[k - 1][j] if k else (0, 0))
        labels.append(row)
    event = torch.stack([s["event_emb"] for s in samples]).float()  # (B, Le, D)
    texts = [action_text(event, row, actions) for row in labels]
    context = None
    if task == "i2v":
        context = torch.stack([s["latents"][:, :1] for s in samples]).float()  # (B, C, 1, h, w)
    return RolloutStart(context, texts, labels, any(bool(s["tiny_random"]) for s in samples))


def action_text(
    event: torch.Tensor, labels: list[tuple[int, int]], actions: ActionEmbeddingCache
) -> torch.Tensor:
    """Event (B, Le, D) + the cached action embeddings of ``labels`` -> (B, Le + La, D)."""
    keys = torch.tensor([k for k, _ in labels])
    mouse = torch.tensor([m for _, m in labels])
    return torch.cat([event, actions.lookup(keys, mouse).float().to(event.device)], dim=1)


# ---- DMD -------------------------------------------------------------------------------------


def score_sigmas(n: int, gen: torch.Generator, cfg: DistillConfig) -> torch.Tensor:
    """Score noise levels (n,): uniform, shifted, clamped to [min, max]_score_sigma."""
    u = torch.rand(n, generator=gen)
    return flow.shift_sigma(u, cfg.shift).clamp(cfg.min_score_sigma, cfg.max_score_sigma)


def predict_x0(
    model: nn.Module, x_t: torch.Tensor, sigma: torch.Tensor, batch: Batch, keep
) -> torch.Tensor:
    """A velocity model's clean-latent estimate ``x_t - sigma v`` (float32)."""
    v = predict_velocity(model, x_t, sigma, batch, keep)
    return flow.predict_x0(x_t, v.float(), sigma.to(x_t.device))


def guided_x0(
    model: nn.Module,
    x_t: torch.Tensor,
    sigma: torch.Tensor,
    batch: Batch,
    keep,
    uncond: torch.Tensor | None,
    scale: float,
) -> torch.Tensor:
    """Self-Forcing's CFG: ``cond + scale (cond - uncond)`` (``uncond`` (1, L, D) text)."""
    cond = predict_x0(model, x_t, sigma, batch, keep)
    if not scale or uncond is None:
        return cond
    text = uncond.to(batch.text).expand_as(batch.text)
    free = predict_x0(model, x_t, sigma, dataclasses.replace(batch, text=text), keep)
    return cond + scale * (cond - free)


def dmd_gradient(x: torch.Tensor, real_x0: torch.Tensor, fake_x0: torch.Tensor) -> torch.Tensor:
    """DMD eq. 7-8: ``(fake_x0 - real_x0) / mean|x - real_x0|`` per sample, NaNs zeroed."""
    dims = list(range(1, x.ndim))
    norm = (x - real_x0).abs().mean(dim=dims, keepdim=True)
    return torch.nan_to_num((fake_x0 - real_x0) / norm)


def dmd_loss(x: torch.Tensor, real_x0: torch.Tensor, fake_x0: torch.Tensor) -> torch.Tensor:
    """``0.5 mse(x, sg(x - g))`` in float64: its gradient in ``x`` is ``g / x.numel()``."""
    g = dmd_gradient(x.detach(), real_x0.detach(), fake_x0.detach())
    return 0.5 * F.mse_loss(x.double(), (x.double() - g.double()).detach())


def generator_loss(
    outs, real: nn.Module, fake: nn.Module, cfg: DistillConfig, gen: torch.Generator, uncond
) -> tuple[torch.Tensor, dict]:
    """Mean DMD loss over the rollout's blocks (scores see each block's own history)."""
    losses, sigmas = [], []
    for batch, x, keep in outs:
        b = x.shape[0]
        sigma = score_sigmas(b, gen, cfg)
        noise = torch.randn(x.shape, generator=gen).to(x.device)
        with torch.no_grad():
            x_t = flow.add_noise(x.detach(), noise, sigma.to(x.device))
            fake_x0 = predict_x0(fake, x_t, sigma, batch, keep)
            real_x0 = guided_x0(real, x_t, sigma, batch, keep, uncond, cfg.guidance_scale)
        losses.append(dmd_loss(x, real_x0, fake_x0))
        sigmas.append(sigma)
    return torch.stack(losses).mean().float(), {"score_sigma": torch.cat(sigmas).mean().item()}


def critic_loss(outs, fake: nn.Module, cfg: DistillConfig, gen: torch.Generator) -> torch.Tensor:
    """Flow loss of the critic on noised (detached) generator blocks, mean over blocks."""
    losses = []
    for batch, x, keep in outs:
        x = x.detach()
        sigma = score_sigmas(x.shape[0], gen, cfg)
        noise = torch.randn(x.shape, generator=gen).to(x.device)
        x_t = flow.add_noise(x, noise, sigma.to(x.device))
        v = predict_velocity(fake, x_t, sigma, batch, keep)
        losses.append(flow.flow_loss(v, x, noise))
    return torch.stack(losses).mean()


def draw_exit(cfg: DistillConfig, gen: torch.Generator) -> int | list[int]:
    """The rollout's exit step(s), uniform over the few-step list."""
    n = len(cfg.denoising_steps)
    if cfg.same_exit_across_blocks:
        return int(torch.randint(n, (1,), generator=gen))
    return torch.randint(n, (cfg.rollout_blocks,), generator=gen).tolist()


# ---- the loop --------------------------------------------------------------------------------


class Distiller:
    """Holds what the loop needs; ``run`` is the loop."""

    def __init__(
        self,
        cfg: DistillConfig,
        *,
        streams: dict[tuple[str, str], Stream] | None = None,
        resume: bool = False,
        overwrite: bool = False,
    ):
        self.cfg = cfg
        self.t0 = time.perf_counter()
        self.ctx = distributed.context()
        if self.ctx.world_size > 1:
            raise ValueError("yume-train distill runs in a single process")
        self.device = self.ctx.device
        self.out = Path(cfg.out_dir)
        self.data_cfg = cfg.data_config()
        self.noise_gen = seed_rngs(cfg.seed, 0)
        self._code = code_version()  # git status: once per run, not per step
        self.sigmas = few_step_sigmas(cfg.denoising_steps, cfg.shift, cfg.warp_denoising_steps)

        base, self.base_info = load_transformer(cfg.base, cfg.model, cfg.seed)
        check_base(cfg, self.base_info["config"])
        base = base.to(self.device)
        if cfg.gradient_checkpointing:
            base.enable_gradient_checkpointing()
        self.generator = base
        self.fake = copy.deepcopy(base)
        self.real = copy.deepcopy(base).eval().requires_grad_(False)

        self._vae: VideoVAE | None = None
        self._text: TextEncoder | None = None
        self.actions = self._action_cache()
        self.uncond = self._uncond_text() if cfg.guidance_scale else None
        raw = not cfg.latents
        self.cond = Conditioner(
            self.data_cfg, self.vae if raw else None, self.text if raw else None, self.actions
        )
        streams = streams if streams is not None else shard_streams(self.data_cfg, 0)
        self.mixture = Mixture(streams, cfg.datasets, cfg.tasks, seed=cfg.seed + 17)
        self.val = self._validation_start(streams)
        self.data_tiny_random = bool(self.val and self.val[1].tiny_random)

        self.ema = EMA(self.generator, cfg.ema_decay)
        self.opt_g = torch.optim.AdamW(
            self.generator.parameters(),
            lr=cfg.gen_lr,
            betas=cfg.gen_betas,
            weight_decay=cfg.weight_decay,
        )
        self.opt_c = torch.optim.AdamW(
            self.fake.parameters(),
            lr=cfg.critic_lr,
            betas=cfg.critic_betas,
            weight_decay=cfg.weight_decay,
        )
        self.step = self.gen_updates = self.critic_steps = 0
        state = open_run(self.out, cfg, self.ctx, resume=resume, overwrite=overwrite)
        if state is not None:
            self._restore(state)
        save_config(self.out, cfg)
        self.log = MetricsLog(self.out, resume_step=self.step)

    # ---- encoders (loaded only when needed) ------------------------------------------------

    @property
    def vae(self) -> VideoVAE:
        if self._vae is None:
            self._vae = VideoVAE.load(self.cfg.vae).to(self.device)
        return self._vae

    @property
    def text(self) -> TextEncoder:
        if self._text is None:
            self._text = TextEncoder.load(
                self.cfg.text_encoder, event_len=self.cfg.event_len, action_len=self.cfg.action_len
            ).to(self.device)
        return self._text

    def _action_cache(self) -> ActionEmbeddingCache:
        """The run's cache, else the base run's (same encoder, style, length), else built."""
        name = f"action_cache-{self.cfg.action_style}.safetensors"
        mine = self.out / name
        for path in [mine] + ([Path(self.cfg.base) / name] if self.cfg.base else []):
            cache = stored_action_cache(path, self.cfg)
            if cache is not None:
                if path != mine:
                    cache.save(mine)
                return cache
        return ActionEmbeddingCache.load_or_build(self.text, mine, self.cfg.action_style)

    def _uncond_text(self) -> torch.Tensor:
        """(1, Le + La, D): the negative prompt as event text and an empty action (zeros, as
        padding is), encoded once and kept in the run folder."""
        path = self.out / "negative_text.pt"
        ident = {"encoder": encoder_id(self.cfg.text_encoder), "prompt": self.cfg.negative_prompt}
        ident |= {"event_len": self.cfg.event_len, "action_len": self.cfg.action_len}
        if path.exists():
            try:  # tensors and plain data only: the restricted unpickler runs no code
                saved = torch.load(path, map_location="cpu", weights_only=True)
            except (pickle.UnpicklingError, RuntimeError, EOFError) as e:
                log.warning("%s is not a plain tensor file (%s): encoding it again", path, e)
                saved = {"id": None}
            if isinstance(saved, dict) and saved.get("id") == ident:
                return saved["text"].to(self.device)
        event = self.text.encode_events([self.cfg.negative_prompt]).float().cpu()  # (1, Le, D)
        text = torch.cat([event, torch.zeros(1, self.cfg.action_len, event.shape[2])], dim=1)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"id": ident, "text": text}, path)
        return text.to(self.device)

    # ---- state -------------------------------------------------------------------------------

    def _labels(self) -> dict:
        tiny = self.cfg.tiny_random or self.base_info["tiny_random"] or self.data_tiny_random
        return {
            "tiny_random": bool(tiny),
            "vae": self._vae.model_id if self._vae is not None else self.cfg.vae,
            "text_encoder": encoder_id(self.cfg.text_encoder),
            "transformer": self.base_info["transformer"],
            "distilled": "self-forcing-dmd",
            "code_version": self._code,
        }

    def _state(self) -> dict:
        return {
            "step": self.step,
            "counts": {"generator": self.gen_updates, "critic": self.critic_steps},
            "generator": self.generator.state_dict(),
            "fake_score": self.fake.state_dict(),
            "opt_generator": self.opt_g.state_dict(),
            "opt_critic": self.opt_c.state_dict(),
            "ema": self.ema.state_dict(),
            "data": self.mixture.state_dict(),
            "rng": rng_state(self.noise_gen),
            "config": self.cfg.to_dict(),
            "labels": self._labels(),
        }

    def _restore(self, state: dict) -> None:
        self.generator.load_state_dict(state["generator"])
        self.fake.load_state_dict(state["fake_score"])
        self.opt_g.load_state_dict(state["opt_generator"])
        self.opt_c.load_state_dict(state["opt_critic"])
        self.ema.load_state_dict(state["ema"])
        self.mixture.load_state_dict(state["data"])
        set_rng_state(state["rng"], self.noise_gen)
        self.step = state["step"]
        self.gen_updates = state["counts"]["generator"]
        self.critic_steps = state["counts"]["critic"]
        self.data_tiny_random |= bool(state["labels"]["tiny_random"])

    def save(self) -> None:
        save_checkpoint(self.out, self.step, self._state(), keep=self.cfg.keep_checkpoints)

    # ---- one update each -----------------------------------------------------------------------

    def _start(self) -> RolloutStart:
        task, samples = self.mixture.draw(self.step, self.cfg.batch_size)
        samples = self.cond.to_latent_samples(samples)
        start = rollout_start(
            samples, task, self.cfg.rollout_blocks, self.cfg.pred_latent_frames, self.actions
        )
        self.data_tiny_random |= start.tiny_random
        return start

    def _rollout(self, model: nn.Module, start: RolloutStart, exit_index, grad: bool):
        b = len(start.labels[0])
        h, w = self.cfg.height // STRIDE[1], self.cfg.width // STRIDE[2]
        shape = (b, self.generator.config.in_channels, self.cfg.pred_latent_frames, h, w)
        context = None if start.context is None else start.context.to(self.device)
        return rollout(
            model,
            context,
            [t.to(self.device) for t in start.texts],
            shape,
            self.sigmas,
            self.noise_gen,
            exit_index=exit_index,
            grad=grad,
            tiny_random=start.tiny_random,
        )

    def generator_step(self) -> dict:
        cfg = self.cfg
        start = self._start()
        exit_index = draw_exit(cfg, self.noise_gen)
        self.generator.train()
        with autocast(self.device, cfg.mixed_precision):
            outs = self._rollout(self.generator, start, exit_index, grad=True)
            loss, stats = generator_loss(
                outs, self.real, self.fake, cfg, self.noise_gen, self.uncond
            )
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        norm = nn.utils.clip_grad_norm_(self.generator.parameters(), cfg.grad_clip)
        self.opt_g.step()
        self.opt_c.zero_grad(set_to_none=True)  # the DMD pass must leave the critic alone
        self.gen_updates += 1
        if self.step < cfg.ema_start_step:
            self.ema = EMA(self.generator, cfg.ema_decay)
        else:
            self.ema.update(self.generator)
        first = exit_index if isinstance(exit_index, int) else exit_index[0]
        return {
            "loss": loss.item(),
            "gen_grad_norm": float(norm),
            "exit_step": first,
            "task": "i2v" if start.context is not None else "t2v",
            **stats,
        }

    def critic_step(self) -> float:
        cfg = self.cfg
        start = self._start()
        exit_index = draw_exit(cfg, self.noise_gen)
        self.fake.train()
        with autocast(self.device, cfg.mixed_precision):
            with torch.no_grad():
                outs = self._rollout(self.generator, start, exit_index, grad=False)
            loss = critic_loss(outs, self.fake, cfg, self.noise_gen)
        self.opt_c.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.fake.parameters(), cfg.grad_clip)
        self.opt_c.step()
        self.critic_steps += 1
        return loss.item()

    # ---- validation ----------------------------------------------------------------------------

    def _validation_start(self, streams) -> tuple[str, RolloutStart, list[str]] | None:
        """One fixed window (I2V when there is I2V data) as the validation rollout's start."""
        if not self.cfg.val_every or not streams:
            return None
        (dataset, task) = next((k for k in sorted(streams) if k[1] == "i2v"), sorted(streams)[0])
        raw = Stream(streams[(dataset, task)].factory, seed=10_007 + self.cfg.seed).next()
        events = [raw.get("event_text", "")]
        (sample,) = self.cond.to_latent_samples([raw])
        start = rollout_start(
            [sample], task, self.cfg.val_blocks, self.cfg.pred_latent_frames, self.actions
        )
        return task, start, events

    def validate(self) -> dict:
        """A rollout of ``val_blocks`` blocks with the EMA generator (all few steps), to mp4."""
        task, start, events = self.val
        model = copy.deepcopy(self.generator).eval()
        self.ema.copy_to(model)
        gen = torch.Generator().manual_seed(1234)
        b = 1
        h, w = self.cfg.height // STRIDE[1], self.cfg.width // STRIDE[2]
        shape = (b, model.config.in_channels, self.cfg.pred_latent_frames, h, w)
        ctx = None if start.context is None else start.context.to(self.device)
        with torch.no_grad(), autocast(self.device, self.cfg.mixed_precision):
            outs = rollout(
                model, ctx, [t.to(self.device) for t in start.texts], shape, self.sigmas, gen
            )
        latents = torch.cat(([ctx] if ctx is not None else []) + [x for _, x, _ in outs], dim=2)
        video = self.vae.decode(latents)[0].cpu()  # (T, H, W, 3)
        labels = self._labels()
        tag = "tiny-random" if labels["tiny_random"] else "model"
        path = self.out / "samples" / f"step-{self.step:06d}.{tag}.mp4"
        write_video(path, video)
        per_block = [
            {"block": k, "keys": KEYS[row[0][0]], "mouse": MOUSE[row[0][1]], "event": events[0]}
            for k, row in enumerate(start.labels)
        ]
        atomic_write_json(
            path.with_suffix(".json"),
            {"step": self.step, "task": task, "blocks": per_block, **labels},
        )
        return {"sample": str(path)}

    # ---- the loop ------------------------------------------------------------------------------

    def run(self) -> dict:
        cfg = self.cfg
        losses: list[float] = []
        t0 = time.perf_counter()
        for _ in tqdm(range(self.step, cfg.steps), desc=f"distill {cfg.name}"):
            row = self.generator_step()
            critic = [self.critic_step() for _ in range(cfg.critic_updates)]
            self.step += 1
            losses.append(row["loss"])
            row |= {
                "step": self.step,
                "critic_loss": sum(critic) / max(len(critic), 1),
                "generator_updates": self.gen_updates,
                "critic_updates": self.critic_steps,
                "elapsed_s": round(time.perf_counter() - t0, 3),
                "tiny_random": bool(
                    cfg.tiny_random or self.base_info["tiny_random"] or self.data_tiny_random
                ),
            }
            if self.val is not None and self.step % cfg.val_every == 0:
                row |= self.validate()
            if self.step % cfg.log_every == 0 or "sample" in row:
                self.log.log(row)
            if self.step % cfg.ckpt_every == 0 or self.step == cfg.steps:
                self.save()
        return self.finish(losses)

    def finish(self, losses: list[float]) -> dict:
        labels = self._labels()
        summary = {
            "steps": self.step,
            "losses": losses,
            "generator_updates": self.gen_updates,
            "critic_updates": self.critic_steps,
            "datasets": self.cfg.datasets,
            # samples drawn per stream over the whole run (resumes included)
            "samples_read": {f"{d}/{t}": s.consumed for (d, t), s in self.mixture.streams.items()},
            "wall_s": round(time.perf_counter() - self.t0, 3),
            **labels,
        }
        rows = self.log.read()
        if rows:
            title = f"{self.cfg.name} self-forcing DMD" + (
                " (tiny-random)" if labels["tiny_random"] else ""
            )
            summary["loss_png"] = str(plot_losses(rows, self.out / "loss.png", title))
        atomic_write_json(
            self.out / "summary.json", {k: v for k, v in summary.items() if k != "losses"}
        )
        self.log.close()
        return summary


def write_video(path: Path, video: torch.Tensor, fps: float = 16.0) -> None:
    """uint8 (T, H, W, 3) -> H.264 mp4, written atomically."""
    from curation.video import write_mp4

    write_mp4(path, [video.numpy()], fps, width=video.shape[2], height=video.shape[1])


def plot_losses(rows: list[dict], out: Path, title: str) -> Path:
    """Generator (DMD) and critic (flow) losses per step, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    steps = [r["step"] for r in rows]
    for ax, key, label in zip(
        axes, ("loss", "critic_loss"), ("generator DMD loss", "critic flow loss"), strict=True
    ):
        ax.plot(steps, [r[key] for r in rows], ".-")
        ax.set(xlabel="step", ylabel=label)
    fig.suptitle(title)
    fig.savefig(out, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return out


def distill(
    cfg: DistillConfig, *, streams=None, resume: bool = False, overwrite: bool = False
) -> dict:
    """Distil ``cfg`` (or continue from ``<out>/checkpoints`` with ``resume``; ``overwrite``
    discards an earlier run there); returns a summary. Checks the run folder first
    (``check_run_folder``, before the base model loads) and holds its lock throughout."""
    check_run_folder(cfg, resume, overwrite)
    with run_lock(cfg.out_dir):
        return Distiller(cfg, streams=streams, resume=resume, overwrite=overwrite).run()
