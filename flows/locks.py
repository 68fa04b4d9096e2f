"""Cross-process locks for the orchestration: one adaptation per domain, one DVC command per repository.

Prefect's global concurrency limits serialise flow runs that go through the Prefect API; these file locks also
cover the paths that do not (``metaadapt stage``, a second ``metaadapt run`` in another shell) and two DVC
commands in one repository, which would otherwise fail on DVC's own repository lock instead of waiting.
"""
from __future__ import annotations

from pathlib import Path
from typing import ContextManager

from components.locks import file_lock

LOCK_DIR = ".locks"


def domain_lock(root: Path, domain: str, timeout: float) -> ContextManager[float]:
    """At most one adaptation of `domain` in this project at a time, whatever started it."""
    return file_lock(Path(root) / LOCK_DIR / f"adapt-{domain}.lock", timeout)


def dvc_lock(root: Path, timeout: float = 3600.0) -> ContextManager[float]:
    """One DVC command at a time in this repository (DVC fails, rather than waits, on its own lock)."""
    return file_lock(Path(root) / LOCK_DIR / "dvc.lock", timeout)
