"""`metaadapt` commands that run the pipeline unattended: schedules, triggers, new data."""
from __future__ import annotations

from pathlib import Path

import typer

from components.config import PROJECT_ROOT


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `metaadapt` app."""
    app.command()(serve)
    app.command()(ingest)
    app.command()(adapt)
    app.command()(fanout)


def serve(limit: int = typer.Option(None, help="Most flow runs at once in this process (default: no limit).")) -> None:
    """Serve every deployment (retraining cron, batch- and drift-triggered adaptation, drift monitor, incoming
    watcher; see flows/deployments.py). Needs a Prefect API that outlives this process: `prefect server start`."""
    from flows.deployments import serve_all

    serve_all(PROJECT_ROOT, limit)


def ingest(file: Path = typer.Argument(..., exists=True, dir_okay=False,
                                       help="Labelled CSV/TSV/JSONL/parquet (text,label)."),
           domain: str = typer.Option(..., "--domain", "-d", help="Domain from params.yaml."),
           now: bool = typer.Option(False, "--now",
                                    help="Also adapt here and now (no served deployment needed).")) -> None:
    """Validate a labelled batch, store it once (by content hash) and emit the event that starts the domain's
    adaptation (`metaadapt serve` must be running for that, unless --now). A bad file is quarantined."""
    from flows.incoming import ingest_batch

    try:
        batch = ingest_batch(domain, str(file.resolve()), str(PROJECT_ROOT))
    except Exception as error:  # noqa: BLE001 - the flow run holds the traceback; the user needs the message
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1)
    if not batch["is_new"]:
        typer.echo(f"{file.name}: same rows as batch {batch['sha256'][:16]} ({batch['received_at']}, "
                   f"{batch['status']}); nothing to do")
        return
    typer.echo(f"{file.name}: {batch['rows']} rows stored as {batch['path']}; event sent")
    if now:
        adapt(domain, reason=f"metaadapt ingest --now {file.name}")


def adapt(domain: str = typer.Argument(..., help="Domain from params.yaml."),
          reason: str = typer.Option("manual", help="Why (recorded in the run's artifact and history).")) -> None:
    """Adapt one domain now (its DVC stages, the promotion gate); waits if that domain is already adapting."""
    from flows.adaptation import adapt_domain

    try:
        outcome = adapt_domain(domain, str(PROJECT_ROOT), reason=reason)
    except Exception as error:  # noqa: BLE001
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1)
    registry = outcome["registry"]
    typer.echo(f"{domain}: v{registry.get('version')} {'champion' if registry.get('promoted') else 'challenger'} "
               f"- {registry.get('reason')}")


def fanout(domain: list[str] = typer.Option(None, "--domain", "-d", help="Domains (repeatable; default: all)."),
           address: str = typer.Option(None, help="Existing Dask scheduler (default: orchestration.dask_address, "
                                                  "else a LocalCluster)."),
           workers: int = typer.Option(None, help="LocalCluster workers (default: orchestration.dask_workers)."),
           sequential: bool = typer.Option(False, "--sequential", help="One domain after the other, no Dask.")) -> None:
    """adapt + evaluate of several domains at once on Dask workers, then `dvc commit` (their upstream stages must
    be current: run `metaadapt run` first). Register/drift follow with `metaadapt run`."""
    from components.config import load_params
    from flows.fanout import adapt_evaluate, run_fanout

    names = domain or list(load_params(PROJECT_ROOT / "params.yaml").domains)
    if sequential:
        result = adapt_evaluate(names, str(PROJECT_ROOT), parallel=False)
    else:
        result = run_fanout(names, PROJECT_ROOT, address, workers)
    typer.echo(f"adapt+evaluate of {', '.join(names)}: {result['compute_seconds']:.1f} s "
               f"({'Dask' if result['parallel'] else 'sequential'})")
