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


SLOT_LEASE_SECONDS = 60   # a served API's repossessor frees the slot of a killed holder after this long


@contextmanager
def adaptation_slot(root: Path, domain: str, params: Params) -> Iterator[None]:
    """One adaptation of a domain at a time: a file lock, then the Prefect global concurrency slot.

    The file lock comes first because the kernel drops it when its holder dies (even by SIGKILL), and its wait is
    a plain sleep loop that Ctrl-C ends at once. Every local holder of the Prefect slot holds the lock too, so a
    slot still taken while we hold the lock belongs to a dead process: with a temporary local Prefect server
    (nothing else shares its database, and it runs no repossessor to expire leases) it is released here; with a
    served API (`PREFECT_API_URL`, possibly shared by other machines) the slot's lease expires after
    SLOT_LEASE_SECONDS once its holder stops renewing it.
    """
    from prefect.concurrency.sync import concurrency

    name = concurrency_name(domain)
    ensure_concurrency_limit(name)
    timeout = params.orchestration.lock_timeout_seconds
    with domain_lock(root, domain, timeout):
        if not api_is_served():
            release_stale_slots(name)
        with concurrency(name, occupy=1, timeout_seconds=timeout, lease_duration=SLOT_LEASE_SECONDS, strict=True):
            yield


def api_is_served() -> bool:
    """True when flows talk to a long-running Prefect server (`PREFECT_API_URL`), not a temporary local one."""
    from prefect.settings import PREFECT_API_URL

    return bool(PREFECT_API_URL.value())


def release_stale_slots(name: str) -> int:
    """Set the limit's active slots to 0 (only called with the domain's file lock held: nobody alive holds them);
    returns how many were released."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate

    with get_client(sync_client=True) as client:
        stale = int(client.read_global_concurrency_limit_by_name(name).active_slots or 0)
        if stale:
            client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(active_slots=0))
    return stale