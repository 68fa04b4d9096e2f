"""Quality numbers that can be trusted: accuracy, macro-F1 and balanced accuracy side by side, the baselines they
must beat on the same rows, and a paired bootstrap for comparing two models on the same rows.

Labels the evaluation split lacks (a new label declared before any of its rows were held out) are "not
evaluated": they are left out of the macro averages instead of counting as an F1 of 0 or blocking the domain.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

METRICS = ("accuracy", "macro_f1", "balanced_accuracy")


def _codes(truth: Sequence[str], predicted: Sequence[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Integer codes for truth and predictions; the evaluated labels (those in `truth`) come first."""
    evaluated = sorted(set(truth))
    others = sorted(set(predicted) - set(evaluated))
    index = {label: i for i, label in enumerate(evaluated + others)}
    return (np.array([index[t] for t in truth], dtype=int), np.array([index[p] for p in predicted], dtype=int),
            evaluated)


def _from_counts(tp: np.ndarray, true_n: np.ndarray, pred_n: np.ndarray, rows: np.ndarray) -> dict[str, np.ndarray]:
    """The three metrics from per-label counts of shape (..., evaluated labels); rows: (...,)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(true_n > 0, tp / np.maximum(true_n, 1), np.nan)
        precision = np.where(pred_n > 0, tp / np.maximum(pred_n, 1), 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
        f1 = np.where(true_n > 0, f1, np.nan)
    return {"accuracy": tp.sum(-1) / rows, "macro_f1": np.nanmean(f1, -1), "balanced_accuracy": np.nanmean(recall, -1)}


def scores(truth: Sequence[str], predicted: Sequence[str]) -> dict[str, float]:
    """accuracy, macro-F1 and balanced accuracy, macro averages over the labels present in `truth`."""
    if not len(truth):
        raise ValueError("no rows to score")
    t, p, evaluated = _codes(truth, predicted)
    n = len(evaluated)
    counts = _counts(t[None, :], p[None, :], n)
    return {name: float(value[0]) for name, value in _from_counts(*counts, np.array([len(t)])).items()}


def _counts(t: np.ndarray, p: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-resample (rows of t, p) true positives, true counts and predicted counts for the first n labels."""
    b = t.shape[0]
    offsets = (np.arange(b) * n)[:, None]
    size = b * n

    def count(codes: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return np.bincount((codes + offsets)[mask], minlength=size).reshape(b, n)

    hit = (t == p)
    return count(t, hit), count(t, np.ones_like(hit)), count(p, p < n)


def majority_label(labels: Sequence[str]) -> str:
    """The most frequent label of the labelled pool (ties: the first in sorted order)."""
    values, counts = np.unique(np.asarray(labels, dtype=object), return_counts=True)
    return str(values[int(np.argmax(counts))])


def baseline_row(name: str, truth: Sequence[str], predicted: Sequence[str]) -> dict[str, float]:
    return {f"{name}_{metric}": value for metric, value in scores(truth, predicted).items()}


def not_evaluated(model_labels: Sequence[str], truth: Sequence[str]) -> list[str]:
    """The model's labels with no row in the evaluation split."""
    return sorted(set(model_labels) - set(truth))


@dataclass
class PairedComparison:
    """Candidate minus champion on the same rows: the observed difference and its bootstrap interval."""

    metric: str
    candidate: float
    champion: float
    difference: float
    low: float
    high: float
    confidence: float
    rows: int
    samples: int

    def to_dict(self) -> dict:
        return {key: (round(value, 6) if isinstance(value, float) else value) for key, value in self.__dict__.items()}

    def describe(self) -> str:
        return (f"{self.metric} {self.candidate:.4f} vs champion {self.champion:.4f}: difference "
                f"{self.difference:+.4f}, {self.confidence:.0%} paired bootstrap interval "
                f"[{self.low:+.4f}, {self.high:+.4f}] on {self.rows} rows")


def paired_bootstrap(truth: Sequence[str], candidate: Sequence[str], champion: Sequence[str], metric: str,
                     samples: int = 2000, confidence: float = 0.9, seed: int = 0) -> PairedComparison:
    """Resample the rows (the same resample for both models) and take the percentile interval of the difference.

    Why paired: both models err on many of the same hard rows, so the difference is far less noisy than either
    score; comparing two single numbers mistakes a lucky draw for a better model.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; one of {METRICS}")
    if not (len(truth) == len(candidate) == len(champion)) or not len(truth):
        raise ValueError("paired comparison needs the same non-empty rows for both models")
    everything = list(truth) + list(candidate) + list(champion)
    t, codes, evaluated = _codes(list(truth), everything)
    a, b = codes[len(truth):2 * len(truth)], codes[2 * len(truth):]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(t), size=(samples, len(t)))
    n, rows = len(evaluated), np.full(samples, len(t))
    resampled_a = _from_counts(*_counts(t[idx], a[idx], n), rows)[metric]
    resampled_b = _from_counts(*_counts(t[idx], b[idx], n), rows)[metric]
    diff = resampled_a - resampled_b
    tail = (1 - confidence) / 2 * 100
    observed_a, observed_b = scores(truth, candidate)[metric], scores(truth, champion)[metric]
    return PairedComparison(metric, observed_a, observed_b, observed_a - observed_b,
                            float(np.percentile(diff, tail)), float(np.percentile(diff, 100 - tail)),
                            confidence, len(t), samples)
