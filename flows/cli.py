"""`metaadapt`: the command line over the flows and components (``metaadapt --help``)."""
from __future__ import annotations

import json
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
def serve(cron: str = typer.Option("0 3 * * *", help="Cron schedule for retraining (server time zone)."),
          name: str = typer.Option("scheduled-retraining", help="Deployment name.")) -> None:
    """Serve the pipeline as a scheduled Prefect deployment (needs a running Prefect server; see README)."""
    from flows.pipeline import pipeline

    pipeline.serve(name=name, cron=cron)


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


@app.command()
def predict(domain: str = typer.Argument(..., help="Domain whose champion model to use."),
            texts: list[str] = typer.Argument(None, help="Texts to classify (or use --file)."),
            file: Optional[Path] = typer.Option(None, "--file", help="A CSV/TSV/JSONL/parquet file with a `text` column."),
            model_dir: Optional[Path] = typer.Option(None, help="Use a model directory instead of the champion.")) -> None:
    """Classify texts with a domain's registered champion (or a model directory); prints JSON lines."""
    import pandas as pd

    from components.data import read_texts

    if file is not None:
        texts = read_texts(file)
    if not texts:
        raise typer.BadParameter("give texts as arguments or --file")
    if model_dir is not None:
        from components.predictor import Predictor

        predictor = Predictor.from_directory(model_dir)
        frame = pd.DataFrame({"text": texts, "label": predictor.predict(texts)})
    else:
        from components.registry import load_champion

        params = load_params()
        params.domain(domain)
        frame = load_champion(domain, params.registry, PROJECT_ROOT).predict(pd.DataFrame({"text": texts}))
        frame.insert(0, "text", texts)
    for row in frame.to_dict(orient="records"):
        typer.echo(json.dumps(row, default=float))


@app.command()
def models() -> None:
    """List each domain's registered champion (version, run, gate metric)."""
    from components.registry import champion_info

    params = load_params()
    for name in params.domains:
        info = champion_info(name, params.registry, PROJECT_ROOT)
        typer.echo(f"{name}: " + (json.dumps(info, default=str) if info else "no champion yet"))


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
