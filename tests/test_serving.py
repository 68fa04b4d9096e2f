"""The registered champion behind `mlflow models serve`, and the pyfunc round trip it relies on.

The served test starts the real server (`--env-manager local`, so it uses this venv) on a free 127.0.0.1 port
against a temporary registry holding a tiny-BERT model, posts a request and always stops the server.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components import registry
from components.config import load_params
from components.model_io import load_model
from serving_project import DOMAIN, LABELS, module_project, reset_mlflow

READY_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_bert_dir) -> Path:
    return module_project(tmp_path_factory, tiny_bert_dir)


@pytest.fixture(autouse=True)
def clean_mlflow():
    yield
    reset_mlflow()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_pyfunc_round_trip_matches_the_saved_model(project):
    """Registry -> pyfunc -> predictions equal the model directory's own, and the support set travels along."""
    from components.predictor import Predictor

    params = load_params(project / "params.yaml")
    model = registry.load_champion(DOMAIN, params.registry, project)
    texts = ["strong profit growth", "awful loss", ""]
    served = model.predict(pd.DataFrame({"text": texts}))
    local = Predictor.from_directory(project / "models" / "candidate", device="cpu").predict_proba(texts)
    np.testing.assert_allclose(served[[f"p_{l}" for l in LABELS]].to_numpy(), local, rtol=1e-5, atol=1e-6)
    assert served["label"].tolist() == [LABELS[i] for i in local.argmax(1)]

    predictor = model.unwrap_python_model().predictor
    assert predictor.model.support == load_model(project / "models" / "candidate").support
    assert len(predictor.model.support["texts"]) == 8


def test_mlflow_models_serve_answers_on_localhost(project):
    port = free_port()
    uri = registry.tracking_uri(load_params(project / "params.yaml").registry, project)
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri, "DO_NOT_TRACK": "true",
           "MLFLOW_DISABLE_TELEMETRY": "true", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           # the server execs `uvicorn` by name: the venv's bin must be on PATH, as in an activated venv
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    mlflow_exe = str(Path(sys.executable).with_name("mlflow"))
    server = subprocess.Popen([mlflow_exe, "models", "serve", "-m", f"models:/metaadapt-{DOMAIN}@champion",
                               "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
                              cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        wait_ready(server, port)
        body = json.dumps({"dataframe_split": {"columns": ["text"], "data": [["hello"], ["strong profit"]]}})
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body.encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as response:
            predictions = json.loads(response.read())["predictions"]
        assert len(predictions) == 2
        for row in predictions:
            assert row["label"] in LABELS
            assert sum(row[f"p_{l}"] for l in LABELS) == pytest.approx(1.0, abs=1e-5)
            assert row["score"] == pytest.approx(max(row[f"p_{l}"] for l in LABELS))
    finally:
        stop(server)


def wait_ready(server: subprocess.Popen, port: int) -> None:
    """Poll /ping until it answers 200; fail with the server's output if it exits or the timeout passes."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"mlflow models serve exited with {server.returncode}:\n{server.stdout.read().decode()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(1)
    raise AssertionError(f"mlflow models serve not ready after {READY_TIMEOUT_S} s")


def stop(server: subprocess.Popen) -> None:
    """Terminate the server's whole process group (uvicorn workers included), then reap it."""
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
