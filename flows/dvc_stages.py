"""DVC's stage status and commit for many stages at once, with dvc.lock read and written once per call.

Why: `metaadapt run` and `metaadapt fanout` run the stage functions in-process and record each stage in dvc.lock
as `dvc commit` would. DVC's own `Repo.status(targets)` / `Repo.commit(target)` parse the whole lock file once per
target with a pure-Python YAML parser and rewrite it per call with a round-trip dumper: with one lock shared by
every domain, each commit costs time proportional to the domains already committed (measured: a domain's nine
stage commits took 2 s with no other domain in the lock, 55 s with 20; see docs/scale.md). Here the stages are
DVC's own objects (`dvc.stage.loader.StageLoader` over dvc.yaml, DVC's `save` / `commit` / `status` /
`to_lockfile`), but the lock is read once and written once per call, so a domain's bookkeeping stays flat as
domains are added (3.5–5 s for a domain's nine stages from the 2nd to the 100th domain, docs/scale.md).

What DVC does and this does too: hashes every dependency, parameter and output, copies the outputs into the DVC
cache, and writes the same lock entries (`dvc status` and `dvc repro` read them as their own). What differs is
the layout: dvc.lock is written as JSON, which is YAML too (DVC reads it unchanged; a later `dvc repro` or
`dvc commit` keeps it valid in its own round-trip style). Reading and writing a YAML lock costs about 2.6 s per
MB even with libyaml (the Python constructor and representer dominate) and the lock grows by ~26 KB per domain;
JSON is parsed and written in C, ~50 ms for the lock of 100 domains.
"""
from __future__ import annotations

import json
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from components.lockfile import LOCK_FILE, read_lock
from flows.locks import dvc_lock

_CWD_LOCK = threading.Lock()


@contextmanager
def dvc_repo(root: Path) -> Iterator:
    """DVC's Python API on `root`, with both locks held (DVC resolves stage names against the current directory,
    so the directory is switched for the call, under a process-wide lock)."""
    from dvc.repo import Repo, lock_repo

    with dvc_lock(root), _CWD_LOCK:
        before = os.getcwd()
        os.chdir(root)
        try:
            with Repo(str(root)) as repo, lock_repo(repo):
                yield repo
        finally:
            os.chdir(before)


def _stages(repo, root: Path, lock: dict):
    """dvc.yaml's stages as DVC builds them, filled from `lock` (parsed here, not by DVC)."""
    from dvc.dvcfile import ProjectFile
    from dvc.stage.loader import StageLoader

    dvcfile = ProjectFile(repo, str(Path(root) / "dvc.yaml"))
    return StageLoader(dvcfile, dvcfile.contents, lock)


def stale(root: Path, targets: list[str]) -> set[str]:
    """The targets `dvc status` would list: changed dependencies, parameters, outputs or command, a missing lock
    entry, or `always_changed`."""
    root = Path(root)
    with dvc_repo(root) as repo:
        stages = _stages(repo, root, read_lock(root))
        return {target for target in targets if stages[target].status()}


def commit(root: Path, targets: list[str]) -> dict[str, bool]:
    """Record the stages' outputs (produced outside `dvc repro`) in the DVC cache and dvc.lock, the lock written
    once; returns, per target, whether its recorded outputs changed (a later stage then has new inputs)."""
    from dvc.stage.serialize import to_lockfile

    root = Path(root)
    with dvc_repo(root) as repo:
        lock = read_lock(root)
        stages = _stages(repo, root, {})   # outputs are hashed afresh: the old entries are not needed
        entries = {}
        for target in targets:
            stage = stages[target]
            stage.save()
            stage.commit(relink=True)
            entries.update(json.loads(json.dumps(to_lockfile(stage))))   # DVC's ordered dicts as plain data
        recorded = lock.setdefault("stages", {})
        changed = {name: (recorded.get(name) or {}).get("outs") != entry.get("outs") for name, entry in entries.items()}
        recorded.update(entries)
        write_lock(root, {"schema": lock.get("schema", "2.0"), "stages": recorded})
        return changed


def write_lock(root: Path, lock: dict) -> None:
    """Replace dvc.lock atomically (a crash leaves the old lock or the new one, never half of it), as JSON: one
    key per line, so a `git diff` of the lock reads as DVC's own does."""
    from components.model_io import atomic_write_text

    atomic_write_text(Path(root) / LOCK_FILE, json.dumps(lock, indent=2, ensure_ascii=False) + "\n")
