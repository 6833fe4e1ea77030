"""The screening page's local web server: one undecided event video at a time, a key per decision.

Why in the browser: people screening thousands of videos want the clip playing in a loop
and one key press per decision (as in Label Studio or CVAT), not a spreadsheet and a file
browser. Why the standard library only: ``yume-data screening serve ROOT`` starts in one
command, with no build step and no framework.

Every decision goes through ``curation.screening.decisions`` (the manifest the CSV import
writes, source ``web``), so the page and the CSV round trip mix freely: the manifest is read
again whenever its file changes, and each undecided video shown is claimed with a lease
(renewed by the page while shown), so two screeners never get the same one.

Safety: the client names a video only by its key; the server looks the key up in
``manifests/events.parquet`` and serves that row's mp4 or contact sheet, nothing else.
Requests whose Host is not this server, or whose Origin is another site, get 403; posts
must be JSON (a foreign form cannot send that without the browser asking first).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from collections.abc import Callable
from datetime import datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from curation.dataroot import DataRoot, check_name
from curation.screening.contact_sheet import contact_sheet
from curation.screening.decisions import (
    CLEARED,
    DECISIONS,
    active_claims,
    append_decisions,
    claim,
    decisions_path,
    latest_decisions,
    load_events,
    normalise_decision,
    read_decisions,
    release,
)

LEASE_S = 600.0  # a shown video stays this screener's while the page renews it
NOTE_MAX = 2000  # characters
BODY_MAX = 64 * 1024  # bytes of a posted JSON body
CHUNK = 256 * 1024  # bytes per write when sending a file
FILTERS: tuple[str, ...] = ("undecided", *DECISIONS, "all")
DIRECTIONS: tuple[str, ...] = ("first", "next", "prev", "here")
_LOOPBACK = ("127.0.0.1", "localhost", "[::1]")
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


class Conflict(Exception):
    """The request clashes with another screener's claim or a newer decision (HTTP 409)."""


class NotFound(Exception):
    """No such event key, or its file is missing (HTTP 404)."""


def byte_range(header: str, size: int) -> tuple[int, int] | None:
    """The inclusive (first, last) bytes a single-range ``Range`` header asks of a file of
    ``size`` bytes; None when it cannot be satisfied (416). ValueError when it is not a
    single byte range (the server then sends the whole file, as HTTP allows)."""
    m = _RANGE_RE.match(header.strip())
    if not m or m.groups() == ("", ""):
        raise ValueError(f"unsupported range {header!r}")
    first, last = m.groups()
    if first == "":  # the last N bytes
        n = int(last)
        return (max(size - n, 0), size - 1) if n > 0 and size > 0 else None
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or end < start:
        return None
    return start, end


class _FileCache:
    """A value loaded from a file, loaded again only when the file changes (inode, mtime,
    size): the CSV import replaces the manifest atomically, so each request sees it."""

    def __init__(self, path: Path, load: Callable[[], Any]) -> None:
        self.path, self._load = path, load
        self._stamp: tuple | None = None
        self._value: Any = None
        self._lock = threading.Lock()

    def get(self) -> Any:
        try:
            st = self.path.stat()
            stamp: tuple | None = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        with self._lock:
            if self._value is None or stamp != self._stamp:
                self._value, self._stamp = self._load(), stamp
            return self._value


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") if value is not None else None


class Screening:
    """What the page shows and records for one screener on one data root."""

    def __init__(self, root: str | Path | DataRoot, screener: str, lease_s: float = LEASE_S):
        self.root = DataRoot.at(root)
        self.screener = check_name(screener, "screener")  # as the CSV export checks it
        self.lease_s = lease_s
        load_events(self.root)  # FileNotFoundError now, not on the first request
        self._events = _FileCache(
            self.root.manifest("events"), lambda: {e["key"]: e for e in load_events(self.root)}
        )
        self._latest = _FileCache(decisions_path(self.root), lambda: latest_decisions(self.root))
        self._undo: list[tuple[str, int, dict | None]] = []  # (key, seq written, row before)
        self._written: set[int] = set()  # seqs this server wrote: decisions and undos
        self._undo_lock = threading.Lock()

    # -- reading -----------------------------------------------------------------------------
    def events(self) -> dict[str, dict]:
        """key -> events row, in key order (the order of the page)."""
        return self._events.get()

    def event(self, key: str) -> dict:
        row = self.events().get(key)
        if row is None:
            raise NotFound(f"no event video with key {key!r}")
        return row

    def latest(self) -> dict[str, dict]:
        return self._latest.get()

    def _matches(self, row: dict, category: str, decision: str, latest: dict) -> bool:
        if category not in ("", "all") and row["category"] != category:
            return False
        got = latest.get(row["key"])
        if decision == "all":
            return True
        if decision == "undecided":
            return got is None
        return got is not None and got["decision"] == decision

    def _filtered(self, category: str, decision: str) -> list[str]:
        if decision not in FILTERS:
            raise ValueError(f"decision filter {decision!r} is not one of {', '.join(FILTERS)}")
        latest = self.latest()
        return [k for k, r in self.events().items() if self._matches(r, category, decision, latest)]

    def item(self, key: str, category: str = "all", decision: str = "all") -> dict:
        """One event as the page shows it: text, category, score, its latest decision."""
        row = self.event(key)
        got = self.latest().get(key)
        keys = self._filtered(category, decision)
        return {
            "key": key, "category": row["category"], "event_text": row["event_text"],
            "total": row["total"], "scorer": row["scorer"], "width": row["width"],
            "height": row["height"], "fps": row["fps"], "frames": row["frames"],
            "decision": got["decision"] if got else None, "note": got["note"] if got else None,
            "decided_by": got["screener"] if got else None,
            "decided_at": _iso(got["decided_at"]) if got else None,
            "decided_via": got["source"] if got else None,
            "position": keys.index(key) + 1 if key in keys else None, "count": len(keys),
            "video": f"/video/{key}", "sheet": f"/sheet/{key}",
        }  # fmt: skip

    def state(self, category: str = "all", decision: str = "undecided", key: str = "") -> dict:
        """Progress (decided / total, overall and per category), the filter's size, and the
        shown item again (a CSV import may have decided it meanwhile)."""
        latest = self.latest()
        zero = {"total": 0, "decided": 0, **{d: 0 for d in DECISIONS}}
        overall, per = dict(zero), {}
        for k, row in self.events().items():
            counts = per.setdefault(row["category"], dict(zero))
            for c in (overall, counts):
                c["total"] += 1
                if k in latest:
                    c["decided"] += 1
                    c[latest[k]["decision"]] += 1
        others = sum(c["screener"] != self.screener for c in active_claims(self.root).values())
        return {
            "screener": self.screener, "lease_s": self.lease_s, "overall": overall,
            "categories": dict(sorted(per.items())), "filters": list(FILTERS),
            "matching": len(self._filtered(category, decision)), "claimed_by_others": others,
            "current": self.item(key, category, decision) if key in self.events() else None,
        }  # fmt: skip

    # -- moving and claiming -----------------------------------------------------------------
    def next(
        self, category: str = "all", decision: str = "undecided", start: str = "",
        direction: str = "first",
    ) -> dict | None:  # fmt: skip
        """The item to show after ``start`` in ``direction`` (first, next, prev, here) among
        those the filter matches, or None. An undecided one is claimed for this screener
        first; those others hold are skipped. Leases on other videos shown before are let go."""
        if direction not in DIRECTIONS:
            raise ValueError(f"direction {direction!r} is not one of {', '.join(DIRECTIONS)}")
        keys = self._filtered(category, decision)
        if direction == "here" and start in self.events():
            candidates = [start] + [k for k in keys if k > start]
        elif direction == "next":
            candidates = [k for k in keys if k > start]
        elif direction == "prev":
            candidates = [k for k in reversed(keys) if k < start]
        else:
            candidates = keys
        chosen = self._first_available(candidates)
        self._release_leases(keep=chosen)
        return self.item(chosen, category, decision) if chosen else None

    def _first_available(self, candidates: list[str]) -> str | None:
        latest = self.latest()
        held = active_claims(self.root)
        for key in candidates:
            if key in latest:
                return key
            owner = held.get(key, {}).get("screener", self.screener)
            if owner == self.screener and claim(self.root, self.screener, [key], 1, self.lease_s):
                return key
        return None

    def _release_leases(self, keep: str | None) -> None:
        """Drop this screener's leased (web) claims except ``keep``; batch claims of a CSV
        export (no expiry) stay."""
        mine = [k for k, c in active_claims(self.root).items()
                if c["screener"] == self.screener and c["expires_at"] is not None and k != keep]  # fmt: skip
        if mine:
            release(self.root, self.screener, mine)

    # -- recording ---------------------------------------------------------------------------
    def decide(self, key: str, decision: str, note: str | None) -> dict:
        """Record ``decision`` (keep, reject, unsure) with ``note`` for ``key`` at once."""
        self.event(key)
        value = normalise_decision(decision if isinstance(decision, str) else "")
        if value is None:
            raise ValueError(f"decision missing: use one of {', '.join(DECISIONS)}")
        if note is not None and not isinstance(note, str):
            raise ValueError("note must be text or null")
        note = (note or "").strip() or None
        if note is not None and len(note) > NOTE_MAX:
            raise ValueError(f"note has {len(note)} characters; at most {NOTE_MAX}")
        owner = active_claims(self.root).get(key, {}).get("screener", self.screener)
        if owner != self.screener:
            raise Conflict(f"{key} is being screened by {owner}")
        before = latest_decisions(self.root).get(key)
        row = {"key": key, "decision": value, "note": note, "screener": self.screener,
               "source": "web"}  # fmt: skip
        (recorded,) = append_decisions(self.root, [row])
        with self._undo_lock:
            self._undo.append((key, recorded["seq"], before))
            self._written.add(recorded["seq"])
        return recorded

    def undo(self) -> dict:
        """Take back this server's last decision: the key's decision before it comes back
        (or CLEARED: undecided again). Refused when the key was decided again since."""
        with self._undo_lock:
            if not self._undo:
                raise Conflict("nothing to undo")
            key, seq, before = self._undo.pop()
        since = [r for r in read_decisions(self.root)
                 if r["key"] == key and r["seq"] > seq and r["seq"] not in self._written]  # fmt: skip
        if since:
            last = since[-1]
            raise Conflict(
                f"{key} was decided again since ({last['decision']} by {last['screener']})"
            )
        if before is None:
            row = {"key": key, "decision": CLEARED, "note": None, "screener": self.screener}
        else:
            row = {k: before[k] for k in ("key", "decision", "note", "screener")}
        (recorded,) = append_decisions(self.root, [{**row, "source": "web"}])
        with self._undo_lock:
            self._written.add(recorded["seq"])
        return recorded

    def media(self, kind: str, key: str) -> Path:
        """The file of ``key`` to send: its mp4, or its contact sheet (made when missing). A
        path in the events manifest that leaves the data root is refused, not followed."""
        row = self.event(key)
        video = self._inside(self.root.path / row["path"], kind, key)
        if kind == "video":
            return video
        try:
            sheet = contact_sheet(self.root, row)
        except Exception as e:  # an mp4 that does not decode (av's errors, OSError, IndexError)
            raise NotFound(f"no contact sheet of {key}: {type(e).__name__}: {e}") from e
        return self._inside(sheet, kind, key)

    def _inside(self, path: Path, kind: str, key: str) -> Path:
        path = Path(path).resolve()
        if not path.is_relative_to(self.root.path) or not path.is_file():
            raise NotFound(f"{kind} of {key} not found")
        return path


_PAGE = resources.files("curation.screening").joinpath("page.html").read_text(encoding="utf-8")
_SCRIPT = re.search(r"<script>(.*?)</script>", _PAGE, re.S)
_SCRIPT_HASH = base64.b64encode(hashlib.sha256((_SCRIPT[1] if _SCRIPT else "").encode()).digest())
CSP = (
    f"default-src 'none'; script-src 'sha256-{_SCRIPT_HASH.decode()}'; style-src 'unsafe-inline'; "
    "img-src 'self'; media-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
_TYPES = {"video": "video/mp4", "sheet": "image/jpeg"}


class ScreeningServer(ThreadingHTTPServer):
    """The HTTP server of one ``Screening``; ``url`` is where the page is."""

    daemon_threads = True

    def __init__(self, screening: Screening, host: str = "127.0.0.1", port: int = 8765):
        self.screening = screening
        super().__init__((host, port), _Handler)
        port = self.server_address[1]
        shown = "127.0.0.1" if host in ("", "0.0.0.0", "::") else host
        self.url = f"http://{shown}:{port}/"
        # Bound to every interface the Host may be any name of this machine; else only its own.
        if host in ("", "0.0.0.0", "::"):
            self.allowed_hosts: frozenset[str] | None = None
        elif host in ("127.0.0.1", "localhost", "::1"):
            self.allowed_hosts = frozenset(f"{h}:{port}" for h in _LOOPBACK)
        else:
            self.allowed_hosts = frozenset({f"{host}:{port}"})


def make_server(
    root: str | Path | DataRoot, screener: str, host: str = "127.0.0.1", port: int = 8765,
    lease_s: float = LEASE_S,
) -> ScreeningServer:  # fmt: skip
    """A screening server bound to ``host:port`` (port 0: any free one); call serve_forever."""
    return ScreeningServer(Screening(root, screener, lease_s), host, port)


class _Handler(BaseHTTPRequestHandler):
    server: ScreeningServer
    protocol_version = "HTTP/1.1"  # keep-alive: the video element makes many range requests
    server_version = "yume-screening"

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Quiet: one line per range request would bury the URL the command printed."""

    # -- plumbing ----------------------------------------------------------------------------
    def _send(self, status: int, body: bytes, ctype: str, extra: dict | None = None) -> None:
        self.send_response(status)
        headers = {"Content-Type": ctype, "Content-Length": str(len(body)),
                   "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
                   "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer", **(extra or {})}  # fmt: skip
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj: object, status: int = 200) -> None:
        body = json.dumps(obj, default=str).encode()
        self._send(status, body, "application/json; charset=utf-8")

    def _error(self, status: int, message: str) -> None:
        self.close_connection = True  # a body left unread must not be taken for a request
        self._json({"error": message}, status)

    def _allowed(self) -> bool:
        """Host is this server and Origin (when sent) is this page; a post also must be JSON."""
        host = self.headers.get("Host", "")
        allowed = self.server.allowed_hosts
        if allowed is not None and host not in allowed:
            return False
        origin = self.headers.get("Origin")
        if origin is not None and origin != f"http://{host}":
            return False
        return self.headers.get("Sec-Fetch-Site", "same-origin") in ("same-origin", "none")

    def _query(self) -> dict[str, str]:
        query = parse_qs(urlsplit(self.path).query, keep_blank_values=True)
        return {k: v[-1] for k, v in query.items()}

    def _body(self) -> dict:
        ctype = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if ctype != "application/json":
            raise ValueError("post JSON (Content-Type: application/json)")
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 <= length <= BODY_MAX:
            raise ValueError(f"body of {length} bytes: at most {BODY_MAX}")
        data = json.loads(self.rfile.read(length) or b"{}")
        if not isinstance(data, dict):
            raise ValueError("post a JSON object")
        return data

    def _dispatch(self, route: Callable[[], None]) -> None:
        if not self._allowed():
            self._error(HTTPStatus.FORBIDDEN, "forbidden: requests from other sites or hosts")
            return
        try:
            route()
        except NotFound as e:
            self._error(HTTPStatus.NOT_FOUND, str(e))
        except Conflict as e:
            self._error(HTTPStatus.CONFLICT, str(e))
        except (ValueError, TypeError, KeyError) as e:
            self._error(HTTPStatus.BAD_REQUEST, str(e))
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the browser dropped a range request: normal
        except Exception as e:  # e.g. an mp4 the contact sheet cannot decode: one reply, no crash
            self.log_error("%s %s: %s: %s", self.command, self.path, type(e).__name__, e)
            self._error(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(e).__name__}: {e}")

    # -- routes ------------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self._dispatch(self._get)

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch(self._get)

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch(self._post)

    def _get(self) -> None:
        path, q, s = urlsplit(self.path).path, self._query(), self.server.screening
        category, decision = q.get("category", "all"), q.get("decision", "undecided")
        if path in ("/", "/index.html"):
            self._send(200, _PAGE.encode(), "text/html; charset=utf-8",
                       {"Content-Security-Policy": CSP})  # fmt: skip
        elif path == "/favicon.ico":
            self._send(HTTPStatus.NO_CONTENT, b"", "image/x-icon")
        elif path == "/api/state":
            self._json(s.state(category, decision, q.get("key", "")))
        elif path == "/api/next":
            item = s.next(category, decision, q.get("from", ""), q.get("dir", "first"))
            self._json({"item": item})
        elif path.startswith(("/video/", "/sheet/")):
            kind, _, key = path[1:].partition("/")
            self._file(s.media(kind, unquote(key)), _TYPES[kind])
        else:
            raise NotFound(f"no page {path}")

    def _post(self) -> None:
        path, s = urlsplit(self.path).path, self.server.screening
        body = self._body()
        if path == "/api/decide":
            self._json({"recorded": s.decide(str(body.get("key", "")), body.get("decision"),
                                             body.get("note"))})  # fmt: skip
        elif path == "/api/undo":
            self._json({"recorded": s.undo()})
        else:
            raise NotFound(f"no action {path}")

    def _file(self, path: Path, ctype: str) -> None:
        """Send ``path``, or the byte range asked for (206), so the video element can seek."""
        size = path.stat().st_size
        span: tuple[int, int] | None = (0, size - 1)
        status, extra = HTTPStatus.OK, {"Accept-Ranges": "bytes", "Cache-Control": "no-cache"}
        header = self.headers.get("Range")
        if header:
            try:
                span = byte_range(header, size)
                status = HTTPStatus.PARTIAL_CONTENT
            except ValueError:
                pass  # not one byte range: the whole file, as HTTP allows
        if span is None:
            self._send(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE, b"", ctype,
                       {**extra, "Content-Range": f"bytes */{size}"})  # fmt: skip
            return
        first, last = span
        if status == HTTPStatus.PARTIAL_CONTENT:
            extra["Content-Range"] = f"bytes {first}-{last}/{size}"
        self.send_response(status)
        for name, value in {"Content-Type": ctype, "Content-Length": str(last - first + 1),
                            "X-Content-Type-Options": "nosniff", **extra}.items():  # fmt: skip
            self.send_header(name, value)
        self.end_headers()
        if self.command == "HEAD":
            return
        with path.open("rb") as f:
            f.seek(first)
            left = last - first + 1
            while left > 0:
                chunk = f.read(min(CHUNK, left))
                if not chunk:
                    break
                self.wfile.write(chunk)
                left -= len(chunk)
