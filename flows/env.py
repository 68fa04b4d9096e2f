"""Process environment for every entry point: local services, telemetry off, offline model/data hubs.

Called explicitly by the CLI and the flows (never at import) so that library users keep control of their own
environment. Values already set by the user win.
"""
from __future__ import annotations

import os
from pathlib import Path

from components.config import PROJECT_ROOT

# Every server the project starts listens on the loopback interface unless the user sets these otherwise
# (Prefect's temporary server and `prefect server start`, the runner webserver of `metaadapt serve`).
LOCAL_ONLY = {
    "PREFECT_SERVER_API_HOST": "127.0.0.1",
    "PREFECT_RUNNER_SERVER_HOST": "127.0.0.1",
}
TELEMETRY_OFF = {
    "DO_NOT_TRACK": "true",                      # mlflow accepts only "true"
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
}
QUIET = {
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "PYTHONUNBUFFERED": "1",
}
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def configure_environment(root: Path = PROJECT_ROOT) -> None:
    """Set defaults; METAADAPT_ONLINE=1 keeps the hubs reachable for users with a network."""
    defaults = {**LOCAL_ONLY, **TELEMETRY_OFF, **QUIET,
                "PREFECT_HOME": str(root / ".prefect"),
                "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
                "PREFECT_LOGGING_LEVEL": "INFO"}
    if os.environ.get("METAADAPT_ONLINE") != "1":
        defaults.update(OFFLINE)
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    from flows.server_guard import install

    install()   # Prefect's temporary server dies with this process, however it ends
