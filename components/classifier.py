"""Adaptation from every labelled row: a method that fits the amount of data, calibration, and class priors.

At a few examples per label, prototypes in the meta-trained head's space (optionally fine-tuned) are the best
classifier; with tens or hundreds per label, a regularised logistic regression on the head's features wins
(measured in benchmarks/learning_curve.py). Rather than a fixed switch-over point, every candidate — cosine
classifier × head × fine-tuning steps, logistic regression × head × C — is scored by stratified cross-validation
on the training rows alone (never the evaluation split) and the best balanced accuracy wins; ties go to the simpler
candidate (listed first). All candidates are trained *balanced* (as if labels were equally likely), their
out-of-fold logits give a calibration scale (balanced negative log-likelihood), and the class prior of the traffic
is applied last, as a log-prior added to the logits: uniform, the labelled pool's label frequencies, or the
frequencies re-estimated from unlabelled traffic by EM (Saerens, Latinne and Decaestecker 2002).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch.nn import functional as F

from components.config import AdaptConfig
from components.meta import (CosineClassifier, Extras, ProjectionHead, cosine_logits, finetune_path, fold_train,
                             label_weights, small_ops_threading)

SCALE_GRID = np.exp(np.linspace(math.log(0.05), math.log(20.0), 61))   # calibration multipliers tried


@dataclass(frozen=True)
class Candidate:
    """One way to build the classifier: which head, which kind, and its setting (steps, or C)."""

    head: str
    kind: str          # cosine | linear
    setting: float     # fine-tuning steps (cosine) or inverse regularisation C (linear)
    prompt_rows: int = 0   # copies of each label's description embedding added as training rows

    def describe(self) -> str:
        what = f"{int(self.setting)} steps" if self.kind == "cosine" else f"C={self.setting:g}"
        fused = f", {self.prompt_rows} description rows per label" if self.prompt_rows else ""
        return f"{self.kind} on {self.head} head, {what}{fused}"


# ------------------------------------------------------------------------------------------ building blocks


def fold_assignment(y: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Stratified fold per row; rows of labels with fewer than `folds` rows get -1 (always trained on, never held
    out), so a rare label never vanishes from a training fold and every other label is held out in every fold."""
    rng = np.random.default_rng(seed)
    assignment = np.full(len(y), -1, dtype=int)
    for label in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == label))
        if len(rows) >= folds:
            assignment[rows] = np.arange(len(rows)) % folds
    return assignment


def balanced_weights(y: torch.Tensor, n: int) -> torch.Tensor:
    """Per-row weights that make every present label weigh the same in total (mean weight 1)."""
    return label_weights(y, n)[y]


def fit_linear(z: torch.Tensor, y: torch.Tensor, n: int, c: float,
               start: tuple[torch.Tensor, torch.Tensor] | None = None,
               max_iter: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
    """Balanced multinomial logistic regression with L2 penalty 1/(2 C n) (scikit-learn's objective), by L-BFGS.

    In torch rather than scikit-learn: one fit of 2,000 rows x 77 labels takes ~0.1 s here, and ``start`` warm-starts
    the next C of a path.
    """
    weights = (torch.zeros(n, z.shape[1]) if start is None else start[0].clone()).requires_grad_(True)
    bias = (torch.zeros(n) if start is None else start[1].clone()).requires_grad_(True)
    sample = balanced_weights(y, n)
    penalty = 1.0 / (2.0 * c * len(y))
    optimizer = torch.optim.LBFGS([weights, bias], lr=1.0, max_iter=max_iter, history_size=20,
                                  line_search_fn="strong_wolfe", tolerance_grad=1e-6, tolerance_change=1e-9)

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = (F.cross_entropy(z @ weights.T + bias, y, reduction="none") * sample).mean()
        loss = loss + penalty * (weights ** 2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return weights.detach(), bias.detach()


def balanced_accuracy(y: np.ndarray, predicted: np.ndarray, n: int) -> float:
    """Mean recall over the labels present in `y` (prior-free: what balanced training optimises)."""
    recalls = [float((predicted[y == label] == label).mean()) for label in range(n) if (y == label).any()]
    return float(np.mean(recalls)) if recalls else float("nan")


def fit_scale(logits: np.ndarray, y: np.ndarray, log_scale_sd: float = 1.0) -> float:
    """The logit multiplier minimising the balanced negative log-likelihood of out-of-fold logits, with a normal
    prior (sd `log_scale_sd`) on its logarithm around 1: the head's own temperature.

    Why the prior: 16 held-out rows of a weak few-shot classifier are best "explained" by flattening every
    probability (a scale of 0.05 measured on a review domain at K=8), after which any class prior swamps the
    classifier and it answers the majority label only. With hundreds of rows the data outweigh the prior.
    """
    logits_t, y_t = torch.as_tensor(logits, dtype=torch.float64), torch.as_tensor(y)
    weights = balanced_weights(y_t, logits.shape[1]).double()
    losses = [float((F.cross_entropy(s * logits_t, y_t, reduction="none") * weights).sum())
              + math.log(s) ** 2 / (2 * log_scale_sd ** 2) for s in SCALE_GRID]
    return float(SCALE_GRID[int(np.argmin(losses))])


# ----------------------------------------------------------------------------------- cross-validated choice


def candidates_for(heads: dict[str, ProjectionHead], config: AdaptConfig, min_count: int,
                   prompt_rows: Sequence[int] = (0,)) -> list[Candidate]:
    """Every candidate the data allows, simplest first (ties go to the first): without description rows first.

    Description rows are tried on the prototype (cosine) candidates only: a few extra rows move a prototype made of
    a handful of examples, and barely move a logistic regression fitted once every label has several rows — while
    trying them there too would triple the cost of the regression path (21 s instead of 5 s of CPU for 77 labels
    at K=8, measured). A zero-shot candidate (descriptions alone, listed first) was tried and dropped: on sentiment
    targets the one-standard-error rule then picked it on noisy folds and lost 2–3 points (docs/representations.md).
    """
    steps = [0] if config.method == "proto" else sorted(set(config.step_candidates))
    found = []
    for rows in prompt_rows:
        found += [Candidate(name, "cosine", float(s), rows) for name in heads for s in steps]
        if rows == 0 and config.method == "auto" and min_count >= config.linear_min_per_label:
            found += [Candidate(name, "linear", float(c)) for name in heads for c in sorted(config.linear_c)]
    return found


def prompt_extras(prompts: torch.Tensor, copies: int, extras: Extras | None) -> Extras | None:
    """`copies` rows per label of its description embedding (row i of `prompts` = label i), added to the user's
    extras. Their origins are -1: they are in every CV training fold and never held out (they are not data)."""
    if copies == 0:
        return extras
    n = len(prompts)
    rows = Extras(prompts.repeat(copies, 1), torch.arange(n, device=prompts.device).repeat(copies),
                  np.full((n * copies, 2), -1))
    if extras is None:
        return rows
    return Extras(torch.cat([extras.x, rows.x]), torch.cat([extras.y, rows.y]),
                  np.concatenate([extras.origins, rows.origins]))


def cross_validated_logits(heads: dict[str, ProjectionHead], candidates: list[Candidate], x: torch.Tensor,
                           y: torch.Tensor, n: int, assignment: np.ndarray, config: AdaptConfig,
                           extras: Extras | None, prompts: torch.Tensor | None = None) -> dict[Candidate, np.ndarray]:
    """Out-of-fold balanced logits of every candidate for the rows that get held out (assignment >= 0)."""
    out: dict[Candidate, np.ndarray] = {}
    for rows in dict.fromkeys(c.prompt_rows for c in candidates):
        mine = [c for c in candidates if c.prompt_rows == rows]
        fused = prompt_extras(prompts, rows, extras) if rows else extras
        out.update(_cross_validated_logits(heads, mine, x, y, n, assignment, config, fused))
    return {c: out[c] for c in candidates}


def _cross_validated_logits(heads: dict[str, ProjectionHead], candidates: list[Candidate], x: torch.Tensor,
                            y: torch.Tensor, n: int, assignment: np.ndarray, config: AdaptConfig,
                            extras: Extras | None) -> dict[Candidate, np.ndarray]:
    held_rows = np.flatnonzero(assignment >= 0)
    out = {c: np.zeros((len(held_rows), n), dtype=np.float32) for c in candidates}
    position = {row: i for i, row in enumerate(held_rows)}
    for fold in range(int(assignment.max()) + 1):
        held = np.flatnonzero(assignment == fold)
        x_train, y_train = fold_train(x, y, held, extras)
        where = [position[row] for row in held]
        for name, head in heads.items():
            mine = [c for c in candidates if c.head == name]
            with torch.no_grad():
                z_held, z_train = head(x[held]), head(x_train)
            for candidate, logits in _fold_logits(head, mine, x_train, y_train, z_train, z_held, n, config).items():
                out[candidate][where] = logits
    return out


def _fold_logits(head: ProjectionHead, candidates: list[Candidate], x_train: torch.Tensor, y_train: torch.Tensor,
                 z_train: torch.Tensor, z_held: torch.Tensor, n: int, config: AdaptConfig) -> dict[Candidate, np.ndarray]:
    """One fold, one head: held-out logits of each of its candidates (one fine-tuning path, one C path)."""
    logits = {}
    cosine = [c for c in candidates if c.kind == "cosine"]
    if cosine:
        path = finetune_path(head, x_train, y_train, n, [int(c.setting) for c in cosine], config.lr)
        for c in cosine:
            logits[c] = cosine_logits(z_held, path[int(c.setting)], head.temperature.item()).numpy()
    start = None
    for c in sorted((c for c in candidates if c.kind == "linear"), key=lambda c: c.setting):
        start = fit_linear(z_train, y_train, n, c.setting, start)
        logits[c] = (z_held @ start[0].T + start[1]).numpy()
    return logits


def choose_candidate(oof: dict[Candidate, np.ndarray], y_held: np.ndarray, n: int) -> tuple[Candidate, dict[str, float]]:
    """The first listed (simplest) candidate within one standard error of the best out-of-fold balanced accuracy.

    Why the one-standard-error rule (Hastie, Tibshirani and Friedman): with 24 held-out rows a score differs by
    ~0.1 between lucky and unlucky folds, and the maximum over 20 candidates is mostly luck; prototypes on the
    meta-trained head (listed first) are kept unless something is clearly better. With thousands of rows the
    standard error is ~0.01 and the best candidate wins.
    """
    scores = {c: balanced_accuracy(y_held, logits.argmax(1), n) for c, logits in oof.items()}
    best = max(scores.values())
    standard_error = math.sqrt(max(best * (1 - best), 1e-12) / len(y_held))
    chosen = next(c for c in oof if scores[c] >= best - standard_error - 1e-12)
    return chosen, {c.describe(): round(s, 4) for c, s in scores.items()}


# ------------------------------------------------------------------------------------------------ the fit


def fit_classifier(heads: dict[str, ProjectionHead], x: torch.Tensor, row_labels: Sequence[str],
                   config: AdaptConfig, seed: int, label_order: Sequence[str] | None = None,
                   extras: Extras | None = None,
                   prompts: torch.Tensor | None = None) -> tuple[str, ProjectionHead, CosineClassifier]:
    """Choose (by CV on these rows), calibrate and fit the classifier on every row; the prior stays uniform.

    ``prompts`` (one encoder embedding of each label's description or name, in label order) makes the label
    descriptions a prior on the classifier: each of ``config.description_rows`` adds that many copies of them as
    training rows, and CV on the labelled rows decides how much (if any) they are worth beside the data.
    Returns the chosen head's name, the head and the classifier; ``classifier.info`` says what was chosen and why.
    """
    labels = list(label_order) if label_order else sorted(set(row_labels))
    unknown = sorted(set(row_labels) - set(labels))
    if unknown:
        raise ValueError(f"training rows carry label(s) {unknown} that are not among the domain's labels {labels}")
    missing = [label for label in labels if label not in set(row_labels)]
    if missing:
        raise ValueError(f"no labelled row for label(s) {missing}; give at least one per label or use k=0")
    with small_ops_threading():
        return _fit(heads, x, labels, [labels.index(label) for label in row_labels], config, seed, extras, prompts)


def _fit(heads, x, labels, y_list, config, seed, extras, prompts=None):
    """The body of fit_classifier, inside its threading context."""
    started = time.perf_counter()
    torch.set_flush_denormal(True)   # tiny weights turn subnormal and slow CPU matmuls ~15x (measured)
    for head in heads.values():
        head.eval()
    n, y = len(labels), torch.tensor(y_list, device=x.device)
    counts = np.bincount(y_list, minlength=n)
    fusion = sorted(set(config.description_rows) | {0}) if prompts is not None else [0]
    candidates = candidates_for(heads, config, int(counts.min()), fusion)
    folds = min(config.cv_folds, max(2, int(counts.min())))   # more folds as rows grow: CV of a fit on 80% of the
    assignment = fold_assignment(np.asarray(y_list), folds, seed)   # rows ranks big models fairer than 50% would
    scores, scale, validation = {}, 1.0, None
    if len(candidates) > 1 and (assignment >= 0).any():
        oof = cross_validated_logits(heads, candidates, x, y, n, assignment, config, extras, prompts)
        y_held = np.asarray(y_list)[assignment >= 0]
        chosen, scores = choose_candidate(oof, y_held, n)
        if config.calibrate:
            scale = fit_scale(oof[chosen], y_held)
        validation = (oof[chosen] * scale, y_held)
    else:
        chosen = _uncrossvalidated_choice(candidates)
    head = heads[chosen.head]
    extras = prompt_extras(prompts, chosen.prompt_rows, extras) if chosen.prompt_rows else extras
    x_all, y_all = (x, y) if extras is None else (torch.cat([x, extras.x]), torch.cat([y, extras.y]))
    classifier = _final_fit(head, chosen, x_all, y_all, labels, config)
    classifier.scale, classifier.validation = scale, validation
    classifier.info = {"method": chosen.kind, "head": chosen.head, "setting": chosen.setting,
                       "steps": int(chosen.setting) if chosen.kind == "cosine" else 0,
                       "description_rows": chosen.prompt_rows,
                       "chosen": chosen.describe(), "cv_balanced_accuracy": scores, "scale": scale, "cv_folds": folds,
                       "rows": len(y_list), "rows_per_label": dict(zip(labels, counts.tolist())),
                       "augmented_rows": 0 if extras is None else len(extras.y),
                       "seconds": time.perf_counter() - started}
    return chosen.head, head, classifier


def _uncrossvalidated_choice(candidates: list[Candidate]) -> Candidate:
    """With no row to hold out (one per label): plain prototypes, with the label descriptions as one more row per
    label when they are given — one example is a noisy prototype, and the description alone scores zero-shot."""
    fused = sorted({c.prompt_rows for c in candidates} - {0})
    return next(c for c in candidates if c.prompt_rows == (fused[0] if fused else 0))


def _final_fit(head: ProjectionHead, chosen: Candidate, x: torch.Tensor, y: torch.Tensor, labels: list[str],
               config: AdaptConfig) -> CosineClassifier:
    n = len(labels)
    if chosen.kind == "linear":
        with torch.no_grad():
            z = head(x)
        weights, bias = fit_linear(z, y, n, chosen.setting)
        return CosineClassifier(labels, weights, head.temperature.item(), kind="linear", bias=bias)
    weights = finetune_path(head, x, y, n, [int(chosen.setting)], config.lr)[int(chosen.setting)]
    return CosineClassifier(labels, weights, head.temperature.item())


# ----------------------------------------------------------------------------------------------- priors


def pool_prior(counts: Sequence[int]) -> np.ndarray:
    """Label frequencies of the labelled pool, add-one smoothed (a label with few rows keeps some mass)."""
    counts = np.asarray(counts, dtype=float)
    return (counts + 1.0) / (counts.sum() + len(counts))


def em_prior(balanced_probabilities: np.ndarray, start: np.ndarray, pseudo_rows: float = 0.0,
             max_iter: int = 500, tol: float = 1e-7) -> tuple[np.ndarray, int]:
    """Class prior of unlabelled rows by EM on calibrated, uniform-prior posteriors (Saerens et al. 2002).

    ``pseudo_rows`` rows' worth of ``start`` are added to every M-step (a Dirichlet prior): a small batch moves the
    prior only a little, a large one decides it. Returns (prior, iterations).
    """
    start = np.asarray(start, dtype=float) / np.sum(start)
    prior, rows = start.copy(), len(balanced_probabilities)
    for iteration in range(1, max_iter + 1):
        posterior = balanced_probabilities * prior
        posterior /= posterior.sum(axis=1, keepdims=True).clip(min=1e-300)
        updated = (posterior.sum(axis=0) + pseudo_rows * start) / (rows + pseudo_rows)
        if np.abs(updated - prior).max() < tol:
            return updated, iteration
        prior = updated
    return prior, max_iter


@dataclass
class PriorEstimate:
    """The prior applied to a model, where it came from, and why (e.g. why traffic fell back to the pool)."""

    prior: np.ndarray
    source: str          # uniform | pool | traffic
    note: str = ""
    traffic_rows: int = 0

    def to_dict(self, labels: Sequence[str]) -> dict:
        return {"source": self.source, "note": self.note, "traffic_rows": self.traffic_rows,
                "prior": {label: round(float(p), 6) for label, p in zip(labels, self.prior)}}


def estimate_prior(mode: str, pool_counts: Sequence[int], traffic_probabilities: np.ndarray | None,
                   config: AdaptConfig) -> PriorEstimate:
    """uniform, the pool's frequencies, or EM on traffic started from them (pool when traffic is too small)."""
    n = len(pool_counts)
    if mode == "uniform":
        return PriorEstimate(np.full(n, 1.0 / n), "uniform")
    pool = pool_prior(pool_counts)
    if mode == "pool":
        return PriorEstimate(pool, "pool", "label frequencies of the labelled pool")
    rows = 0 if traffic_probabilities is None else len(traffic_probabilities)
    if rows < config.traffic_min_rows:
        return PriorEstimate(pool, "pool", f"traffic has {rows} rows < adapt.traffic_min_rows "
                                           f"{config.traffic_min_rows}: the pool's frequencies are used", rows)
    prior, iterations = em_prior(traffic_probabilities, pool, config.prior_pseudo_rows)
    return PriorEstimate(prior, "traffic", f"EM on {rows} unlabelled rows ({iterations} iterations), "
                                           f"{config.prior_pseudo_rows:g} pseudo-rows of the pool prior", rows)


STRENGTHS = (0.0, 0.25, 0.5, 0.75, 1.0)     # prior exponents tried: 1 = Bayes (accuracy), below = toward balanced


def weighted_scores(y: np.ndarray, predicted: np.ndarray, weights: np.ndarray, n: int) -> dict[str, float]:
    """accuracy, macro-F1 and balanced accuracy of rows weighted to another label mix (importance weights)."""
    hit = predicted == y
    tp = np.bincount(y[hit], weights[hit], minlength=n)
    true_n, pred_n = np.bincount(y, weights, minlength=n), np.bincount(predicted, weights, minlength=n)
    present = true_n > 0
    recall = tp[present] / true_n[present]
    precision = np.divide(tp, pred_n, out=np.zeros(n), where=pred_n > 0)[present]
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(len(recall)), where=precision + recall > 0)
    return {"accuracy": float(tp.sum() / weights.sum()), "macro_f1": float(f1.mean()),
            "balanced_accuracy": float(recall.mean())}


DEFAULT_STRENGTH = {"accuracy": 1.0, "balanced_accuracy": 0.0, "macro_f1": 0.5}


def prior_strength(classifier: CosineClassifier, prior: np.ndarray, metric: str) -> tuple[float, dict[str, float]]:
    """The exponent of the prior that serves the domain's metric, from out-of-fold rows re-weighted to the prior.

    Why: the full log prior (strength 1) is Bayes-optimal for accuracy; balanced accuracy is prior-free (strength 0
    is optimal); macro-F1 lies in between, and on a skewed domain the full prior gives up the rare labels. The
    held-out rows of the cross-validation, weighted by prior / their own label frequency, stand in for traffic
    with that label mix. With few held-out rows that estimate is noise, so the metric's default strength (1, 0,
    0.5) is kept unless another is better by more than one standard error (effective sample size of the weighted
    rows). Without held-out rows (one row per label) the default is used.
    """
    default = DEFAULT_STRENGTH[metric]
    if classifier.validation is None:
        return default, {}
    logits, y = classifier.validation
    n = logits.shape[1]
    held = np.bincount(y, minlength=n) / len(y)
    weights = (prior / np.where(held > 0, held, 1.0))[y]
    log_prior = np.log(np.clip(prior, 1e-12, None))
    found = {a: weighted_scores(y, (logits + a * log_prior).argmax(1), weights, n)[metric] for a in STRENGTHS}
    effective_rows = weights.sum() ** 2 / (weights ** 2).sum()
    best = max(found, key=lambda a: (found[a], -abs(a - default)))
    error = math.sqrt(max(found[best] * (1 - found[best]), 1e-12) / effective_rows)
    chosen = best if found[best] > found[default] + error else default
    return chosen, {str(a): round(v, 4) for a, v in found.items()}


def apply_prior(classifier: CosineClassifier, estimate: PriorEstimate, metric: str | None = None) -> CosineClassifier:
    """Set the classifier's log prior, at the strength that serves the domain's `metric` (None: the full prior).

    A uniform prior (or strength 0) leaves log_prior None, so the model stays exactly as trained.
    """
    strength, tried = (1.0, {}) if metric is None or estimate.source == "uniform" else \
        prior_strength(classifier, estimate.prior, metric)
    classifier.log_prior = None if estimate.source == "uniform" or strength == 0 else \
        torch.as_tensor(strength * np.log(np.clip(estimate.prior, 1e-12, None)), dtype=torch.float32)
    classifier.info["prior"] = {**estimate.to_dict(classifier.labels), "strength": strength,
                                "strength_scores": tried, "metric": metric}
    return classifier


def prior_shift(before: dict[str, float], after: dict[str, float]) -> float:
    """Total-variation distance between two priors over the same labels (0 = same, 1 = disjoint)."""
    labels = set(before) | set(after)
    return 0.5 * sum(abs(before.get(label, 0.0) - after.get(label, 0.0)) for label in labels)


# ------------------------------------------------------------------------------------- transductive refinement


def soft_kmeans_refine(classifier: CosineClassifier, head: ProjectionHead, labelled: torch.Tensor,
                       labelled_y: Sequence[int], unlabelled: torch.Tensor, iterations: int = 2) -> CosineClassifier:
    """Prototypes refined on unlabelled rows of the domain (Ren et al. 2018, soft k-means): each unlabelled row adds
    itself to every prototype in proportion to its calibrated posterior; labelled rows keep weight 1.

    Only for the cosine kind (prototypes); a linear classifier is returned unchanged. Measured in
    benchmarks/representations.py (--transductive) before any use in the product.
    """
    if classifier.kind != "cosine" or not len(unlabelled):
        return classifier
    import copy

    refined = copy.copy(classifier)
    with torch.no_grad():
        z_l = F.normalize(head(labelled), dim=-1)
        z_u = F.normalize(head(unlabelled), dim=-1)
        y = torch.as_tensor(list(labelled_y))
        n = len(classifier.labels)
        sums = torch.zeros(n, z_l.shape[1]).index_add_(0, y, z_l)
        counts = torch.bincount(y, minlength=n).to(z_l.dtype)
        for _ in range(iterations):
            posterior = torch.as_tensor(refined.balanced_proba(head, unlabelled), dtype=z_u.dtype)
            weights = (sums + posterior.T @ z_u) / (counts + posterior.sum(0)).unsqueeze(1)
            refined.weights = F.normalize(weights, dim=-1)
    return refined
