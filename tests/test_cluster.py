"""A real Dask cluster, started the way its users start one: `dask scheduler` and two `dask worker` processes on
127.0.0.1 (separate processes, no LocalCluster, no nanny to restart a killed worker). `metaadapt fanout --register`
against `orchestration.dask_address` gives the sequential run's metrics; a worker SIGKILLed while it runs a
domain's stage has its tasks rerun on the other worker, and no domain is registered twice."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from uuid import UUID

import pytest
import yaml

from components.config import PROJECT_ROOT, load_params
from components.registry import registered_name
from tiny_project import make_project

pytestmark = pytest.mark.cluster
DOMAINS = ["reviews", "news", "reviews_k4", "news_k4"]
UPSTREAM = ("ingest", "validate", "tune_encoder", "episodes", "meta_train")
BIN = Path(sys.executable).parent


def _project(root: Path, tiny_bert_dir: Path) -> Path:
    """Four tiny domains (two data sets, K=2 and K=4), stages up to meta_train done in-process."""
    from components.domains import write_expanded
    from components.stages import DOMAIN_STAGES

    make_project(root, tiny_bert_dir, domains=("reviews", "news"))
    raw = yaml.safe_load((root / "params.yaml").read_text())
    for name in ("reviews", "news"):
        raw["domains"][f"{name}_k4"] = {**raw["domains"][name], "k": 4}
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    write_expanded(root)
    params = load_params(root / "params.yaml")
    for domain in DOMAINS:
        for stage in UPSTREAM:
            DOMAIN_STAGES[stage](params, domain, root)
    return root


def _scores(root: Path) -> dict:
    out = {}
    for domain in DOMAINS:
        metrics = json.loads((root / "reports" / "metrics" / f"{domain}.json").read_text())
        matrix = json.loads((root / "reports" / "confusion" / f"{domain}.json").read_text())["matrix"]
        out[domain] = (metrics["accuracy"], metrics["macro_f1"], matrix)
    return out


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, prefect_session):
    """`dask scheduler` + 2 `dask worker` processes; yields (address, {worker address: process})."""
    from distributed import Client

    folder = tmp_path_factory.mktemp("cluster")
    scheduler_file = folder / "scheduler.json"
    env = {**os.environ, "PYTHONPATH": f"{PROJECT_ROOT}:{PROJECT_ROOT / 'tests'}"}  # PREFECT_API_URL: the harness'
    processes = [subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0",
                                   "--no-dashboard", "--scheduler-file", str(scheduler_file)], env=env,
                                  stdout=subprocess.DEVNULL, stderr=open(folder / "scheduler.log", "w"))]
    deadline = time.monotonic() + 60
    while not scheduler_file.is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    for i in range(2):
        processes.append(subprocess.Popen(
            [str(BIN / "dask"), "worker", "--scheduler-file", str(scheduler_file), "--nthreads", "1", "--no-nanny",
             "--host", "127.0.0.1", "--no-dashboard", "--name", f"w{i}"], env=env, stdout=subprocess.DEVNULL,
            stderr=open(folder / f"worker{i}.log", "w")))
    address = json.loads(scheduler_file.read_text())["address"]
    with Client(address, timeout=60) as client:
        client.wait_for_workers(2, timeout=120)
        pids = client.run(os.getpid)   # worker address -> process id (no nanny: the worker itself)
    try:
        yield address, pids
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                _stop(process)


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_bert_dir) -> Path:
    return _project(tmp_path_factory.mktemp("fanout"), tiny_bert_dir)


@pytest.fixture(scope="module")
def expected(project: Path, prefect_session) -> dict:
    """The sequential run's metrics and confusion matrices (in this process, no Dask, nothing registered)."""
    from flows.fanout import adapt_evaluate

    adapt_evaluate(DOMAINS, str(project), parallel=False)
    scores = _scores(project)
    for domain in DOMAINS:
        (project / "reports" / "metrics" / f"{domain}.json").unlink()
    return scores


def _versions(root: Path, domain: str) -> list[int]:
    from mlflow import MlflowClient

    from components.registry import tracking_uri

    params = load_params(root / "params.yaml")
    uri = tracking_uri(params.registry, root)
    client = MlflowClient(uri, uri)   # registry too: an earlier test may have left MLFLOW_REGISTRY_URI set
    return sorted(int(v.version) for v in client.search_model_versions(f"name='{registered_name(domain)}'"))


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 20 s: a `prefect worker` on a loaded machine can take minutes to wind down."""
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=20)


def _version_tags(root: Path, domain: str, version: int) -> dict:
    from mlflow import MlflowClient

    from components.registry import tracking_uri

    uri = tracking_uri(load_params(root / "params.yaml").registry, root)
    client = MlflowClient(uri, uri)
    return client.get_model_version(registered_name(domain), str(version)).tags


def _fanout_through_config(root: Path, address: str) -> dict:
    """`metaadapt fanout --register` as a user runs it once params.yaml names the scheduler."""
    from flows.fanout import run_fanout

    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["orchestration"]["dask_address"] = address
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return run_fanout(DOMAINS, root, register=True)


def test_fanout_on_a_started_cluster_equals_the_sequential_run(cluster, project, expected) -> None:
    from components.stages import register

    address, _ = cluster
    result = _fanout_through_config(project, address)
    assert _scores(project) == expected
    assert all(_versions(project, d) == [1] for d in DOMAINS)
    workers = {r["worker"] for d in DOMAINS for r in result["domains"][d].values()}
    print(f"\nfan-out of {len(DOMAINS)} domains on {address}: {result['compute_seconds']:.1f} s, workers {workers}")
    assert len(workers) == 2   # both workers took domains
    # what a task rerun after its worker died does: the same key returns the version, registers nothing
    key = _version_tags(project, "news", 1)["registration_key"]
    again = register(load_params(project / "params.yaml"), "news", project, registration_key=key)
    assert again["version"] == 1 and _versions(project, "news") == [1]


def test_a_worker_killed_mid_run_has_its_domains_rerun_on_the_other(cluster, project, expected) -> None:
    from distributed import Client

    address, pids = cluster
    killed: dict[str, str] = {}

    def kill_first_busy_worker() -> None:
        with Client(address, timeout=60) as client:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                busy = {w: keys for w, keys in client.processing().items() if keys and w in pids}
                if busy:
                    worker, keys = sorted(busy.items())[0]
                    time.sleep(0.5)                    # inside the stage, not before it
                    os.kill(pids[worker], signal.SIGKILL)
                    killed.update(worker=worker, task=str(keys[0]))
                    return
                time.sleep(0.05)

    killer = threading.Thread(target=kill_first_busy_worker)
    killer.start()
    result = _fanout_through_config(project, address)   # a second fan-out: one new version per domain
    killer.join()
    assert killed, "no worker was ever busy"
    print(f"\nkilled {killed['worker']} while it ran {killed['task']}; fan-out finished in "
          f"{result['compute_seconds']:.1f} s")
    assert _scores(project) == expected
    assert all(_versions(project, d) == [1, 2] for d in DOMAINS), {d: _versions(project, d) for d in DOMAINS}
    survivors = {r["worker"] for d in DOMAINS for r in result["domains"][d].values()} - {killed["worker"]}
    assert len(survivors) == 1


def test_deployments_on_a_process_work_pool_run_in_a_prefect_worker(tmp_path, tiny_bert_dir, prefect_session) -> None:
    """`metaadapt serve --pool P` registers the deployments on a process work pool; a separately started
    `prefect worker start --pool P` runs a flow run of one of them (the batch-triggered adaptation) to a
    registered champion."""
    from flows.deployments import deploy_to_pool

    root = make_project(tmp_path, tiny_bert_dir)
    ids = deploy_to_pool("metaadapt-test-pool", root)
    assert len(ids) == 5
    try:
        _run_through_a_pool_worker(root)
    finally:   # the harness is shared: served deployments of the same names must not inherit this pool's settings
        _delete_deployments(ids, "metaadapt-test-pool")


def _delete_deployments(ids: list[str], pool: str) -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        for deployment_id in ids:
            client.delete_deployment(UUID(deployment_id))
        client.delete_work_pool(pool)


def _run_through_a_pool_worker(root: Path) -> None:
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL

    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},  # no store of an earlier test
           "PREFECT_API_URL": PREFECT_API_URL.value(), "PYTHONPATH": str(PROJECT_ROOT)}
    log = root / "worker.log"
    worker = subprocess.Popen([str(BIN / "prefect"), "worker", "start", "--pool", "metaadapt-test-pool", "--type",
                               "process", "--limit", "2"], env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    try:
        run = run_deployment("metaadapt-adapt-domain/adapt-on-new-batch", timeout=600,
                             parameters={"domain": "reviews", "root": str(root), "reason": "work pool test"})
    finally:
        _stop(worker)
    assert run.state.is_completed(), (run.state, log.read_text()[-3000:])
    assert "metaadapt-test-pool" in (run.work_pool_name or "")
    assert _versions(root, "reviews") == [1], log.read_text()[-4000:]
    registry = json.loads((root / "reports" / "registry" / "reviews.json").read_text())
    assert registry["version"] == 1 and registry["promoted"]
