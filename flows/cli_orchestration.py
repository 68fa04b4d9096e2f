"""`metaadapt` commands that run the pipeline unattended: schedules, triggers, new data (and taking it back)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from components.config import PROJECT_ROOT
from flows.cli_serving import ROOT_OPTION, _domain_params


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `metaadapt` app."""
    app.command()(serve)
    app.command()(ingest)
    app.command()(batches)
    app.command()(withdraw)
    app.command()(adapt)
    app.command()(fanout)


def serve(limit: int = typer.Option(None, help="Most flow runs at once in this process (default: no limit)."),
          pool: str = typer.Option(None, help="Register the deployments on this Prefect process work pool (created "
                                              "if missing) and return; `prefect worker start --pool NAME` runs them.")
          ) -> None:
    """Serve every deployment (retraining cron, batch- and drift-triggered adaptation, drift monitor, incoming
    watcher; see flows/deployments.py). Needs a Prefect API that outlives this process: `prefect server start`.
    With --pool the same deployments go to a work pool instead, for workers on one or many machines."""
    from flows.deployments import deploy_to_pool, serve_all

    if pool:
        ids = deploy_to_pool(pool, PROJECT_ROOT)
        typer.echo(f"{len(ids)} deployments on work pool {pool!r}; start workers: prefect worker start --pool {pool}")
        return
    serve_all(PROJECT_ROOT, limit)


def ingest(file: Path = typer.Argument(..., exists=True, dir_okay=False,
                                       help="Labelled CSV/TSV/JSONL/parquet (text,label)."),
           domain: str = typer.Option(..., "--domain", "-d", help="Domain from params.yaml."),
           now: bool = typer.Option(False, "--now",
                                    help="Also adapt here and now (no served deployment needed).")) -> None:
    """Validate a labelled batch, store it once (by content hash) and emit the event that starts the domain's
    adaptation (`metaadapt serve` must be running for that, unless --now). A bad file is quarantined (a file from
    outside the project as a copy: yours stays where it is). Symbolic links and names with control characters
    are refused."""
    from flows.incoming import check_batch_path, ingest_batch, printable

    check_batch_path(file)  # before Prefect starts: a link or a name with control characters is refused at once
    # The path as given, made absolute but NOT resolved: resolving would turn a symbolic link into the file it
    # points to, and a rejection would then move that file (flows.incoming refuses links, copies outside files).
    batch = ingest_batch(domain, str(file.absolute()), str(PROJECT_ROOT))
    name = printable(file.name)
    if not batch["is_new"]:
        typer.echo(f"{name}: same rows as batch {batch['sha256'][:16]} ({batch['received_at']}, "
                   f"{batch['status']}); nothing to do")
        return
    typer.echo(f"{name}: {batch['rows']} rows stored as {batch['path']}; event sent")
    if now:
        adapt(domain, reason=f"metaadapt ingest --now {name}", trigger="new_batch")


def batches(domain: str = typer.Option(..., "--domain", "-d", help="Domain from params.yaml."),
            as_json: bool = typer.Option(False, "--json", help="Print JSON (full hashes, reasons) instead of a table."),
            root: Path = ROOT_OPTION) -> None:
    """The domain's labelled batches from its ledger, oldest first: hash, source file, rows, rows per label,
    when accepted, whether an adaptation used it, whether it was withdrawn."""
    _domain_params(root, domain)
    rows = batch_rows(root, domain)
    if as_json:
        typer.echo(json.dumps(rows, indent=2, ensure_ascii=False))
        return
    if not rows:
        typer.echo(f"{domain}: no labelled batches yet (`metaadapt ingest --domain {domain} FILE`)")
        return
    typer.echo(_table(["batch", "source", "rows", "labels", "accepted", "adapted", "withdrawn"],
                      [_table_cells(row) for row in rows]))


def batch_rows(root: Path, domain: str) -> list[dict[str, Any]]:
    """Each ledger record as a dict, plus its rows per label (None once withdrawn) and a `withdrawn` flag."""
    from dataclasses import asdict

    from components.batches import label_counts, read_ledger

    return [{**asdict(record), "withdrawn": record.withdrawn, "labels": label_counts(root, domain, record)}
            for record in read_ledger(root, domain)]


def _table_cells(row: dict[str, Any]) -> list[str]:
    from components.batches import ADAPTED, HASH_CHARS

    labels = " ".join(f"{label}={n}" for label, n in (row["labels"] or {}).items()) or "-"
    withdrawn = f"{row['withdrawn_at']} ({row['withdrawn_reason']})" if row["withdrawn"] else "no"
    return [row["sha256"][:HASH_CHARS], row["source"], str(row["rows"]), labels, row["received_at"],
            row["adapted_at"] if row["status"] == ADAPTED else "no", withdrawn]


def _table(header: list[str], rows: list[list[str]]) -> str:
    """A plain left-aligned text table (greppable, no box drawing): columns as wide as their widest cell."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows)]
    lines = [header, *rows]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines)


def withdraw(batch: str = typer.Argument(..., help="The batch's hash or a unique prefix (`metaadapt batches`)."),
             domain: str = typer.Option(..., "--domain", "-d", help="Domain from params.yaml."),
             reason: str = typer.Option("withdrawn by the user", help="Why (recorded in the ledger)."),
             root: Path = ROOT_OPTION) -> None:
    """Take back one accepted batch: its file leaves data/batches/<domain>/, the ledger keeps its line marked
    withdrawn, data/batches is re-versioned with DVC, and the next ingest no longer merges its rows. The current
    model is not changed: re-adapt with `metaadapt adapt <domain>`."""
    from components.batches import ADAPTED, BATCHES_DIR, HASH_CHARS, withdraw_batch
    from flows.incoming import version_batches

    _domain_params(root, domain)
    try:
        record = withdraw_batch(root, domain, batch, reason)
    except LookupError as error:
        raise typer.BadParameter(str(error), param_hint="BATCH") from None
    typer.echo(f"{domain}: withdrew batch {record.sha256[:HASH_CHARS]} ({record.source}, {record.rows} rows, "
               f"accepted {record.received_at})\n  removed {BATCHES_DIR / domain / record.file_name}; the ledger "
               f"keeps its line, marked withdrawn at {record.withdrawn_at} ({reason})")
    try:
        version_batches.fn(str(root))  # the same `dvc add data/batches` as after an ingest
    except Exception as error:  # noqa: BLE001 - the withdrawal stands; say how to finish the versioning
        typer.echo(f"error: withdrawn, but `dvc add {BATCHES_DIR}` failed: {error}; run it by hand", err=True)
        raise typer.Exit(1)
    typer.echo(f"  {BATCHES_DIR} re-versioned with DVC ({BATCHES_DIR}.dvc); the next ingest of {domain} "
               f"leaves its rows out")
    used = "an adaptation already used it (the current models may hold its rows); " if record.status == ADAPTED else ""
    typer.echo(f"{used}to re-adapt without it: metaadapt adapt {domain}")


def adapt(domain: str = typer.Argument(..., help="Domain from params.yaml."),
          reason: str = typer.Option("manual", help="Why (recorded in the run's artifact and history)."),
          trigger: str = typer.Option("manual", hidden=True)) -> None:
    """Adapt one domain now (its DVC stages, the promotion gate); waits if that domain is already adapting."""
    from flows.adaptation import adapt_domain

    outcome = adapt_domain(domain, str(PROJECT_ROOT), reason=reason, trigger=trigger)  # an error: flows.cli prints its message
    registry = outcome["registry"]
    typer.echo(f"{domain}: v{registry.get('version')} {'champion' if registry.get('promoted') else 'challenger'} "
               f"- {registry.get('reason')}")


def fanout(domain: list[str] = typer.Option(None, "--domain", "-d", help="Domains (repeatable; default: all)."),
           address: str = typer.Option(None, help="Existing Dask scheduler (default: orchestration.dask_address, "
                                                  "else a LocalCluster)."),
           workers: int = typer.Option(None, help="LocalCluster workers (default: orchestration.dask_workers)."),
           sequential: bool = typer.Option(False, "--sequential", help="One domain after the other, no Dask."),
           register: bool = typer.Option(False, "--register", help="Also register each candidate (promotion gate) "
                                         "in the workers; a task rerun after a worker died registers nothing twice."),
           ) -> None:
    """adapt + evaluate (+ register) of several domains at once on Dask workers, then `dvc commit` (their upstream
    stages must be current: run `metaadapt run` first). Drift (and register without --register) follow with
    `metaadapt run`."""
    from components.config import load_params
    from flows.fanout import adapt_evaluate, run_fanout

    names = domain or list(load_params(PROJECT_ROOT / "params.yaml").domains)
    if sequential:
        result = adapt_evaluate(names, str(PROJECT_ROOT), parallel=False, register_models=register)
    else:
        result = run_fanout(names, PROJECT_ROOT, address, workers, register=register)
    typer.echo(f"{'+'.join(('adapt', 'evaluate', 'register') if register else ('adapt', 'evaluate'))} of "
               f"{', '.join(names)}: {result['compute_seconds']:.1f} s "
               f"({'Dask' if result['parallel'] else 'sequential'})")
