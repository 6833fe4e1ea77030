"""`yume-train export`: a tiny run's weights as a diffusers folder that loads back exactly."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from model.tscm import TSCMTransformer
from tests.test_training import streams, tiny_cfg
from training.cli import app
from training.distill import load_transformer
from training.export import MANIFEST, export
from training.run import load_latest
from training.train_base import train


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 1-step tiny base run (EMA decay 0.9, so EMA and raw weights differ) and its state."""
    out = tmp_path_factory.mktemp("export") / "run"
    train(tiny_cfg(out, steps=1, ckpt_every=1), streams=streams())
    _, state = load_latest(out)
    return out, state


def _same(model: torch.nn.Module, want: dict[str, torch.Tensor]) -> None:
    got = model.state_dict()
    assert set(got) == set(want)
    for k, v in want.items():
        assert torch.equal(got[k], v), k


def test_export_raw_loads_back_equal_and_writes_no_pickle(run, tmp_path) -> None:
    out_run, state = run
    info = export(out_run, tmp_path / "raw")
    assert info["weights"] == "raw" and info["step"] == 1 and info["labels"]["tiny_random"]
    files = sorted(p.name for p in (tmp_path / "raw").iterdir())
    assert files == [
        "action_cache-yume.safetensors",
        "config.json",
        "diffusion_pytorch_model.safetensors",
        MANIFEST,
    ]
    for p in (tmp_path / "raw").iterdir():  # no pickle anywhere (protocol 2+ starts 0x80)
        assert p.suffix in (".json", ".safetensors") and p.read_bytes()[:1] != b"\x80", p
    model = TSCMTransformer.from_pretrained(tmp_path / "raw")
    _same(model, state["model"])
    assert model.config.num_layers == TSCMTransformer.from_config_name("tiny").config.num_layers


def test_export_ema_by_cli_holds_the_ema_weights(run, tmp_path) -> None:
    out_run, state = run
    result = CliRunner().invoke(
        app, ["export", str(out_run), "--out", str(tmp_path / "e"), "--ema"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["weights"] == "ema"
    model = TSCMTransformer.from_pretrained(tmp_path / "e")
    shadow = state["ema"]["shadow"]
    _same(model, {k: shadow.get(k, v) for k, v in state["model"].items()})
    assert any(not torch.equal(shadow[k], state["model"][k]) for k in shadow)  # EMA != raw

    again = CliRunner().invoke(app, ["export", str(out_run), "--out", str(tmp_path / "e")])
    assert (
        again.exit_code == 1 and again.output.startswith("error:") and "--overwrite" in again.output
    )
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    refused = CliRunner().invoke(
        app, ["export", str(out_run), "--out", str(tmp_path / "other"), "--overwrite"]
    )
    assert refused.exit_code == 1 and (tmp_path / "other" / "notes.txt").exists()
    empty = CliRunner().invoke(
        app, ["export", str(tmp_path / "other"), "--out", str(tmp_path / "x")]
    )
    assert empty.exit_code == 1 and "no checkpoint" in empty.output


def test_from_pretrained_dtype_subfolder_variant_and_unsupported_keywords(run, tmp_path) -> None:
    out_run, state = run
    export(out_run, tmp_path / "root" / "transformer")
    bf16 = TSCMTransformer.from_pretrained(
        tmp_path / "root", subfolder="transformer", torch_dtype=torch.bfloat16
    )
    keep = set(bf16._keep_in_fp32_modules)
    dtypes = {n: p.dtype for n, p in bf16.named_parameters()}
    cast = {n: d for n, d in dtypes.items() if not set(n.split(".")) & keep}
    assert cast and set(cast.values()) == {torch.bfloat16}
    assert {d for n, d in dtypes.items() if n not in cast} == {torch.float32}
    # what sample --weights and distill --base load: the transformer/ folder inside
    net, info = load_transformer(str(tmp_path / "root"), "tiny")
    _same(net, state["model"])
    assert info["transformer"] == str(tmp_path / "root")

    export(out_run, tmp_path / "v", variant="fp32")
    assert (tmp_path / "v" / "diffusion_pytorch_model.fp32.safetensors").is_file()
    assert not (tmp_path / "v" / "diffusion_pytorch_model.safetensors").exists()
    _same(TSCMTransformer.from_pretrained(tmp_path / "v", variant="fp32"), state["model"])
    with pytest.raises(FileNotFoundError, match=r"diffusion_pytorch_model\.fp32\.safetensors"):
        TSCMTransformer.from_pretrained(tmp_path / "v")  # no plain file: the present one named

    with pytest.raises(TypeError, match="does not support device_map, revision;"):
        TSCMTransformer.from_pretrained(
            tmp_path / "v", variant="fp32", revision="x", device_map="auto"
        )
    loaded = TSCMTransformer.from_pretrained(  # the diffusers keywords with nothing to do here
        tmp_path / "v", variant="fp32", low_cpu_mem_usage=False, local_files_only=True
    )
    _same(loaded, state["model"])


@pytest.mark.slow
def test_sample_cli_takes_the_exported_folder(run, tmp_path) -> None:
    out_run, _ = run
    export(out_run, tmp_path / "exp", ema=True)
    args = ["sample", "--weights", str(tmp_path / "exp"), "--out", str(tmp_path / "s.mp4")]
    args += ["--height", "64", "--width", "128", "--actions", "W,←", "--seed", "3"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    meta = json.loads((tmp_path / "s.tiny-random.json").read_text())  # tiny VAE: labelled
    assert meta["transformer"] == str(tmp_path / "exp") and len(meta["blocks"]) == 2
    assert (tmp_path / "s.tiny-random.mp4").stat().st_size > 0
