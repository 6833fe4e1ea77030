"""Backend spec strings: which model a stage runs, as one string on a command line or in a config.

Accepted forms:

- ``tiny-random``: the backend's tiny randomly initialised stand-in (CPU tests; every output
  is labelled tiny-random). It is the only tiny spec.
- a local path: ``/weights/Wan2.2-TI2V-5B-Diffusers``, ``./weights/x``, ``~/w/x`` or a bare
  relative folder ``weights``. The family is left open; the kind decides it (see
  ``registry.LOCAL_PATH_FAMILY``).
- ``<family>:<path>``: ``lmdeploy:/weights/InternVL3-78B``,
  ``diffusers:/weights/Wan2.1-T2V-14B-Diffusers``, ``transformers:/w/x``, ``vbench:/path``.
- ``openai:http://host:port[/v1]``: a server speaking the OpenAI chat-completions protocol,
  e.g. ``lmdeploy serve api_server`` or ``transformers serve``.

Parsing checks syntax only; whether a family exists for a kind is checked by ``load``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

TINY_RANDOM = "tiny-random"
OPENAI = "openai"

_FAMILY = re.compile(r"[a-z][a-z0-9_]*(?:-[a-z0-9_]+)*")
_TINY_TYPO = re.compile(r"tiny[-_ .]?random|tiny|random|tiny[-_]?rand", re.IGNORECASE)
_FORMS = "tiny-random, a local path, <family>:<path> or openai:http://host:port[/v1]"


class BackendSpecError(ValueError):
    """A malformed backend spec string."""


@dataclass(frozen=True)
class BackendSpec:
    """A parsed backend spec.

    ``family`` is ``"tiny-random"``, a family name such as ``"diffusers"`` or ``"openai"``, or
    ``None`` for a bare local path (the kind's local family applies). ``path`` is the local
    path, the family's path, or the server URL for ``openai``; empty for tiny-random.
    """

    family: str | None
    path: str = ""
    text: str = field(default="", compare=False)  # the string it was parsed from

    @property
    def tiny_random(self) -> bool:
        return self.family == TINY_RANDOM

    @property
    def is_server(self) -> bool:
        return self.family == OPENAI

    @property
    def base_url(self) -> str:
        """The OpenAI API base URL of an ``openai:`` spec, always ending in ``/v1``."""
        if not self.is_server:
            raise BackendSpecError(f"backend spec {str(self)!r} is not an openai: server")
        url = self.path.rstrip("/")
        return url if url.endswith("/v1") else url + "/v1"

    def with_family(self, family: str) -> BackendSpec:
        """This spec with its family filled in (for a bare local path)."""
        return BackendSpec(family, self.path, self.text)

    def __str__(self) -> str:
        if self.tiny_random:
            return TINY_RANDOM
        return self.path if self.family is None else f"{self.family}:{self.path}"


def is_family_name(name: str) -> bool:
    """Lower-case letters, digits, ``_`` and inner ``-``: ``diffusers``, ``tiny-random``."""
    return isinstance(name, str) and _FAMILY.fullmatch(name) is not None


def _fail(text: str, why: str) -> BackendSpecError:
    return BackendSpecError(f"bad backend spec {text!r}: {why} (expected {_FORMS})")


def _is_path(text: str) -> bool:
    return text.startswith(("/", "./", "../", "~")) or text in (".", "..")


def parse_spec(spec: str | os.PathLike[str] | BackendSpec) -> BackendSpec:
    """Parse a backend spec string (a ``BackendSpec`` is returned as it is, a ``Path`` is a
    local path).

    Raises ``BackendSpecError`` (a ``ValueError``) with a one-line reason when malformed.
    """
    if isinstance(spec, BackendSpec):
        return spec
    if isinstance(spec, os.PathLike):  # a pathlib.Path is always a local path
        path = os.fspath(spec)
        return BackendSpec(None, str(path), str(path))
    if not isinstance(spec, str):
        raise BackendSpecError(f"backend spec must be a string, got {type(spec).__name__}")
    text = spec
    if not text.strip():
        raise _fail(text, "empty")
    if text != text.strip() or any(c in text for c in "\n\r\t"):
        raise _fail(text, "leading/trailing whitespace or control characters")
    if text == TINY_RANDOM:
        return BackendSpec(TINY_RANDOM, "", text)
    if _is_path(text):
        return BackendSpec(None, text, text)

    head, colon, rest = text.partition(":")
    if not colon:
        if _TINY_TYPO.fullmatch(text):
            raise _fail(text, "did you mean 'tiny-random'?")
        return BackendSpec(None, text, text)  # a bare relative folder
    if "/" in head:  # weights/a:b is a relative path with a colon in it
        return BackendSpec(None, text, text)
    if head in ("http", "https"):
        raise _fail(text, f"a server URL needs its protocol: write openai:{text}")
    if not is_family_name(head):
        raise _fail(text, f"{head!r} is not a family name (lower case, digits, - and _)")
    if head == TINY_RANDOM:
        raise _fail(text, "tiny-random takes no path")
    if not rest:
        raise _fail(text, f"nothing after {head + ':'!r}")
    if head == OPENAI:
        _check_url(text, rest)
    return BackendSpec(head, rest, text)


def _check_url(text: str, url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise _fail(text, "openai: takes an http:// or https:// URL")
    if not parts.hostname:
        raise _fail(text, "the openai: URL has no host")
    try:
        parts.port  # noqa: B018  (raises ValueError on a malformed port)
    except ValueError:
        raise _fail(text, "the openai: URL has a malformed port") from None
    if parts.query or parts.fragment:
        raise _fail(text, "the openai: URL takes no query or fragment")
