"""`metaadapt` commands over registered models: predict, explain, models, monitor.

Thin: each command parses its arguments, calls components (registry, predictor, monitoring) and prints. Every
command takes ``--root`` (the project directory holding params.yaml, mlruns/, data/ and reports/; default: this
checkout) so the same commands work on another project copy and in tests.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer

from components.config import PROJECT_ROOT, ConfigError, Params, load_params
from components.safety import csv_safe, text_problem

ROOT_OPTION = typer.Option(PROJECT_ROOT, "--root", help="Project directory (params.yaml, mlruns/, data/, reports/).")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `metaadapt` app."""
    app.command()(predict)
    app.command()(explain)
    app.command()(models)
    app.command()(monitor)


def _domain_params(root: Path, domain: str) -> Params:
    """params.yaml of the project, with an unknown domain reported as a usage error (exit 2), not a traceback."""
    params = load_params(root / "params.yaml")
    try:
        params.domain(domain)
    except ConfigError as error:
        raise typer.BadParameter(str(error), param_hint="--domain") from None
    return params


def _champion(domain: str, params: Params, root: Path):
    """The domain's champion pyfunc, or exit 1 saying there is none yet."""
    from components.registry import load_champion

    try:
        return load_champion(domain, params.registry, root)
    except LookupError as error:
        _say_error(str(error))
        raise typer.Exit(1) from None


def _scorer(domain: Optional[str], model_dir: Optional[Path], root: Path):
    """A function texts -> DataFrame(label, score, p_<label>...) from the champion or a model directory."""
    import pandas as pd

    from components.pyfunc_model import predictions_frame

    if model_dir is not None:
        from components.predictor import Predictor

        predictor = Predictor.from_directory(model_dir)
        return lambda texts: predictions_frame(predictor.labels, predictor.predict_proba(texts)), predictor.batch_size
    if domain is None:
        raise typer.BadParameter("give --domain (the champion of that domain) or --model-dir")
    params = _domain_params(root, domain)
    model = _champion(domain, params, root)
    return lambda texts: model.predict(pd.DataFrame({"text": texts})), params.encoder.batch_size


def _score_columns(frame) -> Any:
    """text, label, score_<label>...: per-label probabilities named for the file a user opens.

    The pyfunc's ``error`` column is dropped: the CLI refuses unscorable texts before scoring.
    """
    renamed = frame.rename(columns={c: "score_" + c[2:] for c in frame.columns if c.startswith("p_")})
    return renamed.drop(columns=["score", "error"], errors="ignore")


def _say_error(message: str) -> None:
    """`error: ...` on stderr, escaped and cut like every other command's errors (flows.cli's printer)."""
    from flows.cli import clip_message, printable   # imported late: flows.cli imports this module

    typer.echo(f"error: {clip_message(printable(message))}", err=True)


def _fail(message: str) -> None:
    """One `error: ...` line on stderr and exit 2 (unusable input), as `metaadapt ingest` / `monitor` do."""
    _say_error(message)
    raise typer.Exit(2)


def _read_file_texts(file: Path) -> list[str]:
    """The file's `text` column; undecodable bytes are reported with their exact offset and line."""
    from components.data import READERS, DataError, read_texts
    from components.quarantine import utf8_problem

    try:
        if READERS.get(file.suffix.lower()) in ("csv", "tsv", "jsonl") and file.is_file():
            problem = utf8_problem(file)
            if problem:
                _fail(f"{file}: not valid UTF-8 ({problem.split(': ', 1)[1]}); re-save the file as UTF-8")
        return read_texts(file)
    except (DataError, OSError) as error:
        _fail(str(error))


def _refuse_bad_texts(texts: list[Any], file: Optional[Path]) -> None:
    """Exit 2 naming the first text that cannot be scored: the argument's position, or the file and data row."""
    for i, text in enumerate(texts):
        problem = text_problem(text)
        if problem is None:
            continue
        if file is not None:
            _fail(f"{file}: data row {i + 1}: {problem}")
        if problem.startswith("not valid UTF-8"):
            _fail(f"argument {i + 1} is not valid UTF-8 text (undecodable bytes on the command line)")
        _fail(f"argument {i + 1}: {problem}; give a non-empty text")


def _score_batched(score, texts: list[str], batch_size: int, progress: bool):
    """Score in batches of the encoder's batch size, with a progress bar on stderr for files."""
    import pandas as pd
    from rich.console import Console
    from rich.progress import Progress

    parts = []
    with Progress(console=Console(stderr=True), disable=not progress, transient=False) as bar:
        task = bar.add_task("predicting", total=len(texts))
        for start in range(0, len(texts), batch_size):
            chunk = texts[start:start + batch_size]
            parts.append(score(chunk).reset_index(drop=True))
            bar.advance(task, len(chunk))
    return pd.concat(parts, ignore_index=True)


def predict(texts: list[str] = typer.Argument(None, help="Texts to classify (or use --file)."),
            domain: Optional[str] = typer.Option(None, "--domain", "-d", help="Domain whose champion model to use."),
            file: Optional[Path] = typer.Option(None, "--file", help="A CSV/TSV/JSONL/parquet file with a `text` column."),
            out: Optional[Path] = typer.Option(None, "--out", help="Write text,label,score_<label>... as CSV here."),
            model_dir: Optional[Path] = typer.Option(None, help="Use a model directory instead of the champion."),
            root: Path = ROOT_OPTION) -> None:
    """Classify texts with a domain's champion (or a model directory): JSON lines, or a CSV with --out.

    Texts that cannot be scored (not valid UTF-8, empty or whitespace-only) are refused with one `error:` line
    naming the argument or the file row, exit code 2, before any model is loaded. The CSV written with --out is
    spreadsheet-safe: a cell starting with = + - @, tab or CR gets a leading ' (OWASP CSV injection).
    """
    texts = _read_file_texts(file) if file is not None else list(texts or [])
    if not texts:
        raise typer.BadParameter("give texts as arguments or --file")
    _refuse_bad_texts(texts, file)
    score, batch_size = _scorer(domain, model_dir, root)
    frame = _score_batched(score, list(texts), batch_size, progress=file is not None)
    frame.insert(0, "text", list(texts))
    frame = _score_columns(frame)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        csv_safe(frame).to_csv(out, index=False)
        typer.echo(f"{len(frame)} predictions written to {out}", err=True)
        return
    for row in frame.to_dict(orient="records"):
        typer.echo(json.dumps(row, default=float, ensure_ascii=False))


def explain(text: str = typer.Argument(..., help="The text to explain."),
            domain: str = typer.Option(..., "--domain", "-d", help="Domain whose champion model to use."),
            top: int = typer.Option(3, help="How many top labels to show."),
            examples: int = typer.Option(3, help="Nearest support examples per label."),
            as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
            root: Path = ROOT_OPTION) -> None:
    """The prediction, the top labels with their scores, and the support examples nearest to the text.

    The model classifies by similarity to each label's examples, so the nearest examples are its reasons.
    """
    _refuse_bad_texts([text], None)
    predictor = _champion(domain, _domain_params(root, domain), root).unwrap_python_model().predictor
    try:
        explanation = predictor.explain(text, top_labels=top, examples=examples)
    except ValueError as error:
        _say_error(str(error))
        raise typer.Exit(1)
    if as_json:
        typer.echo(json.dumps(explanation.to_dict(), ensure_ascii=False, indent=2))
        return
    typer.echo(f"prediction: {explanation.label}")
    for evidence in explanation.top:
        typer.echo(f"  {evidence.label}: {evidence.score:.3f}")
        for support_text, similarity in evidence.nearest:
            typer.echo(f"      {similarity:+.3f}  {support_text[:160]!r}")


def models(root: Path = ROOT_OPTION) -> None:
    """Each domain's champion and challenger: version, macro-F1, accuracy, registration time, promotion reason."""
    from components.registry import alias_versions

    params = load_params(root / "params.yaml")
    for name in params.domains:
        versions = alias_versions(name, params.registry, root)
        typer.echo(f"{name}:" + ("" if versions else " no registered model yet"))
        for alias, info in versions.items():
            typer.echo(f"  {alias:10s} v{info['version']}  macro-F1 {_fmt(info['macro_f1'])}  "
                       f"accuracy {_fmt(info['accuracy'])}  registered {info['registered_at']}")
            if info["promotion_reason"]:
                typer.echo(f"             {info['promotion_reason']}")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def monitor(file: Path = typer.Argument(..., help="CSV/TSV/JSONL/parquet batch with a `text` column (`label` optional)."),
            domain: str = typer.Option(..., "--domain", "-d", help="Domain the batch belongs to."),
            root: Path = ROOT_OPTION) -> None:
    """Drift of a batch against the domain's reference: HTML + JSON under reports/drift/, index in reports/index.html.

    Exit code 0 when no drift, 3 when drift is detected (so a scheduler or script can act on it).
    """
    from components.data import DataError
    from components.monitoring import monitor_batch

    params = _domain_params(root, domain)
    try:
        result = monitor_batch(domain, read_batch(file), params, root, source=file.name)
    except (DataError, FileNotFoundError) as error:
        _say_error(str(error))
        raise typer.Exit(2)
    typer.echo(json.dumps(result.to_dict(), indent=2))
    typer.echo(f"drift: {'YES' if result.drift_detected else 'no'}"
               + (" — " + "; ".join(result.reasons) if result.reasons else "") + f"\nreport: {result.html_path}",
               err=True)
    if result.drift_detected:
        raise typer.Exit(3)


def read_batch(file: Path):
    """The batch as text (+ label when the file has a label column), through the project's checked readers."""
    import pandas as pd

    from components.data import DataError, read_labelled_file, read_texts

    try:
        return read_labelled_file(file)
    except DataError as error:
        if "missing column(s) ['label']" not in str(error):
            raise
    return pd.DataFrame({"text": read_texts(file)})

