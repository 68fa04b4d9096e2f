"""A fingerprint of everything the ingest stage reads, so an unchanged input skips the rebuild.

The data mirror lives outside the repository, so DVC cannot track it and runs ingest every time
(``always_changed``). Rebuilding re-reads and re-splits every source (≈10 s per domain here) only to write
byte-identical files. Instead ingest fingerprints its inputs — the stat of every source file it would read, the
accepted batch files, the params it uses and its own code — and, when the fingerprint and the hashes of its
outputs match what the last run recorded in the manifest, keeps the outputs as they are. Anything it cannot
fingerprint (a hub or URL source) returns ``None``: rebuild.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from components.config import Params
from components.data import file_sha256

INGEST_CODE = ("prepare.py", "data.py", "augment.py", "batches.py", "safety.py", "fingerprint.py", "config.py")
OUTPUTS = ("adapt.parquet", "eval.parquet", "meta_pool.parquet")


def _source_files(params: Params, domain: str, mirror: Path | None) -> list[Path] | None:
    """Every local file ingest reads for the domain (target data set and meta sources), or None if one of them
    would come from a hub or URL (not fingerprintable)."""
    from components.data import _local_file

    config = params.domain(domain)
    files = []
    for name in [config.dataset, *config.meta_sources]:
        spec = params.datasets[name]
        for split in spec.files:
            local = _local_file(name, spec, split, mirror)
            if local is None:
                return None
            files.append(local)
    return files


def _stat(path: Path) -> list:
    stat = path.stat()
    return [str(path), stat.st_size, stat.st_mtime_ns]


def ingest_fingerprint(params: Params, domain: str, root: Path, mirror: Path | None) -> str | None:
    """sha256 over the inputs of ``stages.ingest`` for one domain; None when an input is remote."""
    from components.batches import batch_dir, read_ledger

    sources = _source_files(params, domain, mirror)
    if sources is None:
        return None
    code_dir = Path(__file__).resolve().parent
    batches = sorted(batch_dir(root, domain).glob("*.parquet")) if batch_dir(root, domain).is_dir() else []
    payload = {
        "sources": [_stat(path) for path in sources],
        "batches": [[path.name, path.stat().st_size] for path in batches],
        # what ingest merges is the ledger's batches, not every parquet on disk: a batch whose file was written
        # but whose ledger line was not yet (store_batch, another process) must change the fingerprint later
        "ledger": sorted(record.sha256 for record in read_ledger(root, domain)),
        "params": {"seed": params.seed, "data": params.data.model_dump(mode="json"),
                   "datasets": {name: params.datasets[name].model_dump(mode="json")
                                for name in [params.domain(domain).dataset, *params.domain(domain).meta_sources]},
                   "limits": params.limits.model_dump(mode="json"),
                   "episodes_augment": params.episodes.augment.model_dump(mode="json"),
                   "domain": params.domain(domain).model_dump(mode="json")},
        "code": {name: file_sha256(code_dir / name) for name in INGEST_CODE if (code_dir / name).is_file()},
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def output_hashes(prepared: Path) -> dict[str, str]:
    return {name: file_sha256(prepared / name) for name in OUTPUTS}


def unchanged_since_last_ingest(prepared: Path, fingerprint: str | None) -> dict | None:
    """The last manifest when its inputs fingerprint equals ``fingerprint`` and every output still has the hash
    recorded beside it (a hand-edited or half-written output forces a rebuild); else None."""
    manifest_path = prepared / "manifest.json"
    if fingerprint is None or not manifest_path.is_file() or not all((prepared / n).is_file() for n in OUTPUTS):
        return None
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if manifest.get("inputs_fingerprint") != fingerprint:
        return None
    return manifest if manifest.get("output_sha256") == output_hashes(prepared) else None
