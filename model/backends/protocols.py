"""One ``typing.Protocol`` per model kind the pipeline only runs (no training).

Every backend has ``model_id`` (what produced an output: a path, a served model name, or a
``tiny-random-...`` id), ``tiny_random`` (its outputs are not real data), ``family`` (the
spec family it was loaded as: ``tiny-random``, ``diffusers``, ``openai``, ...) and a class
attribute ``environment``:

- ``"core"``: the class runs in the project's own environment (this venv);
- any other name (``"lmdeploy"``, ``"vbench"``): the environment whose pins cannot share the
  project venv (see REFERENCE.md section 0). Such a class is only imported by that
  environment's interpreter; the project reaches it through a server (an ``openai:`` spec
  against ``lmdeploy serve api_server``) or by running a worker with that interpreter.

The protocols are ``runtime_checkable``: ``isinstance(obj, VAEBackend)`` checks that every
member exists (not the signatures). Array types are documented, not imported: importing this
module imports neither numpy nor torch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np
    import torch

CORE = "core"


@runtime_checkable
class Backend(Protocol):
    """What every backend has; ``backend_label`` reads these."""

    environment: ClassVar[str]
    model_id: str
    tiny_random: bool
    family: str


@runtime_checkable
class CaptionerBackend(Backend, Protocol):
    """Frames + prompt -> text (a vision-language model, e.g. InternVL3)."""

    def caption(self, frames: np.ndarray | Sequence[np.ndarray], prompt: str) -> str:
        """``frames``: uint8 (T, H, W, 3) RGB, or a sequence of (H, W, 3) frames."""
        ...


@runtime_checkable
class EmbedderBackend(Backend, Protocol):
    """Texts -> float32 (N, dim) embeddings, each row L2-normalised."""

    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


@runtime_checkable
class TextToVideoBackend(Backend, Protocol):
    """Prompt -> video (e.g. diffusers ``WanPipeline``)."""

    def generate(
        self, prompt: str, *, seed: int, num_frames: int, height: int, width: int
    ) -> np.ndarray:
        """uint8 (num_frames, height, width, 3) RGB, deterministic for a seed."""
        ...


@runtime_checkable
class ImageToVideoBackend(Backend, Protocol):
    """First frame + prompt -> video (e.g. diffusers ``WanImageToVideoPipeline``)."""

    def generate_from_image(
        self, image: np.ndarray, prompt: str, *, seed: int, num_frames: int, height: int, width: int
    ) -> np.ndarray:
        """``image`` uint8 (H, W, 3) -> uint8 (num_frames, height, width, 3) RGB."""
        ...


@runtime_checkable
class ScorerBackend(Backend, Protocol):
    """Video -> one score per dimension (e.g. VBench ``temporal_flickering``)."""

    dimensions: tuple[str, ...]

    def score(self, video: str | os.PathLike[str] | np.ndarray) -> dict[str, float]:
        """``video``: a video file or uint8 (T, H, W, 3) frames -> {dimension: score}."""
        ...


@runtime_checkable
class VAEBackend(Backend, Protocol):
    """uint8 video <-> normalised latents (``model.vae.VideoVAE``)."""

    def encode(self, video: torch.Tensor) -> torch.Tensor: ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class TextEncoderBackend(Backend, Protocol):
    """Event and action descriptions -> embeddings (``model.text.TextEncoder``)."""

    dim: int

    def encode_events(self, event_texts: Sequence[str]) -> torch.Tensor: ...

    def encode_actions(self, action_texts: Sequence[str]) -> torch.Tensor: ...

    def encode(self, event_texts: Sequence[str], action_texts: Sequence[str]) -> torch.Tensor: ...


PROTOCOLS: dict[str, type[Any]] = {
    "captioner": CaptionerBackend,
    "embedder": EmbedderBackend,
    "text_to_video": TextToVideoBackend,
    "image_to_video": ImageToVideoBackend,
    "scorer": ScorerBackend,
    "vae": VAEBackend,
    "text_encoder": TextEncoderBackend,
}
KINDS: tuple[str, ...] = tuple(PROTOCOLS)


def backend_label(backend: Any) -> dict:
    """What every output row / report records about the backend that produced it."""
    return {
        "backend": backend.family,
        "model_id": backend.model_id,
        "tiny_random": bool(backend.tiny_random),
    }


def protocol_members(protocol: type) -> tuple[str, ...]:
    """The attribute and method names a protocol requires, sorted."""
    names: set[str] = set()
    for base in protocol.__mro__:
        if base is Protocol or not getattr(base, "_is_protocol", False):
            continue
        names.update(n for n in getattr(base, "__annotations__", {}) if not n.startswith("_"))
        names.update(n for n, v in vars(base).items() if not n.startswith("_") and callable(v))
    return tuple(sorted(names))


def missing_members(kind: str, obj: object) -> list[str]:
    """Members of ``kind``'s protocol that ``obj`` (an instance or a class) lacks."""
    return [n for n in protocol_members(PROTOCOLS[kind]) if not hasattr(obj, n)]
