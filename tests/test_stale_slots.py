"""A killed adaptation must not block its domain: the slot it held is released (issue: SIGKILL left
`metaadapt-adapt-D` taken for 14 minutes and every later adaptation of D waited an hour and failed)."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from components.config import load_params
from flows import orchestration


def params_with_timeout(seconds: float):
    params = load_params()
    return params.model_copy(update={"orchestration": params.orchestration.model_copy(
        update={"lock_timeout_seconds": seconds})})


def leak_a_slot(name: str) -> None:
    """What a SIGKILLed holder leaves behind: a slot taken, its lease never renewed nor released."""
    from prefect.client.orchestration import get_client

    orchestration.ensure_concurrency_limit(name)
    with get_client(sync_client=True) as client:
        client.increment_concurrency_slots_with_lease(names=[name], slots=1, mode="concurrency", lease_duration=600)


def test_a_slot_left_by_a_killed_holder_is_released_with_a_temporary_server(prefect_session, tmp_path: Path,
                                                                             monkeypatch) -> None:
    leak_a_slot(orchestration.concurrency_name("stale_local"))
    monkeypatch.setattr(orchestration, "api_is_served", lambda: False)   # what `metaadapt adapt` sees without a server
    started = time.monotonic()
    with orchestration.adaptation_slot(tmp_path, "stale_local", params_with_timeout(20)):
        waited = time.monotonic() - started
    assert waited < 10


def test_with_a_served_api_a_stale_slot_is_left_to_its_lease(prefect_session, tmp_path: Path) -> None:
    """Other machines may share a served API: nothing is reset, the lease (SLOT_LEASE_SECONDS) expires instead."""
    leak_a_slot(orchestration.concurrency_name("stale_served"))
    assert orchestration.api_is_served()       # the test harness is a served API
    with pytest.raises(TimeoutError):
        with orchestration.adaptation_slot(tmp_path, "stale_served", params_with_timeout(2)):
            pass


def test_the_file_lock_is_taken_before_the_slot_so_a_live_holder_still_excludes(prefect_session, tmp_path: Path,
                                                                                monkeypatch) -> None:
    """Releasing 'stale' slots is only safe because a live holder holds the file lock: a second process waits."""
    from components.locks import LockTimeout
    from flows.locks import domain_lock

    monkeypatch.setattr(orchestration, "api_is_served", lambda: False)
    with domain_lock(tmp_path, "busy", 5):
        with pytest.raises(LockTimeout):
            with orchestration.adaptation_slot(tmp_path, "busy", params_with_timeout(1)):
                pass


def test_a_command_waiting_for_the_domain_ends_promptly_on_ctrl_c(tmp_path: Path) -> None:
    """The wait for a running adaptation is the file lock's sleep loop (taken before the Prefect slot): SIGINT
    ends it at once instead of after lock_timeout_seconds."""
    import signal
    import subprocess
    import sys

    from flows.locks import domain_lock

    # a shell's background job inherits SIGINT ignored (CI may run us so): restore what a terminal user has
    waiter = (f"import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler)\n"
              f"sys.path.insert(0, {str(Path(__file__).resolve().parent.parent)!r})\n"
              f"from pathlib import Path; from flows.locks import domain_lock\n"
              f"print('waiting', flush=True)\n"
              f"with domain_lock(Path({str(tmp_path)!r}), 'busy', 3600): pass\n")
    with domain_lock(tmp_path, "busy", 5):
        process = subprocess.Popen([sys.executable, "-c", waiter], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True)
        assert process.stdout.readline().strip() == "waiting"
        time.sleep(1.0)
        assert process.poll() is None                 # it is really waiting
        started = time.monotonic()
        process.send_signal(signal.SIGINT)
        process.wait(timeout=10)
    assert time.monotonic() - started < 3 and "KeyboardInterrupt" in process.stderr.read()
