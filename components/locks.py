"""Cross-process exclusive file locks (`flock`), shared by the batch ledger, the MLflow store and the flows.

The kernel drops a dead process's flock, so a crashed holder never leaves a stale lock that blocks the next run.
"""
from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


class LockTimeout(TimeoutError):
    """Another process held the lock for longer than we were willing to wait."""


@contextmanager
def file_lock(path: Path, timeout: float | None = None, poll: float = 0.2) -> Iterator[float]:
    """Hold an exclusive `flock` on `path` (created if missing); yields the seconds waited.

    `timeout=None` waits as long as it takes (short critical sections: a ledger update, a store migration);
    otherwise `LockTimeout` after `timeout` seconds (long ones: an adaptation, a DVC command)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        if timeout is None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        else:
            _acquire_within(fd, path, timeout, poll, started)
        yield time.monotonic() - started
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def _acquire_within(fd: int, path: Path, timeout: float, poll: float, started: float) -> None:
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() - started > timeout:
                raise LockTimeout(f"{path} is held by another process for over {timeout:.0f} s "
                                  f"(a running adaptation or DVC command); try again later") from None
            time.sleep(poll)
