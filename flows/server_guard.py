"""Run a command (Prefect's temporary API server) so that it dies with the process that started it.

Prefect starts its temporary server as a plain child process and stops it from an ``atexit`` hook, which never
runs when its parent is SIGKILLed: the server (uvicorn, ~230 MB) then lingered for minutes. The guard sits
between the two: ``python -m flows.server_guard PARENT_PID COMMAND...`` runs COMMAND, forwards SIGTERM/SIGINT to
it, and terminates it as soon as PARENT_PID is gone, whatever way the parent ended.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

POLL_SECONDS = 0.5
GRACE_SECONDS = 5.0


def parent_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (a zombie is a dead parent whose own parent has not reaped it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def stop(child: subprocess.Popen) -> int:
    """SIGTERM, then SIGKILL after GRACE_SECONDS; the child's exit code."""
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            child.kill()
    return child.wait()


def main(argv: list[str]) -> int:
    parent, command = int(argv[0]), argv[1:]
    child = subprocess.Popen(command)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: sys.exit(stop(child)))
    while child.poll() is None:
        if not parent_alive(parent):
            return stop(child)
        time.sleep(POLL_SECONDS)
    return child.returncode


class _GuardedSubprocess:
    """Stands in for the `subprocess` module inside prefect.server.api.server, whose only Popen call starts the
    temporary server: that call gets the guard prepended; everything else is the real module."""

    def __getattr__(self, name: str):
        return getattr(subprocess, name)

    @staticmethod
    def Popen(args, *rest, **kwargs):  # noqa: N802 - the name the server module calls
        return subprocess.Popen([sys.executable, "-m", "flows.server_guard", str(os.getpid()), *args], *rest, **kwargs)


def install() -> None:
    """Make Prefect start its temporary server under this guard, tied to the current process (idempotent)."""
    from prefect.server.api import server

    if not isinstance(server.subprocess, _GuardedSubprocess):
        server.subprocess = _GuardedSubprocess()


def share_temporary_server() -> None:
    """Start the guarded temporary server here and point PREFECT_API_URL at it, so that child processes (Dask
    workers) use it instead of each starting an unguarded one of their own that outlives them. No-op when an API
    is configured."""
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        return
    from prefect.server.api.server import SubprocessASGIServer

    install()
    server = SubprocessASGIServer()
    server.start()
    os.environ["PREFECT_API_URL"] = server.api_url


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
