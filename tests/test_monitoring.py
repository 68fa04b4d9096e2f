"""monitor_batch on a tiny project: the decision on no shift and on a clear shift, the files it keeps, the index."""
from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

import serving_project
from components.config import Params, load_params
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
    assert summary["champion_version"] == 1 and summary["quality"] is None
    assert summary["skipped"] == [summary["prior"]["note"]]        # 60 rows: too few for a prior estimate
    assert summary["drift"]["prediction_drift"] is False          # the champion's predictions were compared
    assert result.html_path.parent.parent == project / "reports" / "drift" / DOMAIN
    page = result.html_path.read_text()
    assert page[:500].lower().count("html")
    header = page[page.index('<section id="metaadapt-header"'):page.index("</section>")]
    body = page.lower().index("<body")
    assert body < page.index('id="metaadapt-header"') < page.index('<div id="root_')  # our header, then Evidently
    assert f"Drift report · {DOMAIN}" in header and "champion v1" in header and "resample.csv (60 rows)" in header
    assert "No drift" in header and "Nothing to do" in header and 'href="../../../index.html"' in header


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

    page = result.html_path.read_text()
    header = page[page.index('<section id="metaadapt-header"'):page.index("</section>")]
    assert "DRIFT" in header and "&lt;b&gt;odd&lt;/b&gt;.csv (60 rows)" in header and "<b>odd</b>" not in header
    drift = json.loads(result.json_path.read_text())["drift"]
    assert (f"{drift['embedding_components_drifted']} of {drift['embedding_components_tested']} components drifted"
            in header)                                                               # not a second column count
    assert "Check the source first" in header and "metaadapt ingest --domain" in header   # what to do
    assert "Count of Drifted Columns" not in page and "emb_pc" not in page

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
    assert summary["drift"]["prediction_drift"] is None and summary["prior"] is None
    assert 'id="label-shift"' not in result.html_path.read_text()


def test_bad_batches_are_refused_before_any_report(project):
    params = load_params(project / "params.yaml")
    with pytest.raises(DataError, match="'text' column"):
        monitor_batch(DOMAIN, pd.DataFrame({"body": ["x"] * 30}), params, project)
    with pytest.raises(DataError, match="min_rows=20"):
        monitor_batch(DOMAIN, sentences(5, seed=1)[["text"]], params, project)
    with pytest.raises(FileNotFoundError, match="metaadapt run --domain customer_intent"):
        monitor_batch("customer_intent", sentences(30, seed=1)[["text"]], params, project)
    assert not (project / "reports" / "drift").exists()


# ------------------------------------------------------------------------------------------------ label shift


@pytest.fixture(scope="module")
def calibrated_project(tmp_path_factory, tiny_bert_dir, store) -> Path:
    """The serving project with its champion calibrated like adaptation's: the tiny prototype model's posteriors
    sit at 0.50 +- 0.03 (scale 1), too flat for any prior estimate; ``fit_scale`` on the reference fixes that, as
    the pipeline's cross-validated calibration does. Its prior stays uniform (log_prior None), so EM starts there.
    Module-scoped: each test reads only its own run directory."""
    original = serving_project.tiny_model

    def calibrated(tiny_bert: Path, support: pd.DataFrame):
        from components.classifier import fit_scale
        from components.predictor import Predictor

        model = original(tiny_bert, support)
        reference = sentences(120, seed=0)                        # make_project's reference
        x = torch.as_tensor(Predictor(model, device="cpu").embed(reference["text"].tolist()))
        y = np.array([model.labels.index(label) for label in reference["label"]])
        model.classifier.scale = fit_scale(model.classifier.balanced_logits(model.head, x).numpy(), y)
        return model

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(serving_project, "tiny_model", calibrated)
        root = make_project(tmp_path_factory.mktemp("calibrated"), tiny_bert_dir, store)
    reset_mlflow()
    return root


def prior_params(project: Path) -> Params:
    """The project's params with the prior settings these tests rely on spelled out."""
    params = load_params(project / "params.yaml")
    return params.model_copy(update={"adapt": params.adapt.model_copy(
        update={"traffic_min_rows": 100, "prior_pseudo_rows": 50.0})})


def label_mix(n_neg: int, n_pos: int, seed: int) -> pd.DataFrame:
    """Unlabelled texts drawn with exactly this label mix (the labels are dropped: traffic has none)."""
    pool = sentences(4 * (n_neg + n_pos) + 40, seed=seed)
    picked = pd.concat([pool[pool["label"] == "neg"].head(n_neg), pool[pool["label"] == "pos"].head(n_pos)])
    assert len(picked) == n_neg + n_pos
    return picked.sample(frac=1.0, random_state=seed)[["text"]].reset_index(drop=True)


def test_batch_of_another_label_mix_fires_label_shift(calibrated_project):
    result = monitor_batch(DOMAIN, label_mix(0, 200, seed=31), prior_params(calibrated_project), calibrated_project)

    assert result.drift_detected and "label_shift" in result.drifted_signals
    prior = json.loads(result.json_path.read_text())["prior"]
    assert prior["model_prior"] == {"neg": 0.5, "pos": 0.5} and prior["rows"] == 200 and prior["fired"] is True
    assert prior["estimated_prior"]["pos"] > 0.65 and prior["shift"] > prior["threshold"] == 0.15
    reason = next(r for r in result.reasons if r.startswith("estimated class prior moved"))
    assert f"moved {prior['shift']:.2f} (total variation)" in reason and "pos 0.50 -> " in reason
    assert "adapt.prior: traffic" in reason

    page = result.html_path.read_text()
    section = page[page.index('id="label-shift"'):]
    assert section.index("</section>") < section.lower().index("</body>")        # inside the page's body
    assert "estimated traffic prior" in section and "DRIFT" in section and "<td>pos</td>" in section
    run = mlflow.search_runs(experiment_names=["tiny"], filter_string="tags.stage = 'monitor'",
                             order_by=["start_time DESC"]).iloc[0]
    assert run["tags.label_shift"] == "true" and run["metrics.prior_shift"] == pytest.approx(prior["shift"])


def test_batch_of_the_same_label_mix_does_not_fire(calibrated_project):
    result = monitor_batch(DOMAIN, label_mix(100, 100, seed=32), prior_params(calibrated_project), calibrated_project)

    prior = json.loads(result.json_path.read_text())["prior"]
    assert prior["fired"] is False and prior["shift"] < prior["threshold"] and prior["rows"] == 200
    assert "label_shift" not in result.drifted_signals
    assert not any("class prior" in r for r in result.reasons)
    assert "no label shift" in result.html_path.read_text()


def test_tiny_batch_is_not_estimated_and_says_why(calibrated_project):
    # all one label, but 60 rows < adapt.traffic_min_rows 100: no estimate, no label-shift drift
    result = monitor_batch(DOMAIN, label_mix(0, 60, seed=33), prior_params(calibrated_project), calibrated_project)

    summary = json.loads(result.json_path.read_text())
    prior = summary["prior"]
    assert prior["estimated_prior"] is None and prior["shift"] is None and prior["fired"] is False
    assert "60 rows < adapt.traffic_min_rows 100" in prior["note"] and prior["note"] in summary["skipped"]
    assert "label_shift" not in result.drifted_signals
    assert "not estimated (batch too small)" in result.html_path.read_text()


def test_prior_section_escapes_labels_and_stays_offline(tmp_path):
    from components.monitoring import append_prior_section

    label = "<script>alert(1)</script>"
    prior = {"model_prior": {label: 0.2, "b": 0.8}, "estimated_prior": {label: 0.7, "b": 0.3}, "shift": 0.5,
             "threshold": 0.15, "rows": 300, "fired": True, "note": "EM on 300 rows"}
    page = tmp_path / "report.html"
    page.write_text("<html><body><div id='root'></div></body></html>")
    append_prior_section(page, prior)
    text = page.read_text()
    assert "<script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt; 0.20 -&gt; 0.70" in text
    assert text.endswith("</section>\n</body></html>") and "http" not in text


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
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "![Accuracy against K (few-shot benchmark, not this run)](plots/accuracy_vs_k.png)" in markdown
    assert "no registered versions yet" in markdown and not (tmp_path / "mlruns").exists()   # no store created

    history = {"a": [{"version": 1, "registered_at": "2026-01-01T00:00:00Z", "macro_f1": 0.5, "promoted": True},
                     {"version": 2, "registered_at": "2026-01-02T00:00:00Z", "macro_f1": 0.4, "promoted": False}]}
    assert champion_history(history, tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"
    assert champion_history({"a": []}, tmp_path / "none.png") is None
