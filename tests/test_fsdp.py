"""FSDP on CPU (gloo, 2 ranks spawned with torch.multiprocessing): per-rank checkpoints, resume
at the same and at another world size, export and validation from shards, crafted rank files.

One spawn (module fixture) runs every 2-rank scenario: importing the trainer costs each process
seconds, so the tests below check what that session left on disk."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from curation.config import ConfigError
from model.tscm import TSCMTransformer
from tests.test_training import streams, tiny_cfg
from training.config import TrainConfig, preset
from training.distributed import full_tensor
from training.export import export
from training.run import RunFolderError, kept_checkpoints, load_checkpoint, load_latest
from training.train_base import Trainer, train

WORLD = 2
FSDP = dict(parallel="fsdp", workers=WORLD, batch_size=2)


def _rank_session(rank: int, root: str) -> None:
    """Every 2-rank run: uninterrupted (validating), without validation, stopped and resumed."""
    root_p = Path(root)
    dist.init_process_group("gloo", init_method=f"file://{root_p / 'pg'}", rank=rank, world_size=2)
    try:
        trainer = Trainer(tiny_cfg(root_p / "full", steps=4, ckpt_every=2, val_every=2, **FSDP),
                          streams=streams())  # fmt: skip
        full = trainer.run()
        gathered = {
            f"{part}/{n}": full_tensor(t).contiguous()
            for part, sd in (("model", trainer.model.state_dict()), ("ema", trainer.ema.shadow))
            for n, t in sd.items()
        }
        noval = train(tiny_cfg(root_p / "noval", steps=4, ckpt_every=2, **FSDP), streams=streams())
        first = train(tiny_cfg(root_p / "part", steps=2, ckpt_every=2, val_every=2, **FSDP),
                      streams=streams())  # fmt: skip
        resumed = train(tiny_cfg(root_p / "part", steps=4, ckpt_every=2, val_every=2, **FSDP),
                        streams=streams(), resume=True)  # fmt: skip
        losses = {"full": full["losses"], "noval": noval["losses"],
                  "resumed": first["losses"] + resumed["losses"]}  # fmt: skip
        (root_p / f"losses-{rank}.json").write_text(json.dumps(losses))
        if rank == 0:
            save_file(gathered, root_p / "gathered.safetensors")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def session(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fsdp")
    mp.spawn(_rank_session, args=(str(root),), nprocs=WORLD, join=True)
    return root


def _step(root: Path, run: str, step: int) -> Path:
    return root / run / "checkpoints" / f"step-{step:06d}"


def test_parallel_knob_is_checked_and_names_the_choices() -> None:
    with pytest.raises(ValueError, match="parallel 'zero': choose one of auto, fsdp, ddp"):
        preset("tiny", parallel="zero")
    with pytest.raises(ConfigError, match="choose one of auto, fsdp, ddp"):
        TrainConfig.from_dict({"parallel": "fsdp2"})
    assert TrainConfig.from_dict({"parallel": "fsdp"}).parallel == "fsdp"


@pytest.mark.slow
def test_fsdp_checkpoint_is_one_file_per_rank_and_no_rank_holds_the_full_state(session) -> None:
    folder = _step(session, "full", 4)
    names = sorted(p.name for p in folder.iterdir())
    assert names == [
        "done.json",
        "rank-00000-of-00002.safetensors",
        "rank-00001-of-00002.safetensors",
    ]
    assert json.loads((session / "full/checkpoints/latest.json").read_text())["path"] == folder.name
    gathered = load_file(session / "gathered.safetensors")
    whole = sum(t.numel() for t in gathered.values())  # model + EMA, every tensor whole
    for rank in range(WORLD):
        with safe_open(str(folder / f"rank-{rank:05d}-of-00002.safetensors"), "pt") as f:
            meta = f.metadata()
            shards = json.loads(meta["shards"])
            weight = "model/blocks.0.attn1.to_q.weight"
            assert shards[weight]["shape"] == list(gathered[weight].shape)
            assert f.get_slice(weight).get_shape()[0] == gathered[weight].shape[0] // WORLD
            held = sum(
                torch.Size(f.get_slice(k).get_shape()).numel()
                for k in shards
                if k.startswith(("model/", "ema/shadow/"))
            )
            assert held < 0.6 * whole, (rank, held, whole)
            assert any(k.startswith("optimizer/state/") for k in shards)  # moments sharded too
    # the step folder reads back whole: the gathered weights
    state = load_checkpoint(folder)
    for n, t in state["model"].items():
        assert torch.equal(t, gathered[f"model/{n}"]), n
    for n, t in state["ema"]["shadow"].items():
        assert torch.equal(t, gathered[f"ema/{n}"]), n


@pytest.mark.slow
def test_fsdp_resume_at_the_same_world_size_is_bit_identical(session) -> None:
    for rank in range(WORLD):
        losses = json.loads((session / f"losses-{rank}.json").read_text())
        assert len(losses["full"]) == 4
        assert losses["resumed"] == losses["full"], rank
        # validation swaps the EMA weights in and out again: training does not notice it
        assert losses["noval"] == losses["full"], rank
    a = load_checkpoint(_step(session, "full", 4))
    b = load_checkpoint(_step(session, "part", 4))
    for part in ("model", ("ema", "shadow")):
        sa = a[part] if isinstance(part, str) else a[part[0]][part[1]]
        sb = b[part] if isinstance(part, str) else b[part[0]][part[1]]
        for k in sa:
            assert torch.equal(sa[k], sb[k]), k
    for k, s in a["optimizer"]["state"].items():
        for name in s:
            assert torch.equal(s[name], b["optimizer"]["state"][k][name]), (k, name)


@pytest.mark.slow
def test_validation_under_fsdp_writes_its_sample(session) -> None:
    samples = session / "full" / "samples"
    for step in (2, 4):
        assert (samples / f"step-{step:06d}.tiny-random.mp4").stat().st_size > 0
        meta = json.loads((samples / f"step-{step:06d}.tiny-random.json").read_text())
        assert meta["step"] == step and meta["tiny_random"] is True
    rows = [json.loads(x) for x in (session / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "val_loss" in r] == [2, 4]


@pytest.mark.slow
def test_resume_at_world_size_one_from_a_two_rank_checkpoint(session, tmp_path) -> None:
    out = tmp_path / "one"
    shutil.copytree(session / "part", out)
    cfg = tiny_cfg(out, steps=5, ckpt_every=5, val_every=0, parallel="fsdp", batch_size=2)
    trainer = Trainer(cfg, streams=streams(), resume=True)
    gathered = load_file(session / "gathered.safetensors")  # the uninterrupted run's step 4
    assert trainer.step == 4
    for n, t in trainer.model.state_dict().items():
        assert torch.equal(t, gathered[f"model/{n}"]), n
    for n, t in trainer.ema.shadow.items():
        assert torch.equal(t, gathered[f"ema/{n}"]), n
    summary = trainer.run()
    assert summary["steps"] == 5 and len(summary["losses"]) == 1
    single = out / "checkpoints" / "step-000005.safetensors"  # one process: the single file
    assert load_checkpoint(single)["step"] == 5
    assert json.loads((out / "checkpoints" / "latest.json").read_text())["path"] == single.name


@pytest.mark.slow
def test_export_from_a_sharded_checkpoint_equals_the_gathered_weights(session, tmp_path) -> None:
    gathered = load_file(session / "gathered.safetensors")
    for ema in (False, True):
        out = tmp_path / f"export-{ema}"
        info = export(session / "full", out, ema=ema)
        assert info["checkpoint"] == "step-000004" and info["step"] == 4
        model = TSCMTransformer.from_pretrained(out, local_files_only=True)
        for n, t in model.state_dict().items():
            want = gathered.get(f"ema/{n}") if ema else None
            want = gathered[f"model/{n}"] if want is None else want
            assert torch.equal(t, want), (ema, n)


class _Payload:
    """Unpickling this would create ``path``: proof that a loader ran code."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (str(self.path),))


def _crafted(session: Path, tmp_path: Path) -> tuple[Path, Path]:
    out = tmp_path / "run"
    shutil.copytree(session / "part", out)
    return out, out / "checkpoints" / "step-000004"


@pytest.mark.slow
def test_crafted_rank_files_are_refused_by_name(session, tmp_path) -> None:
    out, folder = _crafted(session, tmp_path)
    rank1 = folder / "rank-00001-of-00002.safetensors"
    proof = tmp_path / "code-ran"

    # a pickle under a rank file's name: refused, nothing run, the previous checkpoint used
    rank1.write_bytes(pickle.dumps({"model": _Payload(proof)}))
    with pytest.raises(RunFolderError, match=r"step-000004: not an intact checkpoint"):
        load_checkpoint(folder)
    path, state = load_latest(out)
    assert path.name == "step-000002" and state["step"] == 2 and not proof.exists()

    # a missing rank
    rank1.unlink()
    with pytest.raises(RunFolderError, match=r"rank-00001-of-00002\.safetensors is missing"):
        load_checkpoint(folder)

    # a shard of the wrong shape (its header still says where it sits)
    shutil.copyfile(_step(session, "part", 4) / rank1.name, rank1)
    with safe_open(str(rank1), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    key = "model/blocks.0.attn1.to_q.weight"
    tensors[key] = torch.zeros(tensors[key].shape[0] + 3, tensors[key].shape[1])
    save_file(tensors, rank1, metadata=meta)
    with pytest.raises(RunFolderError, match=rf"shard '{key}'.*outside"):
        load_checkpoint(folder)

    # without done.json the folder is no checkpoint: not kept, and latest.json's falls back
    (folder / "done.json").unlink()
    assert [p.name for p in kept_checkpoints(out)] == ["step-000002"]
    assert load_latest(out)[0].name == "step-000002"


def test_a_model_of_another_shape_is_refused_when_cutting_shards() -> None:
    from training.distributed import shard_like

    with pytest.raises(ValueError, match=r"checkpoint w has shape \(3, 2\), the model \(2, 2\)"):
        shard_like(torch.zeros(3, 2), torch.zeros(2, 2), "w")
