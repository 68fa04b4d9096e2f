"""`metaadapt`: the command line over the flows and components (``metaadapt --help``).

Errors are for people: a command that fails prints one ``error:`` block (long lists cut, control characters
escaped) and the path of a log file holding the full traceback and the run's Prefect log. Prefect's own
failure tracebacks stay off the terminal. ``metaadapt --debug CMD`` or ``METAADAPT_DEBUG=1`` prints everything.
"""
from __future__ import annotations

import collections
import functools
import logging
import os
import re
import sys
import time
import traceback
import unicodedata
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import click
import typer

from components.config import PROJECT_ROOT, ConfigError, load_params
from components.safety import control_characters
from flows.env import configure_environment

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_show_locals=False,
                  help="MetaAdapt: meta-learned few-shot adaptation of a text encoder, with its MLOps pipeline.")

DEBUG_ENV = "METAADAPT_DEBUG"
LOG_DIR_ENV = "METAADAPT_LOG_DIR"  # where error logs go (default: <project>/.prefect/metaadapt-errors/)
FLOW_COMMANDS = {"run", "ingest", "adapt", "fanout"}  # they run Prefect flows in this process
MAX_LIST_ITEMS = 20
MAX_LINE_CHARS = 1000
MAX_LINES = 80
_state = {"debug": False}


@app.callback()
def _setup(debug: bool = typer.Option(False, "--debug", envvar=DEBUG_ENV,
                                      help=f"Print full tracebacks and Prefect's failure logs (or {DEBUG_ENV}=1).")
           ) -> None:
    _state["debug"] = debug
    configure_environment()


# ------------------------------------------------------------------------------------------ error output


class UnsafeFileName(ValueError):
    """A path argument whose name has control characters (they would reach terminals and logs raw)."""


def printable(text: str) -> str:
    """`text` with every control character except newline and tab written as its repr-style escape."""
    return "".join(repr(c)[1:-1] if c not in "\n\t" and unicodedata.category(c).startswith("C") else c
                   for c in text)


_LIST = re.compile(r"\[([^\[\]]*)\]")
_ITEM = re.compile(r"""'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|[^,\s][^,]*""")


def _cut_list(match: re.Match) -> str:
    items = [item.strip() for item in _ITEM.findall(match.group(1))]
    if len(items) <= MAX_LIST_ITEMS:
        return match.group(0)
    return f"[{', '.join(items[:MAX_LIST_ITEMS])}, … and {len(items) - MAX_LIST_ITEMS} more]"


def clip_message(text: str) -> str:
    """A message cut for a terminal: lists beyond MAX_LIST_ITEMS items, lines beyond MAX_LINE_CHARS characters,
    messages beyond MAX_LINES lines (the whole message is in the log file)."""
    lines = []
    for line in _LIST.sub(_cut_list, text).splitlines() or [""]:
        if len(line) > MAX_LINE_CHARS:
            line = f"{line[:MAX_LINE_CHARS]}… [{len(line) - MAX_LINE_CHARS} more characters]"
        lines.append(line)
    if len(lines) > MAX_LINES:
        lines = lines[:MAX_LINES] + [f"… and {len(lines) - MAX_LINES} more lines"]
    return "\n".join(lines)


def error_text(error: BaseException) -> str:
    """What a person reads: the message (with the exception's type when that is not self-explanatory)."""
    message = str(error).strip()
    if isinstance(error, (ValueError, RuntimeError, OSError)) and message:
        return message
    return f"{type(error).__name__}: {message}" if message else type(error).__name__


def log_dir() -> Path:
    return Path(os.environ.get(LOG_DIR_ENV) or PROJECT_ROOT / ".prefect" / "metaadapt-errors")


def write_error_log(command: str, error: BaseException, log_lines: list[str]) -> Path | None:
    """The command line, the run's log records and the full traceback in a new file; None if it cannot be written."""
    try:
        directory = log_dir()
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.getpid()}-{command}.log"
        text = "\n".join([f"command: {printable(' '.join(sys.argv))}", "", "log:", *log_lines, "",
                          "".join(traceback.format_exception(error))])
        path.write_text(printable(text), encoding="utf-8")
        return path
    except OSError:
        return None


def report_error(command: str, error: BaseException, log_lines: list[str] = ()) -> None:
    """The `error:` block on stderr, first and alone, then where the full traceback is."""
    path = write_error_log(command, error, list(log_lines))
    typer.echo(f"error: {clip_message(printable(error_text(error)))}", err=True)
    where = f"full traceback: {path}" if path else "the traceback could not be written to a log file"
    typer.echo(f"({where}; `metaadapt --debug {command} ...` or {DEBUG_ENV}=1 prints it)", err=True)


class _Buffer(logging.Handler):
    """Keeps the formatted records of one command (the newest 20,000) for the error log."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: collections.deque[str] = collections.deque(maxlen=20_000)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s - %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:  # noqa: BLE001 - logging must never break the command
            self.handleError(record)


class _NoFailureTracebacks(logging.Filter):
    """Keeps Prefect's failure records (tracebacks, 'Finished in state Failed(<whole message>)') off the console:
    the command prints the message itself, once, and the records go to the error log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info:
            return False
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001
            return True
        return not message.startswith(("Finished in state Failed", "Finished in state Crashed"))


@contextmanager
def _captured_logs(runs_flows: bool) -> Iterator[_Buffer]:
    """Buffer every log record of the command; for flow commands, filter Prefect's console handler."""
    buffer, quiet, consoles = _Buffer(), _NoFailureTracebacks(), []
    if runs_flows:
        import prefect.main  # noqa: F401 - sets up Prefect's logging (its console handler) now, not mid-run

        consoles = [h for h in logging.getLogger().handlers if type(h).__name__ == "PrefectConsoleHandler"]
    root = logging.getLogger()
    root.addHandler(buffer)
    for handler in consoles:
        handler.addFilter(quiet)
    try:
        yield buffer
    finally:
        root.removeHandler(buffer)
        for handler in consoles:
            handler.removeFilter(quiet)


def _check_paths(values: list[Any]) -> None:
    for value in values:
        if isinstance(value, Path) and control_characters(str(value)):
            raise UnsafeFileName(f"file name {str(value)!r} contains control characters "
                                 f"{control_characters(str(value))}; rename the file (nothing was read)")


# typer >= 0.20 vendors click (typer._click): its Exit/Abort/ClickException are not click's classes
_PASS_THROUGH = tuple({typer.Exit, typer.Abort, click.exceptions.Exit, click.exceptions.Abort, click.ClickException,
                       *[c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"]})


def guarded(command: str, callback: Callable[..., Any]) -> Callable[..., Any]:
    """The command with readable errors: paths with control characters refused (exit 2), any other exception
    printed as one `error:` block (exit 1) with the traceback in a log file, unless --debug."""

    @functools.wraps(callback)
    def run_command(*args: Any, **kwargs: Any) -> Any:
        try:
            _check_paths([*args, *kwargs.values()])
        except UnsafeFileName as error:
            report_error(command, error)
            raise typer.Exit(2) from None
        if _state["debug"]:
            return callback(*args, **kwargs)
        with _captured_logs(command in FLOW_COMMANDS) as buffer:
            try:
                return callback(*args, **kwargs)
            except _PASS_THROUGH:  # exits and usage errors: typer/click print them
                raise
            except Exception as error:  # noqa: BLE001 - the one place that turns errors into messages
                report_error(command, error, list(buffer.lines))
                raise typer.Exit(1) from None

    return run_command


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
    pipeline(domains=domain or None, force=force)  # an error: `guarded` prints its message, exit 1


@app.command()
def stage(name: str = typer.Argument(..., help="ingest|validate|episodes|meta_train|adapt|evaluate|register|drift|summary"),
          domain: Optional[str] = typer.Argument(None, help="Domain name from params.yaml.")) -> None:
    """Run one stage in this process, without DVC or Prefect (for debugging)."""
    from components.stages import main

    raise typer.Exit(main([name] + ([domain] if domain else [])))


@app.command("check-config")
def check_config(path: Path = typer.Option(PROJECT_ROOT / "params.yaml", help="params file to validate.")) -> None:
    """Validate params.yaml, expand source collections and domain templates (written to domains.expanded.yaml,
    which dvc.yaml iterates), and list the domains, their data sets and K."""
    from components.domains import EXPANDED_FILE, write_expanded

    try:
        params = load_params(path)
    except ConfigError as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(2)
    for name, domain in params.domains.items():
        sources = domain.meta_sources if len(domain.meta_sources) <= 6 else \
            f"{len(domain.meta_sources)} sources ({', '.join(domain.meta_sources[:3])}, ...)"
        typer.echo(f"{name}: dataset={domain.dataset} k={domain.k} meta_sources={sources}")
    changed = write_expanded(path.resolve().parent, params)
    typer.echo(f"{len(params.domains)} domain(s); {EXPANDED_FILE} {'written' if changed else 'up to date'}")


def _register_command_groups() -> None:
    """Commands live beside the feature they serve; each module adds its own to the one `app`."""
    from flows import cli_orchestration, cli_serving

    for module in (cli_orchestration, cli_serving):
        module.register(app)
    for info in app.registered_commands:
        name = info.name or info.callback.__name__.replace("_", "-")
        info.callback = guarded(name, info.callback)


_register_command_groups()


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
