"""Prefect's temporary server must die with the process that started it, even when that process is SIGKILLed
(it used to keep running for minutes, ~230 MB each)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from flows.server_guard import parent_alive

STARTER = """
import sys, time
from pathlib import Path
from flows.env import configure_environment
configure_environment(Path(sys.argv[1]))
from prefect.client.orchestration import get_client
from prefect.server.api.server import SubprocessASGIServer
with get_client(sync_client=True) as client:
    client.hello()
print(next(iter(SubprocessASGIServer._instances.values())).api_url, flush=True)
time.sleep(600)
"""


def test_the_temporary_server_dies_when_its_starter_is_sigkilled(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(PREFECT_HOME=str(tmp_path / ".prefect"), PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    starter = subprocess.Popen([sys.executable, "-c", STARTER, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                               env=env)
    try:
        api_url = starter.stdout.readline().strip()
        assert api_url.startswith("http://127.0.0.1:"), api_url
        assert httpx.get(f"{api_url}/health", timeout=5).status_code == 200
    finally:
        starter.send_signal(signal.SIGKILL)
        starter.wait()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{api_url}/health", timeout=1)
        except httpx.TransportError:
            return                                     # the server is gone
        time.sleep(0.5)
    raise AssertionError(f"the temporary server at {api_url} outlived its SIGKILLed starter by 15 s")


def test_parent_alive() -> None:
    assert parent_alive(os.getpid())
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    assert not parent_alive(finished.pid)
