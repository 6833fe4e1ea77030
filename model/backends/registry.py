"""The backend registry: ``(kind, family) -> class``, filled lazily.

A backend module decorates its class with ``@register(kind, family)``. ``load`` imports that
module only when a spec asks for it, so ``import model.backends`` stays light (no torch,
diffusers, lmdeploy, ...). ``BACKEND_MODULES`` says which module holds each ``(kind, family)``;
``LOCAL_PATH_FAMILY`` says which family a bare local path means for a kind.

A registered class provides ``from_spec(spec: BackendSpec, **kwargs)`` returning an instance,
declares ``environment`` (see ``protocols``) and has its kind's protocol members.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any, TypeVar

from model.backends.protocols import KINDS, PROTOCOLS, missing_members
from model.backends.spec import BackendSpec, BackendSpecError, is_family_name, parse_spec

T = TypeVar("T", bound=type)

# (kind, family) -> the module whose import registers it. One line per backend.
BACKEND_MODULES: dict[tuple[str, str], str] = {
    ("vae", "tiny-random"): "model.vae",
    ("vae", "diffusers"): "model.vae",
    ("text_encoder", "tiny-random"): "model.text",
    ("text_encoder", "diffusers"): "model.text",
    ("embedder", "sentence-transformers"): "model.backends.embedder_st",
    ("embedder", "tiny-random"): "model.backends.embedder_hash",
    ("text_to_video", "diffusers"): "model.backends.t2v_wan",
    ("text_to_video", "tiny-random"): "model.backends.t2v_wan",
    ("image_to_video", "diffusers"): "model.backends.i2v_wan",
    ("image_to_video", "tiny-random"): "model.backends.i2v_wan",
    ("scorer", "builtin"): "model.backends.scorer_builtin",
    ("scorer", "vbench"): "model.backends.scorer_vbench",
    ("captioner", "openai"): "model.backends.captioner_openai",
    ("captioner", "lmdeploy"): "model.backends.captioner_lmdeploy",
    ("captioner", "transformers"): "model.backends.captioner_transformers",
    ("captioner", "tiny-random"): "model.backends.captioner_transformers",
}

# kind -> the family a bare local path (no ``<family>:``) stands for. Kinds without an entry
# need an explicit family (e.g. a captioner path could be lmdeploy or transformers).
LOCAL_PATH_FAMILY: dict[str, str] = {
    "vae": "diffusers",
    "text_encoder": "diffusers",
    "embedder": "sentence-transformers",
    "text_to_video": "diffusers",
    "image_to_video": "diffusers",
}

_REGISTRY: dict[tuple[str, str], type] = {}


def _check_kind(kind: str) -> None:
    if kind not in PROTOCOLS:
        raise ValueError(f"unknown backend kind {kind!r}; kinds: {', '.join(KINDS)}")


def register(kind: str, family: str) -> Callable[[T], T]:
    """Class decorator: ``cls`` is the ``family`` backend of ``kind``.

    Checks what a class can show (``environment``, ``from_spec``, the protocol's methods);
    instance attributes such as ``model_id`` are checked by ``load``.
    """
    _check_kind(kind)
    if not is_family_name(family):
        raise ValueError(f"{family!r} is not a family name (lower case, digits, - and _)")

    def decorator(cls: T) -> T:
        env = getattr(cls, "environment", None)
        if not isinstance(env, str) or not env:
            raise TypeError(f"{cls.__name__} must declare environment: str ('core' or a name)")
        if not callable(getattr(cls, "from_spec", None)):
            raise TypeError(f"{cls.__name__} must define a classmethod from_spec(spec, **kwargs)")
        methods = [
            n for n in missing_members(kind, cls) if callable(getattr(PROTOCOLS[kind], n, None))
        ]
        if methods:
            raise TypeError(f"{cls.__name__} lacks {kind} methods: {', '.join(methods)}")
        old = _REGISTRY.get((kind, family))
        if old is not None and _name(old) != _name(cls):  # the same class re-imported is fine
            raise ValueError(f"{kind} backend {family!r} is already {_name(old)}")
        _REGISTRY[(kind, family)] = cls
        return cls

    return decorator


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def families(kind: str) -> tuple[str, ...]:
    """Families known for ``kind`` (registered or importable), sorted."""
    _check_kind(kind)
    known = {f for k, f in _REGISTRY if k == kind} | {f for k, f in BACKEND_MODULES if k == kind}
    return tuple(sorted(known))


def resolve(kind: str, spec: str | os.PathLike[str] | BackendSpec) -> BackendSpec:
    """Parse ``spec`` and fill in the family of a bare local path for ``kind``."""
    _check_kind(kind)
    parsed = parse_spec(spec)
    if parsed.family is not None:
        return parsed
    if kind not in LOCAL_PATH_FAMILY:
        raise BackendSpecError(
            f"a bare path is ambiguous for a {kind}: write <family>:{parsed.path} "
            f"(families: {', '.join(families(kind)) or 'none yet'})"
        )
    return parsed.with_family(LOCAL_PATH_FAMILY[kind])


def backend_class(kind: str, family: str) -> type:
    """The class registered for ``(kind, family)``, importing its module if needed."""
    _check_kind(kind)
    cls = _REGISTRY.get((kind, family))
    if cls is None and (kind, family) in BACKEND_MODULES:
        module = BACKEND_MODULES[(kind, family)]
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ImportError(
                f"{kind} backend {family!r} ({module}) cannot be imported here: {e}. A backend "
                "of another environment runs in its own interpreter or behind a server."
            ) from e
        cls = _REGISTRY.get((kind, family))
    if cls is None:
        raise ValueError(
            f"no {kind} backend {family!r}; families: {', '.join(families(kind)) or 'none yet'}"
        )
    return cls


def load(kind: str, spec: str | os.PathLike[str] | BackendSpec, **kwargs: Any) -> Any:
    """Load the ``kind`` backend a spec names: ``load("vae", "tiny-random", seed=0)``.

    ``kwargs`` go to the class's ``from_spec``. The result is checked against the kind's
    protocol, so a stage can rely on ``model_id``, ``tiny_random``, ``family``, ... .
    """
    resolved = resolve(kind, spec)
    cls = backend_class(kind, resolved.family)
    backend = cls.from_spec(resolved, **kwargs)
    missing = missing_members(kind, backend)
    if missing:
        raise TypeError(f"{cls.__name__} is not a {kind} backend: lacks {', '.join(missing)}")
    return backend
