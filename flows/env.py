"""Process environment for every entry point: local services, telemetry off, offline model/data hubs.

Called explicitly by the CLI and the flows (never at import) so that library users keep control of their own
environment. Values already set by the user win.
"""
from __future__ import annotations

import os
from pathlib import Path

from components.config import PROJECT_ROOT

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
    defaults = {**TELEMETRY_OFF, **QUIET,
                "PREFECT_HOME": str(root / ".prefect"),
                "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
                "PREFECT_LOGGING_LEVEL": "INFO"}
    if os.environ.get("METAADAPT_ONLINE") != "1":
        defaults.update(OFFLINE)
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
