"""New labelled data: validate a user's batch, store it under its content hash, announce it with an event.

`metaadapt ingest --domain D FILE`, or a file dropped in `data/incoming/<domain>/` and picked up by the served
watcher, runs `ingest_batch`. A valid batch is stored once (`components.batches`), and a
`metaadapt.batch.accepted` event (resource `metaadapt.domain.<D>`) starts the domain's adaptation deployment.
The same data a second time is recognised by its hash: logged, no event, no work. An invalid batch is moved
untouched to `data/quarantine/<domain>/<time>/` by `components.quarantine` and the run fails saying why.

Only files that belong to the project are ever moved: a file in the domain's incoming folder, or one whose real
location is inside the project. A file from anywhere else (a user's `~/Downloads/batch.csv`) is validated as a
copy, so a rejection quarantines the copy and the user's file stays where it is. A symbolic link is refused
(validating it would mean moving or archiving a file somewhere else), and so is a file name with control
characters (an ESC or a newline in a name would reach terminals and logs).
"""
from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.events import emit_event

from components.batches import store_batch
from components.config import PROJECT_ROOT, Params, load_params
from components.safety import control_characters
from flows.orchestration import BATCH_ACCEPTED, check_domain, domain_resource, publish, retry_transient_only

BATCH_SUFFIXES = (".csv", ".tsv", ".jsonl", ".parquet")


class BatchRefused(ValueError):
    """A batch file that is not even read: a symbolic link, or a name with control characters. Nothing is moved."""


def printable(name: object) -> str:
    """A file name as it may be shown: repr-style escapes for control characters (never raw ESC/newline)."""
    text = str(name)
    return repr(text)[1:-1] if control_characters(text) else text


def check_batch_path(file: Path) -> Path:
    """The path as given (not resolved), refused when its name has control characters or it is a symbolic link."""
    file = Path(file)
    bad = control_characters(file.name)
    if bad:
        raise BatchRefused(f"file name {file.name!r} contains control characters {bad}; rename the file "
                           f"(nothing was read or moved)")
    if file.is_symlink():
        raise BatchRefused(f"{printable(file)} is a symbolic link (to {printable(file.resolve())}); links are "
                           f"refused so that a rejection never moves a file from where it points: copy the file "
                           f"itself there instead (nothing was read or moved)")
    return file


def project_owned(file: Path, domain: str, params: Params, root: Path) -> bool:
    """True for a file the project may move: one in the domain's incoming folder, or whose real location is inside
    the project directory. Anything else belongs to the user and is only ever copied."""
    absolute = Path(file).absolute()
    if absolute.parent == (Path(root) / params.orchestration.incoming_dir / domain).absolute():
        return True
    project = Path(root).resolve()
    return project in absolute.resolve().parents


def accept(file: Path, domain: str, params: Params, root: Path) -> pd.DataFrame:
    """The quarantine gate (Great Expectations incoming-batch suite); raises BatchRejected on bad data.

    A file from outside the project is validated as a copy in a staging folder beside the quarantine (same file
    system), so the quarantine moves the copy; the user's file is left in place and the message says so.
    """
    from components.quarantine import accept_batch

    file = check_batch_path(Path(file))
    if not file.is_file() or project_owned(file, domain, params, root):
        return accept_batch(file, domain, params, root)
    params.domain(domain)  # an unknown domain is a caller error: copy nothing
    base = Path(root) / params.validation.quarantine_dir
    base.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".copy-", dir=base))
    copy = staging / file.name
    try:
        shutil.copyfile(file, copy)
        return accept_batch(copy, domain, params, root)
    except Exception as error:
        raise _about_the_original(error, copy, file) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # the copy (a rejected one was already moved to quarantine)


def _about_the_original(error: Exception, copy: Path, original: Path) -> Exception:
    """The error about the staged copy, told about the user's file: its path, and that it was left in place."""
    from components.quarantine import BatchRejected

    if not isinstance(error, BatchRejected):
        return error
    message = str(error).replace(str(copy), str(original)).replace(
        "the file was moved, byte-identical, to", "a byte-identical copy of the file was put in")
    message += f"\nyour file {original} is outside the project and was left where it is (only a copy is kept)"
    target = error.quarantine_dir
    (target / "README.txt").write_text(message + "\n", encoding="utf-8")
    result = target / "validation.json"
    if result.is_file():
        payload = json.loads(result.read_text(encoding="utf-8"))
        payload.update(original_path=str(original), original_left_in_place=True)
        result.write_text(json.dumps(payload, indent=2, default=str), encoding="utf-8")
    return BatchRejected(message, target, error.failures, error.outcome)


def _archive(file: Path, domain: str, params: Params, root: Path) -> str | None:
    """Move a file that came through the incoming folder to incoming/<domain>/processed/ (so the watcher does not
    hash it again); files handed over on the command line stay where the user keeps them."""
    incoming = (root / params.orchestration.incoming_dir / domain).absolute()
    if file.is_symlink() or file.absolute().parent != incoming:
        return None
    target = incoming / "processed" / f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{file.name}"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(file), target)
    return str(target)


@task(name="accept-and-store", retries=2, retry_delay_seconds=[1, 5], retry_condition_fn=retry_transient_only)
def accept_and_store(file: str, domain: str, root: str) -> dict:
    """Validate, store under the content hash, archive the incoming copy. Retried on transient I/O only."""
    project = Path(root)
    params = load_params(project / "params.yaml")
    frame = accept(Path(file), domain, params, project)
    stored = store_batch(frame, domain, Path(file).name, project)
    archived = _archive(Path(file), domain, params, project)
    return {"domain": domain, "sha256": stored.record.sha256, "rows": stored.record.rows,
            "source": stored.record.source, "is_new": stored.is_new, "path": str(stored.path),
            "status": stored.record.status, "received_at": stored.record.received_at, "archived_to": archived}


@task(name="dvc-add-batches", retries=2, retry_delay_seconds=[1, 5], retry_condition_fn=retry_transient_only)
def version_batches(root: str) -> None:
    """`dvc add data/batches`: every accepted batch and the ledger go into the DVC cache (and to the remote with
    `dvc push`), and data/batches.dvc records the state — the DVC lock keeps it off a running `dvc repro`."""
    from components.batches import BATCHES_DIR
    from flows.dvc_stages import dvc_repo

    with dvc_repo(Path(root)) as repo:
        repo.add(str(BATCHES_DIR))


@task(name="emit-batch-accepted", retries=2, retry_delay_seconds=[1, 5], retry_condition_fn=retry_transient_only)
def announce(batch: dict) -> str | None:
    """The event that starts the domain's adaptation deployment (served by `metaadapt serve`)."""
    event = emit_event(event=BATCH_ACCEPTED, resource=domain_resource(batch["domain"]),
                       payload={k: batch[k] for k in ("sha256", "rows", "source")})
    return str(event.id) if event else None


def batch_markdown(batch: dict, event_id: str | None) -> str:
    if not batch["is_new"]:
        return (f"# Batch for `{batch['domain']}` already processed\n\n`{batch['source']}` has the same rows as "
                f"batch `{batch['sha256'][:16]}` received {batch['received_at']} (status: {batch['status']}); "
                f"nothing to do.\n")
    return (f"# New batch for `{batch['domain']}`\n\n- source: `{batch['source']}`, {batch['rows']} rows\n"
            f"- stored as `{batch['path']}` (sha256 `{batch['sha256'][:16]}`)\n"
            f"- event `{BATCH_ACCEPTED}` {event_id or '(not sent)'} → adaptation deployment\n")


@flow(name="metaadapt-ingest-batch", log_prints=True)
def ingest_batch(domain: str, file: str, root: str = str(PROJECT_ROOT)) -> dict:
    """Validate and store one labelled batch; emit `metaadapt.batch.accepted` only for data not seen before."""
    project = Path(root)
    params = load_params(project / "params.yaml")
    check_domain(params, domain)
    retry = {"retries": params.orchestration.io_retries, "retry_delay_seconds": params.orchestration.io_retry_delays}
    batch = accept_and_store.with_options(**retry)(file, domain, root)
    if batch["is_new"]:
        version_batches.with_options(**retry)(root)
    event_id = announce.with_options(**retry)(batch) if batch["is_new"] else None
    if not batch["is_new"]:
        get_run_logger().info("%s: same rows as batch %s (%s); no duplicate work", file, batch["sha256"][:16],
                              batch["received_at"])
    publish(batch_markdown(batch, event_id), "batch", domain, f"batch {batch['source']} for {domain}")
    return {**batch, "event_id": event_id}


def incoming_files(params: Params, root: Path) -> list[tuple[str, Path]]:
    """(domain, file) for every batch file waiting in <incoming_dir>/<domain>/, oldest first.

    Symbolic links are listed too (by the link's own time), so that ingest_batch refuses each with a clear error
    instead of the watcher following it."""
    found = []
    for domain in params.domains:
        folder = root / params.orchestration.incoming_dir / domain
        if folder.is_dir():
            files = [p for p in folder.iterdir()
                     if (p.is_symlink() or p.is_file()) and p.suffix.lower() in BATCH_SUFFIXES]
            found += [(domain, p) for p in sorted(files, key=lambda p: p.lstat().st_mtime)]
    return found


@flow(name="metaadapt-watch-incoming", log_prints=True)
def watch_incoming(root: str = str(PROJECT_ROOT)) -> list[dict]:
    """Process every file in the incoming folders; a rejected file is quarantined and the others still go on."""
    project = Path(root)
    params = load_params(project / "params.yaml")
    results = []
    for domain, file in incoming_files(params, project):
        try:
            results.append(ingest_batch(domain, str(file), root))
        except Exception as error:  # noqa: BLE001 - one bad file must not block the rest; its run records why
            get_run_logger().error("%s rejected: %s", printable(file), error)
            results.append({"domain": domain, "source": printable(file.name), "rejected": str(error)[:2000]})
    return results
