"""One writer at a time: an exclusive ``fcntl.flock`` on a lock file, naming its holder.

Why a kernel lock: it is dropped when the process dies, so a killed run never leaves a stale
lock behind; the note in the file (pid, host, start time) is only for the message a second
run prints.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path


class InUseError(RuntimeError):
    """Another process holds the lock; the message names it and what to do."""


@contextlib.contextmanager
def hold(
    path: str | Path, what: str, hint: str, error: type[Exception] = InUseError
) -> Iterator[None]:
    """Hold the lock at ``path`` for the block, or raise ``error`` at once.

    ``what`` names the locked thing in the message, ``hint`` says what the user can do.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    f = path.open("a+")  # not "w": truncating would erase the holder's note before we know
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "a process that wrote no note"
        f.close()
        raise error(f"{what} is in use by another run ({holder}); {hint}") from None
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on host {socket.gethostname()}, started {started}\n")
    f.flush()
    try:
        yield
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()
