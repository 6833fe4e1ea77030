"""The ``openai`` captioner: any OpenAI-compatible chat-completions server (``openai:URL``).

``lmdeploy serve api_server``, ``transformers serve`` and vLLM all speak this protocol. Many
requests are in flight at once (a thread pool of ``max_in_flight`` kept-alive connections);
each has a timeout; 429, 5xx, dropped connections, timeouts and unparseable answers are
retried with exponential backoff and jitter (honouring ``Retry-After``), and every retry is
counted in the result. Frames go as base64 JPEG data URLs, one ``image_url`` part per frame
with ``max_dynamic_patch: 1`` (one tile per frame, lmdeploy's per-image parameter), placed
where the prompt's ``<image>`` placeholders are. The API key, if any, comes from the
environment variable ``api_key_env`` (default ``OPENAI_API_KEY``), never from a config.

Only the standard library is used (http.client), so the core environment needs no client.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from model.backends.protocols import CORE
from model.backends.registry import register
from model.backends.spec import BackendSpec

IMAGE = "<image>"  # the placeholder of curation.recaption.build_prompt (model/ imports no curation)
RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


class CaptionError(Exception):
    """A request that failed for good: ``reason`` is a rejects code, ``detail`` words."""

    def __init__(self, reason: str, detail: str, retries: int = 0):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail, self.retries = reason, detail, retries


@dataclass
class CaptionResult:
    """One answer: the text and what it cost."""

    text: str
    finish_reason: str | None
    prompt_tokens: int | None
    output_tokens: int | None
    seconds: float
    retries: int = 0  # transport retries (429/5xx/timeouts/dropped or malformed answers)
    extra: dict = field(default_factory=dict)


def encode_jpeg(frame, quality: int = 90) -> bytes:
    """One uint8 (H, W, 3) RGB frame as JPEG bytes."""
    import cv2
    import numpy as np

    ok, buf = cv2.imencode(
        ".jpg", np.ascontiguousarray(frame[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def data_urls(frames, quality: int = 90) -> list[str]:
    """Frames as ``data:image/jpeg;base64,...`` URLs (what lmdeploy accepts; it blocks
    loopback http URLs)."""
    return [
        "data:image/jpeg;base64," + base64.b64encode(encode_jpeg(f, quality)).decode()
        for f in frames
    ]


def chat_content(prompt: str, urls: Sequence[str], max_dynamic_patch: int | None = 1) -> list:
    """The user message content: text pieces and image parts in the prompt's order.

    The servers add a newline after each image themselves, so a text piece's leading
    newline after an image is dropped.
    """
    pieces = prompt.split(IMAGE)
    if len(pieces) - 1 != len(urls):
        raise ValueError(f"prompt has {len(pieces) - 1} image placeholders for {len(urls)} frames")
    content: list[dict] = []
    for i, text in enumerate(pieces):
        if i:
            image = {"url": urls[i - 1]}
            if max_dynamic_patch:
                image["max_dynamic_patch"] = max_dynamic_patch
            content.append({"type": "image_url", "image_url": image})
            text = text.removeprefix("\n")
        if text:
            content.append({"type": "text", "text": text})
    return content


class _Http:
    """One kept-alive connection per thread to the server of ``base_url``."""

    def __init__(self, base_url: str, timeout: float):
        parts = urlsplit(base_url)
        self.https = parts.scheme == "https"
        self.host, self.port = parts.hostname, parts.port or (443 if self.https else 80)
        self.prefix = parts.path.rstrip("/")
        self.timeout = timeout
        self.local = threading.local()

    def _conn(self) -> http.client.HTTPConnection:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            cls = http.client.HTTPSConnection if self.https else http.client.HTTPConnection
            conn = cls(self.host, self.port, timeout=self.timeout)
            self.local.conn = conn
        return conn

    def drop(self) -> None:
        conn = getattr(self.local, "conn", None)
        if conn is not None:
            conn.close()
            self.local.conn = None

    def request(self, method: str, path: str, body: bytes | None, headers: dict) -> tuple:
        """(status, headers, body bytes); raises OSError / http.client errors on transport."""
        conn = self._conn()
        try:
            conn.request(method, self.prefix + path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except BaseException:
            self.drop()
            raise
        if resp.getheader("connection", "").lower() == "close":
            self.drop()
        return resp.status, resp, data


@register("captioner", "openai")
class OpenAICaptioner:
    """Captions through an OpenAI-compatible chat-completions server."""

    environment = CORE
    family = "openai"
    tiny_random = False

    def __init__(
        self,
        base_url: str,
        *,
        model: str | None = None,
        max_in_flight: int = 32,
        timeout: float = 120.0,
        retries: int = 4,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        temperature: float = 0.1,
        top_p: float = 0.9,
        max_tokens: int = 256,
        jpeg_quality: int = 90,
        max_dynamic_patch: int | None = 1,
        api_key_env: str = "OPENAI_API_KEY",
        on_transport_error: Callable[[], None] | None = None,
        family: str = "openai",
        tiny_random: bool = False,
    ):
        self.base_url = base_url.rstrip("/")
        self.http = _Http(self.base_url, timeout)
        self.max_in_flight, self.timeout = max_in_flight, timeout
        self.retries, self.backoff, self.max_backoff = retries, backoff, max_backoff
        self.sampling = {"temperature": temperature, "top_p": top_p, "max_tokens": max_tokens}
        self.jpeg_quality, self.max_dynamic_patch = jpeg_quality, max_dynamic_patch
        self.api_key = os.environ.get(api_key_env) if api_key_env else None
        self.on_transport_error = on_transport_error  # e.g. the launcher restarting a server
        self.family, self.tiny_random = family, tiny_random
        self.pool = ThreadPoolExecutor(max_workers=max_in_flight, thread_name_prefix="caption")
        self._model = model
        self.model_id = model or f"openai:{self.base_url}"
        self.transport_retries = 0

    @classmethod
    def from_spec(cls, spec: BackendSpec, **kwargs) -> OpenAICaptioner:
        return cls(spec.base_url, **kwargs)

    # -- protocol -------------------------------------------------------------------------
    @property
    def settings(self) -> dict:
        """The sampling settings recorded with every caption."""
        return dict(self.sampling)

    @property
    def model(self) -> str:
        """The served model's name (``/v1/models``), asked once."""
        if self._model is None:
            status, _, data = self._call("GET", "/models", None)
            try:
                self._model = json.loads(data)["data"][0]["id"]
            except (ValueError, KeyError, IndexError, TypeError) as e:
                raise CaptionError("malformed_answer", f"/v1/models: {e}") from e
            self.model_id = self._model
        return self._model

    def prepare(self, frames) -> list[str]:
        """CPU work done before a request (in the caller's thread): JPEG + base64."""
        return data_urls(frames, self.jpeg_quality)

    def submit(self, payload: list[str], prompt: str, seed: int) -> Future:
        """Start one request; the future gives a CaptionResult or raises CaptionError."""
        return self.pool.submit(self._caption, payload, prompt, seed)

    def caption(self, frames, prompt: str) -> str:
        return self.submit(self.prepare(frames), prompt, 0).result().text

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

    # -- transport ------------------------------------------------------------------------
    def _headers(self) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _sleep(self, attempt: int, retry_after: str | None) -> None:
        delay = min(self.max_backoff, self.backoff * 2**attempt) * (0.5 + random.random())
        if retry_after:
            try:
                delay = max(delay, min(self.max_backoff, float(retry_after)))
            except ValueError:
                pass
        time.sleep(delay)

    def _call(self, method: str, path: str, body: bytes | None, parse: bool = False) -> tuple:
        """Send with retries; returns (status, response, data) or the parsed JSON, and the
        number of retries it took, as (status, parsed-or-data, retries)."""
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                self.transport_retries += 1
            try:
                status, resp, data = self.http.request(method, path, body, self._headers())
            except TimeoutError:
                last = f"no answer within {self.timeout:g} s"
                reason = "timeout"
            except (OSError, http.client.HTTPException) as e:
                last = f"{type(e).__name__}: {e}"
                reason = "server_unreachable"
                if self.on_transport_error is not None:
                    self.on_transport_error()
            else:
                if status in RETRY_STATUS:
                    last, reason = f"HTTP {status}: {data[:200]!r}", f"http_{status}"
                    if attempt < self.retries:
                        self._sleep(attempt, resp.getheader("retry-after"))
                    continue
                if status >= 400:
                    raise CaptionError("bad_request", f"HTTP {status}: {data[:300]!r}", attempt)
                if not parse:
                    return status, resp, data
                try:
                    return status, json.loads(data), attempt
                except ValueError:
                    last, reason = f"answer is not JSON: {data[:120]!r}", "malformed_answer"
            if attempt < self.retries:
                self._sleep(attempt, None)
        raise CaptionError(reason, f"{last} (after {self.retries} retries)", self.retries)

    def _caption(self, urls: list[str], prompt: str, seed: int) -> CaptionResult:
        t0 = time.perf_counter()
        body = {
            "model": self.model,
            "messages": [
                {"role": "user", "content": chat_content(prompt, urls, self.max_dynamic_patch)}
            ],
            "seed": seed,
            "stream": False,
            **self.sampling,
        }
        _, answer, retries = self._call(
            "POST", "/chat/completions", json.dumps(body).encode(), parse=True
        )
        try:
            choice = answer["choices"][0]
            text = choice["message"]["content"]
            if text is not None and not isinstance(text, str):
                raise TypeError(f"content is {type(text).__name__}")
        except (KeyError, IndexError, TypeError) as e:
            raise CaptionError(
                "malformed_answer", f"no choices[0].message.content: {e}", retries
            ) from e
        usage = answer.get("usage") or {}
        return CaptionResult(
            text=text or "",
            finish_reason=choice.get("finish_reason"),
            prompt_tokens=usage.get("prompt_tokens"),
            output_tokens=usage.get("completion_tokens"),
            seconds=time.perf_counter() - t0,
            retries=retries,
        )
