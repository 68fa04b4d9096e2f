"""reports/summary.md and summary.json: per domain, this run's candidate beside the registry's champion.

What a reader must be able to trust: the champion column is read from the registry now (the `champion` alias), never
inferred from this run's files, so a `dvc exp run` or a challenger can never appear as champion; the candidate of
this run stands beside it with the gate's decision and reason; each number sits beside the baselines of "every
labelled row counts" (majority class, zero-shot, the K-shot demonstration) on the same rows; a domain that never ran
says "not run" and one that failed says where. No Prefect here.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from components.config import Params


def domain_status(domain: str, metrics: dict, run_status: dict) -> str:
    """failed at <stage> (this run), ok, ok (earlier run) when this run did not include the domain, or not run."""
    if run_status.get(domain, {}).get("status") == "failed":
        return f"failed at {run_status[domain]['failed_stage']}"
    if not metrics:
        return "not run"
    return "ok (earlier run)" if run_status and domain not in run_status else "ok"


def registry_champion(params: Params, root: Path, domain: str) -> dict[str, Any] | None:
    """{version, metric} of the domain's champion alias now; None when it has none or no registry exists yet
    (the summary must not create an empty MLflow store as a side effect)."""
    from components.registry import champion_info

    store = Path(root) / "mlruns" / "mlflow.db"
    if not (params.registry.tracking_uri or store.is_file()):
        return None
    return champion_info(domain, params.registry, root, gate_metric=params.domain(domain).metric)


def gate_decision(registry: dict) -> str | None:
    """The gate's decision for this run's candidate, in one word."""
    if not registry:
        return None
    if registry.get("experiment"):
        return "experiment"
    return "promoted" if registry.get("promoted") else "challenger"


def summary_row(domain: str, params: Params, reports: dict[str, dict], status: str,
                champion: dict[str, Any] | None) -> dict[str, Any]:
    """One domain's row of summary.json: metrics with baselines, the candidate and its gate, the champion."""
    metrics, registry, details = reports["metrics"], reports["registry"], reports["confusion"]
    return {"domain": domain, "status": status, **metrics, "metric": params.domain(domain).metric,
            "candidate_version": registry.get("version"), "gate": gate_decision(registry),
            "gate_reason": registry.get("reason"), "registered_version": registry.get("version"),
            "promoted": registry.get("promoted"),
            "champion_version": champion["version"] if champion else None,
            "champion_metric": champion["metric"] if champion else None,
            "method": details.get("method"), "prior": (details.get("prior") or {}).get("source"),
            "warnings": details.get("warnings", []), "not_evaluated": details.get("not_evaluated", []),
            "drift_detected": reports["drift"].get("drift_detected", reports["drift"].get("dataset_drift")),
            "drift_reasons": reports["drift"].get("reasons") or []}


HEADER = ("| domain | status | macro-F1 (majority / zero-shot / K-shot) | accuracy (majority / zero-shot / K-shot) "
          "| balanced acc. | beats majority | rows (K) | labels | eval rows | method · prior "
          "| candidate (this run) → gate | champion (registry now) | drift |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")


def render_summary(rows: list[dict], caps: str, encoder: str) -> str:
    """The results table, then what a reader must act on: domains below the majority class, warnings, labels not
    evaluated, gate decisions, drift."""
    lines, notes = [], []
    for r in rows:
        if not r["status"].startswith("ok"):
            champion = f"v{r['champion_version']}" if r.get("champion_version") else "none"
            lines.append(f"| {r['domain']} | {r['status']} |" + " |" * 9 + f" {champion} | |")
            continue
        if r.get("task") == "entities":   # entity F1, precision and recall where accuracy and macro-F1 stand
            from components.ner_stages import summary_line as entity_line

            lines.append(entity_line(r))
        else:
            lines.append(summary_line(r))
        notes += summary_notes(r)
    text = f"# MetaAdapt run summary\n\nEncoder: {encoder}. Caps: {caps}.\n\n{HEADER}" + "\n".join(lines) + "\n"
    text += ("\nK-shot: the same adaptation from only K rows per label (the few-shot demonstration); the model "
             "itself uses every labelled row. The champion column is the registry's `champion` alias now.\n")
    return text + ("\n" + "\n".join(f"- {note}" for note in notes) + "\n" if notes else "")


def _triple(r: dict, metric: str) -> str:
    def number(key: str) -> str:
        value = r.get(key)
        return "n/a" if value is None else f"{value:.3f}"

    return f"{number(metric)} ({number('majority_' + metric)} / {number('zero_shot_' + metric)} / " \
           f"{number('kshot_' + metric)})"


def summary_line(r: dict) -> str:
    beats = "yes" if r.get("beats_majority", 1.0) else f"**NO** ({r['metric']})"
    candidate = f"v{r['candidate_version']} → {r['gate']}" if r.get("candidate_version") else "not registered"
    champion = "none"
    if r.get("champion_version"):
        value = r.get("champion_metric")
        champion = f"v{r['champion_version']}" + ("" if value is None else f" ({r['metric']} {value:.3f})")
    balanced = r.get("balanced_accuracy")
    return (f"| {r['domain']} | {r['status']} | {_triple(r, 'macro_f1')} | {_triple(r, 'accuracy')} "
            f"| {'n/a' if balanced is None else format(balanced, '.3f')} | {beats} "
            f"| {r.get('train_rows', '')} ({r.get('k', '')}) | {r.get('n_labels', '')} | {r.get('eval_rows', '')} "
            f"| {r.get('method') or ''} · {r.get('prior') or 'uniform'} | {candidate} | {champion} "
            f"| {'**yes**' if r.get('drift_detected') else 'no'} |")


def summary_notes(r: dict) -> list[str]:
    """Lines under the table: what needs a person's attention for this domain."""
    notes = []
    if not r.get("beats_majority", 1.0):
        notes.append(f"**{r['domain']}: does not beat always answering the majority class on {r['metric']}** "
                     f"({r[r['metric']]:.3f} vs {r.get('majority_' + r['metric'], float('nan')):.3f}); it is never "
                     f"promoted over a champion that does")
    notes += [f"{r['domain']}: {warning}" for warning in r.get("warnings", [])]
    if r.get("not_evaluated"):
        notes.append(f"{r['domain']}: not evaluated (no row in the evaluation split): {', '.join(r['not_evaluated'])}")
    if r.get("gate_reason"):
        notes.append(f"{r['domain']} gate ({r['gate']}): {r['gate_reason']}")
    if r.get("drift_detected"):
        notes.append(f"{r['domain']} drift: {'; '.join(r.get('drift_reasons') or ['see the report'])} "
                     f"([report](drift/{r['domain']}.html))")
    return notes


def caps_text(params: Params) -> str:
    return "none (full run)" if params.limits.full else json.dumps(params.limits.model_dump())
