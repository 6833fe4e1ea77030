"""A server launcher: run an OpenAI-compatible model server as a child process, check its
health, restart it when it dies, stop it.

Why: lmdeploy cannot share the core environment (it caps torch and needs CUDA), so each
captioner replica starts ``lmdeploy serve api_server`` from its own interpreter and talks
to it over HTTP. The launcher is generic: the command is a list of words in which
``{port}`` (a free port picked here) and ``{host}`` are filled in; tests run it with
``transformers serve`` or a small test server. The child gets its own process group, so
stopping it stops whatever it spawned too; it inherits the environment (Ray's
``CUDA_VISIBLE_DEVICES`` for the actor's GPUs).
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path


class LaunchError(RuntimeError):
    """The server did not come up healthy (the message holds the end of its log)."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerLauncher:
    """One server process; ``start``, ``healthy``, ``ensure`` (restart if dead), ``stop``.

    ``health_paths``: tried in order, the first answering 200 means healthy (lmdeploy has
    ``/v1/models``, transformers serve ``/health``). ``log``: the child's stdout+stderr.
    """

    def __init__(
        self,
        command: str | Sequence[str],
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        health_paths: Sequence[str] = ("/health", "/v1/models"),
        startup_timeout: float = 600.0,
        env: dict | None = None,
        log: str | Path | None = None,
        max_restarts: int = 5,
    ):
        self.template = shlex.split(command) if isinstance(command, str) else list(command)
        self.host, self.port = host, port or free_port(host)
        self.health_paths = tuple(health_paths)
        self.startup_timeout = startup_timeout
        self.env = env
        self.log = Path(log) if log else None
        self.max_restarts = max_restarts
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def command(self) -> list[str]:
        return [w.format(port=self.port, host=self.host) for w in self.template]

    def start(self) -> ServerLauncher:
        """Start the child and wait until it is healthy (LaunchError if it never is)."""
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL  # noqa: SIM115
        env = {**os.environ, **(self.env or {})}
        try:
            self.proc = subprocess.Popen(
                self.command, stdout=out, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,
            )  # fmt: skip
        finally:
            if self.log:
                out.close()
        self.wait_healthy()
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def healthy(self, timeout: float = 2.0) -> bool:
        if not self.alive():
            return False
        for path in self.health_paths:
            url = f"http://{self.host}:{self.port}{path}"
            try:
                with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 (local)
                    if r.status == 200:
                        return True
            except (urllib.error.URLError, OSError, ValueError):
                continue
        return False

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if not self.alive():
                code = self.proc.returncode if self.proc else None
                raise LaunchError(f"{self.command[0]} exited with {code}: {self._tail()}")
            if self.healthy():
                return
            time.sleep(0.2)
        self.stop()
        raise LaunchError(f"{self.command[0]} not healthy after {self.startup_timeout:g} s")

    def ensure(self) -> bool:
        """Restart the server if it has died; True when it was restarted. Thread-safe: many
        request threads may see the same dead server, it is restarted once."""
        with self._lock:
            if self.alive():
                return False
            if self.restarts >= self.max_restarts:
                raise LaunchError(f"server died {self.restarts + 1} times; giving up")
            self.restarts += 1
            self.stop()
            self.start()
            return True

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout)
        except (ProcessLookupError, PermissionError):
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout)

    def _tail(self, n: int = 2000) -> str:
        if self.log and self.log.exists():
            return self.log.read_bytes()[-n:].decode("utf-8", "replace")
        return "(no log; pass log= to keep one)"

    def __enter__(self) -> ServerLauncher:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
