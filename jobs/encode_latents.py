"""Pre-encode clip shards into latent shards, so training runs neither the VAE nor T5.

``<root>/shards/<dataset>/*.tar`` -> ``<root>/latents/<dataset>/<same name>.tar`` plus a
``.json`` sidecar per shard (index rows and rejects), then ``index.parquet`` per dataset,
``manifests/encode_latents.rejects.parquet`` and ``reports/encode_latents.json``.

Windows come from the training reader with the training config's frame counts and size, one
window per clip and task per pass (``--windows-per-clip`` passes). One Ray actor per model
copy (``setup()`` loads the VAE and text encoder once), one input shard per call.
Resumable per shard: a shard whose sidecar exists is done; the tar is renamed into place
before its sidecar is written, so a killed run redoes at most the shards in flight.

    ray job submit -- python -m jobs.encode_latents --config tiny --data ./data
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import typer

from curation.manifest import atomic_write_json, rejects_table, write_table
from curation.provenance import provenance
from curation.shards import indexed_shards, iter_shard
from schemas.common import REJECTS_SCHEMA
from training.config import TrainConfig
from training.data import latent_config, latent_config_hash, mixture_datasets

STAGE = "encode_latents"

LATENT_INDEX_SCHEMA = pa.schema(
    [
        pa.field("key", pa.string(), nullable=False),  # <clip key>-<task>-<pass>
        pa.field("shard", pa.string(), nullable=False),
        pa.field("task", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("latent_frames", pa.int32(), nullable=False),
        pa.field("history_latent_frames", pa.int32(), nullable=False),
        pa.field("tiny_random", pa.bool_(), nullable=False),
        pa.field("sha256", pa.string(), nullable=False),  # of the latents member
    ]
)


class EncodeShardStage:
    """Encodes whole clip shards into latent shards; models load once per actor."""

    def __init__(self, config: dict, windows_per_clip: int = 1):
        self.cfg = TrainConfig.from_dict(config)
        self.windows_per_clip = windows_per_clip
        self.setup()

    def setup(self) -> None:
        import torch

        from model.text import TextEncoder
        from model.vae import VideoVAE
        from training.data import Conditioner

        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.vae = VideoVAE.load(self.cfg.vae).to(device)
        self.text = TextEncoder.load(
            self.cfg.text_encoder, event_len=self.cfg.event_len, action_len=self.cfg.action_len
        ).to(device)
        self.cond = Conditioner(self.cfg, self.vae, self.text, None)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        done = [
            self.process(str(s), str(o)) for s, o in zip(batch["shard"], batch["out"], strict=True)
        ]
        return {
            "shard": np.array([d["shard"] for d in done]),
            "samples": np.array([len(d["rows"]) for d in done]),
            "rejected": np.array([len(d["rejects"]) for d in done]),
        }

    def process(self, shard: str, out: str) -> dict:
        """Encode one clip shard to ``out`` and write its sidecar; returns the sidecar."""
        from curation.shard_reader import make_window_dataset
        from training.data import window_frames, write_latent_shard

        keys = [k for k, _ in iter_shard(shard, exts={"json"})]
        samples, rejects = [], []
        for task in ("t2v", "i2v"):
            history, pred = window_frames(self.cfg, task)
            ds = make_window_dataset(
                [shard], history, pred, shuffle=0, seed=self.cfg.seed,
                size=(self.cfg.height, self.cfg.width), tasks=[task],
            )  # fmt: skip
            for n in range(self.windows_per_clip):
                ds.set_epoch(n)
                seen = set()
                for window in ds:
                    seen.add(window["__key__"])
                    key = f"{window['__key__']}-{task}-{n}"
                    try:
                        (lat,) = self.cond.to_latent_samples([window])
                    except ValueError as e:
                        rejects.append(_reject(shard, key, "bad_window", str(e)))
                        continue
                    samples.append(lat | {"__key__": key})
                for k in sorted(set(keys) - seen):
                    rejects.append(
                        _reject(
                            shard,
                            k,
                            f"no_{task}_window",
                            f"no {history}+{pred}-frame {task} window (pass {n})",
                        )
                    )
        extra = {
            "vae": self.vae.model_id,
            "text_encoder": self.text.model_id,
            "source_shard": Path(shard).name,
            "size": [self.cfg.height, self.cfg.width],
            "config_hash": latent_config_hash(self.cfg),
        }
        rows = write_latent_shard(out, samples, extra)
        sidecar = {
            "shard": Path(out).name,
            "config_hash": latent_config_hash(self.cfg),
            "config": latent_config(self.cfg),
            "rows": rows,
            "rejects": rejects,
        }
        atomic_write_json(Path(out).with_suffix(".json"), sidecar)
        return sidecar


def _reject(shard: str, key: str, reason: str, detail: str) -> dict:
    return {"stage": STAGE, "input": shard, "clip_id": key, "reason": reason, "detail": detail}


def run(
    cfg: TrainConfig,
    *,
    out_root: str | None = None,
    actors: int = 1,
    num_gpus: float = 0.0,
    windows_per_clip: int = 1,
    address: str | None = None,
) -> dict:
    """Encode every pending shard of ``cfg.datasets``; returns the summary report."""
    import ray
    from ray.data import ActorPoolStrategy
    from tqdm import tqdm

    from jobs.runtime import init_ray

    root = Path(cfg.data_root)
    out_root_p = Path(out_root) if out_root else root / "latents"
    want = latent_config_hash(cfg)
    todo, total = [], 0
    for dataset in mixture_datasets(cfg.datasets):
        for tar in map(Path, indexed_shards(root / "shards" / dataset)):
            total += 1
            out = out_root_p / dataset / tar.name
            sidecar = out.with_suffix(".json")
            if not sidecar.exists():
                todo.append({"dataset": dataset, "shard": str(tar), "out": str(out)})
            elif (old := json.loads(sidecar.read_text()).get("config_hash")) != want:
                raise ValueError(
                    f"{sidecar} was encoded with another config (hash {old}, now {want}: "
                    f"{latent_config(cfg)}); encode into another --out or delete {out.parent}"
                )
    if todo:
        init_ray(address)
        ds = ray.data.from_items(todo).map_batches(
            EncodeShardStage,
            fn_constructor_kwargs={"config": cfg.to_dict(), "windows_per_clip": windows_per_clip},
            batch_size=1,
            compute=ActorPoolStrategy(size=actors),
            num_gpus=num_gpus,
        )
        for _ in tqdm(ds.iter_rows(), total=len(todo), desc="encode-latents shards"):
            pass
    return finalize(cfg, out_root_p, shards_total=total, encoded_now=len(todo))


def finalize(cfg: TrainConfig, out_root: Path, *, shards_total: int, encoded_now: int) -> dict:
    """Index per dataset, rejects table and report from the shard sidecars."""
    prov = provenance(STAGE, {"train_config": cfg.to_dict()})
    summary = {"stage": STAGE, "shards": shards_total, "encoded_now": encoded_now, "datasets": {}}
    all_rejects = []
    for dataset in mixture_datasets(cfg.datasets):
        sidecars = [json.loads(p.read_text()) for p in sorted((out_root / dataset).glob("*.json"))]
        rows = [r for s in sidecars for r in s["rows"]]
        rejects = [r for s in sidecars for r in s["rejects"]]
        all_rejects += rejects
        table = pa.Table.from_pylist(rows, schema=LATENT_INDEX_SCHEMA)
        if sidecars:
            write_table(table, out_root / dataset / "index.parquet", LATENT_INDEX_SCHEMA, prov)
        summary["datasets"][dataset] = {
            "samples": len(rows),
            "rejected": len(rejects),
            "by_task": {t: sum(r["task"] == t for r in rows) for t in ("t2v", "i2v")},
            "tiny_random": any(r["tiny_random"] for r in rows),
        }
    root = Path(cfg.data_root)
    write_table(
        rejects_table(all_rejects),
        root / "manifests" / f"{STAGE}.rejects.parquet",
        REJECTS_SCHEMA,
        prov,
    )
    summary["tiny_random"] = any(d["tiny_random"] for d in summary["datasets"].values())
    atomic_write_json(root / "reports" / f"{STAGE}.json", summary | {"provenance": prov})
    return summary


def main(
    config: str = typer.Option("tiny", help="training preset: frame counts, size, encoders"),
    data: str = typer.Option(None, help="data root (default: the preset's)"),
    out: str = typer.Option(None, help="latent root (default: <data>/latents)"),
    actors: int = typer.Option(1, help="encoder actors (model copies)"),
    num_gpus: float = typer.Option(0.0, help="GPUs per actor"),
    windows_per_clip: int = typer.Option(1, help="windows per clip and task"),
    address: str = typer.Option(None, help="Ray cluster address (default: local Ray)"),
) -> None:
    """Encode clip shards into latent shards for `yume-train base --latents`."""
    from training.config import preset

    cfg = preset(config, data_root=data)
    summary = run(
        cfg, out_root=out, actors=actors, num_gpus=num_gpus,
        windows_per_clip=windows_per_clip, address=address,
    )  # fmt: skip
    typer.echo(json.dumps(summary, indent=2))


if __name__ == "__main__":
    typer.run(main)
