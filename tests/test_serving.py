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
    texts = ["strong profit growth", "awful loss", "ok"]
    served = model.predict(pd.DataFrame({"text": texts}))
    local = Predictor.from_directory(project / "models" / "candidate", device="cpu").predict_proba(texts)
    np.testing.assert_allclose(served[[f"p_{l}" for l in LABELS]].to_numpy(), local, rtol=1e-5, atol=1e-6)
    assert served["label"].tolist() == [LABELS[i] for i in local.argmax(1)]
    assert served["error"].tolist() == ["", "", ""]

    predictor = model.unwrap_python_model().predictor
    assert predictor.model.support == load_model(project / "models" / "candidate").support
    assert len(predictor.model.support["texts"]) == 8


def test_pyfunc_marks_bad_rows_and_still_answers_the_good_ones(project):
    """One undecodable / empty / non-string text among 10,000 costs its own row, not the whole request."""
    model = registry.load_champion(DOMAIN, load_params(project / "params.yaml").registry, project)
    texts: list = ["strong profit growth"] * 10_000
    bad = {3: "caf\udcff", 4_000: b"\xff\xfe", 5_000: "", 6_000: "  \t", 7_000: None, 9_999: 42}
    for i, value in bad.items():
        texts[i] = value
    frame = pd.DataFrame({"text": texts}, index=pd.RangeIndex(100, 10_100))
    served = model.predict(frame)
    assert len(served) == 10_000 and served.index.equals(frame.index)
    is_bad = served["error"] != ""
    assert sorted(np.flatnonzero(is_bad)) == sorted(bad)
    assert served.iloc[3]["error"] == "row 3: not valid UTF-8 text: lone surrogate '\\udcff' at character 3"
    assert served.iloc[4_000]["error"].startswith("row 4000: bytes, not text")
    assert served.iloc[5_000]["error"] == "row 5000: empty text"
    assert served.iloc[6_000]["error"] == "row 6000: empty text"
    assert served.iloc[7_000]["error"] == "row 7000: missing text"
    assert served.iloc[9_999]["error"] == "row 9999: not a string (got int)"
    assert (served.loc[is_bad, "label"] == "").all()
    assert served.loc[is_bad, ["score", *(f"p_{l}" for l in LABELS)]].isna().all().all()
    good = served.loc[~is_bad]
    assert good["label"].isin(LABELS).all() and good["label"].nunique() == 1
    assert good[[f"p_{l}" for l in LABELS]].sum(axis=1).to_numpy() == pytest.approx(1.0, abs=1e-5)


def test_pyfunc_names_the_expected_column_when_it_is_missing(project):
    from mlflow.exceptions import MlflowException

    model = registry.load_champion(DOMAIN, load_params(project / "params.yaml").registry, project)
    with pytest.raises(MlflowException) as caught:
        model.predict(pd.DataFrame({"txt": ["strong profit"], "id": [1]}))
    assert caught.value.error_code == "INVALID_PARAMETER_VALUE"   # the signature's schema check, before predict
    message = caught.value.message        # MLflow lists the extra columns in set order: not stable between runs
    assert "Model is missing inputs ['text']. Note that there were extra inputs: [" in message
    assert "'id'" in message.split("extra inputs:")[1] and "'txt'" in message.split("extra inputs:")[1]


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
            assert row["label"] in LABELS and row["error"] == ""
            assert sum(row[f"p_{l}"] for l in LABELS) == pytest.approx(1.0, abs=1e-5)
            assert row["score"] == pytest.approx(max(row[f"p_{l}"] for l in LABELS))

        # a JSON "\udcff" escape arrives as a lone surrogate: that row is marked, the others answered
        status, answer = post(port, {"dataframe_split": {"columns": ["text"],
                                                          "data": [["strong profit"], ["caf\udcff"], [" "]]}})
        assert status == 200, answer
        rows = answer["predictions"]
        assert rows[0]["label"] in LABELS and rows[0]["error"] == ""
        assert rows[1]["label"] == "" and rows[1]["error"].startswith("row 1: not valid UTF-8 text")
        assert rows[2]["error"] == "row 2: empty text" and rows[2]["score"] != rows[2]["score"]   # NaN

        # a wrong column name: a 400 whose body says which column is expected, without a stack trace
        status, answer = post(port, {"dataframe_split": {"columns": ["txt"], "data": [["hello"]]}})
        assert status == 400 and answer["error_code"] == "INVALID_PARAMETER_VALUE"
        assert "Model is missing inputs ['text']. Note that there were extra inputs: ['txt']" in answer["message"]
        assert "stack_trace" not in answer and "Traceback" not in json.dumps(answer)
        # not a dataframe/inputs payload at all: a 400 that names the accepted formats
        status, answer = post(port, {"texts": ["hello"]})
        assert status == 400 and "dataframe_split" in answer["message"], answer
    finally:
        stop(server)


def post(port: int, payload: dict) -> tuple[int, dict]:
    """POST a JSON body to /invocations: (HTTP status, parsed body), for error answers too."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(payload).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


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
