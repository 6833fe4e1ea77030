"""The ``tiny-random`` embedder: hashed word and word-pair features, no weights at all.

Deterministic and fast (100k captions in seconds), so tests and benches of the dedup
search run without a model; captions sharing most words get high cosine similarity.
Every output it makes is marked tiny-random; it is not a semantic model.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

import numpy as np

from model.backends.protocols import CORE
from model.backends.registry import register
from model.backends.spec import BackendSpec

_WORD = re.compile(r"[a-z0-9]+")


@register("embedder", "tiny-random")
class HashingEmbedder:
    environment = CORE
    family = "tiny-random"
    tiny_random = True

    def __init__(self, dim: int = 384):
        self.dim = dim
        self.model_id = f"tiny-random-hashing-{dim}"

    @classmethod
    def from_spec(cls, spec: BackendSpec, dim: int = 384, **_: object) -> HashingEmbedder:
        return cls(dim)

    def _bucket(self, token: str) -> tuple[int, float]:
        h = int.from_bytes(hashlib.blake2b(token.encode(), digest_size=8).digest(), "little")
        return h % self.dim, 1.0 if (h >> 32) & 1 else -1.0

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), np.float32)
        for n, text in enumerate(texts):
            words = _WORD.findall(text.lower())
            feats = words + [f"{a} {b}" for a, b in zip(words, words[1:], strict=False)]
            for tok in feats or ["<empty>"]:
                b, s = self._bucket(tok)
                out[n, b] += s
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)
