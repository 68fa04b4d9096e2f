"""Adaptation from every labelled row: the CV-chosen classifier, calibration, class priors and EM."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from components.classifier import (apply_prior, em_prior, estimate_prior, fit_classifier, fit_scale,
                                   fold_assignment, pool_prior, prior_shift)
from components.config import AdaptConfig
from components.meta import ProjectionHead
from components.scoring import scores


def correlated_noise_rows(n_per_label: int, seed: int) -> tuple[torch.Tensor, list[str]]:
    """Two labels whose means differ mostly along a direction drowned in noise; a thin direction separates them.

    Nearest-mean (prototype) classification follows the noisy direction, a logistic regression finds the thin one.
    """
    rng = np.random.default_rng(seed)
    u, v = np.array([1.0, 1.0]) / np.sqrt(2), np.array([1.0, -1.0]) / np.sqrt(2)
    rows, labels = [], []
    for label, mean in (("a", np.zeros(2)), ("b", 1.0 * u + 0.3 * v)):
        noise = rng.normal(0, 2.0, (n_per_label, 1)) * u + rng.normal(0, 0.03, (n_per_label, 1)) * v
        rows.append(np.hstack([mean + noise, np.ones((n_per_label, 6))]))
        labels += [label] * n_per_label
    return torch.as_tensor(np.vstack(rows), dtype=torch.float32), labels


def gaussian_rows(counts: dict[str, int], spread: float, seed: int, dim: int = 16):
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(0, spread, (len(counts), dim))
    x = np.vstack([centres[i] + rng.normal(0, 1, (n, dim)) for i, n in enumerate(counts.values())])
    labels = [label for label, n in counts.items() for _ in range(n)]
    return torch.as_tensor(x, dtype=torch.float32), labels


def heads(dim: int) -> dict[str, ProjectionHead]:
    return {"meta": ProjectionHead(dim), "identity": ProjectionHead(dim)}


def test_auto_picks_logistic_regression_where_prototypes_fail():
    x, y = correlated_noise_rows(60, seed=0)
    test_x, test_y = correlated_noise_rows(300, seed=1)
    _, head, proto = fit_classifier(heads(8), x, y, AdaptConfig(method="proto"), seed=0)
    _, head_auto, auto = fit_classifier(heads(8), x, y, AdaptConfig(method="auto"), seed=0)
    assert auto.kind == "linear" and auto.info["method"] == "linear" and auto.bias is not None
    assert proto.kind == "cosine"
    auto_accuracy = scores(test_y, auto.predict(head_auto, test_x))["accuracy"]
    assert auto_accuracy > 0.95 > scores(test_y, proto.predict(head, test_x))["accuracy"] + 0.1


def test_every_row_is_used_and_a_rare_label_is_kept():
    x, y = gaussian_rows({"big": 120, "mid": 30, "rare": 1}, spread=1.5, seed=0)
    _, _, classifier = fit_classifier(heads(16), x, y, AdaptConfig(), seed=0)
    assert classifier.info["rows"] == 151
    assert classifier.info["rows_per_label"] == {"big": 120, "mid": 30, "rare": 1}
    assert classifier.kind == "cosine"          # a label with one row rules logistic regression out (min 4 per label)
    assert classifier.labels == ["big", "mid", "rare"]


def test_one_row_per_label_is_prototypes_without_cross_validation():
    x, y = gaussian_rows({"a": 1, "b": 1, "c": 1}, spread=3.0, seed=0)
    _, _, classifier = fit_classifier(heads(16), x, y, AdaptConfig(), seed=0)
    assert classifier.info["steps"] == 0 and classifier.info["cv_balanced_accuracy"] == {}
    assert classifier.scale == 1.0


def test_labels_without_rows_or_unknown_labels_are_clear_errors():
    x, y = gaussian_rows({"a": 3, "b": 3}, spread=3.0, seed=0)
    with pytest.raises(ValueError, match="no labelled row for label"):
        fit_classifier(heads(16), x, y, AdaptConfig(), seed=0, label_order=["a", "b", "c"])
    with pytest.raises(ValueError, match="not among the domain's labels"):
        fit_classifier(heads(16), x, y, AdaptConfig(), seed=0, label_order=["a"])


def test_fold_assignment_keeps_labels_with_too_few_rows_in_training():
    y = np.array([0] * 5 + [1] * 1 + [2] * 2)
    assignment = fold_assignment(y, 2, seed=0)
    assert (assignment[y == 1] == -1).all()
    for fold in (0, 1):
        held = assignment == fold
        assert set(y[~held]) == {0, 1, 2} and held.any()


def test_pool_prior_lifts_accuracy_on_skewed_traffic():
    counts = {"common": 300, "uncommon": 60, "rare": 20}
    x, y = gaussian_rows(counts, spread=0.5, seed=0)
    test_x, test_y = gaussian_rows({k: 5 * v for k, v in counts.items()}, spread=0.5, seed=1)
    _, head, classifier = fit_classifier(heads(16), x, y, AdaptConfig(), seed=0)
    uniform = scores(test_y, classifier.predict(head, test_x))
    apply_prior(classifier, estimate_prior("pool", list(counts.values()), None, AdaptConfig()))
    pooled = scores(test_y, classifier.predict(head, test_x))
    assert pooled["accuracy"] > uniform["accuracy"] + 0.03
    assert classifier.prior["common"] == pytest.approx(301 / 383)
    assert classifier.info["prior"]["source"] == "pool"


def test_uniform_prior_leaves_the_model_as_trained():
    x, y = gaussian_rows({"a": 20, "b": 5}, spread=1.0, seed=0)
    _, head, classifier = fit_classifier(heads(16), x, y, AdaptConfig(), seed=0)
    before = classifier.predict_proba(head, x)
    apply_prior(classifier, estimate_prior("uniform", [20, 5], None, AdaptConfig()))
    assert classifier.log_prior is None and torch.allclose(before, classifier.predict_proba(head, x))


def test_em_recovers_a_shifted_prior_from_calibrated_posteriors():
    rng = np.random.default_rng(0)
    true_prior = np.array([0.7, 0.2, 0.1])
    labels = rng.choice(3, size=4000, p=true_prior)
    means = np.eye(3) * 2.0
    x = means[labels] + rng.normal(0, 1, (4000, 3))
    logits = x @ means.T - 0.5 * (means ** 2).sum(1)       # exact uniform-prior Gaussian posteriors
    posteriors = np.exp(logits - logits.max(1, keepdims=True))
    posteriors /= posteriors.sum(1, keepdims=True)
    estimate, iterations = em_prior(posteriors, np.ones(3) / 3)
    assert np.abs(estimate - true_prior).max() < 0.03 and iterations > 1
    shrunk, _ = em_prior(posteriors[:20], np.ones(3) / 3, pseudo_rows=1000)
    assert np.abs(shrunk - 1 / 3).max() < 0.05             # a tiny batch barely moves a strong prior


def test_traffic_prior_falls_back_to_the_pool_on_a_tiny_batch():
    config = AdaptConfig(traffic_min_rows=50)
    tiny = estimate_prior("traffic", [80, 20], np.full((10, 2), 0.5), config)
    assert tiny.source == "pool" and "10 rows" in tiny.note
    large = estimate_prior("traffic", [80, 20], np.tile([0.1, 0.9], (500, 1)), config)
    assert large.source == "traffic" and large.prior[1] > 0.8


def test_fit_scale_recovers_the_temperature_of_sampled_labels():
    rng = np.random.default_rng(0)
    base = rng.normal(0, 2, (5000, 4))
    probabilities = np.exp(base) / np.exp(base).sum(1, keepdims=True)
    y = np.array([rng.choice(4, p=p) for p in probabilities])
    assert fit_scale(base * 4.0, y) == pytest.approx(0.25, rel=0.15)


def test_prior_helpers():
    np.testing.assert_allclose(pool_prior([3, 1]), [4 / 6, 2 / 6])
    assert prior_shift({"a": 0.5, "b": 0.5}, {"a": 0.8, "b": 0.2}) == pytest.approx(0.3)


def test_prior_strength_follows_the_domain_metric():
    counts = {"common": 300, "rare": 30}
    x, y = gaussian_rows(counts, spread=0.3, seed=0)
    _, head, classifier = fit_classifier(heads(16), x, y, AdaptConfig(), seed=0)
    estimate = estimate_prior("pool", list(counts.values()), None, AdaptConfig())
    apply_prior(classifier, estimate, "accuracy")
    for_accuracy = classifier.info["prior"]["strength"]
    apply_prior(classifier, estimate, "balanced_accuracy")
    assert for_accuracy > 0 and classifier.info["prior"]["strength"] < for_accuracy   # recall of rare labels
    assert classifier.prior["common"] == pytest.approx(301 / 332)   # the estimate, whatever strength applies it


def test_weighted_scores_reweight_rows_to_another_label_mix():
    from components.classifier import weighted_scores

    y, predicted = np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1])
    plain = weighted_scores(y, predicted, np.ones(4), 2)
    assert plain["accuracy"] == 0.75 and plain["balanced_accuracy"] == 0.75
    skewed = weighted_scores(y, predicted, np.array([9.0, 9.0, 1.0, 1.0]), 2)
    assert skewed["accuracy"] == pytest.approx(11 / 20) and skewed["balanced_accuracy"] == 0.75


def centres(n_labels: int, spread: float, dim: int = 16) -> torch.Tensor:
    return torch.as_tensor(np.random.default_rng(99).normal(0, spread, (n_labels, dim)), dtype=torch.float32)


def test_label_descriptions_rescue_one_noisy_example_per_label():
    """At K=1 there is nothing to cross-validate: the description joins the single example as a second row."""
    counts = {"a": 1, "b": 1, "c": 1, "d": 1}
    x, y = gaussian_rows(counts, spread=1.0, seed=3)                   # one noisy row per label
    test_x, test_y = gaussian_rows({label: 200 for label in counts}, spread=1.0, seed=4)
    prompts = centres(4, 1.0)                                          # descriptions sit at the true centres
    _, head, plain = fit_classifier(heads(16), x, y, AdaptConfig(), seed=0)
    _, fused_head, fused = fit_classifier(heads(16), x, y, AdaptConfig(), seed=0, prompts=prompts)
    assert plain.info["description_rows"] == 0 and fused.info["description_rows"] == 1
    assert scores(test_y, fused.predict(fused_head, test_x))["accuracy"] > \
        scores(test_y, plain.predict(head, test_x))["accuracy"] + 0.05


def test_cross_validation_never_takes_misleading_descriptions():
    x, y = gaussian_rows({"a": 8, "b": 8, "c": 8}, spread=1.0, seed=5)
    test_x, test_y = gaussian_rows({"a": 300, "b": 300, "c": 300}, spread=1.0, seed=6)
    good, wrong = centres(3, 1.0), centres(3, 1.0)[[1, 2, 0]]          # wrong: each description names another label
    _, good_head, helped = fit_classifier(heads(16), x, y, AdaptConfig(), seed=0, prompts=good)
    _, wrong_head, misled = fit_classifier(heads(16), x, y, AdaptConfig(), seed=0, prompts=wrong)
    assert misled.info["description_rows"] == 0          # the one-standard-error rule keeps the plain fit
    _, head, plain = fit_classifier(heads(16), x, y, AdaptConfig(), seed=0)
    plain_accuracy = scores(test_y, plain.predict(head, test_x))["accuracy"]
    assert scores(test_y, helped.predict(good_head, test_x))["accuracy"] >= plain_accuracy
    assert scores(test_y, misled.predict(wrong_head, test_x))["accuracy"] == plain_accuracy
