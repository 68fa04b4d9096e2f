"""Every server the project starts listens on the loopback interface by default.

Checked on the listening sockets of the real processes (psutil): Prefect's temporary server (the test harness
starts the same `SubprocessASGIServer` a plain `python -m flows...` starts), the Dask LocalCluster of
`metaadapt fanout` (scheduler, workers, dashboard), and `mlflow models serve` without `-h` (MLflow's default),
which must also refuse a connection on this machine's non-loopback address when it has one.
"""
from __future__ import annotations

import importlib.util
import ipaddress
import os
import socket
from pathlib import Path

import mlflow
import psutil
import pytest
import torch

from components import registry
from components.config import PROJECT_ROOT, RegistryConfig, load_params


def listening(pids: set[int]) -> list[tuple[int, str, int]]:
    """(pid, ip, port) of every TCP socket in LISTEN state owned by `pids`."""
    found = []
    for pid in pids:
        try:
            connections = psutil.Process(pid).net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        found += [(pid, c.laddr.ip, c.laddr.port) for c in connections if c.status == psutil.CONN_LISTEN]
    return found


def family(pid: int) -> set[int]:
    process = psutil.Process(pid)
    return {pid, *(child.pid for child in process.children(recursive=True))}


def assert_loopback(sockets: list[tuple[int, str, int]], what: str) -> None:
    assert sockets, f"{what}: no listening socket found (nothing to check)"
    exposed = [s for s in sockets if not ipaddress.ip_address(s[1]).is_loopback]
    assert not exposed, f"{what} listens beyond the loopback interface: {exposed}"


def outside_address() -> str | None:
    """A non-loopback IPv4 address of this machine, if it has one."""
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family == socket.AF_INET and not ipaddress.ip_address(address.address).is_loopback:
                return address.address
    return None


def test_configured_environment_keeps_prefect_servers_on_the_loopback(monkeypatch) -> None:
    from flows.env import configure_environment

    for name in ("PREFECT_SERVER_API_HOST", "PREFECT_RUNNER_SERVER_HOST"):
        monkeypatch.delenv(name, raising=False)
    configure_environment()
    assert os.environ["PREFECT_SERVER_API_HOST"] == "127.0.0.1"
    assert os.environ["PREFECT_RUNNER_SERVER_HOST"] == "127.0.0.1"
    monkeypatch.setenv("PREFECT_SERVER_API_HOST", "0.0.0.0")      # a user's deliberate choice wins
    configure_environment()
    assert os.environ["PREFECT_SERVER_API_HOST"] == "0.0.0.0"


def test_prefect_temporary_server_listens_on_the_loopback_only(prefect_session) -> None:
    from prefect.settings import PREFECT_API_URL

    assert_loopback(listening(family(os.getpid())), "Prefect's temporary server")
    assert PREFECT_API_URL.value().startswith("http://127.0.0.1:")


def test_dask_cluster_of_the_fanout_listens_on_the_loopback_only() -> None:
    from distributed import LocalCluster

    from flows.fanout import dask_runner

    runner = dask_runner(load_params(PROJECT_ROOT / "params.yaml"), n_workers=1)
    with LocalCluster(**runner.cluster_kwargs) as cluster:
        sockets = listening(family(os.getpid()))
        dashboard_port = int(cluster.dashboard_link.split(":")[2].split("/")[0])
        assert any(port == dashboard_port for _, _, port in sockets), (cluster.dashboard_link, sockets)
        assert_loopback(sockets, "Dask LocalCluster (scheduler, worker, dashboard)")


def load_benchmark():
    spec = importlib.util.spec_from_file_location("load_benchmark", PROJECT_ROOT / "benchmarks" / "load.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mlflow_models_serve_listens_on_the_loopback_by_default(tmp_path: Path, tiny_bert_dir) -> None:
    from components.meta import CosineClassifier, ProjectionHead
    from components.model_io import AdaptedModel, save_model

    config = RegistryConfig(experiment="localhost")
    torch.manual_seed(0)
    encoder = {"name": str(tiny_bert_dir), "max_length": 16, "batch_size": 8, "device": "cpu", "num_threads": 0}
    model = AdaptedModel(ProjectionHead(32), CosineClassifier(["neg", "pos"], torch.randn(2, 32), 10.0), encoder, "head")
    try:
        registry.use_experiment(config, tmp_path)
        registry.register_domain_model(domain="toy", model_dir=save_model(model, tmp_path / "model"),
                                       metrics={"macro_f1": 0.5}, params={}, tags={}, artifacts={}, config=config,
                                       root=tmp_path)
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID"):
            os.environ.pop(name, None)
    bench = load_benchmark()
    port = bench.free_port()
    uri = registry.tracking_uri(config, tmp_path)
    with bench.served_model("models:/metaadapt-toy@champion", uri, port, host=None,
                            log_path=tmp_path / "serve.log") as server:
        assert bench.predict(port, ["good", "bad"]) and len(bench.predict(port, ["a", "b", "c"])) == 3
        sockets = [s for s in listening(family(server.pid)) if s[2] == port]
        assert_loopback(sockets, "mlflow models serve")
        outside = outside_address()
        if outside:
            with pytest.raises(OSError):
                socket.create_connection((outside, port), timeout=3).close()
