"""Drift monitoring of any batch of a domain's texts against the domain's reference, with a decision and a report.

``monitor_batch`` is what `metaadapt monitor` and the scheduled monitor flow call. Reference: the domain's
adaptation pool (``data/prepared/<domain>/adapt.parquet``) and its embeddings from the pipeline's cache. It checks

- text descriptors and (when both sides are labelled) the label mix, and the encoder's embeddings
  (``components.drift``);
- prediction drift: the champion's predicted labels on the batch against its predictions on the reference;
- quality, when the batch is labelled: the champion's accuracy on it against the accuracy recorded at registration
  (held-out split); a drop beyond ``drift.max_quality_drop`` is drift.

Each run writes ``reports/drift/<domain>/<UTC time>/{report.html, summary.json}`` (the JSON holds the decision and
why), logs both to MLflow as a ``monitor-<domain>`` run, and rewrites ``reports/index.html``. No Prefect here.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from components.config import Params
from components.data import DataError

log = logging.getLogger("metaadapt")
REPORT_HTML, SUMMARY_JSON = "report.html", "summary.json"


@dataclass
class MonitorResult:
    """The decision of one monitor run and where its report is."""

    domain: str
    drift_detected: bool
    reasons: list[str]
    drifted_signals: list[str]
    html_path: Path
    json_path: Path
    created_at: str

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "html_path": str(self.html_path), "json_path": str(self.json_path)}


@dataclass
class _Champion:
    version: int
    accuracy: float | None
    predictor: Any      # components.predictor.Predictor


def monitor_batch(domain: str, current: pd.DataFrame, params: Params, root: Path, *,
                  source: str = "batch") -> MonitorResult:
    """Reference = data/prepared/<domain>/adapt.parquet (+ its embeddings via the cache); current = the batch
    (a `text` column, `label` optional). Descriptor drift, embedding drift, prediction drift using the domain's
    champion (from the registry; skip with a reason if none), quality metrics when labels are present. Writes
    reports/drift/<domain>/<UTC timestamp>/{report.html, summary.json}, logs both to MLflow, refreshes
    reports/index.html. Decision thresholds from params.drift."""
    root = Path(root)
    params.domain(domain)
    current = checked_batch(current, params.drift.min_rows)
    reference = load_reference(root, domain)
    champion, skipped = _champion(domain, params, root)
    encoder = champion.predictor.encoder if champion and champion.predictor.model.scope == "head" else None
    ref_emb, cur_emb = _embeddings(reference, current, params, root, encoder)
    if champion is not None:
        reference = reference.assign(prediction=_predict(champion.predictor, reference, ref_emb))
        current = current.assign(prediction=_predict(champion.predictor, current, cur_emb))
    created = datetime.now(timezone.utc)
    directory = _run_directory(root, domain, created)
    summary = _drift(reference, current, ref_emb, cur_emb, params, directory / REPORT_HTML)
    quality = _quality(current, champion, params.drift.max_quality_drop)
    result = _decide(domain, summary, quality, params, directory, created)
    payload = {**result.to_dict(), "source": source, "kind": "monitor", "champion_version":
               champion.version if champion else None, "skipped": skipped, "quality": quality,
               "drift": summary.to_dict(), "thresholds": params.drift.model_dump(),
               "n_reference": len(reference), "n_current": len(current), "html": REPORT_HTML}
    result.json_path.write_text(json.dumps(payload, indent=2, default=str), encoding="utf-8")
    _log_to_mlflow(result, payload, params, root)
    from components.report_index import write_index

    write_index(root)
    log.info("monitor %s (%s): drift %s %s", domain, source, result.drift_detected, result.reasons)
    return result


def checked_batch(current: pd.DataFrame, min_rows: int) -> pd.DataFrame:
    """text (and label, when given) as strings; a clear error for a batch that cannot be tested."""
    if "text" not in current.columns:
        raise DataError(f"the batch needs a 'text' column; found {list(current.columns)}")
    frame = current[[c for c in ("text", "label") if c in current.columns]].copy()
    frame["text"] = frame["text"].fillna("").astype(str)
    if "label" in frame and frame["label"].isna().any():
        raise DataError(f"the batch has {int(frame['label'].isna().sum())} rows without a label; "
                        f"label every row or drop the label column")
    if "label" in frame:
        frame["label"] = frame["label"].astype(str)
    if len(frame) < min_rows:
        raise DataError(f"the batch has {len(frame)} rows; drift tests need at least drift.min_rows={min_rows}")
    return frame.reset_index(drop=True)


def load_reference(root: Path, domain: str) -> pd.DataFrame:
    path = Path(root) / "data" / "prepared" / domain / "adapt.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no reference data for {domain!r}; run `metaadapt run --domain {domain}` "
                                f"(or `dvc repro ingest@{domain}`) first")
    return pd.read_parquet(path)[["text", "label"]].astype(str)


def _champion(domain: str, params: Params, root: Path) -> tuple[_Champion | None, list[str]]:
    """The champion's predictor and recorded accuracy, or None and the reason prediction checks are skipped."""
    from components.registry import alias_versions, load_champion

    try:
        model = load_champion(domain, params.registry, root)
    except LookupError as error:
        return None, [f"prediction drift and quality skipped: {error}"]
    info = alias_versions(domain, params.registry, root).get("champion", {})
    return _Champion(info.get("version"), info.get("accuracy"), model.unwrap_python_model().predictor), []


def _embeddings(reference: pd.DataFrame, current: pd.DataFrame, params: Params, root: Path,
                encoder: Any) -> tuple[np.ndarray, np.ndarray]:
    from components.stages import embed

    return (embed(reference["text"].tolist(), params, root, encoder),
            embed(current["text"].tolist(), params, root, encoder))


def _predict(predictor: Any, frame: pd.DataFrame, embeddings: np.ndarray) -> list[str]:
    """Predicted labels; a head-scope model scores the cached base embeddings, others re-embed with their encoder."""
    if predictor.model.scope == "head":
        probabilities = predictor.predict_proba_embeddings(embeddings)
    else:
        probabilities = predictor.predict_proba(frame["text"].tolist())
    return [predictor.labels[i] for i in probabilities.argmax(1)]


def _run_directory(root: Path, domain: str, created: datetime) -> Path:
    """reports/drift/<domain>/<UTC time>; a suffix keeps two runs in the same second apart."""
    base = Path(root) / "reports" / "drift" / domain
    stamp = created.strftime("%Y%m%dT%H%M%SZ")
    directory, n = base / stamp, 1
    while directory.exists():
        n += 1
        directory = base / f"{stamp}-{n}"
    directory.mkdir(parents=True)
    return directory


def _drift(reference: pd.DataFrame, current: pd.DataFrame, ref_emb: np.ndarray, cur_emb: np.ndarray,
           params: Params, html: Path):
    from components.drift import PREDICTION, drift_report

    if not params.drift.prediction_drift:
        reference, current = reference.drop(columns=[PREDICTION], errors="ignore"), current.drop(
            columns=[PREDICTION], errors="ignore")
    return drift_report(reference, current, reference_embeddings=ref_emb, current_embeddings=cur_emb,
                        html_path=html, drift_share=params.drift.drift_share,
                        max_embedding_dims=params.drift.max_embedding_dims,
                        embedding_alpha=params.drift.embedding_alpha, column_alpha=params.drift.column_alpha)


def _quality(current: pd.DataFrame, champion: _Champion | None, max_drop: float) -> dict[str, Any] | None:
    """Champion accuracy / macro-F1 on a labelled batch against the accuracy recorded at registration."""
    if champion is None or "label" not in current or "prediction" not in current:
        return None
    from sklearn.metrics import accuracy_score, f1_score

    accuracy = float(accuracy_score(current["label"], current["prediction"]))
    quality = {"accuracy": accuracy, "macro_f1": float(f1_score(current["label"], current["prediction"],
                                                                 average="macro", zero_division=0)),
               "reference_accuracy": champion.accuracy, "max_drop": max_drop}
    quality["drop"] = None if champion.accuracy is None else champion.accuracy - accuracy
    quality["degraded"] = bool(quality["drop"] is not None and quality["drop"] > max_drop)
    return quality


def _decide(domain: str, summary: Any, quality: dict[str, Any] | None, params: Params, directory: Path,
            created: datetime) -> MonitorResult:
    """Drift = the data/prediction drift verdict OR a quality drop; the reasons say which signal fired."""
    reasons = list(summary.reasons or [])
    signals = list(summary.drifted_columns) + (["embeddings"] if summary.embedding_drift else [])
    if quality and quality["degraded"]:
        reasons.append(f"accuracy {quality['accuracy']:.3f} is {quality['drop']:.3f} below the champion's "
                       f"{quality['reference_accuracy']:.3f} (> drift.max_quality_drop {params.drift.max_quality_drop})")
        signals.append("quality")
    return MonitorResult(domain, bool(summary.dataset_drift or (quality and quality["degraded"])), reasons, signals,
                         directory / REPORT_HTML, directory / SUMMARY_JSON,
                         created.strftime("%Y-%m-%dT%H:%M:%SZ"))


def _log_to_mlflow(result: MonitorResult, payload: dict[str, Any], params: Params, root: Path) -> None:
    import mlflow

    from components.registry import use_experiment

    use_experiment(params.registry, root)
    with mlflow.start_run(run_name=f"monitor-{result.domain}", nested=mlflow.active_run() is not None):
        mlflow.set_tags({"stage": "monitor", "domain": result.domain, "source": str(payload["source"])[:250],
                         "drift_detected": str(result.drift_detected).lower(),
                         "drift_reasons": "; ".join(result.reasons)[:5000] or "none"})
        drift = payload["drift"]
        metrics = {"drift_detected": float(result.drift_detected), "drifted_share": drift["drifted_share"],
                   "embedding_drift_score": drift["embedding_drift_score"] or 0.0, "n_current": payload["n_current"]}
        if payload["quality"]:
            metrics.update(batch_accuracy=payload["quality"]["accuracy"], batch_macro_f1=payload["quality"]["macro_f1"])
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
        mlflow.log_artifact(str(result.html_path), artifact_path="drift")
        mlflow.log_artifact(str(result.json_path), artifact_path="drift")
