"""The dataset card: ``<root>/README.md`` in the Hugging Face dataset-card convention.

Why: a data root is handed to people who did not build it (a training team, a reviewer, the
Hub). The card says what is in it without running anything: YAML front matter (license, task
categories, size category, one config per shard folder so ``datasets.load_dataset(root,
name)`` finds the tars), then the stage counts and rejects by reason, hours and frames per
source and task, the plots, the provenance, and a notice at the top when any sample was
generated or made by a tiny-random model. Every stage job refreshes it (jobs/runner.py) and
``yume-data card ROOT`` rewrites it by hand. It is built only from what the jobs wrote
(reports, shard stats): it never opens a video.
"""

from __future__ import annotations

import json
from pathlib import Path

from curation.dataroot import DataRoot
from curation.manifest import atomic_write_bytes

CARD_NAME = "README.md"
_TASK_CATEGORY = {"t2v": "text-to-video", "i2v": "image-to-video"}
# The Hub's size buckets: (upper bound, label).
_SIZES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
          (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M"))  # fmt: skip


def size_category(n: int) -> str:
    """The Hub's ``size_categories`` label for ``n`` samples."""
    return next((label for bound, label in _SIZES if n < bound), "n>10M")


def stage_reports(root: DataRoot) -> list[dict]:
    """The stage reports under ``reports/`` (those with a ``stage`` field), by name."""
    out = []
    for path in sorted(root.reports.glob("*.json")) if root.reports.is_dir() else []:
        try:
            report = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # a report being rewritten, or not ours: the card skips it
        if isinstance(report, dict) and report.get("stage") == path.stem:
            out.append(report)
    return out


def dataset_summaries(root: DataRoot) -> list[dict]:
    """``dataset_stats`` of every shard and latent folder; a damaged one says why."""
    from curation.shards import dataset_stats

    out = []
    for folder in root.datasets(latents=True):
        latents = folder.parent == root.latents_dir
        entry = {"dataset": folder.name, "folder": str(folder.relative_to(root.path)),
                 "config": f"{folder.name}-latents" if latents else folder.name}  # fmt: skip
        try:
            entry.update(dataset_stats(folder))
        except Exception as e:  # noqa: BLE001 - one damaged folder must not hide the others
            entry["error"] = f"{type(e).__name__}: {e}"
        out.append(entry)
    return out


def _front_matter(datasets: list[dict], license_: str) -> str:
    ok = [d for d in datasets if "error" not in d and d.get("count")]
    tasks = sorted({t for d in ok for t in d.get("task_counts", {})})
    lines = ["---", f"license: {license_}"]
    if license_ == "other":
        lines.append("license_name: per-source")  # each source keeps its own terms
    if tasks:
        lines += ["task_categories:"] + [f"- {_TASK_CATEGORY.get(t, t)}" for t in tasks]
    lines += ["size_categories:", f"- {size_category(sum(d['count'] for d in ok))}"]
    lines += ["tags:", "- world-model", "- video", "- webdataset", "- yume-data"]
    if ok:
        lines.append("configs:")
        for d in ok:
            lines += [f"- config_name: {d['config']}", "  data_files:",
                      "  - split: train", f"    path: {d['folder']}/*.tar"]  # fmt: skip
    return "\n".join([*lines, "---", ""])


def _table(header: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return out + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]


def _notices(datasets: list[dict], reports: list[dict]) -> list[str]:
    tiny = sum(d.get("tiny_random_count", 0) for d in datasets)
    generated = sum(d.get("generated_count", 0) for d in datasets)
    tiny_stages = [r["stage"] for r in reports if r.get("tiny_random")]
    out = []
    if tiny or tiny_stages:
        where = f" (stages: {', '.join(tiny_stages)})" if tiny_stages else ""
        out.append(f"> **Warning: {tiny} samples come from tiny-random models{where}.** "
                   "Their pixels or text are random: for tests and demos, never for training.")  # fmt: skip
    if generated:
        out.append(f"> **Note: {generated} samples are generated videos** (rendered or "
                   "produced by a video model), not filmed footage; `provenance.generator` in "
                   "each sample's json names the program.")  # fmt: skip
    return out


def build_card(root: DataRoot, license_: str = "other") -> str:
    """The card's Markdown for ``root`` (see the module docstring)."""
    reports = stage_reports(root)
    datasets = dataset_summaries(root)
    lines = [_front_matter(datasets, license_), f"# {root.path.name}", ""]
    lines += ["Yume-1.5 world-model training data built by yume-data: WebDataset shards "
              "(`<key>.mp4`, `<key>.json`, `<key>.txt`) per dataset folder, with each "
              "folder's index and stats under `__meta__/`.", ""]  # fmt: skip
    for notice in _notices(datasets, reports):
        lines += [notice, ""]

    lines += ["## Datasets", ""]
    if datasets:
        rows = []
        for d in datasets:
            if "error" in d:
                rows.append([d["folder"], "damaged", "", "", "", "", d["error"][:120]])
                continue
            hours = d.get("duration_s", 0) / 3600
            src = ", ".join(f"{k} {v}" for k, v in d.get("source_counts", {}).items())
            tasks = ", ".join(f"{k} {v}" for k, v in d.get("task_counts", {}).items())
            rows.append([d["folder"], d.get("count", 0), d.get("shards", 0),
                         f"{hours:.4f}", d.get("frames", 0), src, tasks])  # fmt: skip
        lines += _table(["folder", "samples", "shards", "hours", "frames (output fps)",
                         "samples per source", "samples per task"], rows)  # fmt: skip
    else:
        lines.append("No shards yet.")
    lines.append("")

    lines += ["## Stages", ""]
    if reports:
        rows = []
        for r in reports:
            reasons = ", ".join(
                f"{k} {v}" for k, v in sorted(r.get("rejects_by_reason", {}).items())
            )
            rows.append([r["stage"], r.get("inputs", ""), r.get("accepted", ""),
                         r.get("rejected", ""), reasons or "-"])  # fmt: skip
        lines += _table(["stage", "inputs", "accepted", "rejected", "rejects by reason"], rows)
        lines.append("")
        lines.append("Every rejected input is a row of `manifests/<stage>.rejects.parquet`.")
    else:
        lines.append("No stage has run yet.")
    lines.append("")

    plots = sorted(root.reports.glob("*.png")) if root.reports.is_dir() else []
    if plots:
        lines += ["## Plots", ""]
        lines += [f"![{p.stem}](reports/{p.name})" for p in plots]
        lines.append("")

    if reports:
        lines += ["## Provenance", ""]
        rows = []
        for r in reports:
            prov = r.get("provenance") or {}
            rows.append([r["stage"], prov.get("code_version", ""), prov.get("config_hash", ""),
                         prov.get("created", "")])  # fmt: skip
        lines += _table(["stage", "code version", "config hash", "written"], rows)
        lines += ["", "The full configuration and library versions of each stage are in "
                  "`reports/<stage>.json` (`provenance`)."]  # fmt: skip
        lines.append("")
    return "\n".join(lines)


def write_card(root: str | Path | DataRoot, license_: str = "other") -> Path:
    """Write ``<root>/README.md`` atomically; returns its path."""
    root = DataRoot.at(root)
    path = root.path / CARD_NAME
    atomic_write_bytes(path, build_card(root, license_).encode())
    return path
