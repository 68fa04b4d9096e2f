"""Scale-out: adapt + evaluate of several domains at once on Dask workers, recorded in DVC afterwards.

`dvc repro` holds a repository-wide lock, so two DVC processes cannot run stages side by side. Here the stage
functions themselves (`components.stages.adapt` / `evaluate`, the exact code `dvc repro` runs) execute in Dask
workers — a `LocalCluster` by default, or the scheduler at `orchestration.dask_address` — and afterwards one
batched commit (flows.dvc_stages: DVC's save/commit per stage, one dvc.lock write), under the DVC file lock,
records their outputs in dvc.lock as a `dvc repro` would have. Same inputs, same seed, same code: the metrics equal the sequential run's
(tests/test_dask.py checks it).
"""
from __future__ import annotations

import time
from pathlib import Path

from prefect import flow, get_run_logger, task

from components.config import PROJECT_ROOT, Params, load_params
from flows import dvc_stages
from flows.orchestration import check_domain

FANOUT_STAGES = ("adapt", "evaluate")


@task(name="stage-in-worker", task_run_name="{stage}@{domain}")
def run_stage_function(stage: str, domain: str, root: str, registration_key: str | None = None) -> dict:
    """One stage function in this worker process; returns its result and wall seconds. A task Dask reruns
    after its worker died recomputes the same files (same inputs and seed); `register` carries a key so that
    a rerun returns the version the dead worker registered instead of registering a second one."""
    import logging

    from components.stages import DOMAIN_STAGES

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    project = Path(root)
    started = time.perf_counter()
    extra = {"registration_key": registration_key} if stage == "register" else {}
    result = DOMAIN_STAGES[stage](load_params(project / "params.yaml"), domain, project, **extra)
    return {"stage": stage, "domain": domain, "seconds": time.perf_counter() - started, "result": result,
            "worker": _worker_address()}


def _worker_address() -> str:
    """The Dask worker running this task ("in-process" outside Dask): which machine did which domain."""
    try:
        from distributed import get_worker

        return get_worker().address
    except ValueError:
        return "in-process"


def fanout_stages(register: bool) -> tuple[str, ...]:
    return (*FANOUT_STAGES, "register") if register else FANOUT_STAGES


def registration_key(domain: str) -> str:
    """One key per (fan-out flow run, domain): Dask's reruns of a task share it, a later fan-out does not."""
    from prefect.runtime import flow_run

    return f"fanout-{flow_run.id}-{domain}"


def dvc_commit(root: Path, targets: list[str]) -> None:
    """Record stage outputs produced in the workers in dvc.lock (and the DVC cache): one lock write for all."""
    dvc_stages.commit(root, targets)


def dask_runner(params: Params, address: str | None = None, n_workers: int | None = None):
    """A DaskTaskRunner on the configured scheduler, or on a LocalCluster of single-threaded worker processes."""
    from prefect_dask import DaskTaskRunner

    address = address or params.orchestration.dask_address
    if address:
        return DaskTaskRunner(address=address)
    # scheduler, workers and dashboard on the loopback interface only (a dashboard on ":0" would follow `host`)
    return DaskTaskRunner(cluster_class="distributed.LocalCluster",
                          cluster_kwargs={"n_workers": n_workers or params.orchestration.dask_workers,
                                          "threads_per_worker": 1, "host": "127.0.0.1",
                                          "dashboard_address": "127.0.0.1:0", "processes": True})


@flow(name="metaadapt-adapt-evaluate-fanout", log_prints=True)
def adapt_evaluate(domains: list[str], root: str = str(PROJECT_ROOT), parallel: bool = True,
                   register_models: bool = False) -> dict[str, dict]:
    """adapt → evaluate (→ register) per domain; domains in parallel through the flow's task runner (submit), or
    one by one."""
    params = load_params(Path(root) / "params.yaml")
    for domain in domains:
        check_domain(params, domain)
    stages = fanout_stages(register_models)
    started = time.perf_counter()
    if parallel:
        futures: dict[str, dict] = {d: {} for d in domains}
        for d in domains:
            previous = []
            for stage in stages:
                key = registration_key(d) if stage == "register" else None
                futures[d][stage] = run_stage_function.submit(stage, d, root, key, wait_for=previous)
                previous = [futures[d][stage]]
        results = {d: {stage: future.result() for stage, future in futures[d].items()} for d in domains}
    else:
        results = {d: {stage: run_stage_function(stage, d, root, registration_key(d) if stage == "register" else None)
                       for stage in stages} for d in domains}
    compute_seconds = time.perf_counter() - started
    dvc_commit(Path(root), [f"{stage}@{d}" for d in domains for stage in stages])
    get_run_logger().info("adapt+evaluate of %s: %.1f s (%s)", domains, compute_seconds,
                          "parallel" if parallel else "sequential")
    return {"domains": results, "compute_seconds": compute_seconds,
            "wall_seconds": time.perf_counter() - started, "parallel": parallel}


def run_fanout(domains: list[str], root: Path, address: str | None = None, n_workers: int | None = None,
               register: bool = False) -> dict:
    """The fan-out on Dask (what `metaadapt fanout` and the benchmark call)."""
    from flows.server_guard import share_temporary_server

    params = load_params(root / "params.yaml")
    share_temporary_server()   # workers report to this process's guarded server, never to servers of their own
    runner = dask_runner(params, address, n_workers)
    return adapt_evaluate.with_options(task_runner=runner)(domains, str(root), parallel=True, register_models=register)
