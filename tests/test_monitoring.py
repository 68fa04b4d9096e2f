"""monitor_batch on a tiny project: the decision on no shift and on a clear shift, the files it keeps, the index."""
from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from components.config import load_params
from components.data import DataError
from components.monitoring import monitor_batch
from components.report_index import collect_entries, render_index, IndexEntry
from serving_project import DOMAIN, make_project, migrated_store, reset_mlflow, sentences


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return migrated_store(tmp_path_factory.mktemp("store"))


@pytest.fixture(autouse=True)
def clean_mlflow():
    yield
    reset_mlflow()


@pytest.fixture
def project(tmp_path, tiny_bert_dir, store) -> Path:
    return make_project(tmp_path, tiny_bert_dir, store)


def shifted_batch(n: int, seed: int) -> pd.DataFrame:
    """Long, number-heavy texts of another kind: every descriptor and the embeddings move."""
    rng = np.random.default_rng(seed)
    texts = [" ".join(f"#{rng.integers(10**6)} ${rng.integers(999)}.{rng.integers(99)}%" for _ in range(25))
             for _ in range(n)]
    return pd.DataFrame({"text": texts})


def test_same_distribution_batch_is_not_flagged(project):
    # Seed 11 is one draw of the generator, not a picked one: any resample should pass at alpha 0.01.
    params = load_params(project / "params.yaml")
    result = monitor_batch(DOMAIN, sentences(60, seed=11)[["text"]], params, project, source="resample.csv")

    assert not result.drift_detected, result.reasons
    assert result.reasons == [] and result.drifted_signals == []
    summary = json.loads(result.json_path.read_text())
    assert summary["champion_version"] == 1 and summary["skipped"] == [] and summary["quality"] is None
    assert summary["drift"]["prediction_drift"] is False          # the champion's predictions were compared
    assert result.html_path.parent.parent == project / "reports" / "drift" / DOMAIN
    assert result.html_path.read_text()[:500].lower().count("html")


def test_clear_shift_is_flagged_logged_and_indexed(project):
    params = load_params(project / "params.yaml")
    result = monitor_batch(DOMAIN, shifted_batch(60, seed=1), params, project, source="<b>odd</b>.csv")

    assert result.drift_detected
    assert {"text_length", "text_word_count", "text_non_letter_pct", "embeddings"} <= set(result.drifted_signals)
    assert any("embeddings drifted" in r for r in result.reasons)
    assert json.loads(result.json_path.read_text())["drift_detected"] is True

    runs = mlflow.search_runs(experiment_names=["tiny"], filter_string="tags.stage = 'monitor'")
    assert len(runs) == 1 and runs.iloc[0]["tags.drift_detected"] == "true"
    artifacts = mlflow.MlflowClient().list_artifacts(runs.iloc[0]["run_id"], "drift")
    assert sorted(a.path for a in artifacts) == ["drift/report.html", "drift/summary.json"]

    index = (project / "reports" / "index.html").read_text()
    assert "&lt;b&gt;odd&lt;/b&gt;.csv" in index and "<b>odd</b>" not in index     # user text escaped
    assert f'href="drift/{DOMAIN}/{result.html_path.parent.name}/report.html"' in index and "DRIFT" in index


def test_labelled_batch_gets_quality_and_label_drift(project):
    params = load_params(project / "params.yaml")
    batch = sentences(60, seed=12).assign(label="neg")         # every row labelled neg: label mix moved
    result = monitor_batch(DOMAIN, batch, params, project)
    quality = json.loads(result.json_path.read_text())["quality"]
    assert 0.0 <= quality["accuracy"] <= 1.0 and quality["reference_accuracy"] == pytest.approx(0.8)
    assert quality["drop"] == pytest.approx(0.8 - quality["accuracy"])
    assert "label" in result.drifted_signals and result.drift_detected


def test_without_champion_prediction_checks_are_skipped_with_a_reason(tmp_path, tiny_bert_dir, store):
    project = make_project(tmp_path, tiny_bert_dir, store, register=False)
    result = monitor_batch(DOMAIN, sentences(40, seed=13)[["text"]], load_params(project / "params.yaml"), project)
    summary = json.loads(result.json_path.read_text())
    assert summary["champion_version"] is None and "no champion" in summary["skipped"][0]
    assert summary["drift"]["prediction_drift"] is None


def test_bad_batches_are_refused_before_any_report(project):
    params = load_params(project / "params.yaml")
    with pytest.raises(DataError, match="'text' column"):
        monitor_batch(DOMAIN, pd.DataFrame({"body": ["x"] * 30}), params, project)
    with pytest.raises(DataError, match="min_rows=20"):
        monitor_batch(DOMAIN, sentences(5, seed=1)[["text"]], params, project)
    with pytest.raises(FileNotFoundError, match="metaadapt run --domain customer_intent"):
        monitor_batch("customer_intent", sentences(30, seed=1)[["text"]], params, project)
    assert not (project / "reports" / "drift").exists()


def test_index_lists_pipeline_and_monitor_reports_newest_first(tmp_path):
    reports = tmp_path / "reports"
    (reports / "drift" / "a" / "20260101T000000Z").mkdir(parents=True)
    (reports / "drift" / "a" / "20260101T000000Z" / "summary.json").write_text(json.dumps(
        {"domain": "a", "created_at": "2026-01-01T00:00:00Z", "source": "x.csv", "drift_detected": False,
         "drifted_signals": [], "reasons": [], "html": "report.html"}))
    (reports / "drift" / "b.json").write_text(json.dumps(
        {"dataset_drift": True, "drifted_columns": ["label"], "embedding_drift": True,
         "created_at": "2026-02-01T00:00:00Z", "reasons": ["label & more"]}))
    (reports / "drift" / "b.html").write_text("<html></html>")
    entries = collect_entries(reports)
    assert [(e.domain, e.drift, e.signals) for e in entries] == [("b", True, ["label", "embeddings"]),
                                                                   ("a", False, [])]
    assert entries[0].link == "drift/b.html" and entries[1].link is None     # its report.html does not exist
    page = render_index(entries + [IndexEntry("<script>", "t", "monitor", None, [], [], None)])
    assert "label &amp; more" in page and "<script>" not in page.split("<body>")[1]


def test_plots_render_and_are_embedded_with_relative_links(tmp_path):
    from components.plots import champion_history, summary_plots

    bench = tmp_path / "benchmarks" / "results"
    bench.mkdir(parents=True)
    (bench / "fewshot.json").write_text(json.dumps({"aggregates": [
        {"domain": "a", "method": "metaadapt", "k": k, "accuracy": acc, "accuracy_ci95": 0.02}
        for k, acc in ((0, 0.5), (8, 0.7))] + [{"domain": "a", "method": "linear_probe", "k": 8, "accuracy": 0.6}]}))
    params = load_params()
    markdown = summary_plots(params, tmp_path)
    png = tmp_path / "reports" / "plots" / "accuracy_vs_k.png"
    assert png.read_bytes()[:4] == b"\x89PNG" and "![Accuracy against K (few-shot benchmark)](plots/accuracy_vs_k.png)" in markdown
    assert "no registered versions yet" in markdown and not (tmp_path / "mlruns").exists()   # no store created

    history = {"a": [{"version": 1, "registered_at": "2026-01-01T00:00:00Z", "macro_f1": 0.5, "promoted": True},
                     {"version": 2, "registered_at": "2026-01-02T00:00:00Z", "macro_f1": 0.4, "promoted": False}]}
    assert champion_history(history, tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"
    assert champion_history({"a": []}, tmp_path / "none.png") is None
