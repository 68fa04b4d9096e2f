"""Cross-process locks for the orchestration: one adaptation per domain, one DVC command per repository.

Prefect's global concurrency limits serialise flow runs that go through the Prefect API; these file locks also
cover the paths that do not (``metaadapt stage``, a second ``metaadapt run`` in another shell) and two DVC
commands in one repository, which would otherwise fail on DVC's own repository lock instead of waiting.
"""
from __future__ import annotations

import fcntl
import os
import time
from contextlib import contextmanager
from pathlib import Path
from typing import ContextManager, Iterator

LOCK_DIR = ".locks"


class LockTimeout(TimeoutError):
    """Another process held the lock for longer than we were willing to wait."""


@contextmanager
def file_lock(path: Path, timeout: float, poll: float = 0.2) -> Iterator[float]:
    """Hold an exclusive `flock` on `path`; yields the seconds waited. Released on exit, even on a crash
    (the kernel drops a dead process's flock, so no stale lock file can block the next run)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() - started > timeout:
                    raise LockTimeout(f"{path} is held by another process for over {timeout:.0f} s "
                                      f"(a running adaptation or DVC command); try again later") from None
                time.sleep(poll)
        yield time.monotonic() - started
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def domain_lock(root: Path, domain: str, timeout: float) -> ContextManager[float]:
    """At most one adaptation of `domain` in this project at a time, whatever started it."""
    return file_lock(Path(root) / LOCK_DIR / f"adapt-{domain}.lock", timeout)


def dvc_lock(root: Path, timeout: float = 3600.0) -> ContextManager[float]:
    """One DVC command at a time in this repository (DVC fails, rather than waits, on its own lock)."""
    return file_lock(Path(root) / LOCK_DIR / "dvc.lock", timeout)
