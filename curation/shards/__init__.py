"""WebDataset shards: one writer for every sample kind, its index and stats, and verification.

Layout of one dataset folder (``DataRoot.shards(ds)`` or ``DataRoot.latents(ds)``)::

    <dataset>-000000.tar            samples, members sorted: <key>.json, <key>.mp4, <key>.txt
    __meta__/index.parquet          one row per sample (schemas.sample.SHARD_INDEX_SCHEMA)
    __meta__/<dataset>-000000_stats.json  per-shard stats (count, bytes, durations, counts)
    .lock                           held by the one writer at work

Only tars sit at the top, so ``ray.data.read_webdataset(folder)`` and Hugging Face
``datasets.load_dataset(folder)`` read the folder as it is (both skip ``__meta__``).

Modules, one concept each: ``read`` (names, the index, reading tars, index queries such
as ``shards_for``), ``writer`` (ShardWriter and the crash-safe write path), ``verify``
(checks against the index) and ``stats`` (summaries). What a sample holds is its
SampleKind, declared beside its schema (schemas.kinds, schemas.sample, schemas.latents).
This package re-exports the public names, so ``from curation.shards import ...`` is the
import to use.
"""

from curation.shards.read import (
    INDEX_NAME,
    LOCK_NAME,
    META_DIR,
    ShardError,
    index_kind,
    indexed_shards,
    iter_shard,
    read_index,
    shard_name,
    shards_for,
    stats_name,
)
from curation.shards.stats import dataset_stats, merge_summaries, shard_summary
from curation.shards.verify import (
    DECODE_MODES,
    check_decode_mode,
    check_video,
    verify_dataset,
    verify_shard,
)
from curation.shards.writer import (
    STAGE,
    DuplicateKeyError,
    ShardWriter,
    check_sample,
    staged_samples,
    write_shards,
    write_shards_from_dir,
)
from schemas.kinds import SAMPLE_KINDS, SampleKind, register_kind
from schemas.latents import LATENT_SAMPLE, summarize_latent_metas
from schemas.sample import CLIP_SAMPLE, summarize_metas

__all__ = [
    "CLIP_SAMPLE",
    "DECODE_MODES",
    "INDEX_NAME",
    "META_DIR",
    "LATENT_SAMPLE",
    "LOCK_NAME",
    "SAMPLE_KINDS",
    "STAGE",
    "DuplicateKeyError",
    "SampleKind",
    "ShardError",
    "ShardWriter",
    "check_decode_mode",
    "check_sample",
    "check_video",
    "dataset_stats",
    "index_kind",
    "indexed_shards",
    "iter_shard",
    "merge_summaries",
    "read_index",
    "register_kind",
    "shard_name",
    "shard_summary",
    "shards_for",
    "staged_samples",
    "stats_name",
    "summarize_latent_metas",
    "summarize_metas",
    "verify_dataset",
    "verify_shard",
    "write_shards",
    "write_shards_from_dir",
]
