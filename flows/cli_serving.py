"""`metaadapt` commands over registered models: predict, list models."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from components.config import PROJECT_ROOT, load_params


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `metaadapt` app."""
    app.command()(predict)
    app.command()(models)


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


def models() -> None:
    """List each domain's registered champion (version, run, gate metric)."""
    from components.registry import champion_info

    params = load_params()
    for name in params.domains:
        info = champion_info(name, params.registry, PROJECT_ROOT)
        typer.echo(f"{name}: " + (json.dumps(info, default=str) if info else "no champion yet"))
