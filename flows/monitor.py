"""Drift monitoring and the response to drift.

`monitor` (scheduled, `orchestration.monitor_cron`) compares each domain's newest unlabelled traffic batch
(`<traffic_dir>/<domain>/`, newest file) with the domain's reference through `components.monitoring`; past the
thresholds in params.yaml (`drift:`) it emits `metaadapt.drift.detected` for the domain. `respond_to_drift`
(triggered by that event) adapts the domain when labelled batches are waiting, and otherwise publishes an alert
artifact saying what drifted — adapting on no new labels would only reproduce the same model.
"""
from __future__ import annotations

import html
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.events import emit_event

from components.batches import pending_batches
from components.config import PROJECT_ROOT, Params, load_params
from flows.incoming import BATCH_SUFFIXES
from flows.orchestration import DRIFT_DETECTED, check_domain, domain_resource, publish, retry_transient_only


def newest_traffic_batch(params: Params, root: Path, domain: str) -> Path | None:
    folder = root / params.orchestration.traffic_dir / domain
    if not folder.is_dir():
        return None
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in BATCH_SUFFIXES]
    return max(files, key=lambda p: p.stat().st_mtime) if files else None


@task(name="monitor-domain", retries=2, retry_delay_seconds=[1, 5], retry_condition_fn=retry_transient_only)
def monitor_domain(domain: str, file: str, root: str) -> dict:
    """Drift of one traffic batch against the domain's reference (Evidently report written beside the others)."""
    from components.data import read_texts
    from components.monitoring import monitor_batch

    import pandas as pd

    project = Path(root)
    params = load_params(project / "params.yaml")
    current = pd.DataFrame({"text": read_texts(Path(file))})
    result = monitor_batch(domain, current, params, project, source=Path(file).name)
    return {"domain": domain, "source": Path(file).name, **result.to_dict(),
            "html_path": str(result.html_path), "json_path": str(result.json_path)}


@flow(name="metaadapt-monitor", log_prints=True)
def monitor(domains: list[str] | None = None, root: str = str(PROJECT_ROOT)) -> dict[str, dict]:
    """Monitor each domain's newest traffic batch; emit one drift event per incident (components.monitor_state).

    A batch already monitored against the same champion is skipped (no report, no MLflow run, no event)."""
    project = Path(root)
    params = load_params(project / "params.yaml")
    results: dict[str, dict] = {}
    for domain in domains or list(params.domains):
        check_domain(params, domain)
        file = newest_traffic_batch(params, project, domain)
        if file is None:
            get_run_logger().info("%s: no traffic batch in %s/%s; nothing to monitor", domain,
                                  params.orchestration.traffic_dir, domain)
            continue
        results[domain] = monitor_once(params, project, domain, file)
    publish(monitor_markdown(results), "monitor", None, "drift monitoring of the newest traffic batches")
    return results


def monitor_once(params: Params, project: Path, domain: str, file: Path) -> dict:
    """Monitor `file` unless this champion already saw it; alert only when the incident is new, changed or due."""
    from datetime import datetime, timezone

    from components.monitor_state import (alert_decision, file_sha256, load_state, previous_check, remember_check,
                                          save_state)
    from components.registry import champion_info

    logger = get_run_logger()
    state, sha = load_state(project, domain), file_sha256(file)
    champion = (champion_info(domain, params.registry, project) or {}).get("version")
    earlier = previous_check(state, sha, champion)
    if earlier is not None:
        logger.info("%s: %s already monitored against champion v%s at %s (drift %s); skipped", domain, file.name,
                    champion, earlier["at"], earlier["drift_detected"])
        return {"domain": domain, "source": file.name, "skipped": True, "drift_detected": earlier["drift_detected"],
                "reasons": [f"already monitored at {earlier['at']}"], "html_path": earlier["report"], "alert": False}
    result = monitor_domain(domain, str(file), str(project))
    now = datetime.now(timezone.utc)
    remember_check(state, sha, champion, result, now)
    alert, why = alert_decision(state, result["drift_detected"], result.get("drifted_signals", []), now,
                                params.monitoring.alert_quiet_hours)
    save_state(project, domain, state)
    logger.info("%s: %s", domain, why)
    if alert:
        emit_event(event=DRIFT_DETECTED, resource=domain_resource(domain),
                   payload={"reasons_text": "; ".join(map(str, result.get("reasons", []))),
                            "drifted_signals": list(map(str, result.get("drifted_signals", []))),
                            "report": result["html_path"], "source": result["source"]})
    return {**result, "alert": alert, "alert_reason": why}


def monitor_markdown(results: dict[str, dict]) -> str:
    lines = ["# Drift monitoring", "", "| domain | batch | drift | alert | reasons | report |",
             "|---|---|---|---|---|---|"]
    for domain, r in results.items():
        # the file name comes from a user: escaped, so a `<script>` in it shows as text in the Prefect UI
        reasons = html.escape("; ".join(r.get("reasons", []))) or "—"
        alert = "skipped (seen)" if r.get("skipped") else ("**sent**" if r.get("alert") else
                                                             html.escape(str(r.get("alert_reason", "no"))))
        lines.append(f"| {domain} | {html.escape(str(r['source']))} | {'**yes**' if r['drift_detected'] else 'no'} "
                     f"| {alert} | {reasons} | `{r['html_path']}` |")
    if not results:
        lines.append("| (no traffic batches) | | | | | |")
    return "\n".join(lines) + "\n"


def alert_markdown(domain: str, reasons_text: str, report: str | None) -> str:
    return (f"# Drift alert: `{domain}`\n\nDrift passed the thresholds in params.yaml (`drift:`), and no labelled "
            f"batch is waiting, so nothing was retrained.\n\n- what drifted: {reasons_text or 'n/a'}\n"
            f"- report: `{report or 'n/a'}`\n\nWhat to do: label K examples "
            f"per label of the new traffic and hand them over (`metaadapt ingest --domain {domain} FILE`, or drop "
            f"the CSV in `data/incoming/{domain}/`); the adaptation then runs by itself.\n")


@flow(name="metaadapt-drift-response", log_prints=True)
def respond_to_drift(domain: str, root: str = str(PROJECT_ROOT), reasons_text: str = "",
                     report: str | None = None) -> dict:
    """Drift event → adapt when labelled batches wait, else an alert artifact saying what drifted."""
    project = Path(root)
    check_domain(load_params(project / "params.yaml"), domain)
    waiting = pending_batches(project, domain)
    if waiting:
        from flows.adaptation import adapt_domain

        outcome = adapt_domain(domain, root, trigger="drift",
                               reason=f"drift detected ({report or 'no report'}); {len(waiting)} labelled batch(es) "
                                      f"waiting")
        return {"action": "adapted", "outcome": outcome}
    publish(alert_markdown(domain, reasons_text, report), "drift-alert", domain,
            f"drift in {domain} with no labelled data waiting")
    get_run_logger().warning("drift in %s and no labelled batch waiting: alert published (%s)", domain, reasons_text)
    return {"action": "alert", "domain": domain, "reasons_text": reasons_text, "report": report}
