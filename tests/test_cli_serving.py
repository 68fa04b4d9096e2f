"""`metaadapt predict / explain / models / monitor` end to end on a tiny project (real registry, real Evidently)."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from flows.cli import app
from serving_project import DOMAIN, LABELS, module_project, reset_mlflow, sentences


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_bert_dir) -> Path:
    """One project for the module: the commands only read it (monitor adds its own report folder)."""
    return module_project(tmp_path_factory, tiny_bert_dir)


@pytest.fixture(autouse=True)
def clean_mlflow():
    yield
    reset_mlflow()


def run(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def test_predict_texts_prints_labels_and_per_label_scores(project):
    result = run("predict", "--domain", DOMAIN, "--root", str(project), "strong profit growth", "awful loss")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["text"] for r in rows] == ["strong profit growth", "awful loss"]
    for row in rows:
        assert row["label"] in LABELS and set(row) == {"text", "label", *(f"score_{l}" for l in LABELS)}
        assert row[f"score_{row['label']}"] == max(row[f"score_{l}"] for l in LABELS)
        assert sum(row[f"score_{l}"] for l in LABELS) == pytest.approx(1.0, abs=1e-5)


def test_predict_file_writes_a_csv_in_batches(project, tmp_path):
    texts = sentences(40, seed=5)["text"].tolist()        # 40 rows > batch size 16: three batches
    pd.DataFrame({"text": texts, "other": range(40)}).to_csv(tmp_path / "batch.csv", index=False)
    out = tmp_path / "preds.csv"
    result = run("predict", "--domain", DOMAIN, "--root", str(project), "--file", str(tmp_path / "batch.csv"),
                 "--out", str(out))
    assert result.exit_code == 0, result.output
    preds = pd.read_csv(out)
    assert list(preds.columns) == ["text", "label", "score_neg", "score_pos"] and preds["text"].tolist() == texts
    assert "40 predictions written" in result.stderr


def test_predict_without_domain_or_texts_is_a_usage_error(project):
    assert run("predict", "--root", str(project), "x").exit_code == 2
    assert run("predict", "--domain", DOMAIN, "--root", str(project)).exit_code == 2
    unknown = run("predict", "--domain", "nope", "--root", str(project), "x")
    assert unknown.exit_code == 2 and "unknown domain 'nope'" in unknown.stderr
    no_champion = run("explain", "--domain", "customer_intent", "--root", str(project), "x")
    assert no_champion.exit_code == 1 and "has no champion" in no_champion.stderr


@pytest.mark.parametrize("command", ["predict", "explain", "models", "monitor"])
def test_every_serving_command_has_help(command):
    result = run(command, "--help")
    assert result.exit_code == 0 and "--root" in result.stdout


def test_explain_shows_the_nearest_support_examples_per_label(project):
    result = run("explain", "--domain", DOMAIN, "--root", str(project), "--json", "good gain and strong growth")
    assert result.exit_code == 0, result.output
    explanation = json.loads(result.stdout)
    support = pd.read_parquet(project / "data/prepared" / DOMAIN / "adapt.parquet").groupby("label").head(4)
    assert explanation["label"] == explanation["top"][0]["label"]
    assert [t["label"] for t in explanation["top"]] == sorted(LABELS, key=lambda l: -next(
        t["score"] for t in explanation["top"] if t["label"] == l))
    for top in explanation["top"]:
        own = set(support.loc[support["label"] == top["label"], "text"])
        assert len(top["nearest"]) == 3 and {n["text"] for n in top["nearest"]} <= own
        sims = [n["similarity"] for n in top["nearest"]]
        assert sims == sorted(sims, reverse=True) and all(-1.0 <= s <= 1.0 + 1e-6 for s in sims)

    text = run("explain", "--domain", DOMAIN, "--root", str(project), "awful loss").stdout
    assert text.startswith("prediction: ") and text.count("+0.") + text.count("-0.") >= 3


def test_models_lists_the_champion_with_its_metrics(project):
    result = run("models", "--root", str(project))
    assert result.exit_code == 0, result.output
    assert f"{DOMAIN}:" in result.stdout and "champion   v1  macro-F1 0.800  accuracy 0.800" in result.stdout
    assert "no champion yet; v1" in result.stdout and "customer_intent: no registered model yet" in result.stdout


def test_monitor_exit_code_says_drift_and_bad_files_fail_clearly(project, tmp_path):
    shifted = tmp_path / "shifted.jsonl"
    pd.DataFrame({"text": [f"ERROR 500 at /api/v{i} {{'retry': {i}}} ###" * 5 for i in range(40)]}).to_json(
        shifted, orient="records", lines=True)
    result = run("monitor", "--domain", DOMAIN, "--root", str(project), str(shifted))
    assert result.exit_code == 3, result.output
    payload = json.loads(result.stdout)
    assert payload["drift_detected"] and Path(payload["html_path"]).is_file()
    assert "drift: YES" in result.stderr and (project / "reports" / "index.html").is_file()

    empty = tmp_path / "empty.csv"
    empty.write_text("")
    result = run("monitor", "--domain", DOMAIN, "--root", str(project), str(empty))
    assert result.exit_code == 2 and "file is empty" in result.stderr


def test_predict_out_csv_is_safe_to_open_in_a_spreadsheet(project, tmp_path):
    """Texts starting with = + - @ (a formula in Excel/LibreOffice) are written with a leading ' (OWASP)."""
    hostile = ["=cmd|' /C calc'!A0", "+1+1", "-2+3", "@SUM(A1:A2)", "\t=1", "plain profit"]
    pd.DataFrame({"text": hostile}).to_json(tmp_path / "in.jsonl", orient="records", lines=True)
    out = tmp_path / "out.csv"
    result = run("predict", "--domain", DOMAIN, "--root", str(project), "--file", str(tmp_path / "in.jsonl"),
                 "--out", str(out))
    assert result.exit_code == 0, result.output
    written = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert written["text"].tolist() == ["'" + t for t in hostile[:5]] + ["plain profit"]
    assert set(written["label"]) <= set(LABELS) and list(written.columns) == ["text", "label", "score_neg", "score_pos"]


@pytest.mark.parametrize("command", ["predict", "explain"])
def test_undecodable_or_empty_arguments_fail_in_one_line(project, command):
    """'\\udcff' is what Python puts in sys.argv for a non-UTF-8 byte; the tokenizer cannot take it."""
    for text, message in [("caf\udcff", "error: argument 1 is not valid UTF-8 text"),
                          ("", "error: argument 1: empty text"), ("  \t ", "error: argument 1: empty text")]:
        result = CliRunner().invoke(app, [command, "--domain", DOMAIN, "--root", str(project), text])
        assert result.exit_code == 2, result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
        assert result.stderr.startswith(message) and len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert result.stdout == ""


def test_predict_file_with_undecodable_bytes_or_empty_rows_fails_in_one_line(project, tmp_path):
    bad = tmp_path / "latin1.csv"
    bad.write_bytes(b"text\n" + b"fine line\n" * 50_000 + b"caf\xe9 au lait\n")
    result = CliRunner().invoke(app, ["predict", "--domain", DOMAIN, "--root", str(project), "--file", str(bad)])
    assert result.exit_code == 2 and result.exception is None or isinstance(result.exception, SystemExit)
    offset = 5 + 10 * 50_000 + 3
    assert result.stderr.strip() == (f"error: {bad}: not valid UTF-8 (byte 0xe9 at offset {offset} (line 50002)); "
                                     f"re-save the file as UTF-8")

    escaped = tmp_path / "surrogate.jsonl"
    escaped.write_text('{"text": "ok"}\n{"text": "caf\\udcff"}\n{"text": "  "}\n', encoding="utf-8")
    result = CliRunner().invoke(app, ["predict", "--domain", DOMAIN, "--root", str(project), "--file", str(escaped)])
    assert result.exit_code == 2
    assert result.stderr.strip() == (f"error: {escaped}: data row 2: not valid UTF-8 text: "
                                     f"lone surrogate '\\udcff' at character 3")

    blank = tmp_path / "blank.csv"
    blank.write_text("text\nstrong profit\n\"\"\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["predict", "--domain", DOMAIN, "--root", str(project), "--file", str(blank)])
    assert result.exit_code == 2 and result.stderr.strip() == f"error: {blank}: data row 2: empty text"
