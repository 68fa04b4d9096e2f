"""Error output a person can read: one `error:` block first (no tracebacks unless --debug / METAADAPT_DEBUG=1),
long lists cut, control characters in file names refused and never printed raw, and `metaadapt ingest` never
moving a file from where a link points or from outside the project."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

# Prefect binds its console handler to sys.stderr when first imported: import it here, not inside a CliRunner.
import flows.incoming  # noqa: F401
from bad_inputs.tiny_domain import DOMAIN, make_project
from components.config import PROJECT_ROOT, ConfigError
from flows.cli import MAX_LIST_ITEMS, app, clip_message, printable

COLUMNS = [f"column_{i}" for i in range(5000)]


@pytest.fixture(autouse=True)
def log_dir(tmp_path: Path, monkeypatch) -> Path:
    directory = tmp_path / "logs"
    monkeypatch.setenv("METAADAPT_LOG_DIR", str(directory))
    monkeypatch.delenv("METAADAPT_DEBUG", raising=False)
    return directory


def invoke(*args: str, **env: str):
    return CliRunner().invoke(app, list(args), env=env or None)


def test_clip_message_cuts_long_lists_and_long_messages() -> None:
    text = f"table: expected columns ['label', 'text'], found {COLUMNS}"
    clipped = clip_message(text)
    assert f"'column_{MAX_LIST_ITEMS - 1}', … and {5000 - MAX_LIST_ITEMS} more]" in clipped
    assert "['label', 'text']" in clipped and len(clipped) < 600
    assert clip_message("x" * 50_000).endswith("… [49000 more characters]")
    assert clip_message("\n".join(map(str, range(500)))).endswith("… and 420 more lines")
    assert printable("a\x1b[2Jb\u202e") == "a\\x1b[2Jb\\u202e"


def test_a_failing_command_prints_one_short_error_block_and_logs_the_traceback(monkeypatch, log_dir: Path) -> None:
    import flows.pipeline

    def pipeline(**kwargs):
        raise ConfigError(f"data.csv: wrong columns; found {COLUMNS}")

    monkeypatch.setattr(flows.pipeline, "pipeline", pipeline)
    result = invoke("run")
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert lines[0].startswith("error: data.csv: wrong columns; found ['column_0'") and "… and 4980 more]" in lines[0]
    assert "Traceback" not in result.output and len(result.output) < 2000 and len(lines) == 2
    log = next(log_dir.glob("*-run.log"))
    assert lines[1] == f"(full traceback: {log}; `metaadapt --debug run ...` or METAADAPT_DEBUG=1 prints it)"
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "'column_4999'" in text


@pytest.mark.parametrize("args, env", [(["--debug", "run"], {}), (["run"], {"METAADAPT_DEBUG": "1"})])
def test_debug_lets_the_traceback_through(monkeypatch, args, env) -> None:
    import flows.pipeline

    monkeypatch.setattr(flows.pipeline, "pipeline", lambda **kw: (_ for _ in ()).throw(ConfigError("bad k")))
    result = invoke(*args, **env)
    assert isinstance(result.exception, ConfigError) and "error:" not in result.output


@pytest.fixture
def project(tmp_path: Path, monkeypatch) -> Path:
    """A tiny project (domain `shop`) that `metaadapt ingest` uses instead of this checkout."""
    import flows.cli_orchestration

    root = _tiny_project(tmp_path / "project")
    monkeypatch.setattr(flows.cli_orchestration, "PROJECT_ROOT", root)
    return root


@pytest.mark.parametrize("command", [
    ["ingest", "--domain", DOMAIN, "{file}"],
    ["monitor", "--domain", DOMAIN, "--root", "{root}", "{file}"],
    ["predict", "--domain", DOMAIN, "--root", "{root}", "--file", "{file}"],
])
@pytest.mark.parametrize("name", ["esc\x1b]0;owned\x07.csv", "two\nlines.csv"])
def test_file_names_with_control_characters_are_refused_and_printed_escaped(tmp_path, project, command, name) -> None:
    file = tmp_path / name
    file.write_text("text,label\nfine,pos\n")
    result = invoke(*[part.replace("{file}", str(file)).replace("{root}", str(project)) for part in command])
    assert result.exit_code == 2, result.output
    assert "contains control characters" in result.output and "rename the file" in result.output
    assert "\x1b" not in result.output and "\x07" not in result.output and "two\nlines" not in result.output
    assert file.read_text() == "text,label\nfine,pos\n" and not (project / "data" / "quarantine").exists()


def test_ingest_refuses_a_symbolic_link_and_leaves_the_file_it_points_to(tmp_path, project) -> None:
    target = tmp_path / "scratch" / "batch.csv"
    target.parent.mkdir()
    target.write_text("text,label\nsome text,no_such_label\n")
    link = tmp_path / "link.csv"
    link.symlink_to(target)
    result = invoke("ingest", "--domain", DOMAIN, str(link))
    assert result.exit_code == 1
    assert result.output.startswith(f"error: {link} is a symbolic link (to {target})")
    assert link.is_symlink() and target.read_text() == "text,label\nsome text,no_such_label\n"
    assert not (project / "data" / "quarantine").exists()


def _tiny_project(root: Path) -> Path:
    make_project(root)
    source = root / "source.csv"
    params = {"datasets": {"shop_reviews": {"files": {"all": str(source)}}},
              "encoder": {"name": "unused-in-these-tests"},
              "domains": {DOMAIN: {"dataset": "shop_reviews", "adapt_split": "all", "eval_split": "all", "k": 2}}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


INGEST = """
import sys
from pathlib import Path
import flows.cli_orchestration
flows.cli_orchestration.PROJECT_ROOT = Path(sys.argv[1])
from flows.cli import app
app(sys.argv[2:])
"""


def test_rejected_ingest_of_a_file_outside_the_project_end_to_end(tmp_path: Path) -> None:
    """The real CLI and a real (temporary) Prefect server: the user's file stays, a copy is quarantined, and the
    terminal shows the error block without Prefect's traceback (it is in the log file)."""
    project = _tiny_project(tmp_path / "project")
    original = tmp_path / "downloads" / "batch.csv"
    original.parent.mkdir()
    content = "text,label\nsome text,no_such_label\n"
    original.write_text(content)
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), "METAADAPT_LOG_DIR": str(tmp_path / "logs"),
           "PYTHONPATH": str(PROJECT_ROOT)}
    done = subprocess.run([sys.executable, "-c", INGEST, str(project), "ingest", "--domain", DOMAIN, str(original)],
                          capture_output=True, text=True, env=env, timeout=300, cwd=PROJECT_ROOT)
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr and "Finished in state Failed" not in done.stderr
    block = done.stderr[done.stderr.index("error: "):]
    assert block.startswith(f"error: incoming batch {original} rejected for domain '{DOMAIN}'")
    assert done.stderr.count("rejected for domain") == 1 and "was left where it is" in block
    assert original.read_text() == content  # not moved
    copies = list((project / "data" / "quarantine" / DOMAIN).glob("*/batch.csv"))
    assert len(copies) == 1 and copies[0].read_text() == content
    assert "Traceback" in next((tmp_path / "logs").glob("*-ingest.log")).read_text()


def test_a_5000_column_batch_rejection_is_cut_for_the_terminal(tmp_path: Path) -> None:
    """The column expectation names every column (components/validation.py); the CLI prints 20 of each list."""
    from components.quarantine import BatchRejected
    from flows.cli import error_text

    params = make_project(tmp_path)
    wide = tmp_path / "wide.csv"
    wide.write_text(",".join(["text", "label", *COLUMNS[:4998]]) + "\n" + ",".join(["a", "pos"] + ["x"] * 4998) + "\n")
    with pytest.raises(BatchRejected) as rejected:
        flows.incoming.accept(wide, DOMAIN, params, tmp_path)
    shown = clip_message(printable(error_text(rejected.value)))
    assert len(str(rejected.value)) < 5_000 and len(shown) < 2_000   # cut at the source (validation) and for the terminal
    assert "5000 columns: 'column_0'" in shown and "… and 4980 more" in shown and "… and 4978 more" in shown
    assert "what to do:" in shown
