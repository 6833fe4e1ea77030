"""The encode-latents stage: clip shards -> latent shards, so training runs neither VAE nor T5.

One item per clip sample of ``shards/<dataset>``. Each clip gives ``windows_per_clip``
windows per task it offers (the training reader's windows, with the training config's
frame counts and size), encoded by the VAE and the text encoder (loaded once per actor in
``setup()``, through ``model.backends``). Latent samples (``latents.pth`` (48, F, h, w) and
``event_emb.pth`` (Le, D) in float16, and a json of ``schemas.latents``) are staged, then
``finalize`` packs them into ``latents/<dataset>/`` with the one shard writer and writes
``latents/<dataset>/latents.parquet`` for the trainer. A clip with no window at all is a
``no_window`` reject.

An item is a clip of the index (``<shards folder>/<clip key>``, whichever shard holds it),
its version the index's sha256 of each member: a clips rerun that repacks shards moves
samples without redoing them, a changed clip (a caption edit, a re-encode) is redone, and
a clip gone from the index drops its latents, down to the latent shards.

What a damaged clip is rejected as (``shard_samples``, ``check_members``, ``sample_meta``,
here and in recaption): ``missing_shard`` (the shard the index names is not on disk),
``unreadable_shard`` (empty, not a tar, or cut off), ``missing_sample`` (the index names a
clip the shard does not hold), ``missing_member`` (the tar lacks a member of the clip),
``sha256_mismatch`` (a member's bytes differ from the index: changed since indexing),
``bad_sample_json`` (the json does not parse or lacks a field of the sample schema),
``empty_clip`` (a 0-byte mp4) and ``undecodable_clip`` (an mp4 decord cannot decode).
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import re
import tarfile
from collections import Counter
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from decord import DECORDError

from curation.config import option
from curation.dataroot import check_name
from curation.manifest import atomic_write_bytes, write_table
from curation.provenance import provenance
from curation.shard_reader import make_window, tar_damage
from curation.shards import LATENT_SAMPLE, ShardError, iter_shard, read_index, write_shards_from_dir
from curation.stages.base import (
    Outcome,
    Reject,
    Resources,
    Result,
    Stage,
    raise_if_fatal,
    unexpected,
)
from schemas.common import SchemaError
from schemas.latents import (
    LATENT_INDEX_SCHEMA,
    LATENT_SCHEMA_VERSION,
    LATENTS_MANIFEST_SCHEMA,
    latent_config,
    latent_config_hash,
)
from schemas.sample import TASKS, validate_sample


@dataclass(frozen=True)
class EncodeLatentsConfig:
    """The training geometry and encoders the latents are made for (``--preset`` copies
    them from a training preset), which datasets, and how many windows per clip."""

    datasets: list[str] = option(
        factory=lambda: ["sekai-real"], help="Clip datasets (shards/<name>) to encode."
    )
    height: int = option(128, "Frame height the windows are resized to (cover, centre crop).")
    width: int = option(224, "Frame width.")
    pred_latent_frames: int = option(2, "Latent frames of the prediction block.")
    max_history_latent_frames: int = option(40, "Most latent frames of I2V history.")
    vae: str = option("tiny-random", "VAE backend: a local Wan2.2 folder or tiny-random.")
    text_encoder: str = option("tiny-random", "UMT5 backend: a local Wan2.2 folder or tiny-random.")
    event_len: int = option(64, "Text tokens of the event description.")
    action_len: int = option(32, "Text tokens of the action description.", output=False)
    windows_per_clip: int = option(1, "Windows per clip and task.")
    seed: int = option(0, "Seed of the window positions.")
    gpus: float = option(0.0, "GPUs per encoder actor.", output=False)
    max_samples: int = option(1000, "Latent samples per shard at most.", output=False)

    def __post_init__(self) -> None:
        for name in self.datasets:
            check_name(name)
        if min(self.pred_latent_frames, self.max_history_latent_frames, self.windows_per_clip) < 1:
            raise ValueError("pred_latent_frames, max_history_latent_frames, windows_per_clip >= 1")


# what reading a damaged shard raises: a bad tar, a bad member name, a cut-off file
SHARD_READ_ERRORS = (tarfile.TarError, ShardError, EOFError, OSError)
# what decord raises for an mp4 it cannot open (RuntimeError) or decode (DECORDError)
DECODE_ERRORS = (RuntimeError, DECORDError)

# a latent sample's key: its clip's key, the task and the window number
_LATENT_KEY = re.compile(rf"(?P<clip>.+)-(?:{'|'.join(TASKS)})-\d+")


def shard_samples(
    shard: str, keys: Collection[str], exts: Collection[str] | None = None
) -> Iterator[tuple[str, dict[str, bytes]]]:
    """The samples ``keys`` of one clip shard, in shard order (only ``exts`` when given).

    Raises Reject, for the keys not yet given: ``missing_shard`` when the shard the index
    names is not on disk, ``unreadable_shard`` when it is empty, no tar or cut off
    (``tar_damage``: then none of its samples is given) or breaks off while read.
    """
    if not Path(shard).is_file():
        raise Reject("missing_shard", f"{shard} is named by the index but is not on disk")
    damage = tar_damage(shard)
    if damage is not None:
        raise Reject("unreadable_shard", f"{Path(shard).name}: {damage}")
    try:
        for key, members in iter_shard(shard, exts):
            if key in keys:
                yield key, members
    except SHARD_READ_ERRORS as e:
        raise_if_fatal(e)
        what = f"{type(e).__name__}: {str(e)[:200]}"
        raise Reject("unreadable_shard", f"{Path(shard).name} does not read: {what}") from e


def check_members(shard: str, key: str, members: dict[str, bytes], digests: dict) -> None:
    """Raise ``missing_member`` when a member of ``digests`` (ext -> the index's sha256) is
    not in ``members``, ``sha256_mismatch`` when it holds other bytes: the shard was
    changed or damaged since it was indexed."""
    for ext, want in sorted(digests.items()):
        data = members.get(ext)
        if data is None:
            detail = f"{key}.{ext} is in the index but not in {Path(shard).name}"
            raise Reject("missing_member", detail)
        if hashlib.sha256(data).hexdigest() != want:
            detail = f"{key}.{ext} in {Path(shard).name} differs from its index sha256"
            raise Reject("sha256_mismatch", detail)


def sample_meta(key: str, data: bytes) -> dict:
    """The clip sample's json, checked as the shard writer checks it; ``bad_sample_json``
    when it does not parse, names another key or misses a field (a sample packed by an
    older or other writer), before any decoding or model time is spent on it."""
    try:
        meta = json.loads(data)
        if not isinstance(meta, dict):
            raise SchemaError("the json is not an object")
        validate_sample(meta)
        if meta["key"] != key:
            raise SchemaError(f"the json names key {meta['key']!r}")
    except (UnicodeDecodeError, json.JSONDecodeError, SchemaError) as e:
        raise Reject("bad_sample_json", f"{key}.json: {str(e)[:300]}") from e
    return meta


def check_mp4(key: str, mp4: bytes) -> None:
    """Raise ``empty_clip`` for a 0-byte mp4: nothing to decode, say so plainly."""
    if not mp4:
        raise Reject("empty_clip", f"{key}.mp4 is empty (0 bytes)")


def _tensor_bytes(t) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(t.contiguous().clone(), buf)
    return buf.getvalue()


class EncodeLatentsStage(Stage[EncodeLatentsConfig]):
    """Pre-encode clip shards into VAE-latent + text-embedding shards for `--latents` training.

    Reads shards/<dataset>/ under --root, writes latents/<dataset>/ (shards, index, stats,
    latents.parquet), manifests/encode_latents.parquet (one row per latent sample), its
    rejects and reports/encode_latents.json. One actor per model copy (--workers, --gpus).
    Rerunning resumes and redoes only the clips whose bytes changed (a clip gone from the
    clip index drops its latents); latents made with another geometry or encoder are refused.
    """

    name = "encode_latents"
    config_cls = EncodeLatentsConfig
    tables = {"encode_latents": LATENTS_MANIFEST_SCHEMA}
    sort_by = {"encode_latents": ["dataset", "key"]}
    # a clip's latents are made from its bytes (the index's member digests); a clip the
    # index no longer holds is dropped, down to the latent shards
    version_fields = ("clip",)
    drops_missing = True

    @property
    def resources(self) -> Resources:  # type: ignore[override]
        return Resources(cpus=1, gpus=self.config.gpus, actor=True, batch_size=8)

    def staging(self, dataset: str) -> Path:
        return self.root.staging(dataset, kind="latent")

    def owned_outputs(self) -> list[Path]:
        return [p for d in self.config.datasets for p in (self.staging(d), self.root.latents(d))]

    def describe_inputs(self) -> str:
        return ", ".join(str(self.root.shards(d)) for d in self.config.datasets)

    def provenance_extra(self) -> dict:
        return {"latent_config_hash": latent_config_hash(self.config)}

    def discover(self) -> Iterator[dict]:
        for dataset in self.config.datasets:
            folder = self.root.shards(dataset)
            if not folder.is_dir():
                raise FileNotFoundError(f"no clip shards in {folder}: run `yume-data clips` first")
            for tmp in self.staging(dataset).glob(".*.tmp"):  # a killed run's temporaries
                tmp.unlink(missing_ok=True)
            rows = read_index(folder).select(["key", "shard", "members", "sha256"]).to_pylist()
            for r in sorted(rows, key=lambda r: (r["shard"], r["key"])):  # a shard read once
                yield {
                    "key": f"{dataset}/{r['key']}",
                    "input": str(folder / r["key"]),  # not the shard: repacking moves clips
                    "dataset": dataset,
                    "shard": str(folder / r["shard"]),
                    "clip_key": r["key"],
                    "clip": dict(zip(r["members"], r["sha256"], strict=True)),
                }

    def forget(self, keys: set[str]) -> None:
        """Delete the staged latents of the clips ``keys``: a redone clip may give fewer
        windows, a dropped one none, and neither may be packed from old files."""
        clips: dict[str, set[str]] = {}
        for key in keys:
            dataset, clip = key.split("/", 1)
            clips.setdefault(dataset, set()).add(clip)
        for dataset, names in clips.items():
            staging = self.staging(dataset)
            for path in staging.iterdir() if staging.is_dir() else []:
                m = _LATENT_KEY.fullmatch(path.name.split(".", 1)[0])
                if m and m["clip"] in names:
                    path.unlink(missing_ok=True)

    def setup(self) -> None:
        import torch

        from model.backends import load

        cfg = self.config
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.vae = load("vae", cfg.vae).to(device)
        self.text = load(
            "text_encoder", cfg.text_encoder, event_len=cfg.event_len, action_len=cfg.action_len
        ).to(device)
        self.config_hash_latent = latent_config_hash(cfg)

    def process(self, batch: list[dict]) -> Result:
        """Read each shard of the batch once; encode each clip's windows."""
        outcomes, rows = {}, []
        by_shard: dict[str, list[dict]] = {}
        for it in batch:
            by_shard.setdefault(it["shard"], []).append(it)
        for shard, items in by_shard.items():
            wanted = {it["clip_key"]: it for it in items}
            try:
                for key, members in shard_samples(shard, wanted):
                    it = wanted[key]
                    try:
                        check_members(shard, key, members, it["clip"])
                        rows += self._encode_clip(it, {"__key__": key, **members})
                        outcomes[it["key"]] = Outcome.done(it)
                    except Reject as e:
                        outcomes[it["key"]] = Outcome.rejected(it, e.reason, e.detail)
                    except Exception as e:  # one bad clip never ends the job (a full disk does)
                        raise_if_fatal(e, it)
                        outcomes[it["key"]] = unexpected(it, e)
            except Reject as e:  # the shard is gone or broke off: its clips not yet seen
                for it in items:
                    outcomes.setdefault(it["key"], Outcome.rejected(it, e.reason, e.detail))
            for it in items:
                detail = f"{it['clip_key']} is in the index but not in {shard}"
                outcomes.setdefault(it["key"], Outcome.rejected(it, "missing_sample", detail))
        return Result([outcomes[it["key"]] for it in batch], {"encode_latents": rows})

    def _encode_clip(self, item: dict, sample: dict) -> list[dict]:
        from model.windows import encode_windows, window_frames

        cfg = self.config
        meta = sample_meta(item["clip_key"], sample["json"])
        check_mp4(item["clip_key"], sample["mp4"])
        windows, missing = [], []
        for task in TASKS:
            if task not in meta.get("tasks", []):
                continue
            history, pred = window_frames(cfg, task)
            for n in range(cfg.windows_per_clip):
                rng = random.Random(f"{cfg.seed}/{item['clip_key']}/{task}/{n}")
                try:
                    w = make_window(
                        sample, history, pred, task=task, rng=rng, size=(cfg.height, cfg.width)
                    )
                except DECODE_ERRORS as e:
                    what = f"{type(e).__name__}: {str(e)[:200]}"
                    raise Reject("undecodable_clip", f"{item['clip_key']}.mp4: {what}") from e
                if w is None:
                    missing.append(f"{task}: needs {pred + (task == 'i2v')} frames")
                    break
                windows.append((f"{item['clip_key']}-{task}-{n}", w))
        if not windows:
            raise Reject(
                "no_window", f"{meta['frames']} frames give no window ({'; '.join(missing)})"
            )
        latents = encode_windows([w for _, w in windows], self.vae, self.text, cfg)
        rows = []
        for (key, w), lat in zip(windows, latents, strict=True):
            lat_meta = {
                "schema_version": LATENT_SCHEMA_VERSION,
                "key": key,
                "task": lat["task"],
                "source": lat["source"],
                "source_shard": Path(item["shard"]).name,
                "latent_shape": list(lat["latents"].shape),
                "latent_fps": float(w["fps"]) / 4,  # one latent frame per 4 pixel frames
                "history_latent_frames": int(lat["history_latent_frames"]),
                "history_starts_at_first_frame": bool(lat["history_starts_at_first_frame"]),
                "keys": np.asarray(lat["keys"]).tolist(),
                "mouse": np.asarray(lat["mouse"]).tolist(),
                "size": [cfg.height, cfg.width],
                "vae": self.vae.model_id,
                "text_encoder": self.text.model_id,
                "config_hash": self.config_hash_latent,
                "tiny_random": bool(lat["tiny_random"]),
            }
            staging = self.staging(item["dataset"])
            atomic_write_bytes(staging / f"{key}.latents.pth", _tensor_bytes(lat["latents"].half()))
            atomic_write_bytes(
                staging / f"{key}.event_emb.pth", _tensor_bytes(lat["event_emb"].half())
            )
            atomic_write_bytes(
                staging / f"{key}.json", json.dumps(lat_meta, sort_keys=True).encode()
            )
            rows.append(
                {
                    "key": key,
                    "dataset": item["dataset"],
                    "clip_key": item["clip_key"],
                    "task": lat_meta["task"],
                    "source": lat_meta["source"],
                    "source_shard": lat_meta["source_shard"],
                    "latent_frames": lat_meta["latent_shape"][1],
                    "history_latent_frames": lat_meta["history_latent_frames"],
                    "tiny_random": lat_meta["tiny_random"],
                }
            )
        return rows

    def finalize(self, tables: dict[str, pa.Table]) -> dict:
        """Pack the staged latents into shards and write each dataset's latents.parquet."""
        rows = tables["encode_latents"].to_pylist()
        prov = provenance(
            self.name, self.output_config(), latent_config=latent_config(self.config),
            latent_config_hash=latent_config_hash(self.config),
        )  # fmt: skip
        datasets = {}
        for dataset in self.config.datasets:
            staging, folder = self.staging(dataset), self.root.latents(dataset)
            mine = [r for r in rows if r["dataset"] == dataset]
            packed = None
            if staging.is_dir():
                packed = write_shards_from_dir(
                    staging, folder, dataset, max_samples=self.config.max_samples,
                    rejects_path=self.root.rejects(f"shards-latents-{dataset}"),
                    kind=LATENT_SAMPLE, keys={r["key"] for r in mine},
                )  # fmt: skip
            shard_of = {}
            if folder.is_dir():
                index = read_index(folder)
                shard_of = dict(
                    zip(index["key"].to_pylist(), index["shard"].to_pylist(), strict=True)
                )
                table = pa.Table.from_pylist(
                    [
                        {f: r[f] for f in LATENT_INDEX_SCHEMA.names if f != "shard"}
                        | {"shard": shard_of[r["key"]]}
                        for r in mine
                        if r["key"] in shard_of
                    ],
                    schema=LATENT_INDEX_SCHEMA,
                )
                write_table(table, folder / "latents.parquet", LATENT_INDEX_SCHEMA, prov)
            datasets[dataset] = {
                "samples": sum(r["key"] in shard_of for r in mine),
                "by_task": dict(Counter(r["task"] for r in mine)),
                "tiny_random": any(r["tiny_random"] for r in mine),
                "shards_written": len(packed["shards_written"]) if packed else 0,
            }
        tiny = any(d["tiny_random"] for d in datasets.values())
        notes = ["tiny-random encoders: these latents are for tests, not training"] if tiny else []
        return {"datasets": datasets, "tiny_random": tiny, "notes": notes}
