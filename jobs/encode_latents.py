"""Pre-encode clip shards into latent shards, so training runs neither the VAE nor T5.

``<root>/shards/<dataset>/*.tar`` -> ``<root>/latents/<dataset>/``: latent shards written by
the one shard writer (curation.shards, kind LATENT_SAMPLE: fsynced, index.parquet with
sha256, per-shard stats, ``yume-data shards verify`` checks them), a done record per input
shard in ``encoded/<input shard>.json`` (config hash, rows, rejects), then ``latents.parquet``
per dataset (schemas.latents.LATENT_INDEX_SCHEMA), ``manifests/encode_latents.rejects.parquet``
and ``reports/encode_latents.json``.

Windows come from the training reader with the training config's frame counts and size, one
window per clip and task per pass (``--windows-per-clip`` passes). One Ray actor per model
copy (``setup()`` loads the VAE and text encoder once), one input shard per call; the driver
writes each input shard's samples (one writer per folder) and then its done record.
Resumable per input shard: one with a done record is skipped; a killed run re-encodes the
shards without one, and the writer skips keys its index already holds, so nothing doubles.

    ray job submit -- python -m jobs.encode_latents --config tiny --data ./data
"""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import numpy as np
import pyarrow as pa
import typer

from curation.manifest import atomic_write_json, rejects_table, write_table
from curation.provenance import provenance
from curation.shards import LATENT_SAMPLE, indexed_shards, iter_shard, read_index, write_shards
from model.vae import STRIDE
from schemas.common import REJECTS_SCHEMA
from schemas.latents import LATENT_DONE_DIR, LATENT_INDEX_SCHEMA, LATENT_SCHEMA_VERSION
from training.config import TrainConfig
from training.data import latent_config, latent_config_hash, mixture_datasets

STAGE = "encode_latents"


def done_path(out_dir: Path, shard: str) -> Path:
    return out_dir / LATENT_DONE_DIR / Path(shard).with_suffix(".json").name


def _tensor_bytes(t) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(t.contiguous().clone(), buf)
    return buf.getvalue()


def latent_members(sample: dict, extra: dict) -> dict[str, bytes]:
    """A latent sample's shard members: float16 ``latents.pth`` (48, F, h, w) and
    ``event_emb.pth`` (Le, D), and its ``json`` (schemas.latents)."""
    meta = {
        "schema_version": LATENT_SCHEMA_VERSION,
        "key": sample["__key__"],
        "task": sample["task"],
        "source": sample["source"],
        "latent_shape": list(sample["latents"].shape),
        "latent_fps": float(sample["latent_fps"]),
        "history_latent_frames": int(sample["history_latent_frames"]),
        "history_starts_at_first_frame": bool(sample["history_starts_at_first_frame"]),
        "keys": np.asarray(sample["keys"]).tolist(),
        "mouse": np.asarray(sample["mouse"]).tolist(),
        "tiny_random": bool(sample["tiny_random"]),
        **extra,
    }
    return {
        "latents.pth": _tensor_bytes(sample["latents"].half()),
        "event_emb.pth": _tensor_bytes(sample["event_emb"].half()),
        "json": json.dumps(meta, sort_keys=True).encode(),
    }


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
        done = [self.process(str(s)) for s in batch["shard"]]
        return {
            "dataset": batch["dataset"],
            "shard": batch["shard"],
            "encoded": np.array([pickle.dumps(d) for d in done], dtype=object),
        }

    def process(self, shard: str) -> tuple[list[tuple[str, dict[str, bytes]]], list[dict]]:
        """Encode one clip shard: its latent samples ``(key, members)`` and rejects rows."""
        from curation.shard_reader import make_window_dataset
        from training.data import window_frames

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
                    fps = float(window["fps"]) / STRIDE[0]  # one latent frame per 4 frames
                    samples.append(lat | {"__key__": key, "latent_fps": fps})
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
        return [(s["__key__"], latent_members(s, extra)) for s in samples], rejects


def write_encoded(
    cfg: TrainConfig,
    out_dir: Path,
    shard: str,
    samples: list[tuple[str, dict[str, bytes]]],
    rejects: list[dict],
) -> dict:
    """Write one input shard's latent samples through the shard writer, then its done record.

    Keys already indexed (a run killed before the done record) are skipped; samples the
    writer refuses become rejects rows. Returns the done record."""
    written = write_shards(samples, out_dir, out_dir.name, max_samples=10**6, kind=LATENT_SAMPLE)
    rows = []
    for key, members in samples:
        meta = json.loads(members["json"])
        rows.append(
            {
                "key": key,
                "task": meta["task"],
                "source": meta["source"],
                "source_shard": meta["source_shard"],
                "latent_frames": meta["latent_shape"][1],
                "history_latent_frames": meta["history_latent_frames"],
                "tiny_random": meta["tiny_random"],
            }
        )
    refused = {r["clip_id"] for r in written["rejects"]}
    record = {
        "source_shard": Path(shard).name,
        "config_hash": latent_config_hash(cfg),
        "config": latent_config(cfg),
        "rows": [r for r in rows if r["key"] not in refused],
        "rejects": rejects + [r | {"stage": STAGE} for r in written["rejects"]],
    }
    atomic_write_json(done_path(out_dir, shard), record)
    return record


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
            done = done_path(out_root_p / dataset, tar.name)
            if not done.exists():
                todo.append({"dataset": dataset, "shard": str(tar)})
            elif (old := json.loads(done.read_text()).get("config_hash")) != want:
                raise ValueError(
                    f"{done} was encoded with another config (hash {old}, now {want}: "
                    f"{latent_config(cfg)}); encode into another --out or delete {done.parent}"
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
        for row in tqdm(ds.iter_rows(), total=len(todo), desc="encode-latents shards"):
            samples, rejects = pickle.loads(row["encoded"])
            write_encoded(cfg, out_root_p / row["dataset"], row["shard"], samples, rejects)
    return finalize(cfg, out_root_p, shards_total=total, encoded_now=len(todo))


def finalize(cfg: TrainConfig, out_root: Path, *, shards_total: int, encoded_now: int) -> dict:
    """Latent table per dataset, rejects table and report from the done records."""
    prov = provenance(STAGE, {"train_config": cfg.to_dict()})
    summary = {"stage": STAGE, "shards": shards_total, "encoded_now": encoded_now, "datasets": {}}
    all_rejects = []
    for dataset in mixture_datasets(cfg.datasets):
        folder = out_root / dataset
        records = [
            json.loads(p.read_text()) for p in sorted((folder / LATENT_DONE_DIR).glob("*.json"))
        ]
        index = read_index(folder)
        shard_of = dict(
            zip(index.column("key").to_pylist(), index.column("shard").to_pylist(), strict=True)
        )
        rows = [r | {"shard": shard_of[r["key"]]} for s in records for r in s["rows"]]
        rejects = [r for s in records for r in s["rejects"]]
        all_rejects += rejects
        table = pa.Table.from_pylist(rows, schema=LATENT_INDEX_SCHEMA)
        if records:
            write_table(table, folder / "latents.parquet", LATENT_INDEX_SCHEMA, prov)
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
