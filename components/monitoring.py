"""Drift monitoring of any batch of a domain's texts against the domain's reference, with a decision and a report.

``monitor_batch`` is what `metaadapt monitor` and the scheduled monitor flow call. Reference: the domain's
adaptation pool (``data/prepared/<domain>/adapt.parquet``) and its embeddings from the pipeline's cache. It checks

- text descriptors and (when both sides are labelled) the label mix, and the encoder's embeddings
  (``components.drift``);
- prediction drift: the champion's predicted labels on the batch against its predictions on the reference;
- quality, when the batch is labelled: the champion's accuracy on it against the accuracy recorded at registration
  (held-out split); a drop beyond ``drift.max_quality_drop`` is drift;
- label shift: the batch's class prior, estimated by EM on the champion's uniform-prior posteriors (no labels
  needed), against the prior the champion applies; a total-variation distance beyond ``drift.max_prior_shift`` is
  drift. The predicted-label test above also moves with the mix, but says neither how far nor which prior to use.

Each run writes ``reports/drift/<domain>/<UTC time>/{report.html, summary.json}`` (the JSON holds the decision and
why), logs both to MLflow as a ``monitor-<domain>`` run, and rewrites ``reports/index.html``. No Prefect here.
"""
from __future__ import annotations

import html
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
    champion (from the registry; skip with a reason if none), quality metrics when labels are present, label
    shift (the batch's class prior by EM against the champion's; batches under adapt.traffic_min_rows are not
    estimated). Writes reports/drift/<domain>/<UTC timestamp>/{report.html, summary.json}, logs both to MLflow,
    refreshes reports/index.html. Decision thresholds from params.drift."""
    root = Path(root)
    params.domain(domain)
    current = checked_batch(current, params.drift.min_rows)
    reference = load_reference(root, domain)
    champion, skipped = _champion(domain, params, root)
    encoder = champion.predictor.encoder if champion and champion.predictor.model.scope == "head" else None
    ref_emb, cur_emb = _embeddings(reference, current, params, root, encoder)
    prior = None
    if champion is not None:
        reference, current, prior = _score(champion.predictor, reference, current, ref_emb, cur_emb, params)
        skipped += [prior["note"]] if prior["estimated_prior"] is None else []
    created = datetime.now(timezone.utc)
    directory = _run_directory(root, domain, created)
    summary = _drift(reference, current, ref_emb, cur_emb, params, directory / REPORT_HTML)
    if prior is not None:
        append_prior_section(directory / REPORT_HTML, prior)
    quality = _quality(current, champion, params.drift.max_quality_drop)
    result = _decide(domain, summary, quality, prior, params, directory, created)
    from components.report_header import ReportContext, insert_header, render_header

    context = ReportContext(domain, f"champion v{champion.version}" if champion else "no champion in the registry",
                            f"{source} ({len(current)} rows)", f"adaptation pool ({len(reference)} rows)",
                            result.created_at, "../../../index.html", quality=quality, prior=prior, skipped=skipped)
    insert_header(directory / REPORT_HTML, render_header(context, summary.to_dict(), result.drift_detected,
                                                         result.reasons))
    payload = {**result.to_dict(), "source": source, "kind": "monitor", "champion_version":
               champion.version if champion else None, "skipped": skipped, "quality": quality, "prior": prior,
               "drift": summary.to_dict(), "thresholds": params.drift.model_dump(),
               "n_reference": len(reference), "n_current": len(current), "html": REPORT_HTML}
    result.json_path.write_text(json.dumps(payload, indent=2, default=str), encoding="utf-8")
    _log_to_mlflow(result, payload, params, root)
    from components.monitor_state import prune_reports
    from components.report_index import write_index

    for pruned in prune_reports(root, domain, params.monitoring.keep_reports_per_domain):   # copies stay in MLflow
        log.info("monitor %s: pruned %s (monitoring.keep_reports_per_domain=%d)", domain, pruned.name,
                 params.monitoring.keep_reports_per_domain)

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


def _score(predictor: Any, reference: pd.DataFrame, current: pd.DataFrame, ref_emb: np.ndarray,
           cur_emb: np.ndarray, params: Params) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Both sides with the champion's predicted labels, and the batch's label-shift block (one embedding pass of
    the batch in the champion's space serves both)."""
    reference = reference.assign(prediction=_predict(predictor, _model_embeddings(predictor, reference, ref_emb)))
    model_emb = _model_embeddings(predictor, current, cur_emb)
    current = current.assign(prediction=_predict(predictor, model_emb))
    return reference, current, label_shift(predictor.model, model_emb, params)


def _model_embeddings(predictor: Any, frame: pd.DataFrame, embeddings: np.ndarray) -> np.ndarray:
    """The embeddings the champion scores: the cached base ones for a head-scope model (its encoder is the base
    encoder), else its own fine-tuned encoder's. Computed once per batch and shared by prediction and the prior."""
    return embeddings if predictor.model.scope == "head" else predictor.embed(frame["text"].tolist())


def _predict(predictor: Any, model_embeddings: np.ndarray) -> list[str]:
    """Predicted labels from embeddings in the champion's own space (see _model_embeddings)."""
    probabilities = predictor.predict_proba_embeddings(model_embeddings)
    return [predictor.labels[i] for i in probabilities.argmax(1)]


# ------------------------------------------------------------------------------------------------ label shift


def label_shift(model: Any, model_embeddings: np.ndarray, params: Params) -> dict[str, Any]:
    """The batch's class prior by EM against the prior the champion applies, and whether the gap is drift.

    EM (Saerens et al. 2002, components.classifier.em_prior) runs on the *uniform-prior* posteriors, since the
    champion's own posteriors already carry its prior and would pull the estimate back towards it. It starts from
    the champion's prior with adapt.prior_pseudo_rows rows of it in every step, exactly as adaptation's
    ``adapt.prior: traffic`` does, so a shift here is the prior a re-adaptation on this batch would apply. Batches
    under adapt.traffic_min_rows are not estimated: adaptation would not trust them either.
    """
    from components.classifier import em_prior, prior_shift

    labels, model_prior = list(model.classifier.labels), model.classifier.prior
    rows, min_rows = len(model_embeddings), params.adapt.traffic_min_rows
    block: dict[str, Any] = {"model_prior": _rounded(model_prior), "estimated_prior": None, "shift": None,
                             "threshold": params.drift.max_prior_shift, "rows": rows, "min_rows": min_rows,
                             "pseudo_rows": params.adapt.prior_pseudo_rows, "fired": False, "note": ""}
    if rows < min_rows:
        block["note"] = (f"label shift not estimated: the batch has {rows} rows < adapt.traffic_min_rows "
                         f"{min_rows} (too few for a class-prior estimate)")
        return block
    start = np.array([model_prior[label] for label in labels])
    estimate, iterations = em_prior(model.classifier.balanced_proba(model.head, model_embeddings), start,
                                    params.adapt.prior_pseudo_rows)
    block["estimated_prior"] = _rounded(dict(zip(labels, estimate.tolist())))
    block["shift"] = round(prior_shift(model_prior, dict(zip(labels, estimate.tolist()))), 6)
    block["fired"] = bool(block["shift"] > block["threshold"])
    block["note"] = f"EM on {rows} rows ({iterations} iterations) from the model's prior"
    return block


def _rounded(prior: dict[str, float]) -> dict[str, float]:
    return {label: round(float(p), 6) for label, p in prior.items()}


def prior_reason(prior: dict[str, Any], movers: int = 3) -> str:
    """The label-shift verdict in words: how far the prior moved and the labels that moved most."""
    before, after = prior["model_prior"], prior["estimated_prior"]
    order = sorted(before, key=lambda label: -abs(after[label] - before[label]))[:movers]
    moved = ", ".join(f"{label} {before[label]:.2f} -> {after[label]:.2f}" for label in order)
    return (f"estimated class prior moved {prior['shift']:.2f} (total variation) from the model's "
            f"(> drift.max_prior_shift {prior['threshold']:g}): {moved}; re-adapt with adapt.prior: traffic "
            f"or check the source")


def append_prior_section(html_path: Path, prior: dict[str, Any]) -> None:
    """Add the prior table and verdict to the Evidently page, before its </body> (appended if it has none).

    report.html is Evidently's own page, which has no slot for it; a plain, self-contained section (no scripts,
    no external assets) keeps the report one offline file. Every value is escaped.
    """
    page = html_path.read_text(encoding="utf-8")
    cut = page.lower().rfind("</body>")
    cut = len(page) if cut < 0 else cut
    html_path.write_text(page[:cut] + prior_section(prior) + page[cut:], encoding="utf-8")


def prior_section(prior: dict[str, Any]) -> str:
    """The label-shift section: label, model prior, estimated traffic prior, and the verdict in words."""
    estimated = prior["estimated_prior"] or {}
    rows = "".join(f"<tr><td>{html.escape(label)}</td><td>{p:.3f}</td>"
                   f"<td>{'n/a' if label not in estimated else format(estimated[label], '.3f')}</td></tr>"
                   for label, p in prior["model_prior"].items())
    return (f'<section id="label-shift" style="font-family:sans-serif;margin:2em;max-width:60em">'
            f"<h2>Label shift (class prior)</h2><p><b>{html.escape(_verdict(prior))}</b></p>"
            f'<table style="border-collapse:collapse" border="1" cellpadding="4"><thead><tr><th>label</th>'
            f"<th>model prior</th><th>estimated traffic prior</th></tr></thead><tbody>{rows}</tbody></table>"
            f"<p>{html.escape(prior['note'])}</p></section>\n")


def _verdict(prior: dict[str, Any]) -> str:
    if prior["estimated_prior"] is None:
        return "not estimated (batch too small); not counted as drift"
    if prior["fired"]:
        return "DRIFT: " + prior_reason(prior)
    return (f"no label shift: total variation {prior['shift']:.3f} <= drift.max_prior_shift "
            f"{prior['threshold']:g}")


# ------------------------------------------------------------------------------------------------ the rest


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


def _decide(domain: str, summary: Any, quality: dict[str, Any] | None, prior: dict[str, Any] | None,
            params: Params, directory: Path, created: datetime) -> MonitorResult:
    """Drift = the data/prediction drift verdict OR a quality drop OR label shift; the reasons say which fired."""
    reasons = list(summary.reasons or [])
    signals = list(summary.drifted_columns) + (["embeddings"] if summary.embedding_drift else [])
    degraded, shifted = bool(quality and quality["degraded"]), bool(prior and prior["fired"])
    if degraded:
        reasons.append(f"accuracy {quality['accuracy']:.3f} is {quality['drop']:.3f} below the champion's "
                       f"{quality['reference_accuracy']:.3f} (> drift.max_quality_drop {params.drift.max_quality_drop})")
        signals.append("quality")
    if shifted:
        reasons.append(prior_reason(prior))
        signals.append("label_shift")
    return MonitorResult(domain, bool(summary.dataset_drift or degraded or shifted), reasons, signals,
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
        metrics.update(_prior_metrics(payload["prior"]))
        mlflow.set_tag("label_shift", _prior_tag(payload["prior"]))
        mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
        mlflow.log_artifact(str(result.html_path), artifact_path="drift")
        mlflow.log_artifact(str(result.json_path), artifact_path="drift")


def _prior_metrics(prior: dict[str, Any] | None) -> dict[str, float]:
    """The label-shift numbers as run metrics (the full block, per-label priors included, is in summary.json)."""
    if not prior or prior["shift"] is None:
        return {}
    return {"prior_shift": prior["shift"], "prior_shift_threshold": prior["threshold"],
            "label_shift": float(prior["fired"])}


def _prior_tag(prior: dict[str, Any] | None) -> str:
    if not prior:
        return "skipped: no champion"
    if prior["estimated_prior"] is None:
        return "skipped: batch too small"
    return str(prior["fired"]).lower()
