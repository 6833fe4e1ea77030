"""Training data paths: steps/s from pre-encoded latent shards vs. raw clip shards (reader +
VAE + T5 per step), tiny config on CPU, same process; plus the loss change of a 40-step run.

The latents are made by the encode-latents stage in this process (its ``process`` and
``finalize``, models set up first and not timed), so ``encode_windows_per_s`` is the
encoders' rate, not Ray's actor start-up."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import pyarrow as pa

from curation.dataroot import DataRoot
from curation.shards import write_shards
from curation.stages.encode_latents import EncodeLatentsStage
from jobs.encode_latents import from_train_config
from schemas.latents import LATENTS_MANIFEST_SCHEMA
from tests.test_shards import make_mp4, make_sample
from training.config import preset
from training.train_base import train

STEPS = 12


def _step_time(out: Path) -> float:
    """Seconds per step after the first (which includes stream start-up)."""
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return (rows[-1]["elapsed_s"] - rows[0]["elapsed_s"]) / (len(rows) - 1)


def main() -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        mp4 = make_mp4(24, width=128, height=64)
        clips = [
            (f"c{i}", make_sample(f"c{i}", 24, mp4=mp4, width=128, height=64)) for i in range(8)
        ]
        write_shards(clips, root / "shards" / "sekai-real", "sekai-real", max_samples=4)

        stage = EncodeLatentsStage(from_train_config(preset("tiny")), DataRoot.at(root))
        items = list(stage.discover())
        stage.setup()
        t0 = time.perf_counter()
        result = stage.process(items)
        assert all(o.status == "done" for o in result.outcomes), result.outcomes
        rows = pa.Table.from_pylist(result.tables["encode_latents"], schema=LATENTS_MANIFEST_SCHEMA)
        n = stage.finalize({"encode_latents": rows})["datasets"]["sekai-real"]["samples"]
        encode_s = time.perf_counter() - t0

        common = dict(data_root=str(root), steps=STEPS, val_every=0, ckpt_every=10_000)
        train(preset("tiny", out_dir=str(root / "raw"), **common))
        train(preset("tiny", out_dir=str(root / "lat"), latents=True, **common))
        raw, lat = _step_time(root / "raw"), _step_time(root / "lat")

        long = train(
            preset("tiny", out_dir=str(root / "long"), latents=True, **common | {"steps": 40})
        )
    ratio = raw / lat
    drop = 1 - long["loss_last_mean"] / long["loss_first_mean"]
    return {
        "config": "tiny (128x224 px, up to 40+2 latent frames, batch 2), CPU, tiny-random models",
        "encode_windows_per_s": round(n / encode_s, 2),
        "raw_clip_step_s": round(raw, 4),
        "latent_shard_step_s": round(lat, 4),
        "latent_speedup": round(ratio, 2),
        "loss_first5_mean": round(long["loss_first_mean"], 4),
        "loss_last5_mean": round(long["loss_last_mean"], 4),
        "loss_drop_fraction": round(drop, 3),
        "targets_met": {
            "latent_path_1.5x_faster": ratio >= 1.5,
            "loss_drops_10pct_in_40_steps": drop >= 0.1,
        },
    }
