"""The domain-independent halves of the validate, episodes and meta_train stages, through the shared store.

A domain's meta-training pool is its sources' rows (capped, seeded) minus any text of its own evaluation split.
When two domains name the same sources and neither evaluation split overlaps them, their pools are identical
byte for byte, and so are everything computed from them: the sources' validation, the embeddings, the episodes
and the meta-trained head. Those are keyed here by the pool's content (components.shared_store) and computed
once. A domain whose evaluation texts do overlap a source gets a pool, and therefore artifacts, of its own:
sharing never trades away the leakage guarantee. What stays per domain is what depends on it: its own suites,
the leakage check of the pool against its evaluation split, copying the shared files into its DVC outputs.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.config import Params
from components.shared_store import Entry, SharedStore, code_digest, content_key, frame_digest, link_into

log = logging.getLogger("metaadapt")

EPISODE_FILES = ["meta_embeddings.npy", "episodes_train.json", "episodes_val.json"]
LEARNER_DIR = "learner"
VALIDATION_CODE = ("components.validation",)
EPISODES_CODE = ("components.episodes", "components.encoder", "components.shared_stages")
META_CODE = ("components.meta", "components.learner", "components.scopes", "components.checkpoint",
             "components.encoder", "components.model_io", "components.shared_stages")


# ------------------------------------------------------------------------------------------ validation


def source_outcomes(params: Params, meta_pool: pd.DataFrame, root: Path, domain: str) -> dict[str, Any]:
    """`meta_source.<name>` → ValidationOutcome for each source of the pool, each suite run once per content."""
    store = SharedStore.for_project(root)
    outcomes = {}
    for source, rows in meta_pool.groupby("source", sort=True):
        outcome, entry = _source_outcome(params, str(source), rows, store, domain)
        store.record_use("source_validation", entry.key, domain)
        outcomes[f"meta_source.{source}"] = outcome
    return outcomes


def source_validation_keys(params: Params, meta_pool: pd.DataFrame, root: Path) -> dict[str, dict[str, str]]:
    """Per source: its shared store key and Data Docs (for the domain's validation report)."""
    store = SharedStore.for_project(root)
    found = {}
    for source, rows in meta_pool.groupby("source", sort=True):
        key = _source_key(params, str(source), rows)
        docs = store.entry_dir("source_validation", key) / "data_docs" / "index.html"
        found[str(source)] = {"key": key, "data_docs": str(docs)}
    return found


def _source_key(params: Params, source: str, rows: pd.DataFrame) -> str:
    from components.validation import meta_source_spec

    spec = meta_source_spec(params, "shared", source)
    return content_key("source_validation", {"rows": frame_digest(_text_label(rows)), "spec": repr(spec),
                                             "code": code_digest(*VALIDATION_CODE)})


def _source_outcome(params: Params, source: str, rows: pd.DataFrame, store: SharedStore, domain: str):
    from components.data_docs import write_data_docs
    from components.validation import SuiteRunner, meta_source_spec, outcome_from_payload, outcome_payload, \
        validate_frame

    def build(staging: Path) -> dict:
        runner = SuiteRunner()
        outcome = validate_frame(_text_label(rows), meta_source_spec(params, "shared", source), runner)
        (staging / "outcome.json").write_text(json.dumps(outcome_payload(outcome), default=str), encoding="utf-8")
        write_data_docs(staging / "data_docs", f"source {source}", {f"meta_source.{source}": outcome},
                        index_href="../../../../../../reports/index.html")   # the project's, from the default store
        return {"source": source, "rows": len(rows), "success": outcome.success}

    entry = store.fetch_or_build("source_validation", _source_key(params, source, rows), build, built_by=domain)
    payload = json.loads((entry.path / "outcome.json").read_text(encoding="utf-8"))
    return outcome_from_payload(payload), entry


def _text_label(rows: pd.DataFrame) -> pd.DataFrame:
    return rows[[c for c in ("text", "label") if c in rows.columns]].reset_index(drop=True)


# ------------------------------------------------------------------------------------------ episodes


def episodes_key(params: Params, pool: pd.DataFrame) -> str:
    from components.encoder import model_key

    return content_key("episodes", {"pool": frame_digest(pool), "encoder": model_key(params.encoder),
                                    "episodes": params.episodes.model_dump(), "seed": params.seed,
                                    "code": code_digest(*EPISODES_CODE)})


def shared_episodes(params: Params, pool: pd.DataFrame, root: Path, domain: str, destination: Path) -> dict:
    """Embeddings of the meta-training pool and its train/validation episodes, built once per pool content and
    linked into `destination` (the domain's DVC outputs). Returns the counts for episodes_stats.json."""
    store = SharedStore.for_project(root)
    key = episodes_key(params, pool)
    entry = store.fetch_or_build("episodes", key, lambda staging: _build_episodes(params, pool, root, staging),
                                 built_by=domain)
    link_into(entry, EPISODE_FILES, destination)
    store.record_use("episodes", key, domain)
    return {**entry.info, "shared_key": key, "reused": not entry.built}


def _build_episodes(params: Params, pool: pd.DataFrame, root: Path, staging: Path) -> dict:
    import time

    from components.episodes import sample_episodes, save_episodes, split_pool_rows
    from components.stages import embed

    started = time.perf_counter()
    vectors = embed(pool["text"].tolist(), params, root) if len(pool) else np.zeros((0, 1), np.float32)
    np.save(staging / "meta_embeddings.npy", vectors)
    counts: dict[str, Any] = {"pool_rows": len(pool), "embed_seconds": round(time.perf_counter() - started, 2)}
    if len(pool):
        train_pool, val_pool = split_pool_rows(pool, 0.2, params.seed)
        config = params.episodes
        train = sample_episodes(train_pool, config, config.train_episodes, params.seed)
        val = sample_episodes(val_pool, config, config.val_episodes, params.seed + 1)
    else:
        train, val = [], []
    save_episodes(train, staging / "episodes_train.json")
    save_episodes(val, staging / "episodes_val.json")
    return {**counts, "train_episodes": len(train), "val_episodes": len(val)}


# ------------------------------------------------------------------------------------------ meta-training


def meta_key(params: Params, prepared: Path) -> str:
    """Everything that determines the meta-trained learner: its settings and the bytes of its four inputs."""
    from components.checkpoint import run_key

    settings = {"seed": params.seed, "meta": params.meta.model_dump(exclude={"checkpoint_every"}),
                "encoder": params.encoder.model_dump(exclude={"device", "num_threads", "batch_size"}),
                "embedding_noise": params.episodes.augment.embedding_noise}
    inputs = [prepared / name for name in ("meta_pool.parquet", *EPISODE_FILES)]
    return content_key("meta_train", {"run": run_key(settings, inputs), "code": code_digest(*META_CODE)})


def shared_checkpoints(params: Params, root: Path, key: str):
    """The resumable checkpoints of one shared meta-training run: whichever domain resumes it, same folder."""
    from components.checkpoint import CheckpointStore, checkpoint_root

    return CheckpointStore(checkpoint_root(root, "shared") / key, params.meta.checkpoint_every)


def shared_meta_train(root: Path, domain: str, key: str, train) -> Entry:
    """The meta-trained learner of key `meta_key(...)`, built once by `train(staging_learner_dir, key)` (which
    trains, saves the learner and logs the one MLflow run of the artifact; it returns the entry's info)."""
    store = SharedStore.for_project(root)
    entry = store.fetch_or_build("meta_train", key, lambda staging: train(staging / LEARNER_DIR, key),
                                 built_by=domain)
    store.record_use("meta_train", key, domain)
    return entry


def copy_learner(entry: Entry, destination: Path) -> None:
    """The shared learner's files into the domain's `models/<d>/meta` (atomic swap; copies, so a domain's model
    folder can be edited or tampered with without touching the store)."""
    import shutil

    from components.model_io import atomic_directory

    with atomic_directory(destination) as staging:
        for path in sorted((entry.path / LEARNER_DIR).iterdir()):
            if path.is_file():
                shutil.copy2(path, staging / path.name)
