"""The data root: the one object that knows where every output of a dataset build lives.

Layout (``--root``, default ``./data``)::

    manifests/<stage>.parquet            one table per stage output (schemas/)
    manifests/<stage>.rejects.parquet    every input the stage did not accept
    manifests/<stage>.parts/             resumable in-progress part files of a running stage
    reports/<stage>.json, <stage>_*.png  summaries, provenance and plots
    clips/<dataset>/                     staged clip samples before they are packed
    latents-staging/<dataset>/           staged latent samples before they are packed
    shards/<dataset>/                    WebDataset shards (+ __meta__/: index.parquet, stats)
    README.md                            the dataset card (curation/card.py), refreshed by every job
    latents/<dataset>/                   pre-encoded latent shards (same writer)
    screening/                           exported screening CSVs, contact sheets, decisions
    runs/<name>/                         training runs

Why one object: no folder name is spelled anywhere else, so the layout can change (or move
to an object store) in one place. The root is held as an absolute local path plus a
pyarrow filesystem; stages use the local paths today, and a bucket root (``s3://...``)
is refused with a clear message until the writers learn to stream to one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,100}$")


class DataRootError(ValueError):
    """The data root cannot be used (an unsupported URI, or a bad dataset or stage name)."""


def check_name(name: str, what: str = "dataset") -> str:
    """``name`` if it is a safe folder name (letters, digits, ``_``, ``-``), else raise."""
    if not _NAME_RE.match(name or ""):
        raise DataRootError(f"{what} name {name!r}: use 1-100 letters, digits, '_' or '-'")
    return name


@dataclass(frozen=True)
class DataRoot:
    """An absolute data root. Build it with ``DataRoot.at(path_or_uri)``."""

    path: Path

    @classmethod
    def at(cls, root: str | Path | DataRoot) -> DataRoot:
        """The data root at ``root``, made absolute against the current directory.

        Why absolute: Ray workers on other nodes run in other working directories.
        """
        if isinstance(root, DataRoot):
            return root
        text = str(root)
        if "://" in text and not text.startswith("file://"):
            raise DataRootError(
                f"data root {text!r}: object-store roots are not supported yet; "
                "use a local or mounted shared folder"
            )
        return cls(Path(text.removeprefix("file://")).expanduser().resolve())

    @property
    def fs(self) -> pafs.FileSystem:
        """The pyarrow filesystem the root lives on (local today)."""
        return pafs.LocalFileSystem()

    def __str__(self) -> str:
        return str(self.path)

    # -- stage outputs ------------------------------------------------------------------------
    @property
    def manifests(self) -> Path:
        return self.path / "manifests"

    def manifest(self, table: str) -> Path:
        """``manifests/<table>.parquet``: a stage's main table or one of its extra tables."""
        return self.manifests / f"{check_name(table, 'table')}.parquet"

    def rejects(self, stage: str) -> Path:
        return self.manifests / f"{check_name(stage, 'stage')}.rejects.parquet"

    def parts(self, stage: str) -> Path:
        return self.manifests / f"{check_name(stage, 'stage')}.parts"

    def lock(self, stage: str) -> Path:
        """Held by the one run of ``stage`` writing to this root (curation.locks)."""
        return self.manifests / f".{check_name(stage, 'stage')}.lock"

    @property
    def reports(self) -> Path:
        return self.path / "reports"

    def report(self, stage: str) -> Path:
        return self.reports / f"{check_name(stage, 'stage')}.json"

    def plot(self, stage: str, what: str) -> Path:
        return self.reports / f"{check_name(stage, 'stage')}_{check_name(what, 'plot')}.png"

    # -- datasets -------------------------------------------------------------------------------
    def staging(self, dataset: str, kind: str = "clip") -> Path:
        """Where a stage stages ``kind`` samples of ``dataset`` before they are packed."""
        top = {"clip": "clips", "latent": "latents-staging"}[kind]
        return self.path / top / check_name(dataset)

    @property
    def shards_dir(self) -> Path:
        return self.path / "shards"

    def shards(self, dataset: str) -> Path:
        return self.shards_dir / check_name(dataset)

    @property
    def latents_dir(self) -> Path:
        return self.path / "latents"

    def latents(self, dataset: str) -> Path:
        return self.latents_dir / check_name(dataset)

    def datasets(self, latents: bool = False) -> list[Path]:
        """Every dataset folder under ``shards/`` (and ``latents/`` when asked), sorted."""
        tops = [self.shards_dir, self.latents_dir] if latents else [self.shards_dir]
        return [d for top in tops if top.is_dir() for d in sorted(top.iterdir()) if d.is_dir()]

    @property
    def screening(self) -> Path:
        return self.path / "screening"

    def run(self, name: str) -> Path:
        return self.path / "runs" / check_name(name, "run")

    @classmethod
    def of_dataset(cls, folder: str | Path) -> tuple[DataRoot, str] | None:
        """``(root, dataset)`` when ``folder`` is ``<root>/shards/<dataset>`` or
        ``<root>/latents/<dataset>``, else None."""
        folder = Path(folder).expanduser().resolve()
        if folder.parent.name in ("shards", "latents"):
            return cls(folder.parent.parent), folder.name
        return None
