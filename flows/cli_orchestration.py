"""`metaadapt` commands that run the pipeline unattended: schedules, triggers, new data."""
from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `metaadapt` app."""
    app.command()(serve)


def serve(cron: str = typer.Option("0 3 * * *", help="Cron schedule for retraining (server time zone)."),
          name: str = typer.Option("scheduled-retraining", help="Deployment name.")) -> None:
    """Serve the pipeline as a scheduled Prefect deployment (needs a running Prefect server; see README)."""
    from flows.pipeline import pipeline

    pipeline.serve(name=name, cron=cron)
