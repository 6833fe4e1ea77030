"""Sample sources: stream factories over memory, raw clip shards and latent shards, and the
streams per (dataset, task) of a data root.

A *window sample* is what the shard reader yields (uint8 ``video`` (T,H,W,3), per-frame
``keys``/``mouse`` codes, ``event_text``, ``task``, ...). A *latent sample* replaces the
video and event text with ``latents`` (48, F, h, w) and ``event_emb`` (L_event, D); latent
shards store exactly that, and ``training.conditioning.Conditioner`` makes it on the fly
from raw clip shards.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from curation.dataroot import DataRoot
from model.windows import min_clip_frames, window_frames
from schemas.latents import latent_config, latent_config_hash
from training.config import TrainConfig
from training.mixture import (
    TASKS,
    PositionedFactory,
    Stream,
    StreamFactory,
    mixture_datasets,
    mixture_weight,
)

log = logging.getLogger(__name__)


def memory_source(samples: Sequence[dict]) -> StreamFactory:
    """Endless seeded reshuffles of in-memory samples (tests, small validation sets)."""

    def factory(seed: int) -> Iterator[dict]:
        rng = np.random.default_rng(seed)
        while True:
            for i in rng.permutation(len(samples)):
                yield samples[i]

    return factory


def clip_shard_source(urls: list[str], cfg: TrainConfig, task: str) -> StreamFactory:
    """Endless ``task`` windows from raw clip shards, via the shard reader."""
    from curation.shard_reader import make_window_dataset

    history, pred = window_frames(cfg, task)

    def factory(seed: int) -> Iterator[dict]:
        ds = make_window_dataset(
            urls,
            history,
            pred,
            resampled=True,
            shuffle=cfg.shuffle_buffer,
            seed=seed,
            size=(cfg.height, cfg.width),
            tasks=[task],
            max_damaged_share=cfg.max_damaged_share,
        )
        return iter(ds)

    return factory


def decode_latent_sample(key: str, members: dict[str, bytes], meta: dict) -> dict:
    """A latent sample from its shard members (``meta`` is its parsed json)."""
    return {
        "__key__": key,
        "latents": torch.load(io.BytesIO(members["latents.pth"]), weights_only=True).float(),
        "event_emb": torch.load(io.BytesIO(members["event_emb.pth"]), weights_only=True).float(),
        "history_latent_frames": int(meta["history_latent_frames"]),
        "history_starts_at_first_frame": bool(meta["history_starts_at_first_frame"]),
        "keys": np.asarray(meta["keys"], dtype=np.int64),
        "mouse": np.asarray(meta["mouse"], dtype=np.int64),
        "task": meta["task"],
        "source": meta["source"],
        "tiny_random": bool(meta["tiny_random"]),
    }


def read_latent_samples(shard: str | Path, task: str, config_hash: str) -> list[dict]:
    """The ``task`` samples of one latent shard in file order (only those are decoded).

    A sample encoded with another config (json ``config_hash``) is an error."""
    from curation.shard_reader import tar_damage
    from curation.shards import iter_shard

    if (why := tar_damage(shard)) is not None:  # tarfile stops silently at a bad header
        raise ValueError(f"latent shard {shard} is damaged ({why}): rerun encode-latents")
    out = []
    for key, members in iter_shard(shard):
        meta = json.loads(members["json"])
        if meta["config_hash"] != config_hash:
            raise ValueError(
                f"{shard}:{key}: encoded with another config (hash {meta['config_hash']}, "
                f"this run {config_hash})"
            )
        if meta["task"] == task:
            out.append(decode_latent_sample(key, members, meta))
    return out


def latent_shard_source(shards: list[Path], task: str, config_hash: str) -> PositionedFactory:
    """Endless epochs over latent shards: shard order and in-shard order shuffled per epoch.

    Orders come from generators seeded by (seed, epoch) and (seed, epoch, shard position),
    so a position {epoch, shard, index} restores by reading one shard, never by replay.
    An epoch without a single ``task`` sample is an error (not an endless loop)."""

    def factory(seed: int, position: dict | None) -> Iterator[tuple[dict, dict]]:
        pos = position or {"epoch": 0, "shard": 0, "index": 0, "shards": len(shards)}
        if pos["shards"] != len(shards):
            raise ValueError(f"checkpoint saw {pos['shards']} {task} shards, now {len(shards)}")
        epoch, start, skip = pos["epoch"], pos["shard"], pos["index"]
        while True:
            order = np.random.default_rng([seed, epoch]).permutation(len(shards))
            found = False
            for p in range(start, len(shards)):
                samples = read_latent_samples(shards[order[p]], task, config_hash)
                found |= bool(samples)
                perm = np.random.default_rng([seed, epoch, p]).permutation(len(samples))
                for j in range(skip, len(samples)):
                    after = {"epoch": epoch, "shard": p, "index": j + 1, "shards": len(shards)}
                    yield samples[perm[j]], after
                skip = 0
            if not found and start == 0:
                raise ValueError(f"no {task} samples in latent shards {shards[:3]}...")
            epoch, start = epoch + 1, 0

    factory.positioned = True  # Stream restores it at a position
    return factory


def clip_shards_by_task(folder: Path, cfg: TrainConfig) -> dict[str, list[str]]:
    """Indexed clip shards holding at least one sample that offers each task and is long
    enough for its window, answered by the shard index alone."""
    from curation.shards import shards_for

    return {t: shards_for(folder, t, min_clip_frames(cfg, t)) for t in TASKS}


def latent_shards_by_task(folder: Path, cfg: TrainConfig) -> dict[str, list[str]]:
    """Indexed latent shards per task they hold (from the index), after checking that
    encode-latents made them with this config's size, frames and encoders (the provenance
    of ``latents.parquet``)."""
    from curation.manifest import read_provenance
    from curation.shards import shards_for

    want = latent_config_hash(cfg)
    table = folder / "latents.parquet"
    if not table.exists():
        raise FileNotFoundError(f"{table} not found: run `yume-data encode-latents` first")
    got = read_provenance(table).get("latent_config_hash")
    if got != want:
        raise ValueError(
            f"{folder}: latents encoded with another config (hash {got}, this run {want}: "
            f"{latent_config(cfg)}); re-encode with `yume-data encode-latents --overwrite`"
        )
    return {t: shards_for(folder, t, cfg.pred_latent_frames) for t in TASKS}


def shard_streams(cfg: TrainConfig, rank: int = 0) -> dict[tuple[str, str], Stream]:
    """One stream per (dataset, task) from ``<root>/latents/<ds>`` or ``<root>/shards/<ds>``.

    Built from the shard index and metadata: a (dataset, task) without a possible window is
    skipped with a warning (never an endless search); a dataset with none at all is an error.
    """
    root = DataRoot.at(cfg.data_root)
    streams = {}
    for k, dataset in enumerate(mixture_datasets(cfg.datasets)):
        tasks = [t for t in TASKS if cfg.tasks.get(t, 0) > 0]
        tasks = [t for t in tasks if mixture_weight(cfg.datasets, dataset, t) > 0]
        if not tasks:
            continue
        folder = root.latents(dataset) if cfg.latents else root.shards(dataset)
        if not folder.is_dir():
            raise FileNotFoundError(f"no shards in {folder} (dataset {dataset!r})")
        by_task = (
            latent_shards_by_task(folder, cfg) if cfg.latents else clip_shards_by_task(folder, cfg)
        )
        usable = [t for t in tasks if by_task[t]]
        if not usable:
            raise ValueError(
                f"dataset {dataset!r} ({folder}) has no sample for {tasks} long enough for a "
                f"window ({ {t: min_clip_frames(cfg, t) for t in tasks} } frames); "
                "lower pred_latent_frames or drop the dataset"
            )
        for t in sorted(set(tasks) - set(usable)):
            log.warning("dataset %r has no %s window: its %s weight is skipped", dataset, t, t)
        for j, task in enumerate(TASKS):
            if task not in usable:
                continue
            if cfg.latents:
                factory = latent_shard_source(
                    [Path(u) for u in by_task[task]], task, latent_config_hash(cfg)
                )
            else:
                factory = clip_shard_source(by_task[task], cfg, task)
            seed = cfg.seed * 1_000_003 + rank * 1009 + k * 31 + j
            streams[(dataset, task)] = Stream(factory, seed)
    return streams
