"""The pipeline's stages: each reads its inputs from files, calls pure components, writes its outputs.

One function per ``dvc.yaml`` stage, run as ``python -m components.stages <stage> [domain]``. Paths are fixed by
``StagePaths`` so that dvc.yaml, the flows and the tests agree on them. Nothing here imports Prefect.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from components.config import PROJECT_ROOT, Params, flatten, load_params, resolve_mirror
from components.data import DataError

log = logging.getLogger("metaadapt")


@dataclass(frozen=True)
class StagePaths:
    """Where one domain's stage outputs live, relative to the project root."""

    root: Path
    domain: str

    def __post_init__(self) -> None:
        from components.safety import check_name

        check_name("domain", self.domain)   # it becomes a directory name under data/, models/ and reports/

    @property
    def prepared(self) -> Path:
        return self.root / "data" / "prepared" / self.domain

    @property
    def models(self) -> Path:
        return self.root / "models" / self.domain

    @property
    def meta_dir(self) -> Path:
        return self.models / "meta"

    @property
    def candidate(self) -> Path:
        return self.models / "candidate"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    def report(self, kind: str, suffix: str = ".json") -> Path:
        return self.reports / kind / f"{self.domain}{suffix}"


def _write_json(path: Path, payload: Any) -> None:
    """Atomic (temp file + fsync + rename): an unwritable or full disk raises StorageError and keeps the old file."""
    from components.model_io import atomic_write_text

    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str))


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def read_json_if_present(path: Path) -> dict:
    """A stage's JSON output, or {} when that stage has not run (a failed or new domain)."""
    return _read_json(path) if path.is_file() else {}


def embedding_cache(params: Params, root: Path):
    return encoder_cache(params.encoder, root)


def encoder_cache(config, root: Path):
    """The pipeline's embedding cache of one encoder (its model key: the model, its tuning, length, quantization)."""
    from components.encoder import EmbeddingCache, model_key

    return EmbeddingCache(root / "data" / "cache" / "embeddings", model_key(config))


def embed(texts: list[str], params: Params, root: Path, encoder=None) -> np.ndarray:
    from components.encoder import embed_texts

    return embed_texts(texts, params.encoder, embedding_cache(params, root), encoder)


# ------------------------------------------------------------------------------------------------ stages


def entity_aware(stage):
    """A domain with ``task: entities`` runs the stage of the same name in components.ner_stages instead."""
    import functools

    @functools.wraps(stage)
    def run(params: Params, domain: str, root: Path = PROJECT_ROOT, **options):
        if params.domain(domain).task == "entities":
            from components import ner_stages

            return ner_stages.STAGES[stage.__name__](params, domain, root)
        return stage(params, domain, root, **options)
    return run



@entity_aware
def ingest(params: Params, domain: str, root: Path = PROJECT_ROOT) -> dict:
    """Read the domain's data set and meta-training sources; write adapt/eval/meta_pool tables and a manifest."""
    from components.batches import load_batches_with_hashes
    from components.fingerprint import ingest_fingerprint, output_hashes, unchanged_since_last_ingest
    from components.prepare import assert_no_leakage, build_domain_data, merge_batches

    paths = StagePaths(root, domain)
    mirror = resolve_mirror(params.data, root)
    fingerprint = ingest_fingerprint(params, domain, root, mirror)
    kept = unchanged_since_last_ingest(paths.prepared, fingerprint)
    if kept is not None:  # same files, params and code as last time: the outputs would be byte-identical
        log.info("ingest %s: inputs unchanged since the last run (fingerprint %s); outputs kept", domain,
                 fingerprint[:12])
        return kept
    data = build_domain_data(domain, params, mirror, full=params.limits.full)
    batches, hashes = load_batches_with_hashes(root, domain)  # one consistent read of the ledger and its files
    data = merge_batches(data, batches)  # the user's accepted labelled batches, if any
    if "batches" in data.manifest:  # which batches (by content hash): dvc.lock versions the manifest
        data.manifest["batches"]["sha256"] = hashes
    assert_no_leakage(data.eval, data.adapt, data.meta_pool)
    paths.prepared.mkdir(parents=True, exist_ok=True)
    for name in ("adapt", "eval", "meta_pool"):
        getattr(data, name).to_parquet(paths.prepared / f"{name}.parquet", index=False)
    manifest = {**data.manifest, "inputs_fingerprint": fingerprint, "output_sha256": output_hashes(paths.prepared)}
    _write_json(paths.prepared / "manifest.json", manifest)
    log.info("ingest %s: %d adapt rows, %d eval rows, %d meta-pool rows", domain,
             len(data.adapt), len(data.eval), len(data.meta_pool))
    return manifest


@entity_aware
def validate(params: Params, domain: str, root: Path = PROJECT_ROOT) -> dict:
    """GE suites per role (adaptation pool, evaluation split, each meta-training source); a failure stops the domain.

    The result JSON and the Data Docs are written before raising, so a failed run can be read in the browser;
    nothing downstream (models, the registry champion) runs or changes.
    """
    from components.shared_stages import source_outcomes, source_validation_keys
    from components.validation import SuiteRunner, outcome_payload, require_valid, validate_domain

    paths = StagePaths(root, domain)
    tables = {name: pd.read_parquet(paths.prepared / f"{name}.parquet") for name in ("adapt", "eval", "meta_pool")}
    from components.data_docs import write_data_docs
    from components.encoder_window import window_counts

    runner = SuiteRunner()
    shared = lambda pool: source_outcomes(params, pool, root, domain)  # noqa: E731 - once per source content
    outcomes = validate_domain(params, domain, tables["adapt"], tables["eval"], tables["meta_pool"], runner,
                               shared_sources=shared)
    window = window_counts(suite_texts(tables), params.encoder.name, params.encoder.max_length)
    summary = {name: {"suite": o.name, "success": o.success, "failures": o.failures, "warnings": o.warnings,
                      "statistics": o.statistics, "encoder_window": window.get(name)} for name, o in outcomes.items()}
    docs = write_data_docs(root / params.validation.data_docs_dir / domain, domain, outcomes, window)
    originals = tables["meta_pool"][~tables["meta_pool"]["augmented"].astype(bool)] \
        if "augmented" in tables["meta_pool"].columns else tables["meta_pool"]
    _write_json(paths.report("validation"), {"domain": domain, "success": all(o.success for o in outcomes.values()),
                                             "suites": summary, "data_docs": str(docs.relative_to(root.resolve())),
                                             "shared_sources": source_validation_keys(params, originals, root),
                                             "results": {n: outcome_payload(o)["result"] for n, o in outcomes.items()}})
    log.info("validate %s: %d suites, %d failed, %d warnings, %d texts longer than the encoder's %d tokens "
             "(truncated); Data Docs %s", domain, len(outcomes), sum(not o.success for o in outcomes.values()),
             sum(len(o.warnings) for o in outcomes.values()), sum(c["truncated"] for c in window.values()),
             params.encoder.max_length, docs)
    for outcome in outcomes.values():
        require_valid(outcome)
    return summary


def suite_texts(tables: dict[str, pd.DataFrame]) -> dict[str, list]:
    """The texts each suite of validate_domain reads, by the same names (meta sources: original rows only)."""
    texts = {name: tables[name]["text"].tolist() for name in ("adapt", "eval") if "text" in tables[name]}
    pool = tables["meta_pool"]
    if "augmented" in pool.columns:
        pool = pool[~pool["augmented"].astype(bool)]
    if len(pool) and "source" in pool.columns:
        texts.update({f"meta_source.{source}": rows["text"].tolist() for source, rows in pool.groupby("source")})
    return texts


def tune_encoder(params: Params, domain: str, root: Path = PROJECT_ROOT) -> dict:
    """Meta-fine-tune the encoder on the domain's sources (encoder_tuning), once per content key; write a pointer.

    The tuned weights live in a content-keyed store (data/cache/encoders/<key>/: base encoder, source rows, settings,
    seed), so every domain with the same sources reuses one tuning and a rerun with nothing changed costs seconds;
    a file lock makes concurrent domains (fanout) train it once. The pointer data/prepared/<domain>/encoder.json
    (a DVC output) is what the later stages depend on; ``with_tuned_encoder`` reads it.
    """
    from components.encoder import load_encoder
    from components.encoder_tuning import (contrastive_tune, describe, load_tuned, save_tuned, source_rows, store_dir,
                                           tuning_key)
    from components.locks import file_lock
    from components.scopes import encoder_delta, prepare_encoder

    paths = StagePaths(root, domain)
    config = params.domain_tuning(domain)
    entities = params.domain(domain).task == "entities"    # entity domains train the head only (docs/entities.md)
    pool = pd.DataFrame() if entities else pd.read_parquet(paths.prepared / "meta_pool.parquet")
    if config.scope == "none" or pool.empty:
        reason = ("encoder_tuning.scope is none" if config.scope == "none" else
                  "entity domains tune the head only" if entities else "no meta-training sources")
        pointer = {"scope": "none", "encoder": params.encoder.name, "reason": reason}
        paths.prepared.mkdir(parents=True, exist_ok=True)
        _write_json(paths.prepared / "encoder.json", pointer)
        return pointer
    rows = source_rows(pool, config.max_rows, params.seed)
    key = tuning_key(params.encoder, rows, config, params.seed)
    directory = store_dir(root, key)
    directory.parent.mkdir(parents=True, exist_ok=True)
    started, reused = time.perf_counter(), True
    with file_lock(directory.parent / f"{key}.lock"):
        if not (directory / "tuned.json").is_file():
            reused = False
            checkpoints = root / "data" / "cache" / "checkpoints" / "encoders" / key
            encoder = prepare_encoder(load_encoder(params.encoder), config.scope, config.lora)
            summary = contrastive_tune(encoder, rows, config, params.seed, lambda m: log.info("%s: %s", domain, m),
                                       checkpoints)
            save_tuned(directory, config.scope, config.lora.model_dump() if config.scope == "lora" else None,
                       encoder_delta(encoder, config.scope), summary)
            shutil.rmtree(checkpoints, ignore_errors=True)
    scope, _, _, summary = load_tuned(directory)
    # the pointer is a function of the key alone (no timings): a rerun that finds the store unchanged writes the same
    # bytes, so DVC reruns nothing downstream
    pointer = {"scope": scope, "key": key, "directory": str(directory.relative_to(root)), "encoder": params.encoder.name,
               "tuning": summary}
    _write_json(paths.prepared / "encoder.json", pointer)
    log.info("tune_encoder %s: %s (%s, %.1f s)", domain, describe(summary), "reused" if reused else "trained",
             time.perf_counter() - started)
    return {**pointer, "reused": reused}


def with_tuned_encoder(params: Params, domain: str, root: Path = PROJECT_ROOT) -> Params:
    """Params whose encoder is the domain's tuned one (when its tune_encoder pointer names one), for every stage
    after tune_encoder: embeddings, caches, meta-training, adaptation and evaluation then all see the same encoder."""
    pointer = read_json_if_present(StagePaths(root, domain).prepared / "encoder.json")
    if pointer.get("scope", "none") == "none":
        return params
    tuned = params.encoder.model_copy(update={"tuned": str(Path(root) / pointer["directory"])})
    return params.model_copy(update={"encoder": tuned})


@entity_aware
def episodes(params: Params, domain: str, root: Path = PROJECT_ROOT) -> dict:
    """Embed the meta-training pool (cached by text) and sample train/validation episodes from disjoint rows.

    Built once per pool content in the shared store (components.shared_stages) and linked into this domain's
    outputs: every domain with the same sources reuses the first one's embeddings and episodes."""
    from components.shared_stages import shared_episodes

    paths = StagePaths(root, domain)
    pool = pd.read_parquet(paths.prepared / "meta_pool.parquet")
    counts = shared_episodes(params, pool, root, domain, paths.prepared)
    _write_json(paths.prepared / "episodes_stats.json", counts)
    log.info("episodes %s: %s", domain, counts)
    return counts


@entity_aware
def meta_train(params: Params, domain: str, root: Path = PROJECT_ROOT) -> dict:
    """Meta-train the head (and adapters) on the episodes; log an MLflow run; save the learner.

    The learner depends on the pool, the episodes and the params, not on the domain: it is trained once per
    content key in the shared store (one MLflow run `meta-train-shared-<key>`, tagged with every domain that
    uses it) and copied into models/<domain>/meta."""
    from components.shared_stages import copy_learner, meta_key, shared_checkpoints, shared_meta_train

    paths = StagePaths(root, domain)
    key = meta_key(params, paths.prepared)
    checkpoints = shared_checkpoints(params, root, key)
    _require_meta_outputs_writable(params, root, paths, checkpoints.directory)  # fail before, not after, training

    def train(learner_dir: Path, _key: str) -> dict:
        summary = _train_learner(params, domain, paths, learner_dir, checkpoints)
        run_id = _log_meta_run(params, root, summary, learner_dir, f"meta-train-shared-{key[:12]}",
                               {"shared_key": key, "built_by": domain})
        checkpoints.clear()
        return {"summary": summary, "mlflow_run_id": run_id}

    entry = shared_meta_train(root, domain, key, train)
    copy_learner(entry, paths.meta_dir)
    _tag_meta_run_user(params, root, entry.info.get("mlflow_run_id"), domain)
    return {**entry.info["summary"], "shared_key": key, "reused": not entry.built,
            "mlflow_run_id": entry.info.get("mlflow_run_id")}


def _train_learner(params: Params, domain: str, paths: StagePaths, learner_dir: Path, checkpoints) -> dict:
    """Meta-train a fresh learner on the domain's prepared pool and episodes; save it to `learner_dir`."""
    import torch

    from components.episodes import load_episodes
    from components.learner import build_learner, embed_fn, save_learner
    from components.meta import meta_train as train

    pool = pd.read_parquet(paths.prepared / "meta_pool.parquet")
    vectors = np.load(paths.prepared / "meta_embeddings.npy")
    train_eps = load_episodes(paths.prepared / "episodes_train.json")
    val_eps = load_episodes(paths.prepared / "episodes_val.json")
    learner, encoder = build_learner(params, dim=vectors.shape[1] if len(pool) else None)
    result = None
    if train_eps:
        fn = embed_fn(params.meta.scope, torch.as_tensor(vectors), pool["text"].tolist(), encoder)
        result = train(learner, train_eps, val_eps, fn, params.meta, params.seed,
                       progress=lambda e, loss, acc: log.info("meta-train %s epoch %d: loss %.4f val acc %.4f",
                                                              domain, e, loss, acc),
                       embedding_noise=params.episodes.augment.embedding_noise, checkpoints=checkpoints)
    summary = _meta_summary(result, params)
    save_learner(learner, encoder, params, learner_dir, summary)
    return summary


def _require_meta_outputs_writable(params: Params, root: Path, paths: StagePaths, checkpoint_dir: Path) -> None:
    """The model folder, the local MLflow store and (when enabled) the checkpoint folder take files, or a clear
    StorageError names the one that does not, before minutes of training are spent."""
    from components.model_io import require_writable

    require_writable(paths.models, "model folder")
    store = _local_tracking_dir(params.registry.tracking_uri, root)
    if store is not None:
        require_writable(store, "MLflow store")
    if params.meta.checkpoint_every:
        require_writable(checkpoint_dir, "checkpoint folder")


def _local_tracking_dir(uri: str | None, root: Path) -> Path | None:
    """The directory of a local MLflow store (default, sqlite:/// or file:), None for a remote server."""
    if not uri:
        return root / "mlruns"
    for prefix in ("sqlite:///", "file://"):
        if uri.startswith(prefix):
            return Path(uri[len(prefix):]).parent if prefix == "sqlite:///" else Path(uri[len(prefix):])
    return None


def _meta_summary(result, params: Params) -> dict:
    if result is None:
        return {"trained": False, "reason": "no meta-training sources", "algorithm": params.meta.algorithm}
    return {"trained": True, "algorithm": params.meta.algorithm, "scope": params.meta.scope,
            "best_epoch": result.best_epoch, "val_accuracy": result.val_accuracy, "train_loss": result.train_loss,
            "seconds": round(result.seconds, 2), "episodes_per_second": round(result.episodes_per_second, 1),
            "resumed_from_episode": result.resumed_from,
            "val_gain": result.val_accuracy[result.best_epoch] - result.val_accuracy[0]}


def _log_meta_run(params: Params, root: Path, summary: dict, learner_dir: Path, run_name: str,
                  tags: dict[str, str]) -> str:
    """The MLflow run of a meta-trained learner (a shared one is logged once, by the domain that built it);
    returns its id."""
    import mlflow

    from components.registry import use_experiment
    from components.safety import redact_secrets

    use_experiment(params.registry, root)
    with mlflow.start_run(run_name=run_name) as run:
        mlflow.set_tags({"stage": "meta_train", **tags})
        logged = flatten({"meta": params.meta.model_dump(), "episodes": params.episodes.model_dump(),
                          "encoder": params.encoder.model_dump()})
        mlflow.log_params({k: str(redact_secrets(v))[:500] for k, v in logged.items()})  # no URI credentials
        for step, acc in enumerate(summary.get("val_accuracy", [])):
            mlflow.log_metric("val_episode_accuracy", acc, step=step)
        for step, loss in enumerate(summary.get("train_loss", []), start=1):
            mlflow.log_metric("train_loss", loss, step=step)
        for name in ("best_epoch", "seconds", "episodes_per_second", "val_gain"):
            if name in summary:
                mlflow.log_metric(name, float(summary[name]))
        mlflow.log_artifacts(str(learner_dir), artifact_path="meta")
        return run.info.run_id


def _tag_meta_run_user(params: Params, root: Path, run_id: str | None, domain: str) -> None:
    """Tag the shared meta-training run with a domain that uses it (`used_by.<domain>`): one tag per domain, so
    concurrent domains never overwrite each other's."""
    if not run_id:
        return
    from mlflow import MlflowClient

    from components.registry import use_experiment

    use_experiment(params.registry, root)
    MlflowClient().set_tag(run_id, f"used_by.{domain}", "true")


def sample_support(adapt: pd.DataFrame, k: int, seed: int) -> pd.DataFrame:
    """K rows per label (all of a label's rows when it has fewer), deterministic by seed: the few-shot setting."""
    parts = [rows.sample(n=min(k, len(rows)), random_state=seed) for _, rows in adapt.groupby("label", sort=True)]
    return pd.concat(parts).reset_index(drop=True)


def few_shot_scores(params: Params, domain: str, root: Path, pool: pd.DataFrame, truth: list[str],
                    eval_vectors: np.ndarray, head) -> dict[str, float]:
    """The K-shot demonstration beside the all-rows model: the same adaptation from K rows per label, same rows.

    Why in the default run: K is what the project promises (a new domain from a handful of examples); the
    all-rows model is what it ships. Both on the same evaluation rows show what the extra labels bought.
    """
    import torch

    from components.classifier import apply_prior, estimate_prior, fit_classifier
    from components.learner import candidate_heads, label_prompt
    from components.scoring import scores

    config = params.domain(domain)
    support = sample_support(pool, config.k, params.seed)
    started = time.perf_counter()
    labels = sorted(pool["label"].unique())
    x = torch.as_tensor(embed(support["text"].tolist(), params, root))
    prompts = torch.as_tensor(embed([label_prompt(label, config.label_descriptions) for label in labels], params, root))
    _, chosen, classifier = fit_classifier(candidate_heads(head, params), x, support["label"].tolist(), params.adapt,
                                           params.seed, labels, prompts=prompts)
    counts = pool["label"].value_counts()
    apply_prior(classifier, estimate_prior("uniform" if params.domain_prior(domain) == "uniform" else "pool",
                                           [int(counts.get(label, 0)) for label in labels], None, params.adapt),
                config.metric)
    fit_seconds = time.perf_counter() - started   # cache lookup of the support embeddings + fitting
    predicted = classifier.predict(chosen, torch.as_tensor(eval_vectors))
    return {**{f"kshot_{name}": value for name, value in scores(truth, predicted).items()},
            "kshot_rows": len(support), "kshot_fit_seconds": fit_seconds}


def training_rows(pool: pd.DataFrame, max_per_label: int | None, seed: int) -> pd.DataFrame:
    """Every labelled row, or at most `max_per_label` per label (a deterministic sample by seed)."""
    if max_per_label is None:
        return pool.reset_index(drop=True)
    return sample_support(pool, max_per_label, seed)


def short_label_warnings(pool: pd.DataFrame, k: int) -> list[str]:
    """Labels adapted from fewer rows than the domain's k: kept, with a warning the summary and MLflow show."""
    counts = pool["label"].value_counts()
    return [f"label {label!r} has {n} labelled row(s) < k={k}: adapted from what it has"
            for label, n in sorted(counts[counts < k].items())]


def traffic_texts(params: Params, root: Path, domain: str) -> list[str]:
    """Unlabelled texts of the domain's traffic folder, newest files first, at most adapt.traffic_max_rows."""
    from components.data import READERS, read_texts

    folder = root / params.orchestration.traffic_dir / domain
    if params.domain_prior(domain) != "traffic" or not folder.is_dir():
        return []
    texts: list[str] = []
    files = sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in READERS),
                   key=lambda p: p.stat().st_mtime, reverse=True)
    for file in files:
        try:
            texts += read_texts(file)
        except (DataError, OSError) as error:   # a broken traffic file costs its rows, never the adaptation
            log.warning("traffic file %s skipped for the prior: %s", file, error)
        if len(texts) >= params.adapt.traffic_max_rows:
            break
    return texts[:params.adapt.traffic_max_rows]


@entity_aware
def adapt(params: Params, domain: str, root: Path = PROJECT_ROOT) -> dict:
    """Adapt the meta-trained learner to every labelled row of the domain (up to adapt.max_per_label per label).

    k=0 is zero-shot from the label descriptions. A label with fewer rows than k is adapted from what it has,
    with a warning; the class prior comes from the pool's label counts or the domain's traffic (adapt.prior).
    """
    from components.learner import adapt_domain

    paths = StagePaths(root, domain)
    pool = pd.read_parquet(paths.prepared / "adapt.parquet")
    config = params.domain(domain)
    rows = training_rows(pool, params.adapt.max_per_label, params.seed) if config.k else pool.iloc[:0]
    labels = sorted(pool["label"].unique())
    info = adapt_domain(params, domain, paths.meta_dir, rows, labels, config.label_descriptions, paths.candidate,
                        pool_counts=pool["label"].value_counts().to_dict(),
                        traffic_texts=traffic_texts(params, root, domain),
                        cached_embed=lambda texts: embed(texts, params, root))
    info["warnings"] = short_label_warnings(pool, config.k) if config.k else []
    rows.to_parquet(paths.prepared / "support.parquet", index=False)
    _write_json(paths.models / "adapt_info.json", info)
    for warning in info["warnings"]:
        log.warning("adapt %s: %s", domain, warning)
    log.info("adapt %s: %d rows, %d labels, %s, prior %s, %.2f s", domain, len(rows), len(labels),
             info.get("chosen"), (info.get("prior") or {}).get("source"), info["adapt_total_seconds"])
    return info


def model_embeddings(predictor, texts: list[str], params: Params, root: Path) -> np.ndarray:
    """What a model's head reads: the pipeline's cached embeddings for the head scope (same frozen encoder), else
    a pass through the model's own fine-tuned encoder."""
    if predictor.model.scope == "head":
        # the cache of the model's own encoder, never of this run's params: a champion adapted on the base encoder
        # must not read (or write) the tuned encoder's embeddings
        from components.config import EncoderConfig
        from components.encoder import embed_texts

        config = EncoderConfig(**predictor.model.encoder)
        return embed_texts(texts, config, encoder_cache(config, root), predictor.encoder)
    return predictor.embed(texts)


def model_predictions(predictor, texts: list[str], params: Params, root: Path) -> list[str]:
    """A model's labels for texts."""
    return labels_of(predictor, model_embeddings(predictor, texts, params, root))


def labels_of(predictor, vectors: np.ndarray) -> list[str]:
    """The predictor's labels for embeddings it reads (model_embeddings)."""
    return [predictor.labels[i] for i in predictor.predict_proba_embeddings(vectors).argmax(1)]


def zero_shot_predictions(head, encoder, vectors: np.ndarray, labels: list[str], descriptions: dict[str, str],
                          params: Params) -> list[str]:
    """The zero-shot baseline on the same rows: what `k: 0` would ship (label descriptions, or names, as prototypes
    in the meta-trained head's space), for rows embedded by the same `encoder`."""
    import torch

    from components.learner import label_prompt
    from components.meta import zero_shot

    prompts = torch.as_tensor(encoder.encode([label_prompt(l, descriptions) for l in labels], params.encoder.batch_size))
    return zero_shot(head, prompts, labels).predict(head, torch.as_tensor(vectors))


@entity_aware
def evaluate(params: Params, domain: str, root: Path = PROJECT_ROOT) -> dict:
    """Score the candidate on the held-out split beside the majority-class and zero-shot baselines (same rows).

    accuracy, macro-F1 and balanced accuracy for each; whether the model beats the majority class on the domain's
    metric; labels the split lacks are listed as not evaluated. Per-row predictions go to eval_predictions.parquet
    (what the promotion gate pairs with the champion's).
    """
    from sklearn.metrics import confusion_matrix, f1_score

    from components.learner import load_learner
    from components.predictor import Predictor
    from components.scoring import baseline_row, majority_label, not_evaluated, scores

    paths = StagePaths(root, domain)
    config = params.domain(domain)
    evaluation = pd.read_parquet(paths.prepared / "eval.parquet")
    pool = pd.read_parquet(paths.prepared / "adapt.parquet")
    predictor = Predictor.from_directory(paths.candidate)
    meta_head = load_learner(paths.meta_dir, params)[0]
    texts, truth, labels = evaluation["text"].tolist(), evaluation["label"].tolist(), predictor.labels
    started = time.perf_counter()
    vectors = model_embeddings(predictor, texts, params, root)   # once: the model, zero-shot and K-shot read them
    predicted = labels_of(predictor, vectors)
    seconds = time.perf_counter() - started
    info = _read_json(paths.models / "adapt_info.json")
    majority = majority_label(pool["label"].tolist())
    metrics = {**scores(truth, predicted), **baseline_row("majority", truth, [majority] * len(truth)),
               **baseline_row("zero_shot", truth, zero_shot_predictions(meta_head, predictor.encoder, vectors, labels,
                                                                         config.label_descriptions, params)),
               "eval_rows": len(truth), "n_labels": len(labels), "k": config.k, "train_rows": info["support_rows"],
               "adapt_seconds": info["adapt_seconds"], "adapt_total_seconds": info["adapt_total_seconds"],
               "predict_texts_per_second": len(truth) / max(seconds, 1e-9)}
    metrics["beats_majority"] = float(metrics[config.metric] > metrics[f"majority_{config.metric}"])
    if config.k and predictor.model.scope == "head":   # lora/full would need their encoder for every text
        metrics.update(few_shot_scores(params, domain, root, pool, truth, vectors, meta_head))
    per_label = f1_score(truth, predicted, labels=labels, average=None, zero_division=0)
    skipped = not_evaluated(labels, truth)
    label_f1 = {label: (None if label in skipped else f1) for label, f1 in zip(labels, per_label.tolist())}
    quality, speed = split_timings(metrics)
    _write_json(paths.report("metrics"), quality)   # `dvc metrics diff`: what the model scores
    _write_json(paths.report("speed"), speed)       # how long it took: changes on every run, kept out of that diff
    _write_json(paths.report("confusion"), {
        "labels": labels, "metric": config.metric, "majority_label": majority, "not_evaluated": skipped,
        "per_label_f1": label_f1,
        "matrix": confusion_matrix(truth, predicted, labels=labels).tolist(), "warnings": info.get("warnings", []),
        "method": info.get("chosen"), "prior": info.get("prior")})
    pd.DataFrame({"text": texts, "label": truth, "predicted": predicted}).to_parquet(
        paths.prepared / "eval_predictions.parquet", index=False)
    from components.plot_data import write_evaluation_plots

    write_evaluation_plots(root, domain, truth, predicted, label_f1,
                           read_json_if_present(paths.meta_dir / "meta.json"))   # `dvc plots show`
    log.info("evaluate %s: accuracy %.4f macro-F1 %.4f balanced %.4f on %d rows (majority %.4f / %.4f, zero-shot "
             "%.4f / %.4f)", domain, metrics["accuracy"], metrics["macro_f1"], metrics["balanced_accuracy"],
             len(truth), metrics["majority_accuracy"], metrics["majority_macro_f1"], metrics["zero_shot_accuracy"],
             metrics["zero_shot_macro_f1"])
    if not metrics["beats_majority"]:
        log.warning("evaluate %s: %s %.4f does not beat the majority class (%.4f): flagged, never promoted over a "
                    "model that does", domain, config.metric, metrics[config.metric],
                    metrics[f"majority_{config.metric}"])
    return metrics


def split_timings(metrics: dict) -> tuple[dict, dict]:
    """(quality metrics, timings): seconds and rates change on every run, and would make `dvc metrics diff` report
    an untouched domain as changed."""
    timing = {k: v for k, v in metrics.items() if k.endswith(("_seconds", "_per_second"))}
    return {k: v for k, v in metrics.items() if k not in timing}, timing


@entity_aware
def register(params: Params, domain: str, root: Path = PROJECT_ROOT, registration_key: str | None = None) -> dict:
    """Log the candidate to MLflow and register it; it becomes `champion` only through the promotion gate.

    The gate gets evidence, not two numbers: the candidate and the champion scored on the same evaluation rows
    (paired bootstrap interval), whether each beats the majority class, whether the champion is stale, and
    whether this is a `dvc exp run` (registered as an experiment, never champion).
    """
    from components.registry import register_domain_model
    from components.run_context import trigger_tags
    from components.safety import redact_secrets

    paths = StagePaths(root, domain)
    metrics = {**_read_json(paths.report("metrics")), **read_json_if_present(paths.report("speed"))}   # both to MLflow
    manifest = _read_json(paths.prepared / "manifest.json")
    info = _read_json(paths.models / "adapt_info.json")
    metric = params.domain(domain).metric
    evidence = gate_evidence(params, domain, root, paths, metrics)
    result = register_domain_model(
        domain=domain, model_dir=paths.candidate,
        metrics={k: float(v) for k, v in metrics.items()},
        params=redact_secrets(flatten({"domain": params.domain(domain).model_dump(), "adapt": params.adapt.model_dump(),
                                       "meta": params.meta.model_dump(), "encoder": params.encoder.model_dump(),
                                       "seed": params.seed})),   # free-text values may quote a URI with credentials
        tags={"domain": domain, "dataset": manifest["dataset"], "full": str(manifest["full"]),
              "method": str(info.get("chosen")), "prior": str((info.get("prior") or {}).get("source")),
              "class_prior": json.dumps((info.get("prior") or {}).get("prior")),
              "prior_strength": str((info.get("prior") or {}).get("strength")),
              "warnings": "; ".join(info.get("warnings", [])) or "none",
              **trigger_tags(manifest, info.get("support_rows"))},   # why this run happened, from what
        artifacts={"metrics.json": paths.report("metrics"), "confusion.json": paths.report("confusion"),
                   **({"speed.json": paths.report("speed")} if paths.report("speed").is_file() else {}),
                   "validation.json": paths.report("validation"), "manifest.json": paths.prepared / "manifest.json",
                   "adapt_info.json": paths.models / "adapt_info.json"},
        config=params.registry, root=root, gate_metric=metric, evidence=evidence,
        registration_key=registration_key)   # a retried fan-out task returns the version it registered
    payload = result.to_dict()
    _write_json(paths.report("registry"), payload)
    from components.plot_data import write_champion_history
    from components.registry import version_history

    write_champion_history(root, domain, version_history(domain, params.registry, root))   # `dvc plots show`
    log.info("register %s: version %s, promoted=%s (%s)", domain, result.version, result.promoted, result.reason)
    return payload


def gate_evidence(params: Params, domain: str, root: Path, paths: StagePaths, metrics: dict):
    """The champion re-scored on this run's evaluation rows and paired with the candidate's predictions."""
    import tempfile

    from components.predictor import Predictor
    from components.registry import GateEvidence, alias_versions, champion_model_dir
    from components.scoring import paired_bootstrap

    experiment = os.environ.get("DVC_EXP_NAME") or ("dvc-exp" if os.environ.get("DVC_EXP_BASELINE_REV") else None)
    evidence = GateEvidence(beats_majority=bool(metrics.get("beats_majority", 1.0)),
                            experiment=None if params.registry.experiments_promote else experiment)
    champion = alias_versions(domain, params.registry, root).get("champion")
    if champion is None or evidence.experiment:
        return evidence
    rows = pd.read_parquet(paths.prepared / "eval_predictions.parquet")
    with tempfile.TemporaryDirectory(prefix="metaadapt-champion-") as scratch:
        try:
            predictor = Predictor.from_directory(champion_model_dir(domain, champion["version"], params.registry,
                                                                    root, Path(scratch)))
        except Exception as error:  # noqa: BLE001 - an unreadable champion is compared unpaired, and says so
            log.warning("register %s: champion v%s could not be loaded for a paired comparison (%s)", domain,
                        champion["version"], error)
            return evidence
        champion_labels = predictor.labels
        predicted = model_predictions(predictor, rows["text"].tolist(), params, root)
    candidate_labels = _read_json(paths.report("confusion"))["labels"]
    evidence.stale_reason = champion_staleness(champion, champion_labels, candidate_labels,
                                               params.registry.max_champion_age_days)
    evidence.comparison = paired_bootstrap(rows["label"].tolist(), rows["predicted"].tolist(), predicted,
                                           params.domain(domain).metric, params.registry.bootstrap_samples,
                                           params.registry.gate_confidence, params.seed)
    return evidence


def champion_staleness(champion: dict, champion_labels: list[str], candidate_labels: list[str],
                       max_age_days: float | None) -> str | None:
    """Why the champion no longer counts: it cannot predict the domain's labels, or it is older than the rule."""
    if sorted(champion_labels) != sorted(candidate_labels):
        added, removed = set(candidate_labels) - set(champion_labels), set(champion_labels) - set(candidate_labels)
        return f"label set changed (added {sorted(added)}, removed {sorted(removed)})"
    if max_age_days and champion.get("registered_at"):
        from datetime import datetime, timezone

        registered = datetime.strptime(champion["registered_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
        age = (datetime.now(timezone.utc) - registered).total_seconds() / 86400
        if age > max_age_days:
            return f"{age:.1f} days old > registry.max_champion_age_days {max_age_days:g}"
    return None


@entity_aware
def drift(params: Params, domain: str, root: Path = PROJECT_ROOT) -> dict:
    """Evidently report: the domain's adaptation pool (reference) against a batch of its held-out data (current)."""
    from components.drift import drift_report
    from components.monitoring import prior_reason

    paths = StagePaths(root, domain)
    reference = pd.read_parquet(paths.prepared / "adapt.parquet")
    current = pd.read_parquet(paths.prepared / "eval.parquet")
    current = current.sample(n=min(len(current), params.drift.current_rows), random_state=params.seed)
    summary = drift_report(reference, current,
                           reference_embeddings=embed(reference["text"].tolist(), params, root),
                           current_embeddings=embed(current["text"].tolist(), params, root),
                           html_path=paths.report("drift", ".html"), drift_share=params.drift.drift_share,
                           max_embedding_dims=params.drift.max_embedding_dims,
                           embedding_alpha=params.drift.embedding_alpha, column_alpha=params.drift.column_alpha)
    prior = candidate_label_shift(params, root, paths, current)
    reasons = list(summary.reasons or []) + ([prior_reason(prior)] if prior and prior["fired"] else [])
    payload = {**summary.to_dict(), "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "prior": prior, "reasons": reasons,   # the verdict counts label shift, as `metaadapt monitor` does
               "drift_detected": bool(summary.dataset_drift or (prior and prior["fired"]))}
    from components.report_header import ReportContext, insert_header, render_header

    context = ReportContext(domain, f"this run's candidate (models/{domain}/candidate)",
                            f"{len(current)} rows of the held-out split", f"adaptation pool ({len(reference)} rows)",
                            payload["created_at"], "../index.html", kind="pipeline", prior=prior)
    insert_header(paths.report("drift", ".html"), render_header(context, payload, payload["drift_detected"], reasons))
    _write_json(paths.report("drift"), payload)
    log.info("drift %s: drift %s (descriptor share %.2f), report %s", domain, payload["drift_detected"],
             summary.drifted_share, summary.html_path)
    return payload


def candidate_label_shift(params: Params, root: Path, paths: StagePaths, current: pd.DataFrame) -> dict | None:
    """The candidate's class prior beside the one EM estimates on the drift batch, also shown in the HTML report."""
    from components.monitoring import append_prior_section, label_shift
    from components.predictor import Predictor

    if not (paths.candidate / "model.json").is_file():
        return None
    predictor = Predictor.from_directory(paths.candidate)
    block = label_shift(predictor.model, model_embeddings(predictor, current["text"].tolist(), params, root), params)
    append_prior_section(paths.report("drift", ".html"), block)
    return block


def summary(params: Params, root: Path = PROJECT_ROOT) -> dict:
    """Per-domain results table: reports/summary.md and reports/summary.json (components.summary_report)."""
    from components.summary_report import caps_text, domain_status, registry_champion, render_summary, summary_row

    rows = []
    run_status = read_json_if_present(root / "reports" / "run_status.json")
    for domain in params.domains:
        paths = StagePaths(root, domain)
        reports = {kind: read_json_if_present(paths.report(kind)) for kind in ("metrics", "registry", "drift",
                                                                              "confusion")}
        status = domain_status(domain, reports["metrics"], run_status)
        if status.startswith("failed"):   # a failed domain's old metrics must not read as this run's
            reports = {kind: {} for kind in reports}
        rows.append(summary_row(domain, params, reports, status, registry_champion(params, root, domain)))
    caps = caps_text(params)
    timings = read_json_if_present(root / "reports" / "timings.json")  # written by the flow; {} under plain dvc
    payload = {"domains": rows, "caps": caps, "encoder": params.encoder.name, "stage_seconds": timings,
               "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    _write_json(root / "reports" / "summary.json", payload)
    text = render_summary(rows, caps, params.encoder.name) + render_timings(timings)
    text += render_data_docs_links(params, root)
    from components.plots import summary_plots
    from components.report_index import write_index

    text += summary_plots(params, root)   # PNGs under reports/plots/, embedded with relative links
    write_index(root)                     # reports/index.html: every drift report, newest first
    (root / "reports" / "summary.md").write_text(text, encoding="utf-8")
    print(text)
    return payload


def render_data_docs_links(params: Params, root: Path) -> str:
    """Links (relative to reports/summary.md) to each domain's Great Expectations Data Docs, where they exist."""
    docs = root / params.validation.data_docs_dir
    links = [f"[{d}]({Path(os.path.relpath(docs / d / 'index.html', root / 'reports')).as_posix()})"
             for d in params.domains if (docs / d / "index.html").is_file()]
    return f"\nData validation (Great Expectations Data Docs): {', '.join(links)}\n" if links else ""


def render_timings(timings: dict[str, dict[str, float]]) -> str:
    """Seconds per stage and domain as the flow measured them, in pipeline order (0.0 = up to date, skipped)."""
    if not timings:
        return ""
    seen = {stage for per_stage in timings.values() for stage in per_stage}
    stages = [stage for stage in DOMAIN_STAGES if stage in seen] + sorted(seen - set(DOMAIN_STAGES))
    lines = ["", "Seconds per stage (this run; 0.0 = DVC found the stage up to date and it was skipped):", "",
             "| domain | " + " | ".join(stages) + " | total |", "|---" * (len(stages) + 2) + "|"]
    for domain, per_stage in timings.items():
        cells = [f"{per_stage[s]:.1f}" if s in per_stage else "" for s in stages]
        lines.append(f"| {domain} | " + " | ".join(cells) + f" | {sum(per_stage.values()):.1f} |")
    return "\n".join(lines) + "\n"


def _tuned(stage: Callable[[Params, str, Path], dict]) -> Callable[[Params, str, Path], dict]:
    """A stage that runs with the domain's tuned encoder (with_tuned_encoder)."""
    @functools.wraps(stage)
    def run(params: Params, domain: str, root: Path = PROJECT_ROOT, **options) -> dict:
        return stage(with_tuned_encoder(params, domain, root), domain, root, **options)
    return run


DOMAIN_STAGES = {"ingest": ingest, "validate": validate, "tune_encoder": tune_encoder,
                 **{name: _tuned(stage) for name, stage in (("episodes", episodes), ("meta_train", meta_train),
                                                            ("adapt", adapt), ("evaluate", evaluate),
                                                            ("register", register), ("drift", drift))}}


def main(argv: list[str] | None = None) -> int:
    """`python -m components.stages STAGE [DOMAIN] [--params FILE]`: how dvc.yaml runs each stage."""
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if not argv or argv[0] not in {*DOMAIN_STAGES, "summary"}:
        print(f"usage: python -m components.stages {{{'|'.join([*DOMAIN_STAGES, 'summary'])}}} [DOMAIN]", file=sys.stderr)
        return 2
    root = Path.cwd()  # DVC runs every stage from the project root
    params = load_params(root / "params.yaml")
    from components.domains import require_current

    require_current(root, params)   # dvc.yaml iterated domains.expanded.yaml: it must match params.yaml
    if argv[0] == "summary":
        summary(params, root)
    else:
        if len(argv) < 2:
            print(f"stage {argv[0]} needs a domain: one of {', '.join(params.domains)}", file=sys.stderr)
            return 2
        DOMAIN_STAGES[argv[0]](params, argv[1], root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
