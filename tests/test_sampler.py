"""`yume-train sample`: action parsing, frame counts, per-block metadata, the event-text switch."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from model.text import ActionEmbeddingCache, TextEncoder
from model.tscm import TSCMTransformer
from schemas.actions import KEY_CODE, MOUSE_CODE
from training.cli import app
from training.config import SAMPLE_PRESETS, DistillConfig
from training.run import save_checkpoint
from training.sample import generate, parse_action, parse_plan, resolve, sample

H, W = 64, 128


def cfg(tmp_path, **kw):
    return dataclasses.replace(
        SAMPLE_PRESETS["tiny"], height=H, width=W, out=str(tmp_path / "s.mp4"), **kw
    )


def test_parse_actions_and_plan(tmp_path) -> None:
    assert parse_action("W") == (KEY_CODE["W"], MOUSE_CODE["·"])
    assert parse_action("A+W") == (KEY_CODE["W+A"], MOUSE_CODE["·"])
    assert parse_action("←") == (KEY_CODE["None"], MOUSE_CODE["←"])
    assert parse_action("S+D+↑→") == (KEY_CODE["S+D"], MOUSE_CODE["↑→"])
    assert parse_action("→+↑") == (KEY_CODE["None"], MOUSE_CODE["↑→"])
    for bad in ("Q", "W+S", "←→"):
        with pytest.raises(ValueError):
            parse_action(bad)
    plan = parse_plan("W,W|a dragon appears,W+A", "a street", 5)
    assert [(b["keys"], b["mouse"]) for b in plan] == [("W", "·")] * 2 + [("W+A", "·")] * 3
    assert [b["event"] for b in plan] == ["a street"] + ["a dragon appears"] * 4
    f = tmp_path / "plan.txt"
    f.write_text("# one block per line\nW\n←|it starts to rain\n\nS+A\n")
    plan = parse_plan(str(f), "a street", None)
    assert [(b["keys"], b["mouse"], b["event"]) for b in plan] == [
        ("W", "·", "a street"),
        ("None", "←", "it starts to rain"),
        ("S+A", "·", "it starts to rain"),
    ]


def test_event_text_and_action_switch_change_only_later_blocks() -> None:
    torch.manual_seed(0)
    model = TSCMTransformer.from_config_name("tiny").eval()
    text = TextEncoder.tiny()
    cache = ActionEmbeddingCache.build(text)
    c = dataclasses.replace(SAMPLE_PRESETS["tiny"], height=H, width=W)
    same = parse_plan("W,W,W", "a street", None)
    event = parse_plan("W,W|a dragon appears,W", "a street", None)
    action = parse_plan("W,W,←", "a street", None)
    base, times = generate(c, model, text, cache, same)
    assert len(times) == 3 and all(t > 0 for t in times)
    switched, _ = generate(c, model, text, cache, event)
    turned, _ = generate(c, model, text, cache, action)
    assert torch.equal(base[0], switched[0]) and not torch.allclose(base[1], switched[1])
    assert torch.equal(base[1], turned[1]) and not torch.allclose(base[2], turned[2])
    # with history, later blocks depend on earlier ones: a different first block changes them
    first, _ = generate(c, model, text, cache, parse_plan("S,W,W", "a street", None))
    assert not torch.allclose(first[2], base[2])


def test_sample_t2v_and_i2v_frame_counts_and_metadata(tmp_path) -> None:
    t2v = sample(cfg(tmp_path, actions="W,W+A|fog rolls in,←", seed=1), echo=lambda *_: None)
    assert t2v["task"] == "t2v" and t2v["frames"] == 1 + 4 * (3 * 2 - 1)
    assert t2v["video"].endswith("s.tiny-random.mp4") and t2v["tiny_random"]
    meta = json.loads((tmp_path / "s.tiny-random.json").read_text())
    assert [(b["keys"], b["mouse"]) for b in meta["blocks"]] == [
        ("W", "·"),
        ("W+A", "·"),
        ("None", "←"),
    ]
    assert [b["event"] for b in meta["blocks"]][1:] == ["fog rolls in"] * 2
    assert meta["fps"] == 16.0 and all(b["latency_s"] > 0 for b in meta["blocks"])

    from PIL import Image

    img = tmp_path / "start.png"
    Image.fromarray(np.full((90, 160, 3), 120, np.uint8)).save(img)
    lines = []
    i2v = sample(cfg(tmp_path, image=str(img), actions="W", blocks=2), echo=lines.append)
    assert i2v["task"] == "i2v" and i2v["frames"] == 1 + 4 * 2 * 2
    assert len(lines) == 2 and "ms" in lines[0]


def test_run_folder_fixes_model_and_schedule(tmp_path) -> None:
    model = TSCMTransformer.from_config_name("tiny")
    shadow = {n: p.detach() for n, p in model.named_parameters()}
    run = DistillConfig(denoising_steps=(1000, 500), pred_latent_frames=1)
    save_checkpoint(
        tmp_path / "run",
        3,
        {
            "config": run.to_dict(),
            "ema": {"decay": 0.9, "shadow": shadow},
            "labels": {"tiny_random": True},
        },
    )
    got, _, info = resolve(cfg(tmp_path, weights=str(tmp_path / "run"), pred_latent_frames=2))
    assert got.denoising_steps == (1000, 500) and got.pred_latent_frames == 1
    assert "step-000003" in info["transformer"]


def test_cli_sample_and_distill_help(tmp_path) -> None:
    runner = CliRunner()
    out = tmp_path / "cli.mp4"
    res = runner.invoke(
        app,
        [
            "sample",
            "--out",
            str(out),
            "--height",
            "64",
            "--width",
            "128",
            "--actions",
            "W,←",
            "--seed",
            "3",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "block   1" in res.output and (tmp_path / "cli.tiny-random.mp4").stat().st_size > 0
    bad = runner.invoke(app, ["sample", "--actions", "Q", "--out", str(out)])
    assert bad.exit_code == 1 and "neither" in bad.output
    res = runner.invoke(app, ["distill", "--set", "critic_updatez=3"])
    assert res.exit_code == 2 and "critic_updates" in res.output
