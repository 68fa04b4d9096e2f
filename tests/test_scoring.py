"""Metrics beside their baselines, labels not evaluated, and the paired bootstrap of the promotion gate."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

from components.scoring import baseline_row, majority_label, not_evaluated, paired_bootstrap, scores


def random_labels(n: int, labels: list[str], seed: int) -> list[str]:
    return [labels[i] for i in np.random.default_rng(seed).integers(0, len(labels), n)]


def test_scores_match_scikit_learn_over_the_evaluated_labels():
    truth, predicted = random_labels(400, ["a", "b", "c"], 0), random_labels(400, ["a", "b", "c", "new"], 1)
    got = scores(truth, predicted)
    assert got["accuracy"] == pytest.approx(accuracy_score(truth, predicted))
    assert got["macro_f1"] == pytest.approx(f1_score(truth, predicted, labels=["a", "b", "c"], average="macro"))
    assert got["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(truth, predicted))


def test_a_label_missing_from_the_evaluation_split_is_not_evaluated_rather_than_zero():
    truth, predicted = ["a", "a", "b", "b"], ["a", "a", "b", "b"]
    assert scores(truth, predicted)["macro_f1"] == 1.0
    assert not_evaluated(["a", "b", "new"], truth) == ["new"]


def test_majority_baseline():
    assert majority_label(["x", "y", "y", "z"]) == "y"
    row = baseline_row("majority", ["y", "y", "x", "z"], ["y"] * 4)
    assert row["majority_accuracy"] == 0.5 and row["majority_balanced_accuracy"] == pytest.approx(1 / 3)


def test_paired_bootstrap_sees_a_real_gain_and_no_gain_in_a_copy():
    rng = np.random.default_rng(0)
    truth = random_labels(600, ["a", "b", "c"], 2)
    champion = [t if rng.random() < 0.6 else "a" for t in truth]
    better = [t if rng.random() < 0.85 else "a" for t in truth]
    gain = paired_bootstrap(truth, better, champion, "macro_f1", samples=500)
    assert gain.low > 0.05 and gain.difference > 0 and gain.low <= gain.difference <= gain.high
    same = paired_bootstrap(truth, champion, champion, "accuracy", samples=500)
    assert same.low == same.high == same.difference == 0.0
    worse = paired_bootstrap(truth, champion, better, "balanced_accuracy", samples=500)
    assert worse.high < 0
    assert "paired bootstrap interval" in gain.describe()


def test_paired_bootstrap_refuses_unpaired_rows():
    with pytest.raises(ValueError, match="same non-empty rows"):
        paired_bootstrap(["a"], ["a", "b"], ["a"], "accuracy")
    with pytest.raises(ValueError, match="unknown metric"):
        paired_bootstrap(["a"], ["a"], ["a"], "f2")
