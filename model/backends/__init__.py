"""Model backends: one home for every model the pipeline only runs (captioners, embedders,
text/image-to-video generators, scorers, the video VAE and the text encoder).

    from model.backends import load, backend_label
    vae = load("vae", "tiny-random")              # or "/weights/Wan2.2-TI2V-5B-Diffusers"
    row.update(backend_label(vae))                # {"backend", "model_id", "tiny_random"}

- ``spec``: backend spec strings (``tiny-random``, a path, ``<family>:<path>``,
  ``openai:http://host:port``) parsed into a frozen ``BackendSpec``;
- ``protocols``: one ``runtime_checkable`` Protocol per kind, ``environment`` and
  ``backend_label``;
- ``registry``: ``register(kind, family)`` and ``load(kind, spec, **kwargs)``, importing a
  backend's module (and its heavy dependencies) only when it is loaded.

Importing this package imports no torch, numpy, diffusers, transformers or lmdeploy.

Adding a backend: a module ``model/backends/<name>.py`` with heavy imports at its top, a
class decorated ``@register(kind, family)`` with ``environment``, ``from_spec(spec, **kw)``,
``model_id``, ``tiny_random``, ``family`` and the kind's methods, plus one line per family in
``registry.BACKEND_MODULES`` (and ``LOCAL_PATH_FAMILY`` if a bare path should mean it).
"""

from model.backends.protocols import (
    CORE,
    KINDS,
    PROTOCOLS,
    Backend,
    CaptionerBackend,
    EmbedderBackend,
    ImageToVideoBackend,
    ScorerBackend,
    TextEncoderBackend,
    TextToVideoBackend,
    VAEBackend,
    backend_label,
    missing_members,
)
from model.backends.registry import (
    BACKEND_MODULES,
    LOCAL_PATH_FAMILY,
    backend_class,
    families,
    load,
    register,
    resolve,
)
from model.backends.spec import (
    OPENAI,
    TINY_RANDOM,
    BackendSpec,
    BackendSpecError,
    is_family_name,
    parse_spec,
)

__all__ = [
    "BACKEND_MODULES",
    "CORE",
    "KINDS",
    "LOCAL_PATH_FAMILY",
    "OPENAI",
    "PROTOCOLS",
    "TINY_RANDOM",
    "Backend",
    "BackendSpec",
    "BackendSpecError",
    "CaptionerBackend",
    "EmbedderBackend",
    "ImageToVideoBackend",
    "ScorerBackend",
    "TextEncoderBackend",
    "TextToVideoBackend",
    "VAEBackend",
    "backend_class",
    "backend_label",
    "families",
    "is_family_name",
    "load",
    "missing_members",
    "parse_spec",
    "register",
    "resolve",
]
