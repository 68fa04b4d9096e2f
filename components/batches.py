"""Accepted labelled batches: content hashing, storage and the ledger of what was processed (Prefect-free).

A user's labelled file, once validated, is stored as ``data/batches/<domain>/<sha256-prefix>.parquet``. The name
is the hash of its *normalised rows* (text stripped, label as text, rows sorted, duplicates dropped), so the same
data handed over twice — same file, a copy with another name, or the rows in another order — lands on the same
name and does no duplicate work. ``ledger.json`` beside the batches records, per batch, where it came from, its
hash, its row count, when it arrived and its status (``accepted`` → ``adapted`` once an adaptation used it).
A batch a user takes back (`withdraw_batch`, ``metaadapt withdraw``) loses its file but keeps its ledger line,
stamped ``withdrawn_at`` with the reason: the history says what was used and when it was taken out.

``data/batches`` is a dependency of the DVC ingest stage, and the ingest stage merges every stored batch of a
domain into that domain's adaptation pool (``components.prepare.merge_batches``), so a new batch reruns only that
domain's downstream stages: the other domains' ingest outputs stay byte-identical.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import ContextManager

import pandas as pd

from components.locks import file_lock

BATCHES_DIR = Path("data") / "batches"
LEDGER_NAME = "ledger.json"
MIN_PREFIX = 4                       # shortest hash prefix `find_batch` accepts (a withdrawal must not be a guess)
HASH_CHARS = 16                      # 64 bits of SHA-256: collisions are out of reach for a few thousand batches
ACCEPTED, ADAPTED = "accepted", "adapted"


@dataclass
class BatchRecord:
    """One ledger line: a stored batch and what happened to it."""

    sha256: str
    source: str                     # the user's file name (not its path: the ledger must not leak a home dir)
    rows: int
    received_at: str
    status: str = ACCEPTED
    adapted_at: str | None = None
    flow_run: str | None = None     # the adaptation run that used it
    withdrawn_at: str | None = None  # set by withdraw_batch: the file is gone, ingest no longer merges it
    withdrawn_reason: str | None = None

    @property
    def file_name(self) -> str:
        return f"{self.sha256[:HASH_CHARS]}.parquet"

    @property
    def withdrawn(self) -> bool:
        return self.withdrawn_at is not None


@dataclass
class StoreResult:
    """What `store_batch` did: a new batch, or the record of the identical batch stored earlier."""

    record: BatchRecord
    path: Path
    is_new: bool


def normalise(frame: pd.DataFrame) -> pd.DataFrame:
    """text,label only; text stripped, label as text; exact duplicates dropped; rows sorted (order-free hash)."""
    missing = {"text", "label"} - set(frame.columns)
    if missing:
        raise ValueError(f"a batch needs columns text and label; missing {sorted(missing)}")
    out = pd.DataFrame({"text": frame["text"].astype(str).str.strip(), "label": frame["label"].astype(str).str.strip()})
    out = out.drop_duplicates().sort_values(["text", "label"], kind="stable").reset_index(drop=True)
    return out


def content_hash(frame: pd.DataFrame) -> str:
    """SHA-256 of the normalised rows: identical data gives one hash whatever the file name or row order."""
    rows = normalise(frame)
    digest = hashlib.sha256()
    for text, label in zip(rows["text"], rows["label"]):
        digest.update(json.dumps([text, label], ensure_ascii=False).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


def batch_dir(root: Path, domain: str) -> Path:
    """data/batches/<domain>; the domain name is checked first (it becomes a folder name: no '..', no '/')."""
    from components.safety import check_name

    return Path(root) / BATCHES_DIR / check_name("domain", domain)


def read_ledger(root: Path, domain: str) -> list[BatchRecord]:
    """Every batch recorded for the domain, oldest first ([] when none arrived yet)."""
    path = batch_dir(root, domain) / LEDGER_NAME
    if not path.is_file():
        return []
    return [BatchRecord(**entry) for entry in json.loads(path.read_text(encoding="utf-8"))]


def active_records(root: Path, domain: str) -> list[BatchRecord]:
    """The ledger's batches that were not withdrawn: what ingest merges and what adaptation may mark."""
    return [r for r in read_ledger(root, domain) if not r.withdrawn]


def _write_ledger(root: Path, domain: str, records: list[BatchRecord]) -> None:
    """Atomic replace: a crash mid-write must not leave a half ledger (which would re-run every batch)."""
    path = batch_dir(root, domain) / LEDGER_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps([asdict(r) for r in records], indent=2, ensure_ascii=False), encoding="utf-8")
    tmp.replace(path)


def ledger_lock(root: Path, domain: str) -> ContextManager[float]:
    """Exclusive lock on the domain's ledger for a read-modify-write: five batches stored at once by five
    processes would otherwise each append to the ledger they read, and the last writer would drop the others."""
    return file_lock(batch_dir(root, domain) / ".ledger.lock")


def store_batch(frame: pd.DataFrame, domain: str, source: str, root: Path) -> StoreResult:
    """Store a validated batch under its content hash and record it; an identical earlier batch is reused."""
    if "tokens" in frame.columns:
        raise NotImplementedError(f"batch {source!r} for {domain!r} passed the token suite, but storing labelled "
                                  f"sentences of an entity domain is not implemented yet: add them to the data set's "
                                  f"files (params.yaml datasets) and rerun the pipeline")
    rows = normalise(frame)
    if rows.empty:
        raise ValueError(f"batch {source!r} for {domain!r} has no rows")
    with ledger_lock(root, domain):
        return _store_locked(rows, domain, source, root)


def _store_locked(rows: pd.DataFrame, domain: str, source: str, root: Path) -> StoreResult:
    sha = content_hash(rows)
    records = read_ledger(root, domain)
    for record in records:
        if record.sha256 == sha and not record.withdrawn:  # withdrawn and handed over again: a new ledger line
            return StoreResult(record, batch_dir(root, domain) / record.file_name, is_new=False)
    record = BatchRecord(sha256=sha, source=Path(source).name, rows=len(rows), received_at=_now())
    path = batch_dir(root, domain) / record.file_name
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".parquet.tmp")
    rows.to_parquet(tmp, index=False)
    tmp.replace(path)               # the data first, then the ledger: a crash leaves a re-storable file, not a lie
    _write_ledger(root, domain, records + [record])
    return StoreResult(record, path, is_new=True)


def load_batches(root: Path, domain: str) -> pd.DataFrame:
    """All stored batches of the domain as one text,label frame (empty when none), in arrival order."""
    return load_batches_with_hashes(root, domain)[0]


def load_batches_with_hashes(root: Path, domain: str) -> tuple[pd.DataFrame, list[str]]:
    """The stored batches as one frame and the hashes of exactly those batches, read under the ledger lock (a
    batch stored meanwhile is in both or in neither: the ingest manifest never lists a batch it did not merge)."""
    if not (batch_dir(root, domain) / LEDGER_NAME).is_file():
        return pd.DataFrame({"text": pd.Series(dtype=str), "label": pd.Series(dtype=str)}), []
    with ledger_lock(root, domain):
        records = [r for r in active_records(root, domain) if (batch_dir(root, domain) / r.file_name).is_file()]
        frames = [pd.read_parquet(batch_dir(root, domain) / r.file_name) for r in records]
    if not frames:
        return pd.DataFrame({"text": pd.Series(dtype=str), "label": pd.Series(dtype=str)}), []
    merged = pd.concat(frames, ignore_index=True).drop_duplicates().reset_index(drop=True)
    return merged, [r.sha256 for r in records]


def pending_batches(root: Path, domain: str) -> list[BatchRecord]:
    """Batches accepted but not yet used by a successful adaptation (what a drift alert can act on)."""
    return [r for r in active_records(root, domain) if r.status == ACCEPTED]


def mark_adapted(root: Path, domain: str, hashes: list[str], flow_run: str | None) -> list[BatchRecord]:
    """Record that a successful adaptation used these batches; returns the records changed."""
    with ledger_lock(root, domain):
        records = read_ledger(root, domain)
        changed = []
        for record in records:
            if record.sha256 in hashes and record.status == ACCEPTED and not record.withdrawn:
                record.status, record.adapted_at, record.flow_run = ADAPTED, _now(), flow_run
                changed.append(record)
        if changed:
            _write_ledger(root, domain, records)
    return changed


def merged_hashes(root: Path, domain: str) -> list[str]:
    """The batches the domain's current adaptation pool was built from (the ingest manifest's list).

    What a successful adaptation marks as adapted: a batch stored while the run was already past its ingest is
    not in the pool yet, so it stays `accepted` for the next run instead of being marked without being used."""
    path = Path(root) / "data" / "prepared" / domain / "manifest.json"
    if not path.is_file():
        return []
    manifest = json.loads(path.read_text(encoding="utf-8"))
    return list((manifest.get("batches") or {}).get("sha256", []))


def find_batch(records: list[BatchRecord], ref: str) -> BatchRecord:
    """The one not-withdrawn batch whose hash starts with `ref` (a full hash or a unique prefix of at least
    MIN_PREFIX characters); LookupError naming the candidates when none or several match."""
    prefix = ref.strip().lower()
    if len(prefix) < MIN_PREFIX:
        raise LookupError(f"batch id {ref!r} is too short: give at least {MIN_PREFIX} characters of its hash")
    matches = [r for r in records if r.sha256.startswith(prefix)]
    active = [r for r in matches if not r.withdrawn]
    if len(active) == 1:
        return active[0]
    if len(active) > 1:
        candidates = ", ".join(f"{r.sha256[:HASH_CHARS]} ({r.source})" for r in active)
        raise LookupError(f"batch id {ref!r} is ambiguous: it matches {candidates}; give more characters")
    if matches:
        last = matches[-1]
        raise LookupError(f"batch {last.sha256[:HASH_CHARS]} was already withdrawn "
                          f"({last.withdrawn_at}: {last.withdrawn_reason})")
    raise LookupError(f"no batch {ref!r}; `metaadapt batches --domain <domain>` lists them")


def withdraw_batch(root: Path, domain: str, ref: str, reason: str) -> BatchRecord:
    """Take one accepted batch back: its file leaves data/batches/<domain>/ and its ledger line is stamped
    withdrawn (kept, not erased), under the ledger lock so no ingest reads half of it.

    The file goes first: a crash in between leaves a ledger line without a file, which ingest already skips (and
    the fingerprint sees); running the withdrawal again finishes the ledger."""
    with ledger_lock(root, domain):
        records = read_ledger(root, domain)
        record = find_batch(records, ref)
        (batch_dir(root, domain) / record.file_name).unlink(missing_ok=True)
        record.withdrawn_at, record.withdrawn_reason = _now(), reason
        _write_ledger(root, domain, records)
    return record


def label_counts(root: Path, domain: str, record: BatchRecord) -> dict[str, int] | None:
    """Rows per label of a stored batch (reads only its label column); None once its file is gone."""
    path = batch_dir(root, domain) / record.file_name
    if record.withdrawn or not path.is_file():
        return None
    try:
        labels = pd.read_parquet(path, columns=["label"])["label"]
    except FileNotFoundError:  # withdrawn by another process meanwhile
        return None
    return {str(label): int(n) for label, n in labels.value_counts().sort_index().items()}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
