"""Stage-level behaviour that needs no model: the summary's honesty about failed domains, the CLI surface."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from components.config import PROJECT_ROOT, load_params
from components.stages import StagePaths, summary
from flows.cli import app, set_full


def write(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload))


def test_summary_marks_a_failed_domain_even_when_old_metrics_exist(tmp_path: Path) -> None:
    params = load_params()
    metrics = {"accuracy": 0.9, "macro_f1": 0.8, "k": 8, "n_labels": 3, "eval_rows": 10,
               "adapt_seconds": 0.1, "adapt_total_seconds": 0.2}
    for domain in params.domains:
        write(StagePaths(tmp_path, domain).report("metrics"), metrics)
    first = next(iter(params.domains))
    write(tmp_path / "reports" / "run_status.json", {first: {"status": "failed", "failed_stage": "validate"}})
    rows = {row["domain"]: row for row in summary(params, tmp_path)["domains"]}
    assert rows[first]["status"] == "failed at validate" and "accuracy" not in rows[first]
    assert all(rows[d]["status"] == "ok (earlier run)" for d in params.domains if d != first)  # not in this run
    assert f"| {first} | failed at validate |" in (tmp_path / "reports" / "summary.md").read_text()


@pytest.mark.parametrize("command", ["run", "stage", "check-config", "predict", "models", "serve", "ingest", "adapt",
                                     "fanout"])
def test_every_command_has_help(command: str) -> None:
    result = CliRunner().invoke(app, [command, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output


def test_check_config_reports_a_bad_value(tmp_path: Path) -> None:
    bad = tmp_path / "params.yaml"
    bad.write_text((PROJECT_ROOT / "params.yaml").read_text().replace("k: 8", "k: -1", 1))
    result = CliRunner().invoke(app, ["check-config", "--path", str(bad)])
    assert result.exit_code == 2 and "domains.finance_sentiment.k = -1" in result.output


def test_set_full_flips_only_the_limits_flag(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    original = (PROJECT_ROOT / "params.yaml").read_text()
    params.write_text(original)
    set_full(params, True)
    changed = [(a, b) for a, b in zip(original.splitlines(), params.read_text().splitlines()) if a != b]
    assert len(changed) == 1 and changed[0][1].strip().startswith("full: true")


def test_summary_puts_baselines_beside_each_number_and_flags_a_domain_below_the_majority_class(tmp_path: Path) -> None:
    params = load_params()
    first, *others = list(params.domains)
    below = {"accuracy": 0.5, "macro_f1": 0.2, "balanced_accuracy": 0.45, "majority_accuracy": 0.6,
             "majority_macro_f1": 0.25, "majority_balanced_accuracy": 0.33, "zero_shot_accuracy": 0.55,
             "zero_shot_macro_f1": 0.5, "zero_shot_balanced_accuracy": 0.5, "beats_majority": 0.0, "k": 8,
             "n_labels": 3, "eval_rows": 10, "train_rows": 300, "adapt_seconds": 0.1, "adapt_total_seconds": 0.2}
    write(StagePaths(tmp_path, first).report("metrics"), below)
    write(StagePaths(tmp_path, first).report("confusion"), {"warnings": ["label 'x' has 3 labelled row(s) < k=8"],
                                                            "not_evaluated": ["x"], "method": "cosine", "prior": {}})
    rows = {row["domain"]: row for row in summary(params, tmp_path)["domains"]}
    text = (tmp_path / "reports" / "summary.md").read_text()
    assert "| 0.200 (0.250 / 0.500 / n/a) | 0.500 (0.600 / 0.550 / n/a) |" in text
    assert "**NO** (macro_f1)" in text and f"**{first}: does not beat always answering the majority class" in text
    assert f"{first}: label 'x' has 3 labelled row(s) < k=8" in text and "not evaluated" in text
    assert all(rows[d]["status"] == "not run" for d in others)                  # never run is not "failed"
    write(StagePaths(tmp_path, first).report("metrics"), {**below, "macro_f1": 0.4, "beats_majority": 1.0})
    summary(params, tmp_path)
    text = (tmp_path / "reports" / "summary.md").read_text()
    assert "**NO**" not in text and "does not beat" not in text


def test_summary_reads_the_champion_from_the_registry_never_from_this_runs_candidate(tmp_path: Path) -> None:
    """After `dvc exp run` the registry file holds the experiment's version: it is this run's candidate, and the
    champion column says what the registry says (here: no registry at all, so none), never v7."""
    params = load_params()
    first, *others = list(params.domains)
    metrics = {"accuracy": 0.9, "macro_f1": 0.8, "balanced_accuracy": 0.8, "majority_macro_f1": 0.2,
               "zero_shot_macro_f1": 0.5, "kshot_macro_f1": 0.7, "k": 8, "n_labels": 3, "eval_rows": 10}
    write(StagePaths(tmp_path, first).report("metrics"), metrics)
    write(StagePaths(tmp_path, first).report("registry"), {"version": 7, "promoted": False, "experiment": True,
                                                           "champion_version": 7, "reason": "registered as experiment"})
    rows = {row["domain"]: row for row in summary(params, tmp_path)["domains"]}
    text = (tmp_path / "reports" / "summary.md").read_text()
    assert rows[first]["candidate_version"] == 7 and rows[first]["gate"] == "experiment"
    assert rows[first]["champion_version"] is None and "| v7 → experiment | none |" in text
    assert "0.800 (0.200 / 0.500 / 0.700)" in text                       # K-shot beside majority and zero-shot
    assert f"{first} gate (experiment): registered as experiment" in text
    assert all(rows[d]["status"] == "not run" for d in others)
    assert not (tmp_path / "mlruns").exists()                            # no registry created by reading it
