"""The MetaAdapt pipeline as a Prefect flow over the DVC stages.

Each Prefect task runs one DVC stage as ``dvc repro`` would: DVC decides whether the stage is stale (one
``dvc status`` up front), the stage function runs in this process (torch, MLflow, GE and Evidently are imported
once per run, not once per stage) and ``dvc commit`` records its outputs in dvc.lock. Prefect gives retries,
logs, run history and scheduling; ``dvc repro`` runs the same stages without Prefect (dvc.yaml's commands). A
failing domain stops only its own chain; the summary still reports every domain.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from prefect import flow, get_run_logger, task

from components.config import PROJECT_ROOT, load_params
from components.run_context import triggered_by
from components.stages import DOMAIN_STAGES, StagePaths, read_json_if_present  # DOMAIN_STAGES: the stage order
from flows import dvc_stages


class StageFailed(RuntimeError):
    """A stage raised; the message carries the stage and its error."""


def stage_is_stale(root: Path, target: str) -> bool:
    """What `dvc repro` would decide: changed deps, params, outputs or code, or `always_changed`."""
    return bool(dvc_stages.stale(root, [target]))


def commit_stage(root: Path, target: str) -> bool:
    """Record a stage's outputs, produced outside `dvc repro`, in dvc.lock and the DVC cache; True when the
    recorded outputs changed."""
    return dvc_stages.commit(root, [target])[target]


@task(name="stage-in-process", task_run_name="{target}", retries=0)
def run_stage_in_process(target: str, root: str, force: bool = False) -> dict:
    """One DVC stage, run as `dvc repro` would run it but in this process: skip it when DVC finds it up to date,
    else call the stage function and `dvc commit` its outputs. One process imports torch, MLflow, GE and
    Evidently once, instead of once per stage (a first full chain of the tiny test domain: 153 s as
    `dvc repro` subprocesses, ≈60 s in-process, on the shared 2-core VM). Returns the seconds spent and whether
    the stage's recorded outputs changed (its downstream stages then have new inputs)."""
    import logging

    from components.stages import DOMAIN_STAGES, summary

    project = Path(root)
    started = time.perf_counter()
    if not force and not stage_is_stale(project, target):
        get_run_logger().info("%s: up to date (DVC)", target)
        return {"seconds": time.perf_counter() - started, "outs_changed": False}
    logging.getLogger("metaadapt").setLevel(logging.INFO)
    stage, _, domain = target.partition("@")
    params = load_params(project / "params.yaml")
    try:
        summary(params, project) if stage == "summary" else DOMAIN_STAGES[stage](params, domain, project)
    except Exception as error:  # noqa: BLE001 - any stage error fails this domain's chain with its message
        raise StageFailed(f"stage {target} failed: {type(error).__name__}: {error}") from error
    changed = commit_stage(project, target)
    return {"seconds": time.perf_counter() - started, "outs_changed": changed}


def stale_targets(root: Path, domains: list[str]) -> set[str]:
    """Every stage of `domains` that DVC would rerun, from one read of dvc.lock (asking per stage would parse
    the lock, which holds every domain, once per stage)."""
    return dvc_stages.stale(root, [f"{stage}@{domain}" for domain in domains for stage in DOMAIN_STAGES])


def run_domain(domain: str, root: str, force: bool, stale: set[str] | None = None) -> dict:
    """All stages of one domain in order, in this process (one import of the heavy libraries); stops at the first
    failure and reports it. A stage runs when it was stale before the run (`stale`, from one status of the
    domain's stages) or, after an upstream stage of this domain changed its outputs, when DVC now finds it stale.
    The caller refreshes domains.expanded.yaml first (once per run, not once per domain)."""
    if stale is None and not force:
        stale = stale_targets(Path(root), [domain])
    timings: dict[str, float] = {}
    upstream_changed = False
    for stage in DOMAIN_STAGES:
        target = f"{stage}@{domain}"
        if not force and target not in stale and not (upstream_changed and stage_is_stale(Path(root), target)):
            timings[stage] = 0.0
            continue
        try:
            outcome = run_stage_in_process(target, root, force=True)
        except StageFailed as error:
            get_run_logger().error(str(error))
            return {"status": "failed", "failed_stage": stage, "error": str(error)[-2000:], "seconds": timings}
        timings[stage] = outcome["seconds"]
        upstream_changed = upstream_changed or outcome["outs_changed"]
    return {"status": "ok", "seconds": timings}


def write_run_status(root: Path, results: dict) -> Path:
    """What this run did per domain, for the summary stage: a failed domain must not show its old metrics as ok."""
    reports = root / "reports"
    for kind in ("metrics", "registry", "drift"):
        (reports / kind).mkdir(parents=True, exist_ok=True)
    status = {name: {k: v for k, v in result.items() if k != "seconds"} for name, result in results.items()}
    timings = {name: {stage: round(s, 2) for stage, s in result["seconds"].items()} for name, result in results.items()}
    (reports / "timings.json").write_text(json.dumps(timings, indent=2, sort_keys=True), encoding="utf-8")
    path = reports / "run_status.json"
    path.write_text(json.dumps(status, indent=2, sort_keys=True), encoding="utf-8")
    return path


def publish_run_artifact(root: Path, params, results: dict) -> None:
    """The run's markdown artifact: the summary table, each domain's MLflow run and drift report, failures."""
    from components.registry import tracking_uri
    from components.safety import redact_uri
    from flows.orchestration import publish

    summary_file = root / "reports" / "summary.md"
    lines = [summary_file.read_text(encoding="utf-8") if summary_file.is_file() else "# MetaAdapt run", "",
             f"MLflow: `{redact_uri(tracking_uri(params.registry, root))}`", ""]
    for name, result in results.items():
        run_id = read_json_if_present(StagePaths(root, name).report("registry")).get("run_id")
        state = "ok" if result["status"] == "ok" else f"**failed at {result['failed_stage']}** (champion unchanged)"
        lines.append(f"- `{name}`: {state}; MLflow run `{run_id}`; drift report `reports/drift/{name}.html`")
    publish("\n".join(lines) + "\n", "pipeline-run", None, "MetaAdapt pipeline run")


@flow(name="metaadapt-pipeline", log_prints=True)
def pipeline(domains: list[str] | None = None, root: str = str(PROJECT_ROOT), force: bool = False,
             trigger: str = "manual") -> dict:
    """ingest → validate → episodes → meta-train → adapt → evaluate → register → drift, per domain; then a summary.

    `trigger` is recorded on each registration's MLflow run (`schedule` from the scheduled-retraining deployment)."""
    params = load_params(Path(root) / "params.yaml")
    from components.domains import write_expanded

    write_expanded(Path(root), params)   # template folders added since the last run become DVC stages
    selected = domains or list(params.domains)
    for name in selected:
        params.domain(name)  # unknown names fail before any work starts
    stale = None if force else stale_targets(Path(root), selected)
    with triggered_by(trigger, f"metaadapt-pipeline ({trigger})"):
        results = {name: run_domain(name, root, force, stale=stale) for name in selected}
    status_file = write_run_status(Path(root), results)
    try:
        run_stage_in_process("summary", root, force=True)  # always: a failed domain's old metrics are unchanged
    finally:
        status_file.unlink(missing_ok=True)
    publish_run_artifact(Path(root), params, results)
    failed = [name for name, result in results.items() if result["status"] != "ok"]
    if failed:
        raise RuntimeError(f"domain(s) failed: {', '.join(failed)}; see the log and reports/summary.md "
                           f"(earlier champions are unchanged)")
    return results
