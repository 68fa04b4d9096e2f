"""`metaadapt`: the command line over the flows and components (``metaadapt --help``)."""
from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Optional

import typer

from components.config import PROJECT_ROOT, ConfigError, load_params
from flows.env import configure_environment

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="MetaAdapt: meta-learned few-shot adaptation of a text encoder, with its MLOps pipeline.")


@app.callback()
def _setup() -> None:
    configure_environment()


def set_full(params_path: Path, full: bool) -> None:
    """Flip `limits.full` in params.yaml in place (only that line), so DVC sees the change and reruns."""
    text = params_path.read_text(encoding="utf-8")
    new, count = re.subn(r"(?m)^(  full:\s*)(true|false)", lambda m: m.group(1) + str(full).lower(), text, count=1)
    if count != 1:
        raise typer.BadParameter("params.yaml has no `limits.full:` line to set")
    params_path.write_text(new, encoding="utf-8")


@app.command()
def run(domain: list[str] = typer.Option(None, "--domain", "-d", help="Run only these domains (repeatable)."),
        full: bool = typer.Option(False, "--full", help="Lift the size caps (sets limits.full: true in params.yaml)."),
        force: bool = typer.Option(False, "--force", help="Rerun stages even when DVC finds them up to date.")) -> None:
    """Run the whole pipeline as a Prefect flow (local temporary Prefect server, MLflow on SQLite)."""
    from flows.pipeline import pipeline

    if full:
        set_full(PROJECT_ROOT / "params.yaml", True)
    try:
        pipeline(domains=domain or None, force=force)
    except RuntimeError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1)


@app.command()
def stage(name: str = typer.Argument(..., help="ingest|validate|episodes|meta_train|adapt|evaluate|register|drift|summary"),
          domain: Optional[str] = typer.Argument(None, help="Domain name from params.yaml.")) -> None:
    """Run one stage in this process, without DVC or Prefect (for debugging)."""
    from components.stages import main

    raise typer.Exit(main([name] + ([domain] if domain else [])))


@app.command("check-config")
def check_config(path: Path = typer.Option(PROJECT_ROOT / "params.yaml", help="params file to validate.")) -> None:
    """Validate params.yaml and list the domains, their data sets and K."""
    try:
        params = load_params(path)
    except ConfigError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(2)
    for name, domain in params.domains.items():
        typer.echo(f"{name}: dataset={domain.dataset} k={domain.k} meta_sources={domain.meta_sources}")


def _register_command_groups() -> None:
    """Commands live beside the feature they serve; each module adds its own to the one `app`."""
    from flows import cli_orchestration, cli_serving

    for module in (cli_orchestration, cli_serving):
        module.register(app)


_register_command_groups()


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
