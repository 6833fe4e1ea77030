"""Self-forcing DMD distillation: the DMD gradient on closed-form scores, the rollout's gradient
isolation, the critic/generator update ratio, a tiny run with bit-identical resume."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from torch import nn

from curation.shards import write_shards
from model import flow
from model.sampling import few_step_sigmas, rollout
from model.text import ActionEmbeddingCache, TextEncoder
from model.tscm import TSCMTransformer
from schemas.actions import KEY_CODE, KEYS, MOUSE, MOUSE_CODE
from tests.test_shards import make_mp4, make_sample
from tests.test_training import window_samples
from training.conditioning import Conditioner
from training.config import TrainConfig, distill_preset
from training.distill import (
    Distiller,
    block_pixel_ranges,
    check_base,
    distill,
    dmd_gradient,
    dmd_loss,
    generator_loss,
    guided_x0,
    load_transformer,
    rollout_start,
)
from training.mixture import Stream
from training.run import load_checkpoint, save_checkpoint
from training.sources import memory_source

H, W = 64, 128  # latents 4 x 8


@pytest.fixture(scope="module")
def latent_samples() -> list[dict]:
    """The base-training test windows (T2V 2 latent frames, I2V 2 + 2), encoded once."""
    from model.vae import VideoVAE

    cfg = distill_preset("tiny", height=H, width=W).data_config()
    text = TextEncoder.tiny(event_len=cfg.event_len, action_len=cfg.action_len)
    cond = Conditioner(cfg, VideoVAE.tiny(), text, None)
    return cond.to_latent_samples(window_samples(3))


def streams(samples: list[dict]) -> dict[tuple[str, str], Stream]:
    return {
        ("synthetic", t): Stream(memory_source([s for s in samples if s["task"] == t]), j)
        for j, t in enumerate(("t2v", "i2v"))
    }


def tiny_cfg(out, **kw):
    base = dict(
        out_dir=str(out),
        datasets={"synthetic": 1.0},
        latents=True,
        height=H,
        width=W,
        rollout_blocks=2,
        critic_updates=2,
        val_every=0,
        ckpt_every=1000,
    )
    return distill_preset("tiny", **(base | kw))


# ---- the schedule and the DMD gradient on closed-form scores -------------------------------


def test_few_step_schedule_is_warped_by_the_shift() -> None:
    warped = few_step_sigmas((1000, 750, 500, 250), 5.0)
    assert torch.allclose(warped, torch.tensor([1.0, 0.9375, 0.83333, 0.625, 0.0]), atol=1e-4)
    plain = few_step_sigmas((1000, 750, 500, 250), 5.0, warp=False)
    assert torch.allclose(plain, torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0]))
    with pytest.raises(ValueError):
        few_step_sigmas((500, 750), 5.0)


def gaussian_x0(x_t: torch.Tensor, sigma: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """E[x0 | x_t] for data N(mean, I) and x_t = (1 - s) x0 + s eps (closed form)."""
    a = (1 - sigma).view(-1, *[1] * (x_t.ndim - 1))
    s = sigma.view(-1, *[1] * (x_t.ndim - 1))
    return mean + a / (a**2 + s**2) * (x_t - a * mean)


class GaussianScore(nn.Module):
    """A velocity 'model' whose x0 prediction is the closed-form posterior mean of N(mean, I)."""

    def __init__(self, mean: float, trainable: bool = False):
        super().__init__()
        self.mean = nn.Parameter(torch.tensor(float(mean)), requires_grad=trainable)

    def forward(self, hidden_states, timestep, encoder_hidden_states, **_):
        sigma = timestep / 1000
        x0 = gaussian_x0(hidden_states, sigma, self.mean)
        return ((hidden_states - x0) / sigma.view(-1, 1, 1, 1, 1),)


class PointGenerator(nn.Module):
    """A 'generator' whose x0 prediction is a learnable constant plus the text's mean."""

    def __init__(self, value: float):
        super().__init__()
        self.value = nn.Parameter(torch.tensor(float(value)))

    def forward(self, hidden_states, timestep, encoder_hidden_states, **_):
        sigma = (timestep / 1000).view(-1, 1, 1, 1, 1)
        x0 = self.value + 0 * hidden_states
        return ((hidden_states - x0) / sigma,)


def test_dmd_gradient_points_from_fake_towards_real_in_closed_form() -> None:
    """Fake N(-1, I), real N(2, I): the DMD gradient is fake_x0 - real_x0 < 0 everywhere, so a
    descent step moves samples up, towards the real mean; normalised per sample."""
    g = torch.Generator().manual_seed(0)
    x = (-1 + torch.randn(3, 4, 2, 2, 2, generator=g)).requires_grad_(True)
    sigma = torch.tensor([0.3, 0.6, 0.9])
    x_t = flow.add_noise(x.detach(), torch.randn(x.shape, generator=g), sigma)
    real, fake = (
        gaussian_x0(x_t, sigma, torch.tensor(2.0)),
        gaussian_x0(x_t, sigma, torch.tensor(-1.0)),
    )
    loss = dmd_loss(x, real, fake)
    loss.backward()
    assert (x.grad < 0).all()
    # exactly g / numel, g normalised by each sample's own mean |x - real_x0|
    norm = (x.detach() - real).abs().mean(dim=(1, 2, 3, 4), keepdim=True)
    want = (fake - real) / norm / x.numel()
    assert torch.allclose(x.grad.float(), want, rtol=1e-5)
    assert torch.allclose(loss, 0.5 * (dmd_gradient(x.detach(), real, fake) ** 2).mean().double())
    # per sample: scaling one sample's gap scales only that sample's normaliser
    scaled = dmd_gradient(x.detach() * torch.tensor([1, 1, 5.0]).view(-1, 1, 1, 1, 1), real, fake)
    assert torch.allclose(scaled[:2], dmd_gradient(x.detach(), real, fake)[:2])


def test_generator_loss_with_closed_form_scores_moves_the_generator_to_the_real_mean() -> None:
    """The whole DMD path (rollout, score timesteps, x0 from velocity) on closed-form scores:
    a generator stuck at -1 with a critic that tracks it descends towards the real mean 2."""
    cfg = dataclasses.replace(distill_preset("tiny"), guidance_scale=0.0, rollout_blocks=2)
    gen_model, real, fake = PointGenerator(-1.0), GaussianScore(2.0), GaussianScore(-1.0)
    opt = torch.optim.SGD(gen_model.parameters(), lr=0.3)
    sigmas = few_step_sigmas(cfg.denoising_steps, cfg.shift)
    g = torch.Generator().manual_seed(0)
    texts = [torch.zeros(2, 3, 4)] * 2
    values = [gen_model.value.item()]
    for _ in range(5):
        outs = rollout(gen_model, None, texts, (2, 4, 1, 2, 2), sigmas, g, exit_index=1, grad=True)
        loss, _ = generator_loss(outs, real, fake, cfg, g, None)
        opt.zero_grad()
        loss.backward()
        assert gen_model.value.grad < 0  # descent raises the value, towards the real mean
        opt.step()
        fake.mean.data.copy_(gen_model.value.data)  # a perfect critic: the generator's law
        values.append(gen_model.value.item())
    assert values == sorted(values) and values[0] + 0.3 < values[-1] < 2.5, values


def test_guided_real_score_is_cond_plus_scale_times_cond_minus_uncond() -> None:
    class TextMean(nn.Module):  # x0 prediction = the mean of the text embedding
        def forward(self, hidden_states, timestep, encoder_hidden_states, **_):
            x0 = encoder_hidden_states.mean(dim=(1, 2)).view(-1, 1, 1, 1, 1) + 0 * hidden_states
            return ((hidden_states - x0) / (timestep / 1000).view(-1, 1, 1, 1, 1),)

    from model.sampling import history_batch

    batch = history_batch(None, [], torch.ones(2, 3, 4), (2, 4, 1, 2, 2), "cpu", True)
    x_t, sigma = torch.randn(2, 4, 1, 2, 2), torch.tensor([0.5, 0.5])
    out = guided_x0(TextMean(), x_t, sigma, batch, None, torch.zeros(1, 3, 4), 3.0)
    assert torch.allclose(out, torch.full_like(out, 4.0), atol=1e-5)  # 1 + 3 (1 - 0)


# ---- the rollout ---------------------------------------------------------------------------


class Recorder(nn.Module):
    """Wraps the model and records every call: grad mode, timestep, history."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.calls = model, []

    def forward(self, **kw):
        h = kw["history"]
        self.calls.append(
            {
                "grad": torch.is_grad_enabled(),
                "t": kw["timestep"][0].item(),
                "history": None if h is None else h.shape[2],
                "history_requires_grad": h is not None and h.requires_grad,
                "input_requires_grad": kw["hidden_states"].requires_grad,
            }
        )
        return self.model(**kw)


@pytest.mark.parametrize("task", ["i2v", "t2v"])
def test_rollout_shapes_and_no_gradient_into_earlier_blocks_or_steps(task) -> None:
    torch.manual_seed(0)
    model = Recorder(TSCMTransformer.from_config_name("tiny"))
    sigmas = few_step_sigmas((1000, 750, 500, 250), 3.0)
    b, fp = 2, 2
    context = torch.randn(b, 48, 1, 4, 8) if task == "i2v" else None
    texts = [torch.randn(b, 5, 32) for _ in range(3)]
    g = torch.Generator().manual_seed(0)
    outs = rollout(model, context, texts, (b, 48, fp, 4, 8), sigmas, g, exit_index=2, grad=True)
    c = 1 if task == "i2v" else 0
    assert [o[1].shape for o in outs] == [(b, 48, fp, 4, 8)] * 3
    assert [None if o[0].history is None else o[0].history.shape[2] for o in outs] == [
        c or None,
        c + fp,
        c + 2 * fp,
    ]
    assert outs[1][0].history_frame_ids.tolist() == list(range(c + fp, 0, -1))
    assert outs[1][0].history_first_frame and outs[0][0].task == task
    # each block: the exit step (index 2) alone records gradients, from a grad-free input
    assert len(model.calls) == 3 * 3
    with_grad = [k for k in model.calls if k["grad"]]
    assert len(with_grad) == 3
    assert all(abs(k["t"] - 1000 * sigmas[2].item()) < 1e-3 for k in with_grad)
    assert not any(k["input_requires_grad"] for k in model.calls)
    assert not any(k["history_requires_grad"] for k in model.calls)
    # the later block's output has no path back to the earlier block's output
    for _, x, _ in outs:
        x.retain_grad()
    outs[2][1].sum().backward()
    assert outs[0][1].grad is None and outs[1][1].grad is None
    assert outs[2][1].grad is not None
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_rollout_start_takes_actions_per_block_from_the_window_frames() -> None:
    """I2V: latent frame 0 is the context, block k the pixel frames [1 + 8k, 9 + 8k) (fp 2);
    a block past the window's end keeps the last label."""
    assert block_pixel_ranges("i2v", 2, 3) == [(1, 9), (9, 17), (17, 25)]
    assert block_pixel_ranges("t2v", 2, 2) == [(0, 5), (5, 13)]
    frames = 13  # 4 latent frames
    keys = np.full(frames, KEY_CODE["W"])
    keys[9:] = KEY_CODE["S+A"]
    mouse = np.full(frames, MOUSE_CODE["·"])
    mouse[9:] = MOUSE_CODE["↑→"]
    text = TextEncoder.tiny()
    cache = ActionEmbeddingCache.build(text)
    sample = {
        "latents": torch.randn(48, 4, 4, 8),
        "event_emb": torch.randn(64, 32),
        "keys": keys,
        "mouse": mouse,
        "tiny_random": True,
    }
    start = rollout_start([sample], "i2v", 3, 2, cache)
    got = [(KEYS[r[0][0]], MOUSE[r[0][1]]) for r in start.labels]
    assert got == [("W", "·"), ("S+A", "↑→"), ("S+A", "↑→")]
    assert torch.equal(start.context[0], sample["latents"][:, :1])
    want = cache.embeddings[KEY_CODE["S+A"], MOUSE_CODE["↑→"]]
    assert torch.equal(start.texts[1][0, 64:], want)
    assert torch.equal(start.texts[0][0, :64], sample["event_emb"])
    t2v = rollout_start([sample], "t2v", 2, 2, cache)
    assert t2v.context is None and len(t2v.texts) == 2


# ---- the loop ------------------------------------------------------------------------------


def _params(m: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in m.parameters()]


def _same(a: list[torch.Tensor], m: nn.Module) -> bool:
    return all(torch.equal(x, p) for x, p in zip(a, m.parameters(), strict=True))


def test_update_ratio_and_each_update_moves_only_its_model(tmp_path, latent_samples) -> None:
    d = Distiller(
        tiny_cfg(tmp_path / "r", steps=2, critic_updates=3), streams=streams(latent_samples)
    )
    counts = {"g": 0, "c": 0}
    step_g, step_c = d.opt_g.step, d.opt_c.step
    d.opt_g.step = lambda *a, **k: (counts.__setitem__("g", counts["g"] + 1), step_g(*a, **k))
    d.opt_c.step = lambda *a, **k: (counts.__setitem__("c", counts["c"] + 1), step_c(*a, **k))
    real, gen0, fake0 = _params(d.real), _params(d.generator), _params(d.fake)
    d.generator_step()
    assert _same(fake0, d.fake) and not _same(gen0, d.generator) and _same(real, d.real)
    gen1 = _params(d.generator)
    d.critic_step()
    assert _same(gen1, d.generator) and not _same(fake0, d.fake) and _same(real, d.real)
    counts.update(g=0, c=0)
    d.step = 0
    summary = d.run()
    assert counts == {"g": 2, "c": 6}
    rows = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["critic_updates"] - 1 for r in rows] == [3, 6]  # one critic step ran above
    assert summary["generator_updates"] == 3 and _same(real, d.real)


def test_distill_end_to_end_and_resume_is_bit_identical(tmp_path, latent_samples) -> None:
    full = distill(
        tiny_cfg(tmp_path / "full", steps=4, val_every=2, ckpt_every=2),
        streams=streams(latent_samples),
    )
    out = tmp_path / "full"
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [r["task"] for r in rows] == ["t2v", "i2v"] * 2
    assert all(r["tiny_random"] and 0 <= r["exit_step"] < 4 for r in rows)
    assert all(np.isfinite(r["loss"]) and np.isfinite(r["critic_loss"]) for r in rows)
    assert (out / "loss.png").stat().st_size > 0
    assert (out / "samples" / "step-000002.tiny-random.mp4").stat().st_size > 0
    meta = json.loads((out / "samples" / "step-000004.tiny-random.json").read_text())
    assert meta["tiny_random"] and len(meta["blocks"]) == 4 and meta["task"] == "i2v"
    assert meta["blocks"][0]["keys"] == "W" and meta["blocks"][0]["mouse"] == "←"

    part = tmp_path / "part"
    first = distill(
        tiny_cfg(part, steps=2, val_every=2, ckpt_every=2), streams=streams(latent_samples)
    )
    with pytest.raises(FileExistsError):
        distill(tiny_cfg(part, steps=4), streams=streams(latent_samples))
    with pytest.raises(ValueError, match="critic_updates"):
        distill(
            tiny_cfg(part, steps=4, critic_updates=1), streams=streams(latent_samples), resume=True
        )
    resumed = distill(
        tiny_cfg(part, steps=4, val_every=2, ckpt_every=2),
        streams=streams(latent_samples),
        resume=True,
    )
    assert first["losses"] + resumed["losses"] == full["losses"]
    a = load_checkpoint(out / "checkpoints" / "step-000004.safetensors")
    b = load_checkpoint(part / "checkpoints" / "step-000004.safetensors")
    for part_name in ("generator", "fake_score"):
        for k in a[part_name]:
            assert torch.equal(a[part_name][k], b[part_name][k]), (part_name, k)
    assert a["counts"] == b["counts"] == {"generator": 4, "critic": 8}


def test_base_run_folder_gives_its_ema_weights_and_must_match(tmp_path) -> None:
    torch.manual_seed(1)
    model = TSCMTransformer.from_config_name("tiny")
    shadow = {n: p.detach() + 0.5 for n, p in model.named_parameters()}
    cfg = TrainConfig()
    save_checkpoint(
        tmp_path / "base",
        7,
        {
            "config": cfg.to_dict(),
            "ema": {"decay": 0.9, "shadow": shadow},
            "labels": {"tiny_random": True},
        },
    )
    net, info = load_transformer(str(tmp_path / "base"), "tiny")
    for n, p in net.named_parameters():
        assert torch.equal(p, shadow[n]), n
    assert info["config"]["model"] == "tiny" and "step-000007" in info["transformer"]
    check_base(distill_preset("tiny"), info["config"])
    with pytest.raises(ValueError, match="event_len"):
        check_base(distill_preset("tiny", event_len=16), info["config"])


def test_distill_from_clip_shards_and_a_base_run(tmp_path) -> None:
    """The shard path: windows read from tiny clip shards (VAE + text encoder on the fly)."""
    from training.train_base import build_transformer

    mp4 = make_mp4(24, width=W, height=H)
    clips = [(f"c{i}", make_sample(f"c{i}", 24, mp4=mp4, width=W, height=H)) for i in range(2)]
    write_shards(clips, tmp_path / "shards" / "sekai-real", "sekai-real", max_samples=2)
    base_cfg = TrainConfig(height=H, width=W)
    net = build_transformer(base_cfg)
    shadow = {n: p.detach().clone() for n, p in net.named_parameters()}
    save_checkpoint(
        tmp_path / "base",
        1,
        {
            "config": base_cfg.to_dict(),
            "ema": {"decay": 0.9, "shadow": shadow},
            "labels": {"tiny_random": True},
        },
    )
    cfg = tiny_cfg(
        tmp_path / "d",
        base=str(tmp_path / "base"),
        data_root=str(tmp_path),
        datasets={"sekai-real": 1.0},
        latents=False,
        steps=2,
        critic_updates=1,
        val_every=2,
    )
    summary = distill(cfg)
    assert summary["steps"] == 2 and summary["tiny_random"]
    meta = json.loads((tmp_path / "d" / "samples" / "step-000002.tiny-random.json").read_text())
    assert len({(b["keys"], b["mouse"]) for b in meta["blocks"]}) > 1  # actions change per block
    assert meta["blocks"][0]["event"] and meta["task"] == "i2v"
