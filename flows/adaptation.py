"""Per-domain adaptation: the domain's DVC stages (ingest … register, drift), one run per domain at a time.

Started by a `metaadapt.batch.accepted` event (a new labelled batch), by a drift event with labelled data
waiting, by `metaadapt ingest --now`, or by hand. DVC decides which stages are stale (a new batch changes the
domain's ingest output, so validate → adapt → evaluate → register → drift rerun; the other domains are not
touched). The register stage's promotion gate decides champion vs challenger; this flow reports it.
A failed stage leaves the champion alias and the stored batches as they were (the batches stay `accepted`,
so the next run picks them up again) and the run fails with the stage's output.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from components.batches import mark_adapted, merged_hashes, pending_batches
from components.config import PROJECT_ROOT, load_params
from components.domains import write_expanded
from components.registry import tracking_uri
from components.run_context import triggered_by
from components.safety import redact_uri
from components.stages import StagePaths, read_json_if_present
from flows.incoming import version_batches
from flows.orchestration import adaptation_slot, check_domain, publish
from flows.pipeline import run_domain, run_stage_in_process


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1000) % 1000:03d}Z"


def record_history(root: Path, domain: str, entry: dict) -> Path:
    """Append one line per adaptation to reports/orchestration/<domain>.jsonl (when, why, what came out)."""
    path = root / "reports" / "orchestration" / f"{domain}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry, sort_keys=True) + "\n")
    return path


def _merge_timings(root: Path, domain: str, seconds: dict[str, float]) -> None:
    path = root / "reports" / "timings.json"
    timings = read_json_if_present(path)
    timings[domain] = {stage: round(value, 2) for stage, value in seconds.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(timings, indent=2, sort_keys=True), encoding="utf-8")


def adaptation_markdown(domain: str, outcome: dict, mlflow_uri: str) -> str:
    """The run's artifact: verdict, promotion reason, metrics, links to the MLflow run and the drift report."""
    lines = [f"# Adaptation of `{domain}`: {outcome['status']}", "",
             f"- trigger: {outcome['reason']}",
             f"- batches used: {', '.join(outcome['batches']) or 'none new'}",
             f"- started {outcome['started']}, finished {outcome['finished']}"]
    if outcome["status"] != "ok":
        lines += [f"- **failed at stage `{outcome.get('failed_stage')}`**; the champion and the data are unchanged "
                  f"(the batches stay pending)", "", "```", outcome.get("error", "")[-1500:], "```"]
        return "\n".join(lines) + "\n"
    registry, metrics, drift = outcome["registry"], outcome["metrics"], outcome["drift"]
    verdict = "**promoted to champion**" if registry.get("promoted") else "kept as **challenger** (champion unchanged)"
    lines += [f"- model version v{registry.get('version')}: {verdict}",
              f"- gate: {registry.get('reason', 'n/a')}",
              f"- champion now: v{registry.get('champion_version')}",
              f"- accuracy {metrics.get('accuracy', float('nan')):.4f}, "
              f"macro-F1 {metrics.get('macro_f1', float('nan')):.4f} "
              f"on {metrics.get('eval_rows')} held-out rows",
              f"- MLflow run `{registry.get('run_id')}` in `{mlflow_uri}` "
              f"(model `models:/{registry.get('name')}/{registry.get('version')}`)",
              f"- drift report: `{outcome['drift_html']}` (drift: {drift.get('drift_detected', drift.get('dataset_drift'))})"]
    return "\n".join(lines) + "\n"


@flow(name="metaadapt-adapt-domain", log_prints=True)
def adapt_domain(domain: str, root: str = str(PROJECT_ROOT), reason: str = "manual", force: bool = False,
                 trigger: str = "manual") -> dict:
    """Adapt one domain through its DVC stages, gate the new model, publish the result; one run per domain.

    `trigger` (components.run_context.TRIGGERS: new_batch, drift, manual, ...) and `reason` with the pending batches'
    hashes become the MLflow run's `trigger` / `trigger_detail` tags."""
    logger = get_run_logger()
    project = Path(root)
    params = load_params(project / "params.yaml")
    check_domain(params, domain)
    with adaptation_slot(project, domain, params):
        batches = [record.sha256 for record in pending_batches(project, domain)]
        started = _now()
        detail = f"{reason}; pending batches: {', '.join(sha[:16] for sha in batches) or 'none'}"
        write_expanded(project, params)   # DVC reads each domain's params from it: an edited entry must show
        with triggered_by(trigger, detail):
            result = run_domain(domain, root, force)  # in this process: one import of torch/MLflow/GE per run
        finished = _now()
        if result["status"] == "ok":  # exactly the pending batches this run's pool holds; later ones stay pending
            merged = set(merged_hashes(project, domain))
            batches = [sha for sha in (r.sha256 for r in pending_batches(project, domain)) if sha in merged]
        outcome = {"domain": domain, "reason": reason, "status": result["status"], "started": started,
                   "finished": finished, "batches": [sha[:16] for sha in batches], "flow_run": flow_run.get_id(),
                   **{k: v for k, v in result.items() if k in ("failed_stage", "error")}}
        if result["status"] == "ok":
            if mark_adapted(project, domain, batches, flow_run.get_id()):
                version_batches(root)  # the ledger's new statuses into data/batches.dvc
            _merge_timings(project, domain, result["seconds"])
            run_stage_in_process("summary", root, force=True)  # in-process: no second import of the stack
    paths = StagePaths(project, domain)
    outcome.update(registry=read_json_if_present(paths.report("registry")),
                   metrics=read_json_if_present(paths.report("metrics")),
                   drift=read_json_if_present(paths.report("drift")),
                   drift_html=str(paths.report("drift", ".html")), seconds=result["seconds"])
    keys = ("started", "finished", "status", "reason", "flow_run", "batches")
    promoted = outcome["registry"].get("promoted") if result["status"] == "ok" else None
    record_history(project, domain, {k: outcome[k] for k in keys} | {"promoted": promoted})
    mlflow_uri = redact_uri(tracking_uri(params.registry, project))   # an artifact must not show credentials
    publish(adaptation_markdown(domain, outcome, mlflow_uri), "adaptation", domain,
            f"adaptation of {domain}: {outcome['status']}")
    if result["status"] != "ok":
        raise RuntimeError(f"adaptation of {domain} failed at stage {result['failed_stage']}; champion and data "
                           f"unchanged, batches stay pending:\n{result['error'][-1500:]}")
    logger.info("adaptation of %s: v%s promoted=%s (%s)", domain, outcome["registry"].get("version"),
                outcome["registry"].get("promoted"), outcome["registry"].get("reason"))
    return outcome
