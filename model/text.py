"""Text conditioning: UMT5 encoder, event + action descriptions, and the action-embedding cache.

Yume-1.5 splits the caption into an event description and an action description, encodes
each separately with the T5 encoder and concatenates the two sequences. The action
vocabulary is finite (9 key states x 9 mouse states), so its embeddings are computed once,
stored on disk and looked up per sample.

Backends: a local UMT5 folder (production) or ``tiny-random``: a 2-layer UMT5 with d_model 32
and a byte-level tokenizer defined here, so nothing is downloaded. Registered as the
``text_encoder`` backend families ``tiny-random`` and ``diffusers`` (a local Wan folder):
``model.backends.load("text_encoder", spec, ...)`` equals ``TextEncoder.load(spec, ...)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from safetensors.torch import load_file
from transformers import UMT5Config, UMT5EncoderModel

from model.backends import CORE, TINY_RANDOM, BackendSpec, register, resolve
from schemas.actions import KEYS, MOUSE, action_text

TINY_UMT5_CONFIG = dict(
    vocab_size=259,  # 3 specials + 256 bytes
    d_model=32,
    d_kv=8,
    d_ff=64,
    num_layers=2,
    num_heads=4,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=32,
    pad_token_id=0,
    eos_token_id=1,
)


class ByteTokenizer:
    """Deterministic byte-level tokenizer for the tiny-random encoder: id = byte + 3.

    Ids 0/1/2 are pad/eos/unk as in T5. Callable like a transformers tokenizer for what
    ``TextEncoder`` needs.
    """

    pad_token_id = 0
    eos_token_id = 1
    name = "byte-tokenizer-v1"

    def __call__(self, texts: Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
        ids = torch.zeros(len(texts), max_length, dtype=torch.long)
        mask = torch.zeros(len(texts), max_length, dtype=torch.long)
        for i, text in enumerate(texts):
            row = [b + 3 for b in text.encode("utf-8")][: max_length - 1] + [self.eos_token_id]
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        return {"input_ids": ids, "attention_mask": mask}


class _HFTokenizer:
    """Adapter giving a transformers tokenizer the ``ByteTokenizer`` call signature."""

    def __init__(self, tokenizer, name: str):
        self.tok = tokenizer
        self.name = name

    def __call__(self, texts: Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
        out = self.tok(
            list(texts),
            padding="max_length",
            truncation=True,
            max_length=max_length,
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        return {"input_ids": out["input_ids"], "attention_mask": out["attention_mask"]}


def _config_hash(config: dict) -> str:
    """Stable short hash of a JSON-able config (sha256 of sorted JSON, 12 hex digits)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` so readers see the old file or the whole new one: a temporary file in
    the same folder, then ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    mask = os.umask(0)
    os.umask(mask)
    os.fchmod(fd, 0o666 & ~mask)  # mkstemp makes 0600: honour the umask like open() would
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def encoder_id(backend: str | BackendSpec, seed: int = 0) -> str:
    """The ``model_id`` a TextEncoder loaded from ``backend`` has (without loading it)."""
    spec = resolve("text_encoder", backend)
    return f"tiny-random-umt5-s{seed}" if spec.tiny_random else spec.path


@register("text_encoder", "diffusers")
@register("text_encoder", TINY_RANDOM)
@dataclass
class TextEncoder:
    """UMT5 encoder with fixed lengths for the event and the action sequences.

    Wan uses 512 text tokens; here they are split 448 event + 64 action by default.
    Padded positions are zeroed, as Wan does, so the padding carries no signal.
    """

    environment: ClassVar[str] = CORE

    model: UMT5EncoderModel
    tokenizer: ByteTokenizer | _HFTokenizer
    model_id: str
    tiny_random: bool
    event_len: int = 448
    action_len: int = 64

    @classmethod
    def from_pretrained(cls, path: str, event_len: int = 448, action_len: int = 64) -> TextEncoder:
        """UMT5 + tokenizer from a local Wan diffusers folder (``text_encoder``/``tokenizer``
        subfolders) or a plain transformers folder. Never touches a hub."""
        from transformers import AutoTokenizer

        root = Path(path).expanduser()
        enc_dir = root / "text_encoder" if (root / "text_encoder").is_dir() else root
        tok_dir = root / "tokenizer" if (root / "tokenizer").is_dir() else root
        model = UMT5EncoderModel.from_pretrained(enc_dir, local_files_only=True)
        tok = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
        return cls(
            model.eval().requires_grad_(False),
            _HFTokenizer(tok, str(tok_dir)),
            model_id=encoder_id(str(path)),
            tiny_random=False,
            event_len=event_len,
            action_len=action_len,
        )

    @classmethod
    def tiny(cls, seed: int = 0, event_len: int = 64, action_len: int = 32) -> TextEncoder:
        """The tiny-random encoder (d_model 32), deterministic for a seed."""
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = UMT5EncoderModel(UMT5Config(**TINY_UMT5_CONFIG))
        return cls(
            model.eval().requires_grad_(False),
            ByteTokenizer(),
            model_id=encoder_id("tiny-random", seed),
            tiny_random=True,
            event_len=event_len,
            action_len=action_len,
        )

    @classmethod
    def from_spec(cls, spec: BackendSpec, seed: int = 0, **lengths: int) -> TextEncoder:
        """A resolved ``text_encoder`` spec: family ``tiny-random`` or ``diffusers``."""
        if spec.tiny_random:
            return cls.tiny(seed, **lengths)
        if spec.family != "diffusers":
            raise ValueError(f"TextEncoder loads tiny-random or a diffusers folder, not {spec}")
        return cls.from_pretrained(spec.path, **lengths)

    @classmethod
    def load(cls, backend: str | BackendSpec, seed: int = 0, **lengths: int) -> TextEncoder:
        """``backend`` is ``tiny-random`` or a local path (``diffusers:<path>`` too)."""
        return cls.from_spec(resolve("text_encoder", backend), seed, **lengths)

    @property
    def family(self) -> str:
        return TINY_RANDOM if self.tiny_random else "diffusers"

    @property
    def dim(self) -> int:
        return self.model.config.d_model

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str) -> TextEncoder:
        self.model.to(device)
        return self

    def identity(self) -> dict:
        """What determines the embeddings; its hash keys the action cache."""
        return {
            "model_id": self.model_id,
            "tokenizer": self.tokenizer.name,
            "config": self.model.config.to_dict(),
            "event_len": self.event_len,
            "action_len": self.action_len,
        }

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], max_length: int) -> torch.Tensor:
        """Texts -> (B, max_length, D), zero beyond each text's tokens."""
        tok = self.tokenizer(texts, max_length)
        ids = tok["input_ids"].to(self.device)
        mask = tok["attention_mask"].to(self.device)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        return hidden * mask.unsqueeze(-1).to(hidden.dtype)

    def encode_events(self, event_texts: Sequence[str]) -> torch.Tensor:
        """(B, event_len, D)."""
        return self.encode_texts(event_texts, self.event_len)

    def encode_actions(self, action_texts: Sequence[str]) -> torch.Tensor:
        """(B, action_len, D)."""
        return self.encode_texts(action_texts, self.action_len)

    def encode(self, event_texts: Sequence[str], action_texts: Sequence[str]) -> torch.Tensor:
        """Event and action encoded separately, concatenated: (B, event_len + action_len, D)."""
        if len(event_texts) != len(action_texts):
            raise ValueError("event_texts and action_texts must have the same length")
        return torch.cat(
            [self.encode_events(event_texts), self.encode_actions(action_texts)], dim=1
        )


def action_vocabulary(style: str) -> list[str]:
    """The 81 action descriptions, row-major over (KEYS, MOUSE) codes."""
    return [action_text(k, m, style=style) for k in KEYS for m in MOUSE]


@dataclass
class ActionEmbeddingCache:
    """Embeddings of every (keys, mouse) description: (9, 9, action_len, D).

    Stored as safetensors with the encoder identity hash in its metadata, so a cache built
    by another encoder, tokenizer, length or phrase set is never used by mistake.
    """

    embeddings: torch.Tensor  # (len(KEYS), len(MOUSE), action_len, D)
    meta: dict
    built: bool  # True when this process computed it, False when loaded from disk

    @staticmethod
    def key_for(encoder: TextEncoder, style: str) -> str:
        return _config_hash(
            {"encoder": encoder.identity(), "style": style, "texts": action_vocabulary(style)}
        )

    @classmethod
    def build(cls, encoder: TextEncoder, style: str = "yume") -> ActionEmbeddingCache:
        texts = action_vocabulary(style)
        emb = encoder.encode_actions(texts).float().cpu()  # (81, La, D)
        emb = emb.reshape(len(KEYS), len(MOUSE), *emb.shape[1:])
        meta = {
            "encoder_id": encoder.model_id,
            "style": style,
            "cache_key": cls.key_for(encoder, style),
            "tiny_random": encoder.tiny_random,
            "action_len": encoder.action_len,
        }
        return cls(emb, meta, built=True)

    def save(self, path: str | Path) -> None:
        from safetensors.torch import save as save_bytes

        data = save_bytes(
            {"embeddings": self.embeddings.contiguous()}, {"meta": json.dumps(self.meta)}
        )
        _atomic_write_bytes(path, data)

    @classmethod
    def load(cls, path: str | Path) -> ActionEmbeddingCache:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = json.loads(f.metadata()["meta"])
        return cls(load_file(str(path))["embeddings"], meta, built=False)

    @classmethod
    def load_or_build(
        cls, encoder: TextEncoder, path: str | Path, style: str = "yume"
    ) -> ActionEmbeddingCache:
        """Load the cache at ``path`` if it matches this encoder and style, else build and store it."""
        path = Path(path)
        if path.exists():
            cache = cls.load(path)
            if cache.meta.get("cache_key") == cls.key_for(encoder, style):
                return cache
        cache = cls.build(encoder, style)
        cache.save(path)
        return cache

    def lookup(self, keys: torch.Tensor, mouse: torch.Tensor) -> torch.Tensor:
        """Codes (B,) into KEYS and MOUSE -> (B, action_len, D)."""
        return self.embeddings[keys.long().cpu(), mouse.long().cpu()]
