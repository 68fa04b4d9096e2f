"""Content-addressed store of work shared by domains: computed once, reused by every domain that names it.

Why: most domains of a project share their meta-training sources. Validating those sources, embedding them,
sampling episodes and meta-training the head depend only on (source rows, encoder, params, code), not on the
target domain, so twelve domains over one source set used to do the same work twelve times. Each such artifact
is stored under ``data/cache/shared/<kind>/<key>/``, where ``key`` hashes everything that determines it; a domain
stage asks for the key, and either reuses the entry or builds it.

- Keys are content keys: the bytes of the input rows (not file names or dates), the relevant params, the
  source code of the modules that compute the artifact (``code_digest``). Equal keys mean equal artifacts;
  anything that could change the artifact changes the key, so an entry is never invalidated in place.
- Builds are atomic and exclusive: the entry is built in a hidden staging folder and renamed into place, under
  a per-key ``flock`` (components.locks), so concurrent fan-out workers asking for one key compute it once and
  the others wait and reuse it; a crashed build leaves only a staging folder, never a half entry.
- Entries list the SHA-256 of their files; ``link_into`` checks them before linking a file into a domain's
  DVC outputs, so an entry changed on disk (an in-place write through a hard link) is rebuilt, never used.
- The store is a cache: deleting it costs recomputation, never results (DVC still versions every domain's
  outputs). Other shared work (the encoder meta-fine-tuning of ``meta.scope: lora/full``) can be keyed the same
  way: ``store.fetch_or_build("encoder_tuning", content_key(...), build)``.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from components.data import file_sha256
from components.locks import file_lock

log = logging.getLogger("metaadapt")
ENTRY_FILE = "entry.json"


class StoreError(RuntimeError):
    """A store entry could not be built or is damaged beyond rebuilding."""


def content_key(kind: str, parts: dict[str, Any]) -> str:
    """The key of an artifact: SHA-256 (24 hex digits) of its kind and every part that determines it (JSON)."""
    payload = json.dumps({"kind": kind, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:24]


def frame_digest(frame: pd.DataFrame, columns: list[str] | None = None) -> str:
    """SHA-256 of a table's values (row order and dtypes included, index excluded): the rows' content key."""
    table = frame[columns] if columns else frame
    hashed = pd.util.hash_pandas_object(table, index=False).to_numpy()
    digest = hashlib.sha256(hashed.tobytes())
    digest.update(json.dumps([list(table.columns), [str(t) for t in table.dtypes]]).encode("utf-8"))
    return digest.hexdigest()


def code_digest(*modules: str) -> str:
    """SHA-256 of the source files of `modules` (dotted names): a code change that could alter an artifact
    changes its key, as a changed `deps:` file reruns a DVC stage."""
    digest = hashlib.sha256()
    for name in sorted(modules):
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.origin:
            raise StoreError(f"module {name} has no source file to key the shared store with")
        digest.update(name.encode("utf-8"))
        digest.update(Path(spec.origin).read_bytes())
    return digest.hexdigest()[:24]


@dataclass(frozen=True)
class Entry:
    """One stored artifact: its folder, what it records (entry.json `info`) and whether this call built it."""

    path: Path
    key: str
    info: dict[str, Any]
    built: bool


class SharedStore:
    """The store of one project: ``<root>/data/cache/shared`` (or any directory, e.g. on shared storage)."""

    def __init__(self, base: Path):
        self.base = Path(base)

    @classmethod
    def for_project(cls, root: Path) -> SharedStore:
        return cls(Path(root) / "data" / "cache" / "shared")

    def entry_dir(self, kind: str, key: str) -> Path:
        return self.base / kind / key

    def lookup(self, kind: str, key: str) -> Entry | None:
        """The complete entry for `key`, or None (never built, or damaged: its files do not match entry.json)."""
        folder = self.entry_dir(kind, key)
        record = folder / ENTRY_FILE
        if not record.is_file():
            return None
        meta = json.loads(record.read_text(encoding="utf-8"))
        for name, expected in meta.get("files", {}).items():
            if not (folder / name).is_file() or file_sha256(folder / name) != expected:
                log.warning("shared store: %s/%s: %s does not match its checksum; rebuilding", kind, key, name)
                return None
        return Entry(folder, key, meta.get("info", {}), built=False)

    def fetch_or_build(self, kind: str, key: str, build: Callable[[Path], dict[str, Any]],
                       built_by: str = "") -> Entry:
        """Reuse the entry for `key`, or build it once: `build(staging)` writes its files into `staging` and
        returns the info to record. Concurrent callers for one key wait on its lock and reuse the result."""
        found = self.lookup(kind, key)
        if found is not None:
            return found
        (self.base / kind).mkdir(parents=True, exist_ok=True)
        with file_lock(self.base / kind / f".{key}.lock"):
            found = self.lookup(kind, key)   # built by another process while this one waited
            if found is not None:
                return found
            return self._build(kind, key, build, built_by)

    def _build(self, kind: str, key: str, build: Callable[[Path], dict[str, Any]], built_by: str) -> Entry:
        folder = self.entry_dir(kind, key)
        staging = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=folder.parent))
        try:
            started = time.perf_counter()
            info = build(staging) or {}
            files = {p.name: file_sha256(p) for p in sorted(staging.iterdir()) if p.is_file()}
            record = {"kind": kind, "key": key, "info": info, "files": files, "built_by": built_by,
                      "build_seconds": round(time.perf_counter() - started, 2),
                      "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            (staging / ENTRY_FILE).write_text(json.dumps(record, indent=2, sort_keys=True, default=str),
                                              encoding="utf-8")
            if folder.exists():            # a damaged entry (lookup refused it): replace it whole
                shutil.rmtree(folder)
            os.rename(staging, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        log.info("shared store: built %s/%s for %s in %.1f s", kind, key, built_by or "-", record["build_seconds"])
        return Entry(folder, key, info, built=True)

    def record_use(self, kind: str, key: str, user: str) -> None:
        """Note that `user` (a domain) reads the entry: ``users/<user>`` files, so concurrent users never race
        on one file and `metaadapt`/people can see which domains share an artifact."""
        users = self.entry_dir(kind, key) / "users"
        users.mkdir(exist_ok=True)
        (users / user).touch()

    def users(self, kind: str, key: str) -> list[str]:
        folder = self.entry_dir(kind, key) / "users"
        return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def link_into(entry: Entry, names: list[str], destination: Path) -> None:
    """Put the entry's files into a domain's output folder as hard links (a copy across file systems).

    The destination is unlinked first, so writing a domain output never writes through into the store; a file
    of the entry changed through an older link is caught by the checksums in `lookup`."""
    destination.mkdir(parents=True, exist_ok=True)
    for name in names:
        target = destination / name
        target.unlink(missing_ok=True)
        try:
            os.link(entry.path / name, target)
        except OSError:
            shutil.copy2(entry.path / name, target)
