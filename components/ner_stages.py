"""The pipeline's stages for a domain with ``task: entities``: the same stage names, files and reports as the
sentence-classification stages (``components.stages`` dispatches here), with entity data inside.

Files per domain (as for classification): data/prepared/<d>/{adapt,eval,meta_pool}.parquet (columns tokens, tags
[, source]) and manifest.json; episodes_{train,val}.json (word rows) and meta_embeddings.npy; models/<d>/meta/ (the
meta-trained head + transitions) and models/<d>/candidate/ (the adapted entity model); reports/{validation,metrics,
confusion,registry,drift}/<d>.json.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from components.config import Params
from components.data import text_hash
from components.entities import OUTSIDE, entity_types, load_token_split, mention_counts

log = logging.getLogger("metaadapt")
HEAD_FILE = "head.safetensors"
META_FILE = "entity_meta.json"


def _paths(root: Path, domain: str):
    from components.stages import StagePaths

    return StagePaths(root, domain)


def _write_json(path: Path, payload) -> None:
    from components.stages import _write_json as write

    write(path, payload)


def _read(paths, name: str) -> pd.DataFrame:
    frame = pd.read_parquet(paths.prepared / f"{name}.parquet")
    for column in ("tokens", "tags"):
        frame[column] = frame[column].map(list)
    return frame


def sentence_key(tokens) -> str:
    return text_hash(" ".join(tokens))


# ----------------------------------------------------------------------------------------------- ingest


def ingest(params: Params, domain: str, root: Path) -> dict:
    """Target splits (capped; a carved-out eval split when adapt and eval name the same split), meta-training
    sources (sentences with a mention, capped per source), and sentences equal to an evaluation sentence removed."""
    from components.config import resolve_mirror

    paths, config, caps = _paths(root, domain), params.domain(domain), params.entities
    mirror = resolve_mirror(params.data, root)
    spec = params.datasets[config.dataset]
    adapt = load_token_split(config.dataset, spec, config.adapt_split, mirror)
    if config.eval_split == config.adapt_split:
        evaluation = adapt.sample(frac=config.eval_fraction, random_state=params.seed)
        adapt = adapt.drop(evaluation.index)
    else:
        evaluation = load_token_split(config.dataset, spec, config.eval_split, mirror)
    full = params.limits.full
    evaluation = _cap(evaluation, None if full else caps.eval_max_sentences, params.seed)
    banned = {sentence_key(t) for t in evaluation["tokens"]}
    adapt, adapt_leaks = _without(adapt, banned)
    adapt = _cap(adapt, None if full else caps.adapt_pool_max_sentences, params.seed)
    parts, meta_leaks = [], 0
    for source in config.meta_sources:
        frame = load_token_split(source, params.datasets[source], "train", mirror)
        frame = frame[frame["tags"].map(lambda tags: any(t != OUTSIDE for t in tags))]
        frame, leaks = _without(frame, banned)
        meta_leaks += leaks
        parts.append(_cap(frame, None if full else caps.source_max_sentences, params.seed).assign(source=source))
    meta_pool = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["tokens", "tags", "source"])
    paths.prepared.mkdir(parents=True, exist_ok=True)
    for name, frame in (("adapt", adapt), ("eval", evaluation), ("meta_pool", meta_pool)):
        frame.reset_index(drop=True).to_parquet(paths.prepared / f"{name}.parquet", index=False)
    manifest = {"task": "entities", "dataset": config.dataset, "full": full, "adapt_sentences": len(adapt),
                "eval_sentences": len(evaluation), "meta_pool_sentences": len(meta_pool),
                "types": entity_types(adapt["tags"]), "leakage_removed": {"adapt": adapt_leaks, "meta": meta_leaks}}
    _write_json(paths.prepared / "manifest.json", manifest)
    log.info("ingest %s (entities): %d adapt, %d eval, %d meta-pool sentences", domain, len(adapt), len(evaluation),
             len(meta_pool))
    return manifest


def _cap(frame: pd.DataFrame, cap: int | None, seed: int) -> pd.DataFrame:
    return frame.sample(n=cap, random_state=seed) if cap is not None and len(frame) > cap else frame


def _without(frame: pd.DataFrame, banned: set[str]) -> tuple[pd.DataFrame, int]:
    keep = frame["tokens"].map(lambda t: sentence_key(t) not in banned)
    return frame[keep], int((~keep).sum())


# ----------------------------------------------------------------------------------------------- validate


def validate(params: Params, domain: str, root: Path) -> dict:
    """The token suite on the adaptation pool (K mentions per type), the evaluation split (tags the pool knows)
    and each meta-training source; results and Data Docs written before a failure stops the domain."""
    from components.ner_validation import validate_token_frame
    from components.validation import SuiteRunner, outcome_payload, require_valid

    paths, cfg = _paths(root, domain), params.entities
    adapt, evaluation, pool = _read(paths, "adapt"), _read(paths, "eval"), _read(paths, "meta_pool")
    known = sorted({t for tags in adapt["tags"] for t in tags} | {OUTSIDE})
    runner = SuiteRunner()
    bounds = (cfg.min_sentence_words, cfg.max_sentence_words)
    outcomes = {"adapt": validate_token_frame(adapt, f"metaadapt.{domain}.adapt", None, *bounds,
                                              min_mentions=params.domain(domain).k, runner=runner),
                "eval": validate_token_frame(evaluation, f"metaadapt.{domain}.eval", known, *bounds, runner=runner)}
    for source, frame in pool.groupby("source", sort=True):
        outcomes[f"meta_source.{source}"] = validate_token_frame(frame.reset_index(drop=True),
                                                                 f"metaadapt.{domain}.meta_source.{source}", None,
                                                                 *bounds, runner=runner)
    from components.data_docs import write_data_docs   # the offline page of our own, as for sentence domains

    docs = write_data_docs(root / params.validation.data_docs_dir / domain, domain, outcomes)
    summary = {name: {"suite": o.name, "success": o.success, "failures": o.failures, "statistics": o.statistics}
               for name, o in outcomes.items()}
    _write_json(paths.report("validation"), {"domain": domain, "task": "entities",
                                             "success": all(o.success for o in outcomes.values()), "suites": summary,
                                             "data_docs": str(docs.relative_to(root.resolve())),
                                             "results": {n: outcome_payload(o)["result"] for n, o in outcomes.items()}})
    for outcome in outcomes.values():
        require_valid(outcome)
    return summary


# ----------------------------------------------------------------------------------------------- episodes + meta


def episodes(params: Params, domain: str, root: Path) -> dict:
    """Word vectors of the meta pool (cached per word) and word-level train/validation episodes."""
    from components.episodes import save_episodes
    from components.ner_training import source_episodes
    from components.token_features import pipeline_word_features

    paths = _paths(root, domain)
    pool = _read(paths, "meta_pool")
    started = time.perf_counter()
    vectors = pipeline_word_features(pool["tokens"].tolist(), params, root)
    matrix = np.concatenate(vectors) if vectors else np.zeros((0, 1), np.float32)
    np.save(paths.prepared / "meta_embeddings.npy", matrix.astype(np.float32))
    embed_seconds = time.perf_counter() - started
    train, val = source_episodes(pool["tags"].tolist(), pool["source"].tolist(), params.entities, params.seed) \
        if len(pool) and params.entities.epochs else ([], [])
    save_episodes(train, paths.prepared / "episodes_train.json")
    save_episodes(val, paths.prepared / "episodes_val.json")
    counts = {"pool_sentences": len(pool), "pool_words": int(len(matrix)), "embed_seconds": round(embed_seconds, 2),
              "train_episodes": len(train), "val_episodes": len(val)}
    _write_json(paths.prepared / "episodes_stats.json", counts)
    log.info("episodes %s (entities): %s", domain, counts)
    return counts


def meta_train(params: Params, domain: str, root: Path) -> dict:
    """Token-level ProtoNet on the head (frozen encoder); the head and the sources' BIO transitions are saved."""
    from components.entities import abstract_transitions
    from components.episodes import load_episodes
    from components.model_io import atomic_directory, atomic_save_tensors, atomic_write_text, sha256
    from components.ner_training import train_head
    from components.stages import _log_meta_run, _meta_summary

    paths = _paths(root, domain)
    pool = _read(paths, "meta_pool")
    matrix = np.load(paths.prepared / "meta_embeddings.npy")
    train_eps = load_episodes(paths.prepared / "episodes_train.json")
    val_eps = load_episodes(paths.prepared / "episodes_val.json")
    dim = matrix.shape[1] if len(matrix) else _encoder_dim(params)
    head, result = train_head(matrix if len(matrix) else np.zeros((0, dim), np.float32), train_eps, val_eps,
                              params.entities.epochs, params.meta, params.seed)
    summary = {**_meta_summary(result, params), "task": "entities",
               "transitions": abstract_transitions(pool["tags"].tolist())}
    with atomic_directory(paths.meta_dir) as staging:
        atomic_save_tensors(head.state_dict(), staging / HEAD_FILE)
        atomic_write_text(staging / META_FILE, json.dumps({**summary, "dim": int(dim),
                                                           "head_sha256": sha256(staging / HEAD_FILE)}, indent=2))
    _log_meta_run(params, root, summary, paths.meta_dir, f"meta-train-{domain}", {"domain": domain})
    return summary


def _encoder_dim(params: Params) -> int:
    from components.encoder import load_encoder

    return load_encoder(params.encoder).dim


def load_meta(paths) -> tuple:
    """The meta-trained head (checksum verified) and the transitions saved with it."""
    from safetensors.torch import load_file

    from components.meta import ProjectionHead
    from components.model_io import ModelIntegrityError, sha256

    meta = json.loads((paths.meta_dir / META_FILE).read_text(encoding="utf-8"))
    if sha256(paths.meta_dir / HEAD_FILE) != meta["head_sha256"]:
        raise ModelIntegrityError(f"{paths.meta_dir / HEAD_FILE}: checksum mismatch; rerun meta_train")
    head = ProjectionHead(meta["dim"])
    head.load_state_dict(load_file(str(paths.meta_dir / HEAD_FILE)))
    return head.eval(), meta["transitions"]


# ----------------------------------------------------------------------------------------------- adapt + evaluate


def support_set(adapt: pd.DataFrame, k: int, seed: int) -> pd.DataFrame:
    """A greedy K-shot support (every type >= K mentions where the pool has them) from the adaptation pool."""
    from components.token_episodes import greedy_support, sentence_mentions

    mentions = sentence_mentions(adapt["tags"].tolist())
    types = sorted({t for m in mentions for t in m})
    chosen = greedy_support(mentions, types, k, np.random.default_rng(seed), strict=False)
    return adapt.iloc[chosen].reset_index(drop=True)


def adapt(params: Params, domain: str, root: Path) -> dict:
    """Adapt to a K-shot support of the pool: settings by support-set CV, saved as an entity model."""
    from components.meta import ProjectionHead
    from components.ner_model import adapt_entities, save_entity_model
    from components.token_features import encoder_settings, pipeline_word_features

    paths, cfg = _paths(root, domain), params.entities
    pool = _read(paths, "adapt")
    support = support_set(pool, max(params.domain(domain).k, 1), params.seed)
    head, transitions = load_meta(paths)
    started = time.perf_counter()
    vectors = pipeline_word_features(support["tokens"].tolist(), params, root)
    others = [ProjectionHead(head.linear.in_features, params.meta.temperature_init)] if params.adapt.select_head else []
    model = adapt_entities(head, vectors, support["tokens"].tolist(), support["tags"].tolist(), transitions,
                           cfg.methods, cfg.o_biases, cfg.transition_weights, encoder_settings(params), others,
                           cfg.head_margin)
    seconds = time.perf_counter() - started
    save_entity_model(model, paths.candidate)
    support.to_parquet(paths.prepared / "support.parquet", index=False)
    counts = mention_counts(support["tags"])
    pool_types = entity_types(pool["tags"])
    info = {"task": "entities", "support_rows": len(support), "support_mentions": counts, "types": model.types,
            "chosen": f"{model.settings.method} (O bias {model.settings.o_bias:+g}, transitions "
                      f"x{model.settings.transition_weight:g}, "
                      f"{'meta-trained' if model.info['head'] == 'given' else 'untrained'} head)", "adapt_seconds": round(seconds, 3),
            "adapt_total_seconds": round(seconds, 3), "cv_f1": model.info.get("cv_f1"),
            "warnings": [f"type {t!r} has {counts.get(t, 0)} mention(s) in the support < k={params.domain(domain).k}"
                         for t in pool_types if counts.get(t, 0) < params.domain(domain).k]}
    _write_json(paths.models / "adapt_info.json", info)
    log.info("adapt %s (entities): %d support sentences, %d types, %s, %.2f s", domain, len(support),
             len(model.types), info["chosen"], seconds)
    return info


def evaluate(params: Params, domain: str, root: Path) -> dict:
    """seqeval entity-level micro-F1 (and per type) on the held-out sentences, beside untrained prototypes
    (ProtoBERT on the same support) as the baseline."""
    from seqeval.metrics import classification_report, f1_score, precision_score, recall_score

    from components.ner_model import load_entity_model, tag_sentences
    from components.token_features import pipeline_word_features

    paths = _paths(root, domain)
    evaluation, support = _read(paths, "eval"), _read(paths, "support")
    model = load_entity_model(paths.candidate)
    started = time.perf_counter()
    vectors = pipeline_word_features(evaluation["tokens"].tolist(), params, root)
    predicted = tag_sentences(model, vectors)
    seconds = time.perf_counter() - started
    truth = evaluation["tags"].tolist()
    baseline = prototype_baseline(pipeline_word_features(support["tokens"].tolist(), params, root),
                                  support["tags"].tolist(), vectors)
    info = json.loads((paths.models / "adapt_info.json").read_text(encoding="utf-8"))
    metrics = {"task": "entities", "f1": f1_score(truth, predicted, zero_division=0),
               "precision": precision_score(truth, predicted, zero_division=0),
               "recall": recall_score(truth, predicted, zero_division=0),
               "prototypes_f1": f1_score(truth, baseline, zero_division=0),
               "eval_rows": len(truth), "n_labels": len(model.types), "k": params.domain(domain).k,
               "train_rows": info["support_rows"], "adapt_seconds": info["adapt_seconds"],
               "adapt_total_seconds": info["adapt_total_seconds"],
               "predict_texts_per_second": len(truth) / max(seconds, 1e-9)}
    metrics["beats_baseline"] = float(metrics["f1"] > metrics["prototypes_f1"])
    report = classification_report(truth, predicted, output_dict=True, zero_division=0)
    per_type = {t: report[t]["f1-score"] for t in model.types if t in report}
    _write_json(paths.report("metrics"), metrics)
    _write_json(paths.report("confusion"), {"task": "entities", "labels": model.types, "per_type_f1": per_type,
                                            "support_per_type": {t: int(report[t]["support"]) for t in per_type},
                                            "not_evaluated": [t for t in model.types if t not in report],
                                            "method": info["chosen"], "warnings": info.get("warnings", [])})
    pd.DataFrame({"tokens": evaluation["tokens"], "tags": truth, "predicted": predicted}).to_parquet(
        paths.prepared / "eval_predictions.parquet", index=False)
    log.info("evaluate %s (entities): F1 %.4f (P %.4f R %.4f), prototypes %.4f on %d sentences", domain,
             metrics["f1"], metrics["precision"], metrics["recall"], metrics["prototypes_f1"], len(truth))
    return metrics


def prototype_baseline(support_vectors, support_tags, vectors) -> list[list[str]]:
    """ProtoBERT on frozen features: one prototype per BIO tag (O included), argmax per word."""
    labels = sorted({t for tags in support_tags for t in tags})
    x = _unit(np.concatenate(support_vectors))
    y = np.array([labels.index(t) for tags in support_tags for t in tags])
    protos = _unit(np.stack([x[y == c].mean(axis=0) for c in range(len(labels))]))
    return [[labels[i] for i in (_unit(v) @ protos.T).argmax(axis=1)] if len(v) else [] for v in vectors]


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-9)


# ----------------------------------------------------------------------------------------------- register + drift


def register(params: Params, domain: str, root: Path) -> dict:
    """The candidate through the same MLflow registration and promotion gate, on entity micro-F1 (no paired
    bootstrap for spans yet: the plain rule new F1 >= champion F1 + margin applies)."""
    from components.config import flatten
    from components.registry import GateEvidence, register_domain_model
    from components.safety import redact_secrets

    paths = _paths(root, domain)
    metrics = json.loads(paths.report("metrics").read_text(encoding="utf-8"))
    manifest = json.loads((paths.prepared / "manifest.json").read_text(encoding="utf-8"))
    info = json.loads((paths.models / "adapt_info.json").read_text(encoding="utf-8"))
    result = register_domain_model(
        domain=domain, model_dir=paths.candidate,
        metrics={k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))},
        params=redact_secrets(flatten({"domain": params.domain(domain).model_dump(),
                                       "entities": params.entities.model_dump(), "meta": params.meta.model_dump(),
                                       "encoder": params.encoder.model_dump(), "seed": params.seed})),
        tags={"domain": domain, "task": "entities", "dataset": manifest["dataset"], "full": str(manifest["full"]),
              "method": str(info.get("chosen")), "warnings": "; ".join(info.get("warnings", [])) or "none"},
        artifacts={"metrics.json": paths.report("metrics"), "confusion.json": paths.report("confusion"),
                   "validation.json": paths.report("validation"), "manifest.json": paths.prepared / "manifest.json",
                   "adapt_info.json": paths.models / "adapt_info.json"},
        config=params.registry, root=root, gate_metric="f1",
        evidence=GateEvidence(beats_majority=bool(metrics.get("beats_baseline", 1.0))))
    payload = result.to_dict()
    _write_json(paths.report("registry"), payload)
    return payload


def drift(params: Params, domain: str, root: Path) -> dict:
    """Evidently report on sentences (descriptors, mean word embeddings, main entity type as the label column)
    plus a chi-square test of the entity-type mix of mentions (reference: a sample of the adaptation pool; current:
    a sample of the held-out sentences; ``entities.drift_max_sentences`` each)."""
    from components.drift import drift_report
    from components.token_features import pipeline_word_features

    paths = _paths(root, domain)
    cap = params.entities.drift_max_sentences   # both sides sampled: the pool's word vectors are not cached elsewhere
    reference, current = (frame.sample(n=min(len(frame), cap), random_state=params.seed)
                          for frame in (_read(paths, "adapt"), _read(paths, "eval")))
    frames, embeddings = [], []
    for frame in (reference, current):
        frames.append(pd.DataFrame({"text": frame["tokens"].map(" ".join), "label": frame["tags"].map(main_type)}))
        vectors = pipeline_word_features(frame["tokens"].tolist(), params, root)
        embeddings.append(np.stack([_unit(v).mean(axis=0) if len(v) else np.zeros(v.shape[1]) for v in vectors]))
    summary = drift_report(frames[0], frames[1], reference_embeddings=embeddings[0], current_embeddings=embeddings[1],
                           html_path=paths.report("drift", ".html"), drift_share=params.drift.drift_share,
                           max_embedding_dims=params.drift.max_embedding_dims,
                           embedding_alpha=params.drift.embedding_alpha, column_alpha=params.drift.column_alpha)
    mix = type_mix_shift(reference["tags"], current["tags"], params.drift.column_alpha)
    payload = {**summary.to_dict(), "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "entity_type_mix": mix}
    if mix["drift"]:
        payload["dataset_drift"] = True
        payload["reasons"] = list(payload.get("reasons", [])) + [mix["reason"]]
    _write_json(paths.report("drift"), payload)
    return payload


def main_type(tags) -> str:
    """A sentence's most frequent entity type ("none" without mentions): the categorical column Evidently tests."""
    counts = mention_counts([tags])
    return max(sorted(counts), key=counts.get) if counts else "none"


def type_mix_shift(reference_tags, current_tags, alpha: float) -> dict:
    """Chi-square test of mention counts per entity type, current against reference proportions."""
    from scipy.stats import chisquare

    ref, cur = mention_counts(reference_tags), mention_counts(current_tags)
    types = sorted(set(ref) | set(cur))
    observed = np.array([cur.get(t, 0) for t in types], dtype=float)
    expected_share = np.array([ref.get(t, 0) + 0.5 for t in types], dtype=float)
    if observed.sum() == 0 or len(types) < 2:
        return {"drift": False, "p_value": None, "reason": "too few mentions to test", "reference": ref,
                "current": cur}
    p_value = float(chisquare(observed, expected_share / expected_share.sum() * observed.sum()).pvalue)
    drifted = p_value < alpha
    return {"drift": drifted, "p_value": p_value, "reference": ref, "current": cur,
            "reason": f"entity-type mix changed (chi-square p={p_value:.2g} < {alpha})" if drifted else
                      f"entity-type mix stable (chi-square p={p_value:.2g})"}


STAGES = {"ingest": ingest, "validate": validate, "episodes": episodes, "meta_train": meta_train, "adapt": adapt,
          "evaluate": evaluate, "register": register, "drift": drift}


def summary_line(r: dict) -> str:
    """An entity domain's row in the run summary's table (same 13 columns; F1 stands where accuracy does)."""
    champion = r.get("champion_version") or r.get("registered_version")
    beats = "yes" if r.get("beats_baseline", 1.0) else "**NO** (vs prototypes)"
    return (f"| {r['domain']} | ok | entity F1 {r['f1']:.3f} (prototypes {r.get('prototypes_f1', float('nan')):.3f}) "
            f"| P {r['precision']:.3f} / R {r['recall']:.3f} | | {beats} | {r.get('train_rows', '')} sentences "
            f"({r['k']}-shot) | {r['n_labels']} types | {r['eval_rows']} | {r.get('method') or ''} "
            f"| {r['adapt_seconds']:.2f} ({r['adapt_total_seconds']:.2f}) "
            f"| v{r.get('registered_version')} → v{champion}{' (promoted)' if r.get('promoted') else ''} "
            f"| {r.get('drift_detected')} |")
