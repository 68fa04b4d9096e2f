"""Why a run happened, recorded on its MLflow run: scheduled retraining, a new labelled batch, drift, a person, or a
`dvc exp run` experiment.

The stages run in-process (flows.pipeline.run_stage_in_process) or as `dvc repro` subprocesses; both inherit the
environment, so the flow that starts a run sets two variables for its duration and the register stage reads them.
No Prefect here: the flows call ``triggered_by``; the stages call ``trigger_tags``.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

TRIGGER_ENV, DETAIL_ENV = "METAADAPT_TRIGGER", "METAADAPT_TRIGGER_DETAIL"
TRIGGERS = ("schedule", "new_batch", "drift", "manual", "experiment")
MAX_DETAIL_CHARS = 500


@contextmanager
def triggered_by(kind: str, detail: str = "") -> Iterator[None]:
    """Record `kind` (one of TRIGGERS) and a short detail (batch hashes, drift report) for the runs started inside."""
    if kind not in TRIGGERS:
        raise ValueError(f"unknown trigger {kind!r}; expected one of {', '.join(TRIGGERS)}")
    saved = {name: os.environ.get(name) for name in (TRIGGER_ENV, DETAIL_ENV)}
    os.environ[TRIGGER_ENV], os.environ[DETAIL_ENV] = kind, detail[:MAX_DETAIL_CHARS]
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def trigger_tags(manifest: dict[str, Any], adapt_rows: int | None = None) -> dict[str, str]:
    """MLflow run tags: trigger, trigger_detail, the labelled pool size and rows adapted from, batches merged.

    Inside `dvc exp run` (DVC sets DVC_EXP_BASELINE_REV) the trigger is `experiment` whatever started it; a run
    nobody labelled (`metaadapt run`, `dvc repro` by hand) is `manual`.
    """
    if os.environ.get("DVC_EXP_BASELINE_REV") or os.environ.get("DVC_EXP_NAME"):
        kind, detail = "experiment", os.environ.get("DVC_EXP_NAME", "")
    else:
        kind, detail = os.environ.get(TRIGGER_ENV) or "manual", os.environ.get(DETAIL_ENV, "")
    hashes = list((manifest.get("batches") or {}).get("sha256") or [])
    return {"trigger": kind, "trigger_detail": detail or "none",
            "adapt_pool_rows": str(manifest.get("adapt_rows", "unknown")),
            "adapt_rows": "unknown" if adapt_rows is None else str(adapt_rows),
            "batches_merged": str(len(hashes)),
            "batches_merged_sha256": ", ".join(h[:16] for h in hashes) or "none"}
