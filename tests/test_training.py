"""Base training: mixture and batching, loss goes down, checkpoint resume is bit-identical."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from model.text import ActionEmbeddingCache, TextEncoder
from schemas.actions import KEY_CODE, MOUSE_CODE
from training.conditioning import Conditioner
from training.config import preset
from training.mixture import Mixture, Stream, task_pattern
from training.run import load_checkpoint
from training.sources import memory_source
from training.train_base import build_transformer, flow_matching_loss, train

H, W = 64, 128


def window_samples(n: int, frames: int = 13, seed: int = 0) -> list[dict]:
    """Moving colour ramps (a learnable signal) in both tasks, as the shard reader yields them:
    T2V 5 prediction frames; I2V 5 history + 8 prediction frames (2 + 2 latent frames)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:H, 0:W]
    out = []
    for i in range(n):
        base, speed = rng.integers(0, 255, 3), int(rng.integers(-3, 4))
        video = np.stack(
            [
                np.stack([(2 * xx + yy + 4 * t * speed + c) % 256 for c in base], -1)
                for t in range(frames)
            ]
        ).astype(np.uint8)
        keys = np.full(frames, KEY_CODE["W"], np.int64)
        keys[frames // 2 :] = KEY_CODE["W+A"]
        for task, t0 in (("t2v", 8), ("i2v", 0)):
            out.append(
                {
                    "__key__": f"clip{i}-{task}",
                    "video": video[t0:],
                    "history_frames": 5 if task == "i2v" else 0,
                    "keys": keys[t0:],
                    "mouse": np.full(frames - t0, MOUSE_CODE["←"], np.int64),
                    "fps": 16.0,
                    "event_text": f"{task} scene number {i}",
                    "action_text": "",
                    "task": task,
                    "source": "synthetic",
                    "tiny_random": True,
                }
            )
    return out


SAMPLES = window_samples(4)


def streams(seed: int = 0) -> dict[tuple[str, str], Stream]:
    return {
        ("synthetic", t): Stream(memory_source([s for s in SAMPLES if s["task"] == t]), seed + j)
        for j, t in enumerate(("t2v", "i2v"))
    }


def tiny_cfg(out, **kw):
    base = dict(
        out_dir=str(out),
        datasets={"synthetic": 1.0},
        val_every=0,
        ckpt_every=1000,
        height=H,
        width=W,
    )
    return preset("tiny", **(base | kw))


def test_task_pattern_and_mixture_weights_and_restore() -> None:
    assert task_pattern({"t2v": 1, "i2v": 1}) == ["t2v", "i2v"]
    assert task_pattern({"t2v": 1, "i2v": 2}) == ["t2v", "i2v", "i2v"]
    with pytest.raises(ValueError):
        task_pattern({"t2v": 0})
    mk = lambda name: memory_source([{"src": name, "i": i} for i in range(5)])  # noqa: E731
    s = {
        ("a", "t2v"): Stream(mk("a"), 0),
        ("b", "t2v"): Stream(mk("b"), 1),
        ("a", "i2v"): Stream(mk("ai"), 2),
    }
    mix = Mixture(s, {"a": 3.0, "b": 1.0}, {"t2v": 1, "i2v": 1}, seed=0)
    tasks, srcs = [], []
    for step in range(400):
        task, batch = mix.draw(step, 2)
        tasks.append(task)
        srcs += [x["src"] for x in batch if task == "t2v"]
    assert tasks[:4] == ["t2v", "i2v", "t2v", "i2v"]
    frac_a = srcs.count("a") / len(srcs)
    assert 0.68 < frac_a < 0.82  # weight 3:1
    # a restored mixture continues with exactly the same draws
    state = mix.state_dict()
    ahead = [mix.draw(400 + k, 3)[1] for k in range(4)]
    s2 = {k: Stream(v.factory, v.seed) for k, v in s.items()}
    mix2 = Mixture(s2, {"a": 3.0, "b": 1.0}, {"t2v": 1, "i2v": 1}, seed=99)
    mix2.load_state_dict(state)
    assert [mix2.draw(400 + k, 3)[1] for k in range(4)] == ahead


def test_conditioner_aligns_windows_and_splits_history_and_prediction(tmp_path) -> None:
    from model.vae import VideoVAE

    cfg = tiny_cfg(tmp_path)
    text = TextEncoder.tiny(event_len=cfg.event_len, action_len=cfg.action_len)
    cache = ActionEmbeddingCache.build(text)
    cond = Conditioner(cfg, VideoVAE.tiny(), text, cache)
    t2v_raw, i2v_raw = SAMPLES[0:4:2], SAMPLES[1:4:2]
    t2v_lat, i2v_lat = cond.to_latent_samples(t2v_raw), cond.to_latent_samples(i2v_raw)
    assert t2v_lat[0]["latents"].shape == (48, 2, H // 16, W // 16) and t2v_lat[0]["tiny_random"]
    assert i2v_lat[0]["latents"].shape == (48, 4, H // 16, W // 16)
    assert [x["history_latent_frames"] for x in t2v_lat + i2v_lat] == [0, 0, 2, 2]
    assert i2v_lat[1]["event_emb"].shape == (cfg.event_len, 32)
    # 3 history frames are trimmed to 1 (one latent frame); a misaligned window is an error
    short = dict(i2v_raw[0], video=i2v_raw[0]["video"][2:], history_frames=3)
    short["keys"], short["mouse"] = short["keys"][2:], short["mouse"][2:]
    (lat_short,) = cond.to_latent_samples([short])
    assert lat_short["history_latent_frames"] == 1 and lat_short["latents"].shape[1] == 3
    with pytest.raises(ValueError, match="does not fit"):
        cond.to_latent_samples([dict(i2v_raw[0], video=i2v_raw[0]["video"][:-1])])

    t2v = cond.batch(t2v_lat, "t2v", np.random.default_rng(0))
    assert t2v.history is None and t2v.prediction.shape == (2, 48, 2, 4, 8)
    assert t2v.text.shape == (2, cfg.event_len + cfg.action_len, 32)
    # the action part is the cache entry of the prediction frames' label (W+A, ←)
    want = cache.embeddings[KEY_CODE["W+A"], MOUSE_CODE["←"]]
    assert torch.equal(t2v.text[0, cfg.event_len :], want)
    assert torch.equal(t2v.text[0, : cfg.event_len], t2v_lat[0]["event_emb"])
    seen = set()
    for seed in range(10):
        i2v = cond.batch(i2v_lat, "i2v", np.random.default_rng(seed))
        h = i2v.history.shape[2]
        seen.add(h)
        assert i2v.history_frame_ids.tolist() == list(range(h, 0, -1))
        assert torch.equal(i2v.history, torch.stack([x["latents"][:, 2 - h : 2] for x in i2v_lat]))
        assert torch.equal(i2v.prediction, torch.stack([x["latents"][:, 2:] for x in i2v_lat]))
    assert seen == {1, 2}
    # with a 1-frame sample in the batch, history is that one (first) frame
    mixed = cond.batch([i2v_lat[0], lat_short], "i2v", np.random.default_rng(0))
    assert mixed.history.shape[2] == 1


def test_few_steps_reduce_loss_on_fixed_batch(tmp_path) -> None:
    from model.vae import VideoVAE

    cfg = tiny_cfg(tmp_path)
    text = TextEncoder.tiny(event_len=cfg.event_len, action_len=cfg.action_len)
    cond = Conditioner(cfg, VideoVAE.tiny(), text, ActionEmbeddingCache.build(text))
    batch = cond.batch(cond.to_latent_samples(SAMPLES[1:4:2]), "i2v", np.random.default_rng(1))
    model = build_transformer(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)

    def fixed_loss() -> float:
        with torch.no_grad():
            return flow_matching_loss(model, batch, cfg, torch.Generator().manual_seed(5))[0].item()

    before = fixed_loss()
    gen = torch.Generator().manual_seed(0)
    for _ in range(15):
        loss, _ = flow_matching_loss(model, batch, cfg, gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = fixed_loss()
    assert after < 0.8 * before, (before, after)  # measured: about 0.70


def test_train_end_to_end_and_resume_is_bit_identical(tmp_path) -> None:
    """One uninterrupted run vs. a run stopped at a checkpoint and resumed: same losses, same weights."""
    full = train(tiny_cfg(tmp_path / "full", steps=6, val_every=3), streams=streams())
    out = tmp_path / "full"
    # end to end: metrics, loss plot, samples and checkpoints, everything labelled tiny-random
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [r["task"] for r in rows] == ["t2v", "i2v"] * 3
    assert all(r["tiny_random"] for r in rows) and "val_loss" in rows[2]
    assert (out / "loss.png").stat().st_size > 0
    assert (out / "samples" / "step-000003.tiny-random.mp4").stat().st_size > 0
    meta = json.loads((out / "samples" / "step-000006.tiny-random.json").read_text())
    assert meta["tiny_random"] is True and meta["vae"].startswith("tiny-random")
    assert (out / "action_cache-yume.safetensors").exists()

    part = tmp_path / "part"
    first = train(tiny_cfg(part, steps=3, ckpt_every=3, val_every=3), streams=streams())
    resumed = train(
        tiny_cfg(part, steps=6, ckpt_every=3, val_every=3), streams=streams(), resume=True
    )
    assert first["losses"] + resumed["losses"] == full["losses"]
    assert len(resumed["losses"]) == 3
    a = load_checkpoint(out / "checkpoints" / "step-000006.safetensors")
    b = load_checkpoint(part / "checkpoints" / "step-000006.safetensors")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k in a["ema"]["shadow"]:
        assert torch.equal(a["ema"]["shadow"][k], b["ema"]["shadow"][k]), k
    rows_b = [json.loads(x) for x in (part / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows_b] == [1, 2, 3, 4, 5, 6]


def test_ema_follows_fsdp_sharding_and_round_trips_through_full_state(tmp_path) -> None:
    """EMA built from a fully_shard-ed model (gloo, 1 CPU rank): DTensor shadow, lerp on step,
    full tensors in the checkpoint, re-sharded on restore."""
    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    from training import distributed
    from training.ema import EMA

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = fully_shard(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)))
        ema = EMA(distributed.unwrap(model), 0.5)
        assert all(hasattr(t, "device_mesh") for t in ema.shadow.values())
        before = {n: distributed.full_tensor(t).clone() for n, t in ema.shadow.items()}
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        ema.update(distributed.unwrap(model))
        full = {n: distributed.full_tensor(t) for n, t in ema.shadow.items()}
        for n in full:
            assert torch.allclose(full[n], before[n] + 0.5), n
        fresh = EMA(distributed.unwrap(model), 0.5)
        shadow = {n: distributed.shard_like(t, fresh.shadow[n]) for n, t in full.items()}
        fresh.load_state_dict({"decay": 0.5, "shadow": shadow})
        for n in full:
            assert torch.equal(distributed.full_tensor(fresh.shadow[n]), full[n]), n
    finally:
        dist.destroy_process_group()


def test_keep_nearest_passes_the_frame_at_its_true_distance(tmp_path) -> None:
    """Validation I2V keeps one history frame: it must be the nearest one, labelled distance 1."""
    from model.vae import VideoVAE

    cfg = tiny_cfg(tmp_path)
    text = TextEncoder.tiny(event_len=cfg.event_len, action_len=cfg.action_len)
    cond = Conditioner(cfg, VideoVAE.tiny(), text, ActionEmbeddingCache.build(text))
    lat = cond.to_latent_samples(SAMPLES[1:4:2])
    batch = next(
        b
        for s in range(20)
        if (b := cond.batch(lat, "i2v", np.random.default_rng(s))).history.shape[2] == 2
    )
    one = batch.keep_nearest(1)
    assert one.history_frame_ids.tolist() == [1]
    # distance 1 = the latent frame just before the prediction block
    hl = lat[0]["history_latent_frames"]
    assert torch.equal(one.history[0], lat[0]["latents"][:, hl - 1 : hl])
    assert not torch.equal(one.history[0], lat[0]["latents"][:, hl - 2 : hl - 1])


def test_long_history_is_sampled_up_to_the_cap_and_first_frame_is_flagged(tmp_path) -> None:
    """History up to max_history_latent_frames reaches the batch (so select_history's far
    sampling fires); only a history that starts at the clip start is flagged as first frame."""
    from model.tscm import select_history

    cfg = tiny_cfg(tmp_path, max_history_latent_frames=40)
    text = TextEncoder.tiny(event_len=cfg.event_len, action_len=cfg.action_len)
    cond = Conditioner(cfg, None, text, ActionEmbeddingCache.build(text))

    def latent(hl: int, first: bool) -> dict:
        n = 1 + 4 * (hl - 1) + 8
        return {
            "__key__": f"s{hl}",
            "latents": torch.randn(48, hl + 2, 4, 8),
            "history_latent_frames": hl,
            "history_starts_at_first_frame": first,
            "event_emb": torch.zeros(cfg.event_len, 32),
            "keys": np.zeros(n, np.int64),
            "mouse": np.zeros(n, np.int64),
            "task": "i2v",
            "tiny_random": True,
        }

    sizes, flags = [], []
    for seed in range(40):
        b = cond.batch([latent(60, True), latent(50, True)], "i2v", np.random.default_rng(seed))
        sizes.append(b.history.shape[2])
        flags.append((b.history.shape[2] == 50, b.history_first_frame))
        assert b.history_frame_ids.tolist() == list(range(sizes[-1], 0, -1))
    assert max(sizes) > 32 and max(sizes) <= 40 and min(sizes) >= 1
    assert all(not f for _, f in flags)  # 50 > the cap of 40: never the clip's first frame
    assert len(select_history(max(sizes))) < max(sizes)  # far history is sampled
    whole = [cond.batch([latent(3, True)], "i2v", np.random.default_rng(s)) for s in range(10)]
    assert {(b.history.shape[2] == 3) for b in whole if b.history_first_frame} == {True}
    assert any(b.history_first_frame for b in whole)
    assert not any(b.keep_nearest(1).history_first_frame for b in whole if b.history.shape[2] > 1)


def test_action_label_is_the_most_frequent_pair() -> None:
    from training.conditioning import _mode

    keys = np.array([1, 1, 1, 2, 2, 2, 2])
    mouse = np.array([5, 6, 7, 3, 3, 4, 4])
    # per column the modes are 2 and 3 / 4; the most frequent pair is (2, 3) (tie -> lowest)
    assert _mode(keys, mouse) == (2, 3)
    keys2, mouse2 = np.array([1, 1, 2, 2, 2]), np.array([9, 9, 8, 7, 6])
    assert _mode(keys2, mouse2) == (1, 9)  # keys alone would say 2, pairs say (1, 9)
    assert _mode(np.array([]), np.array([])) == (0, 0)


def test_run_folder_safety_checkpoint_rotation_and_sample_labels(tmp_path, monkeypatch) -> None:
    """A fresh run into an old run folder refuses (or --overwrite); --resume with another
    config refuses naming the keys; only the newest keep_checkpoints stay; tiny-random data
    labels the rows even with production-looking models."""
    from training.config import TrainConfig

    out = tmp_path / "run"
    cfg = tiny_cfg(out, steps=4, ckpt_every=1, keep_checkpoints=2)
    train(cfg, streams=streams())
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == [
        "step-000003.safetensors",
        "step-000004.safetensors",
    ]
    with pytest.raises(FileExistsError, match="--resume .* --overwrite"):
        train(cfg, streams=streams())
    with pytest.raises(ValueError, match=r"lr: 0\.002 -> 0\.1.*shift"):
        train(tiny_cfg(out, steps=6, lr=0.1, shift=1.0), streams=streams(), resume=True)
    resumed = train(tiny_cfg(out, steps=5, ckpt_every=1), streams=streams(), resume=True)
    assert resumed["steps"] == 5

    monkeypatch.setattr(TrainConfig, "tiny_random", property(lambda self: False))
    again = train(cfg, streams=streams(), overwrite=True)  # samples say tiny_random: True
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and all(r["tiny_random"] for r in rows)
    assert again["tiny_random"] and json.loads((out / "summary.json").read_text())["tiny_random"]


def test_latent_training_loads_no_text_encoder_when_the_action_cache_exists(tmp_path) -> None:
    from training.conditioning import stored_action_cache
    from training.train_base import Trainer

    lat = [
        {
            "__key__": f"l{i}-{task}",
            "latents": torch.randn(48, 2 + (task == "i2v"), 4, 8),
            "history_latent_frames": int(task == "i2v"),
            "history_starts_at_first_frame": True,
            "event_emb": torch.zeros(64, 32),
            "keys": np.zeros(13, np.int64),
            "mouse": np.zeros(13, np.int64),
            "task": task,
            "source": "synthetic",
            "tiny_random": True,
        }
        for i in range(2)
        for task in ("t2v", "i2v")
    ]
    s = {
        ("synthetic", t): Stream(memory_source([x for x in lat if x["task"] == t]), 0)
        for t in ("t2v", "i2v")
    }
    cfg = tiny_cfg(tmp_path, latents=True, steps=1)
    first = Trainer(cfg, streams=s)  # builds the action cache once (loads the encoder)
    assert first._text is not None and first._vae is None
    assert stored_action_cache(tmp_path / "action_cache-yume.safetensors", cfg) is not None
    second = Trainer(cfg, streams=s, overwrite=True)
    assert second._text is None and second._vae is None
    assert second.run()["steps"] == 1


def test_cli_merges_preset_config_file_options_and_set(tmp_path, monkeypatch) -> None:
    from typer.testing import CliRunner

    import training.train_base
    from training.cli import app

    seen = {}
    monkeypatch.setattr(
        training.train_base, "train", lambda cfg, **kw: seen.update(cfg=cfg, **kw) or {"losses": []}
    )
    (tmp_path / "c.json").write_text(json.dumps({"shift": 7.0, "lr": 0.5, "steps": 9}))
    args = ["base", "--config-file", str(tmp_path / "c.json"), "--lr", "0.01", "--vae", "v"]
    args += ["--dataset", "sekai-real=2", "--dataset", "event:i2v=0.5", "--set", "steps=3"]
    args += ["--set", 'tasks={"t2v": 1, "i2v": 2}', "--set", "weights=w", "--overwrite"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    cfg = seen["cfg"]
    assert (cfg.shift, cfg.lr, cfg.steps, cfg.vae, cfg.weights) == (7.0, 0.01, 3, "v", "w")
    assert cfg.datasets == {"sekai-real": 2.0, "event:i2v": 0.5} and cfg.tasks["i2v"] == 2
    assert seen["overwrite"] and not seen["resume"]
    bad = CliRunner().invoke(app, ["base", "--set", "nope=1"])
    assert bad.exit_code != 0 and "nope" in bad.output
    from training.mixture import mixture_weight

    assert mixture_weight(cfg.datasets, "event", "i2v") == 0.5
    assert mixture_weight(cfg.datasets, "event", "t2v") == 0.0
    assert mixture_weight(cfg.datasets, "sekai-real", "t2v") == 2.0
