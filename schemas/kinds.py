"""Sample kinds: what one kind of shard sample holds, declared beside its schema.

Why a registry: the shard writer, verify and stats are written once against SampleKind, so
a new kind of sample (clips, latents, ...) is one declaration next to its json schema plus
``register_kind``, never an edit to the writer. Importing ``schemas.sample`` registers
CLIP_SAMPLE and ``schemas.latents`` LATENT_SAMPLE; ``curation.shards`` imports both.
This module imports nothing of the project, so every schema module can use it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class SampleKind:
    """What one kind of sample must hold, and what the writer records about it.

    ``members``: required member extensions, ``json`` among them (the metadata, whose
    ``key`` must equal the sample key). ``validate(meta)`` raises SchemaError for bad
    metadata. ``index_fields(meta)`` gives the shard index columns source, frames, fps,
    tiny_random and tasks (frames/fps of whatever the sample holds, e.g. latent frames and
    their rate; tasks: the training tasks the sample offers, or None when the kind does
    not say). ``summarize(metas)`` gives the counts of a shard's stats file. ``video``: the
    member holding an mp4 that verify decodes against the json's frames, fps, width and
    height (None: the kind holds no video).
    """

    name: str
    members: tuple[str, ...]
    validate: Callable[[dict], None]
    index_fields: Callable[[dict], dict]
    summarize: Callable[[Iterable[dict]], dict]
    video: str | None = None


# Every registered kind by name, in registration order (verify passes kinds by name).
SAMPLE_KINDS: dict[str, SampleKind] = {}


def register_kind(kind: SampleKind) -> SampleKind:
    """Add ``kind`` to SAMPLE_KINDS and return it; ValueError if another kind has its name.

    Registering the same object again is a no-op (a module imported twice).
    """
    if "json" not in kind.members:
        raise ValueError(f"sample kind {kind.name!r}: members must include 'json'")
    if kind.video is not None and kind.video not in kind.members:
        raise ValueError(f"sample kind {kind.name!r}: video member {kind.video!r} not required")
    held = SAMPLE_KINDS.get(kind.name)
    if held is not None and held is not kind:
        raise ValueError(f"a sample kind named {kind.name!r} is already registered")
    SAMPLE_KINDS[kind.name] = kind
    return kind


def infer_kind(members: Collection[str]) -> SampleKind | None:
    """The registered kind whose required members ``members`` (a sample's extensions) hold.

    When several fit, the one requiring the most members wins (then the first registered);
    None when none fits.
    """
    held = set(members)
    fits = [k for k in SAMPLE_KINDS.values() if set(k.members) <= held]
    return max(fits, key=lambda k: len(k.members), default=None)
