"""Tests for components.drift: real Evidently 0.7 reports on small synthetic sets."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from components.drift import DriftSummary, drift_report

WORDS = "the a film movie good bad great plot actor scene boring fun".split()
DIMS = 24


def _texts(rng: np.random.Generator, n: int, lo: int, hi: int) -> list[str]:
    return [" ".join(rng.choice(WORDS, rng.integers(lo, hi))) for _ in range(n)]


def _embeddings(rng: np.random.Generator, n: int, shift: float = 0.0) -> np.ndarray:
    """Low-rank structure plus noise, like sentence embeddings; a fixed mixing matrix."""
    mixing = np.random.default_rng(99).normal(size=(6, DIMS))
    return rng.normal(size=(n, 6)) @ mixing + 0.5 * rng.normal(size=(n, DIMS)) + shift


def _frame(rng: np.random.Generator, n: int, labels=("neg", "pos"), lo=3, hi=12) -> pd.DataFrame:
    return pd.DataFrame({"text": _texts(rng, n, lo, hi), "label": rng.choice(labels, n)})


@pytest.fixture(scope="module")
def reference():
    rng = np.random.default_rng(0)
    return _frame(rng, 150), _embeddings(rng, 150)


@pytest.fixture(scope="module")
def shifted(reference, tmp_path_factory):
    """Longer texts, a label unseen in the reference, and shifted embeddings."""
    ref, ref_emb = reference
    rng = np.random.default_rng(1)
    cur = _frame(rng, 70, labels=("pos", "new"), lo=20, hi=40)
    html = tmp_path_factory.mktemp("drift") / "reports" / "shifted.html"
    summary = drift_report(
        ref, cur, reference_embeddings=ref_emb, current_embeddings=_embeddings(rng, 70, shift=2.0),
        html_path=html,
    )
    return summary


def test_shifted_set_is_detected(shifted: DriftSummary):
    assert shifted.dataset_drift
    assert {"label", "text_length", "text_word_count"} <= set(shifted.drifted_columns)
    assert shifted.drifted_share >= 0.5
    assert shifted.embedding_drift and shifted.embedding_drift_score > 0.5
    assert (shifted.n_reference, shifted.n_current) == (150, 70)


def test_html_report_is_written(shifted: DriftSummary):
    with open(shifted.html_path, encoding="utf-8") as fh:
        page = fh.read()
    assert "<html" in page[:2000]
    assert "emb_pc" not in page   # the components are not a second "drifted columns" count in Evidently's page


def test_summary_is_json_serialisable(shifted: DriftSummary):
    as_dict = json.loads(json.dumps(shifted.to_dict()))
    assert as_dict["dataset_drift"] is True
    assert set(as_dict) == {
        "dataset_drift", "drifted_columns", "drifted_share", "embedding_drift",
        "embedding_drift_score", "n_reference", "n_current", "html_path", "prediction_drift", "reasons",
        "column_p_values", "column_alpha", "embedding_components_drifted", "embedding_components_tested",
        "embedding_min_p_value", "embedding_alpha",
    }
    assert as_dict["column_p_values"]["text_length"] < as_dict["column_alpha"]     # the statistics behind the verdict
    assert 0 < as_dict["embedding_components_drifted"] <= as_dict["embedding_components_tested"]
    assert as_dict["embedding_drift_score"] == pytest.approx(
        as_dict["embedding_components_drifted"] / as_dict["embedding_components_tested"])
    assert as_dict["prediction_drift"] is None      # no predictions given
    assert any("embeddings drifted" in r for r in as_dict["reasons"])


def test_resample_of_reference_is_not_flagged(reference, tmp_path):
    # Seed 7 is not special: seeds 0-29 of this resample all gave no drift when written.
    ref, ref_emb = reference
    idx = np.random.default_rng(7).choice(len(ref), 70, replace=False)
    summary = drift_report(
        ref, ref.iloc[idx].reset_index(drop=True), reference_embeddings=ref_emb,
        current_embeddings=ref_emb[idx], html_path=tmp_path / "same.html",
    )
    assert not summary.dataset_drift, summary
    assert not summary.embedding_drift and summary.embedding_drift_score == 0.0
    assert (tmp_path / "same.html").exists()


def test_labels_present_in_one_set_only(reference, tmp_path):
    """A label missing from the current set and another missing from the reference."""
    ref, ref_emb = reference
    rng = np.random.default_rng(2)
    cur = _frame(rng, 60, labels=("pos", "neutral"))
    summary = drift_report(
        ref, cur, reference_embeddings=ref_emb, current_embeddings=_embeddings(rng, 60),
        html_path=tmp_path / "labels.html",
    )
    assert "label" in summary.drifted_columns
    # the label mix alone is drift (texts and embeddings come from the reference's generator)
    assert summary.dataset_drift and "label distribution drifted" in summary.reasons
    assert summary.drifted_share < 0.5 and not summary.embedding_drift


def test_embedding_shift_alone_is_detected(reference, tmp_path):
    ref, ref_emb = reference
    rng = np.random.default_rng(3)
    summary = drift_report(
        ref, _frame(rng, 70), reference_embeddings=ref_emb,
        current_embeddings=_embeddings(rng, 70, shift=1.5), html_path=tmp_path / "emb.html",
        max_embedding_dims=8,
    )
    assert summary.embedding_drift and summary.dataset_drift
    assert summary.embedding_drift_score is not None
    assert summary.embedding_drift_score * 8 == pytest.approx(round(summary.embedding_drift_score * 8))


def test_mismatched_embeddings_are_rejected(reference, tmp_path):
    ref, ref_emb = reference
    with pytest.raises(ValueError, match="embeddings shape"):
        drift_report(ref, ref, reference_embeddings=ref_emb, current_embeddings=ref_emb[:10],
                     html_path=tmp_path / "x.html")


def test_unlabelled_batch_with_prediction_drift_only(reference, tmp_path):
    """A monitored batch has no labels: the predicted-label mix alone moves, and that is the reason given."""
    ref, ref_emb = reference
    rng = np.random.default_rng(4)
    ref = ref.assign(prediction=ref["label"])
    idx = rng.choice(len(ref), 70, replace=False)
    cur = ref.iloc[idx][["text"]].reset_index(drop=True).assign(prediction=["pos"] * 65 + ["neg"] * 5)
    summary = drift_report(ref, cur, reference_embeddings=ref_emb, current_embeddings=ref_emb[idx], html_path=None)
    assert summary.prediction_drift and summary.dataset_drift and summary.html_path is None
    assert summary.drifted_columns == ["prediction"] and summary.drifted_share == 0.0
    assert summary.reasons == ["predicted-label distribution drifted"]


def test_unlabelled_resample_with_same_predictions_is_quiet(reference):
    ref, ref_emb = reference
    ref = ref.assign(prediction=ref["label"])
    idx = np.random.default_rng(5).choice(len(ref), 70, replace=False)
    cur = ref.iloc[idx][["text", "prediction"]].reset_index(drop=True)
    summary = drift_report(ref, cur, reference_embeddings=ref_emb, current_embeddings=ref_emb[idx], html_path=None)
    assert not summary.dataset_drift and summary.prediction_drift is False and summary.reasons == []
