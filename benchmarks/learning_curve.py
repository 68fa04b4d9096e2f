"""Learning curve: quality against labelled rows per label, every prior setting, beside its baselines.

For each target (the domains of params.yaml, plus shared data sets the project does not ship as domains, given with
``--extra``) and each number of labelled rows per label in ``--sizes`` ("all" = the whole adaptation pool), several
seeds of training rows are drawn from the target's adaptation pool and scored on its held-out split — the same
rows for every method:

  majority       always the pool's most frequent label
  zero_shot      what ``k: 0`` ships: label descriptions (or names) as prototypes in the meta-trained head's space
  logreg         scikit-learn LogisticRegression on the frozen embeddings, C chosen by cross-validation on the
                 training rows (3 folds where every label has 3 rows; C=1 below that)
  before         the adaptation shipped before this benchmark: prototypes + CV-chosen fine-tuning steps, meta or
                 identity head, uniform prior (``adapt.method: proto_finetune``, ``prior: uniform``)
  uniform/pool/pool_bayes/traffic
                 ``components.classifier.fit_classifier`` (``adapt.method: auto``: cosine or logistic regression,
                 chosen by CV, calibrated) with the class prior uniform, the pool's label frequencies, or EM on the
                 pool's texts without their labels (the unlabelled traffic a deployed domain sees); pool and traffic
                 at the strength CV chose for the domain's metric (macro-F1 unless declared), pool_bayes at full
                 strength (what maximises accuracy)

Default domains use the meta-trained head of the last pipeline run (models/<domain>/meta; `make run` first) next
to the identity head; ``--extra`` targets have no meta-training sources, so only the identity head.

Label shift (the case the traffic prior is for): the evaluation rows are also resampled to the inverse of the
pool's label mix (the rare label becomes the common one) and scored with the pool prior and with the prior EM
estimates from those rows' texts (labels hidden), next to the pool's majority label on the same shifted rows.

    python benchmarks/learning_curve.py                       # the three domains + the default extras, 5 seeds
    python benchmarks/learning_curve.py --quick               # smoke run (2 seeds, sizes 1 8 all, one domain)

Writes <out>/learning_curve.{json,md,png}.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from fewshot import Clock, clean, machine_info, mean_ci  # noqa: E402

PRIORS = ("uniform", "pool", "pool_bayes", "traffic")   # pool_bayes: the full prior (strength 1, accuracy-optimal)
SHIFTED = ("shift_majority", "shift_pool", "shift_traffic")
METHODS = ("majority", "zero_shot", "logreg", "before", *PRIORS)
METRICS = ("accuracy", "macro_f1", "balanced_accuracy")
# Shared data sets tried as unseen targets: (data set, adapt split, eval split). Two are skewed (counterfactual ~9:1
# in the train split, financial tweets ~65% neutral), two balanced-ish with many or few labels.
DEFAULT_EXTRAS = ("amazon_counterfactual_en:train:test", "twitter_financial_news_sentiment:train:validation",
                  "snips:train:validation", "subj:all:all")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--domains", nargs="*", default=None, help="params.yaml domains (default: all)")
    parser.add_argument("--extra", nargs="*", default=list(DEFAULT_EXTRAS),
                        help="unseen targets as DATASET:ADAPT_SPLIT:EVAL_SPLIT (same split: a 30%% hold-out)")
    parser.add_argument("--sizes", nargs="*", default=["1", "2", "4", "8", "16", "32", "64", "all"])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "learning_curve")
    parser.add_argument("--quick", action="store_true", help="2 seeds, sizes 1 8 all, finance_sentiment only")
    parser.add_argument("--replot", action="store_true", help="rewrite the .md and .png from <out>/learning_curve.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.domains, args.extra, args.sizes, args.seeds = ["finance_sentiment"], [], ["1", "8", "all"], 2
    return args


# ------------------------------------------------------------------------------------------------ targets


def targets(params, args) -> list[tuple[str, bool]]:
    """(domain name, is a params.yaml domain); extras are added to params.domains as meta-source-free domains."""
    from components.config import DomainConfig

    found = [(name, True) for name in (args.domains if args.domains is not None else list(params.domains))]
    for spec in args.extra:
        dataset, adapt_split, eval_split = spec.split(":")
        name = f"unseen_{dataset}"
        params.domains[name] = DomainConfig(dataset=dataset, adapt_split=adapt_split, eval_split=eval_split)
        found.append((name, False))
    return found


def load_target(params, domain: str, shipped: bool, log: Clock) -> dict:
    """Adaptation pool and evaluation rows (as the ingest stage builds them), embedded through the cache."""
    from components.config import resolve_mirror
    from components.meta import ProjectionHead
    from components.prepare import build_domain_data
    from components.stages import embed

    data = build_domain_data(domain, params, resolve_mirror(params.data, ROOT), full=False)
    pool, evaluation = data.adapt.reset_index(drop=True), data.eval.reset_index(drop=True)
    log(f"{domain}: {len(pool)} pool rows, {len(evaluation)} eval rows, {pool['label'].nunique()} labels")
    labels = sorted(pool["label"].unique())
    heads = {"identity": ProjectionHead(int(embed(pool["text"].tolist()[:1], params, ROOT).shape[1]))}
    meta_dir = ROOT / "models" / domain / "meta"
    if shipped and (meta_dir / "meta.json").is_file():
        from components.learner import load_learner

        heads = {"meta": load_learner(meta_dir, params)[0], **heads}
    elif shipped:
        log(f"{domain}: no meta-trained head at {meta_dir} (run `make run` first); identity head only")
    return {"domain": domain, "pool": pool, "eval": evaluation, "labels": labels, "heads": heads,
            "shifted": shifted_rows(evaluation, pool, params.seed),
            "pool_x": embed(pool["text"].tolist(), params, ROOT), "eval_x": embed(evaluation["text"].tolist(), params, ROOT),
            "descriptions": params.domain(domain).label_descriptions}


# ------------------------------------------------------------------------------------------------ methods


def draw_rows(pool, size: str, seed: int) -> np.ndarray:
    """Row indices: `size` per label (all of a label's rows when it has fewer), or every row for "all"."""
    if size == "all":
        return np.arange(len(pool))
    rng = np.random.default_rng(seed)
    picked = [rng.choice(np.flatnonzero(pool["label"].to_numpy() == label),
                         size=min(int(size), int((pool["label"] == label).sum())), replace=False)
              for label in sorted(pool["label"].unique())]
    return np.sort(np.concatenate(picked))


def shifted_rows(evaluation, pool, seed: int) -> np.ndarray:
    """Evaluation row indices resampled (without replacement) to the inverse of the pool's label mix."""
    labels = sorted(pool["label"].unique())
    share = 1.0 / pool["label"].value_counts().reindex(labels).to_numpy(float)
    share /= share.sum()
    available = evaluation["label"].value_counts().reindex(labels).fillna(0).to_numpy()
    total = int(min(available[i] / share[i] for i in range(len(labels)) if share[i] > 0))
    rng = np.random.default_rng(seed)
    picked = [rng.choice(np.flatnonzero(evaluation["label"].to_numpy() == label), size=int(share[i] * total),
                         replace=False) for i, label in enumerate(labels)]
    return np.sort(np.concatenate(picked))


def logreg_predictions(x_train, y_train, x_eval, seed: int) -> np.ndarray:
    """A practitioner's tuned linear probe: C by 3-fold CV accuracy (C=1 where a label has fewer than 3 rows)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    normalise = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True).clip(1e-12)  # noqa: E731
    xt, xe = normalise(x_train), normalise(x_eval)
    model = LogisticRegression(max_iter=2000)
    if np.unique(y_train, return_counts=True)[1].min() >= 3:
        model = GridSearchCV(model, {"C": [0.1, 1.0, 10.0, 100.0]}, cv=StratifiedKFold(3, shuffle=True,
                                                                                     random_state=seed))
    return model.fit(xt, y_train).predict(xe)


def zero_shot_predictions(target: dict, params) -> list[str]:
    """What `k: 0` ships: label descriptions (or names) as prototypes in the meta-trained head's space (identity
    head for targets without meta-training)."""
    import torch

    from components.learner import label_prompt
    from components.meta import zero_shot
    from components.stages import embed

    head = target["heads"].get("meta", target["heads"]["identity"])
    prompts = torch.as_tensor(embed([label_prompt(l, target["descriptions"]) for l in target["labels"]], params, ROOT))
    return zero_shot(head, prompts, target["labels"]).predict(head, torch.as_tensor(target["eval_x"]))


def our_predictions(target: dict, rows: np.ndarray, params, seed: int) -> tuple[dict[str, list[str]], dict]:
    """The product's adaptation (auto + calibration) under each prior, and the adaptation shipped before it."""
    import torch

    from components.classifier import apply_prior, estimate_prior, fit_classifier

    pool, labels = target["pool"], target["labels"]
    x = torch.as_tensor(target["pool_x"][rows], dtype=torch.float32)
    row_labels = pool["label"].to_numpy()[rows].tolist()
    eval_x = torch.as_tensor(target["eval_x"], dtype=torch.float32)
    started = time.perf_counter()
    _, head, classifier = fit_classifier(target["heads"], x, row_labels, params.adapt, seed, labels)
    fit_seconds = time.perf_counter() - started
    traffic = classifier.balanced_proba(head, target["pool_x"])
    counts = [int((pool["label"] == label).sum()) for label in labels]
    metric = params.domain(target["domain"]).metric
    out, strengths = {}, {}
    for prior in PRIORS:
        estimate = estimate_prior(prior.replace("_bayes", ""), counts, traffic, params.adapt)
        apply_prior(classifier, estimate, None if prior.endswith("_bayes") else metric)
        out[prior] = classifier.predict(head, eval_x)
        strengths[prior] = classifier.info["prior"]["strength"]
    shifted = torch.as_tensor(target["eval_x"][target["shifted"]], dtype=torch.float32)
    shifted_traffic = classifier.balanced_proba(head, shifted)
    for name, prior, unlabelled in (("shift_pool", "pool", None), ("shift_traffic", "traffic", shifted_traffic)):
        apply_prior(classifier, estimate_prior(prior, counts, unlabelled, params.adapt), metric)
        out[name] = classifier.predict(head, shifted)
    before_config = params.adapt.model_copy(update={"method": "proto_finetune", "calibrate": False})
    _, before_head, before = fit_classifier(target["heads"], x, row_labels, before_config, seed, labels)
    out["before"] = before.predict(before_head, eval_x)
    return out, {"chosen": classifier.info["chosen"], "fit_seconds": round(fit_seconds, 3),
                 "traffic_prior": classifier.info["prior"]["prior"], "scale": classifier.scale,
                 "prior_strength": strengths}


def run_target(target: dict, params, args, log: Clock) -> list[dict]:
    from components.scoring import majority_label, scores

    truth = target["eval"]["label"].tolist()
    shifted_truth = target["eval"]["label"].to_numpy()[target["shifted"]].tolist()
    majority = majority_label(target["pool"]["label"].tolist())
    fixed = {"majority": [majority] * len(truth), "zero_shot": zero_shot_predictions(target, params),
             "shift_majority": [majority] * len(shifted_truth)}
    results, logreg_all = [], None
    for size in args.sizes:
        if size != "all" and target["pool"]["label"].value_counts().max() <= int(size):
            log(f"{target['domain']} size {size}: every label has at most {size} rows, the same as 'all'; skipped")
            continue
        for seed in range(args.seeds if size != "all" else min(args.seeds, 2)):  # "all" varies only by CV folds
            rows = draw_rows(target["pool"], size, seed)
            predictions, details = our_predictions(target, rows, params, seed)
            predictions.update(fixed)
            if size != "all" or logreg_all is None:   # every row: the same fit whatever the seed, so once
                logreg = logreg_predictions(target["pool_x"][rows], target["pool"]["label"].to_numpy()[rows],
                                            target["eval_x"], seed).tolist()
                logreg_all = logreg if size == "all" else None
            predictions["logreg"] = logreg_all if size == "all" else logreg
            for method, predicted in predictions.items():
                reference = shifted_truth if method in SHIFTED else truth
                results.append({"domain": target["domain"], "size": size, "seed": seed, "method": method,
                                "train_rows": len(rows), **scores(reference, predicted),
                                **(details if method in PRIORS else {})})
            mine = {r["method"]: r["accuracy"] for r in results[-len(predictions):]}
            log(f"{target['domain']} size {size} seed {seed}: {details['chosen']}, accuracy pool {mine['pool']:.3f} "
                f"logreg {mine['logreg']:.3f}; shifted: pool {mine['shift_pool']:.3f} traffic {mine['shift_traffic']:.3f}")
    return results


# ------------------------------------------------------------------------------------------------ reporting


def aggregate(rows: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["domain"], row["size"], row["method"]), []).append(row)
    out = []
    for (domain, size, method), members in groups.items():
        entry = {"domain": domain, "size": size, "method": method, "seeds": len(members),
                 "train_rows": int(np.mean([m["train_rows"] for m in members]))}
        for metric in METRICS:
            entry[metric], entry[f"{metric}_ci95"] = mean_ci([m[metric] for m in members])
        chosen = [m["chosen"] for m in members if "chosen" in m]
        if chosen:
            entry["chosen"] = max(set(chosen), key=chosen.count)
        out.append(entry)
    return out


def _get(table: list[dict], domain: str, size: str, method: str) -> dict | None:
    return next((r for r in table if (r["domain"], r["size"], r["method"]) == (domain, size, method)), None)


def checks(table: list[dict], sizes: list[str]) -> list[dict]:
    """The issue's targets, per target domain, as measured (never asserted: a miss is reported as a miss)."""
    found = []
    for domain in sorted({r["domain"] for r in table}):
        for prior in ("pool", "traffic"):
            k8, uniform8, majority = (_get(table, domain, "8", prior), _get(table, domain, "8", "uniform"),
                                      _get(table, domain, "8", "majority"))
            if k8 and uniform8 and majority:
                found.append({"domain": domain, "check": f"K=8 {prior}: accuracy > majority, macro-F1 >= uniform's",
                              "pass": k8["accuracy"] > majority["accuracy"]
                              and k8["macro_f1"] >= uniform8["macro_f1"] - 1e-9,
                              "values": f"acc {k8['accuracy']:.3f} vs majority {majority['accuracy']:.3f}; macro-F1 "
                                        f"{k8['macro_f1']:.3f} vs uniform {uniform8['macro_f1']:.3f}"})
        ours, logreg = _get(table, domain, "all", "pool"), _get(table, domain, "all", "logreg")
        if ours and logreg:
            found.append({"domain": domain, "check": "all rows, pool prior: accuracy >= tuned logistic regression's",
                          "pass": ours["accuracy"] >= logreg["accuracy"] - 1e-9,
                          "values": f"{ours['accuracy']:.3f} vs {logreg['accuracy']:.3f}"})
        for size in ("8", "all"):
            pool, traffic = _get(table, domain, size, "shift_pool"), _get(table, domain, size, "shift_traffic")
            if pool and traffic:
                found.append({"domain": domain, "check": f"label shift, {size} rows/label: traffic prior accuracy >= "
                              "pool prior's", "pass": traffic["accuracy"] >= pool["accuracy"] - 1e-9,
                              "values": f"{traffic['accuracy']:.3f} vs {pool['accuracy']:.3f}"})
        curve = [_get(table, domain, s, "pool") for s in sizes]
        curve = [c for c in curve if c]
        drops = [(a["size"], b["size"]) for a, b in zip(curve, curve[1:])
                 if b["accuracy"] < a["accuracy"] - max(np.nan_to_num(a["accuracy_ci95"]), np.nan_to_num(b["accuracy_ci95"]))]
        found.append({"domain": domain, "check": "pool prior: accuracy never falls by more than its CI as rows grow",
                      "pass": not drops, "values": f"drops at {drops}" if drops else "no drop beyond the CI"})
    return found


def _cell(row: dict | None, metric: str) -> str:
    if row is None:
        return ""
    ci = row.get(f"{metric}_ci95")
    return f"{100 * row[metric]:.1f}" + (f" ± {100 * ci:.1f}" if ci == ci and ci is not None else "")


def markdown(payload: dict) -> str:
    table, sizes = payload["aggregates"], payload["args"]["sizes"]
    lines = [f"# Learning curve — {payload['machine']['date']}", "",
             f"Command: `{payload['machine']['command']}`  ", f"Machine: {payload['machine']['cpu_model']}, "
             f"{payload['machine']['cpu_cores']} cores, no GPU; commit {payload['machine']['git']['commit']}.", "",
             "Accuracy / macro-F1 in %, mean ± 95% CI over seeds (\"all\": 2 seeds, only the CV folds differ). "
             "`before` = the adaptation shipped before (K-shot prototypes + fine-tuning, uniform prior); "
             "`pool`/`traffic`/`uniform` = the product now with that class prior.", ""]
    for metric in ("accuracy", "macro_f1"):
        lines += [f"## {metric}", "", "| target | rows/label | " + " | ".join(METHODS) + " | chosen (pool) |",
                  "|---|---|" + "---|" * len(METHODS) + "---|"]
        for domain in dict.fromkeys(r["domain"] for r in table):
            for size in sizes:
                cells = [_cell(_get(table, domain, size, m), metric) for m in METHODS]
                chosen = (_get(table, domain, size, "pool") or {}).get("chosen", "")
                lines.append(f"| {domain} | {size} | " + " | ".join(cells) + f" | {chosen} |")
        lines.append("")
    lines += ["## Under label shift (evaluation rows resampled to the inverse of the pool's label mix)", "",
              "Accuracy / macro-F1 %; `shift_traffic` re-estimates the prior by EM from the shifted rows' texts.", "",
              "| target | rows/label | " + " | ".join(SHIFTED) + " |", "|---|---|" + "---|" * len(SHIFTED)]
    for domain in dict.fromkeys(r["domain"] for r in table):
        for size in sizes:
            cells = [f"{_cell(_get(table, domain, size, m), 'accuracy')} / {_cell(_get(table, domain, size, m), 'macro_f1')}"
                     for m in SHIFTED]
            lines.append(f"| {domain} | {size} | " + " | ".join(cells) + " |")
    lines += ["", "## Targets", "", "| target | check | pass | values |", "|---|---|---|---|"]
    lines += [f"| {c['domain']} | {c['check']} | {'yes' if c['pass'] else '**no**'} | {c['values']} |"
              for c in payload["checks"]]
    return "\n".join(lines) + "\n"


def plot(table: list[dict], sizes: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    domains = list(dict.fromkeys(r["domain"] for r in table))
    columns = min(4, len(domains))
    rows = -(-len(domains) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.4 * columns, 3.0 * rows), squeeze=False)
    for ax in axes.flat[len(domains):]:
        ax.set_visible(False)
    for ax, domain in zip(axes.flat, domains):
        for method in ("majority", "logreg", "before", "uniform", "pool", "pool_bayes"):
            points = [(i, r["accuracy"]) for i, s in enumerate(sizes) if (r := _get(table, domain, s, method))]
            if points:
                ax.plot(*zip(*points), marker="o", ms=3, label=method, linestyle="--" if method == "majority" else "-")
        ax.set_xticks(range(len(sizes)), sizes, fontsize=7)
        ax.set_title(domain.replace("unseen_", "unseen: "), fontsize=8)
        ax.set_xlabel("labelled rows per label", fontsize=7)
    for row in axes:
        row[0].set_ylabel("accuracy")
    axes.flat[0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    import os

    os.chdir(ROOT)
    args = parse_args(argv)
    log = Clock()
    from components.config import load_params

    if args.replot:
        payload = json.loads((args.out / "learning_curve.json").read_text(encoding="utf-8"))
        return write_reports(payload, args.out)
    params = load_params(ROOT / "params.yaml")
    machine = machine_info()
    rows: list[dict] = []
    for domain, shipped in targets(params, args):
        rows += run_target(load_target(params, domain, shipped, log), params, args, log)
    table = aggregate(rows)
    payload = clean({"machine": machine, "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                     "params_adapt": params.adapt.model_dump(), "aggregates": table, "rows": rows,
                     "checks": checks(table, args.sizes), "seconds": time.perf_counter() - log.started})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "learning_curve.json").write_text(json.dumps(payload, indent=1), encoding="utf-8")
    return write_reports(payload, args.out)


def write_reports(payload: dict, out: Path) -> int:
    text = markdown(payload)
    (out / "learning_curve.md").write_text(text, encoding="utf-8")
    plot(payload["aggregates"], payload["args"]["sizes"], out / "learning_curve.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
