"""What the event-driven flows share: event names, the transient-I/O retry rule, artifacts, concurrency slots."""
from __future__ import annotations

import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from components.config import Params
from flows.locks import domain_lock

BATCH_ACCEPTED = "metaadapt.batch.accepted"
DRIFT_DETECTED = "metaadapt.drift.detected"
DOMAIN_RESOURCE_LABEL = "metaadapt.domain"


def domain_resource(domain: str) -> dict[str, str]:
    """The Prefect event resource of a domain; triggers match `metaadapt.domain.*` and read the label."""
    return {"prefect.resource.id": f"metaadapt.domain.{domain}", DOMAIN_RESOURCE_LABEL: domain}


def is_transient(error: BaseException | None) -> bool:
    """Retry only what may succeed on a second try: I/O and network errors (OSError covers ConnectionError and
    TimeoutError). Validation errors, bad data and failed stages are not retried: they would fail the same way."""
    from components.data import DataError

    return isinstance(error, OSError) and not isinstance(error, DataError)


def retry_transient_only(task, task_run, state) -> bool:
    """Prefect `retry_condition_fn`: retry a failed task only when it failed on transient I/O."""
    try:
        state.result()
    except BaseException as error:  # noqa: BLE001 - we classify, never swallow: False re-raises in Prefect
        return is_transient(error)
    return False


def check_domain(params: Params, domain: str) -> str:
    """A domain name from params.yaml (safe for paths, keys and event ids), else a ConfigError listing them."""
    from components.safety import check_name

    check_name("domain", domain)
    params.domain(domain)
    return domain


def artifact_key(kind: str, domain: str | None = None) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    raw = f"{kind}-{domain}" if domain else kind
    return re.sub(r"[^a-z0-9-]+", "-", raw.lower()).strip("-")


def publish(markdown: str, kind: str, domain: str | None, description: str) -> None:
    """A markdown artifact on the current run (kept per key, so the UI shows each domain's history)."""
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(markdown=markdown, key=artifact_key(kind, domain), description=description)


def concurrency_name(domain: str) -> str:
    return f"metaadapt-adapt-{domain}"


def ensure_concurrency_limit(name: str, limit: int = 1) -> None:
    """Create the global concurrency limit if it is missing: Prefect's `concurrency()` on an unknown name does
    not limit anything, it only warns."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=limit))
            except ObjectAlreadyExists:
                pass


@contextmanager
def adaptation_slot(root: Path, domain: str, params: Params) -> Iterator[None]:
    """One adaptation of a domain at a time: the Prefect global concurrency limit (across workers and machines
    sharing the API) and a file lock (for runs that bypass Prefect, e.g. `dvc repro` by hand in the same tree)."""
    from prefect.concurrency.sync import concurrency

    name = concurrency_name(domain)
    ensure_concurrency_limit(name)
    timeout = params.orchestration.lock_timeout_seconds
    with concurrency(name, occupy=1, timeout_seconds=timeout, strict=True):
        with domain_lock(root, domain, timeout):
            yield
