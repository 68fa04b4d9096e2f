"""Scale-out: adapt + evaluate of several domains at once on Dask workers, recorded in DVC afterwards.

`dvc repro` holds a repository-wide lock, so two DVC processes cannot run stages side by side. Here the stage
functions themselves (`components.stages.adapt` / `evaluate`, the exact code `dvc repro` runs) execute in Dask
workers — a `LocalCluster` by default, or the scheduler at `orchestration.dask_address` — and afterwards one
`dvc commit` per stage, serialised by the DVC file lock, records their outputs in dvc.lock exactly as a `dvc
repro` would have. Same inputs, same seed, same code: the metrics equal the sequential run's
(tests/test_dask.py checks it).
"""
from __future__ import annotations

import time
from pathlib import Path

from prefect import flow, get_run_logger, task

from components.config import PROJECT_ROOT, Params, load_params
from flows.orchestration import check_domain
from flows.pipeline import commit_stage

FANOUT_STAGES = ("adapt", "evaluate")


@task(name="stage-in-worker", task_run_name="{stage}@{domain}")
def run_stage_function(stage: str, domain: str, root: str) -> dict:
    """One stage function in this worker process; returns its result and wall seconds."""
    import logging

    from components.stages import DOMAIN_STAGES

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    project = Path(root)
    started = time.perf_counter()
    result = DOMAIN_STAGES[stage](load_params(project / "params.yaml"), domain, project)
    return {"stage": stage, "domain": domain, "seconds": time.perf_counter() - started, "result": result}


def dvc_commit(root: Path, targets: list[str]) -> None:
    """Record stage outputs produced in the workers in dvc.lock (and the DVC cache), one stage at a time."""
    for target in targets:
        commit_stage(root, target)


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
def adapt_evaluate(domains: list[str], root: str = str(PROJECT_ROOT), parallel: bool = True) -> dict[str, dict]:
    """adapt → evaluate per domain; domains in parallel through the flow's task runner (submit), or one by one."""
    params = load_params(Path(root) / "params.yaml")
    for domain in domains:
        check_domain(params, domain)
    started = time.perf_counter()
    if parallel:
        adapted = {d: run_stage_function.submit("adapt", d, root) for d in domains}
        evaluated = {d: run_stage_function.submit("evaluate", d, root, wait_for=[adapted[d]]) for d in domains}
        results = {d: {"adapt": adapted[d].result(), "evaluate": evaluated[d].result()} for d in domains}
    else:
        results = {d: {stage: run_stage_function(stage, d, root) for stage in FANOUT_STAGES} for d in domains}
    compute_seconds = time.perf_counter() - started
    dvc_commit(Path(root), [f"{stage}@{d}" for d in domains for stage in FANOUT_STAGES])
    get_run_logger().info("adapt+evaluate of %s: %.1f s (%s)", domains, compute_seconds,
                          "parallel" if parallel else "sequential")
    return {"domains": results, "compute_seconds": compute_seconds,
            "wall_seconds": time.perf_counter() - started, "parallel": parallel}


def run_fanout(domains: list[str], root: Path, address: str | None = None, n_workers: int | None = None) -> dict:
    """The fan-out on Dask (what `metaadapt fanout` and the benchmark call)."""
    from flows.server_guard import share_temporary_server

    params = load_params(root / "params.yaml")
    share_temporary_server()   # workers report to this process's guarded server, never to servers of their own
    runner = dask_runner(params, address, n_workers)
    return adapt_evaluate.with_options(task_runner=runner)(domains, str(root), parallel=True)
