"""PNG plots people would rather look at than read: accuracy against K, and each domain's champion history.

matplotlib with the Agg backend (no display needed); imported lazily because it costs ~1 s. Each function returns
the path written, or None when there is nothing to plot (no benchmark results yet, no registered versions), so the
summary can say so instead of embedding a broken image.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def accuracy_vs_k(fewshot_json: Path, out_png: Path, method: str = "metaadapt") -> Path | None:
    """Mean accuracy (± 95% interval over seeds) against K per domain, from benchmarks/results/fewshot.json."""
    path = Path(fewshot_json)
    if not path.is_file():
        return None
    rows = [r for r in json.loads(path.read_text(encoding="utf-8")).get("aggregates", []) if r.get("method") == method]
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for domain in sorted({r["domain"] for r in rows}):
        points = sorted((r["k"], 100 * r["accuracy"], 100 * (r.get("accuracy_ci95") or 0.0))
                        for r in rows if r["domain"] == domain)
        ks, acc, ci = zip(*points)
        ax.errorbar(ks, acc, yerr=ci, marker="o", capsize=3, label=domain)
    ax.set(xlabel="K (examples per label; 0 = zero-shot)", ylabel="accuracy on the held-out split (%)",
           title=f"Few-shot benchmark (benchmarks/fewshot.py), not this run: {method}")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, plt, out_png)


def champion_history(histories: dict[str, list[dict[str, Any]]], out_png: Path,
                     metric: str = "macro_f1") -> Path | None:
    """The gate metric of every registered version per domain over registration time; promoted ones filled.

    ``histories`` maps a domain to ``registry.version_history`` rows (version, registered_at, macro_f1, promoted).
    """
    from datetime import datetime

    series = {d: [r for r in rows if r.get(metric) is not None and r.get("registered_at")]
              for d, rows in histories.items()}
    series = {d: rows for d, rows in series.items() if rows}
    if not series:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for domain, rows in sorted(series.items()):
        times = [datetime.strptime(r["registered_at"], "%Y-%m-%dT%H:%M:%SZ") for r in rows]
        values = [r[metric] for r in rows]
        line, = ax.plot(times, values, linestyle="--", alpha=0.5, label=domain)
        ax.scatter([t for t, r in zip(times, rows) if r["promoted"]], [v for v, r in zip(values, rows) if r["promoted"]],
                   color=line.get_color(), zorder=3)
        ax.scatter([t for t, r in zip(times, rows) if not r["promoted"]],
                   [v for v, r in zip(values, rows) if not r["promoted"]], facecolors="none",
                   edgecolors=line.get_color(), zorder=3)
    ax.set(xlabel="registered (UTC)", ylabel=metric, title="Adaptation history: filled = promoted to champion")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.autofmt_xdate()
    return _save(fig, plt, out_png)


def confusion_and_f1(confusion: dict[str, Any], domain: str, out_png: Path, max_labels: int = 30) -> Path | None:
    """This run's confusion matrix (row-normalised) beside its per-label F1, from reports/confusion/<domain>.json.

    More than `max_labels` labels (banking77 has 77) would be unreadable as a matrix: then only the F1 bars of the
    `max_labels` worst labels are drawn, which is what a reader acts on.
    """
    import numpy as np

    labels, matrix = confusion.get("labels") or [], np.asarray(confusion.get("matrix") or [], dtype=float)
    f1 = {label: value for label, value in (confusion.get("per_label_f1") or {}).items() if value is not None}
    if not labels or matrix.size == 0:
        return None
    plt = _pyplot()
    worst = sorted(f1, key=f1.get)[:max_labels]
    if len(labels) <= max_labels:
        fig, (ax_matrix, ax_f1) = plt.subplots(1, 2, figsize=(10, 4 + 0.15 * len(labels)))
        shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
        ax_matrix.imshow(shares, cmap="Blues", vmin=0, vmax=1)
        ax_matrix.set(xticks=range(len(labels)), yticks=range(len(labels)), xlabel="predicted", ylabel="true label",
                      title=f"{domain}: confusion (share of each true label)")
        ax_matrix.set_xticklabels(labels, rotation=45, ha="right")
        ax_matrix.set_yticklabels(labels)
        for (i, j), value in np.ndenumerate(matrix):
            ax_matrix.text(j, i, int(value), ha="center", va="center", fontsize=8,
                           color="white" if shares[i, j] > 0.5 else "black")
    else:
        fig, ax_f1 = plt.subplots(figsize=(7, 2 + 0.22 * len(worst)))
    ax_f1.barh(worst, [f1[label] for label in worst], color="#4c72b0")
    ax_f1.set(xlim=(0, 1), xlabel="F1 on the held-out split",
              title=f"{domain}: per-label F1" + (f" ({len(worst)} lowest of {len(labels)})" if len(labels) > len(worst)
                                                 else ""))
    ax_f1.invert_yaxis()
    ax_f1.grid(alpha=0.3, axis="x")
    return _save(fig, plt, out_png)


def _save(fig, plt, out_png: Path) -> Path:
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def summary_plots(params: Any, root: Path) -> str:
    """Render the plots under reports/plots/ and return the markdown that embeds them in reports/summary.md.

    This run's results first (each domain's confusion matrix and per-label F1, from reports/confusion/), then the
    registry's history, then the committed few-shot benchmark, labelled as such: it is not recomputed by a run.
    The champion history reads the project's MLflow store only when it exists (or a tracking URI is configured):
    a summary must not create an empty registry as a side effect.
    """
    from components.registry import version_history

    reports = Path(root) / "reports"
    (reports / "plots").mkdir(parents=True, exist_ok=True)   # a DVC output of the summary stage, even when empty
    sections = ["", "## Plots", "", "### This run: confusion and per-label F1 (held-out split)", ""]
    for domain in params.domains:
        confusion_file = reports / "confusion" / f"{domain}.json"
        path = (confusion_and_f1(json.loads(confusion_file.read_text(encoding="utf-8")), domain,
                                 reports / "plots" / f"confusion_{domain}.png") if confusion_file.is_file() else None)
        sections += [f"![{domain}: confusion and per-label F1 of this run]({path.relative_to(reports).as_posix()})"
                     if path else f"{domain}: no evaluation results (not run).", ""]
    store = Path(root) / "mlruns" / "mlflow.db"
    histories = ({d: version_history(d, params.registry, root) for d in params.domains}
                 if params.registry.tracking_uri or store.is_file() else {})
    history = champion_history(histories, reports / "plots" / "champion_history.png")
    accuracy = accuracy_vs_k(Path(root) / "benchmarks" / "results" / "fewshot.json", reports / "plots" / "accuracy_vs_k.png")
    for heading, title, path, missing in (
            ("### Registry: every registered version", "Adaptation history: macro-F1 of every registered version",
             history, "no registered versions yet"),
            ("### Few-shot benchmark (committed results of `python benchmarks/fewshot.py`, not this run)",
             "Accuracy against K (few-shot benchmark, not this run)", accuracy,
             "no benchmark results yet (`python benchmarks/fewshot.py`)")):
        sections += [heading, "", f"![{title}]({path.relative_to(reports).as_posix()})" if path else f"{title}: {missing}.",
                     ""]
    sections.append("Drift reports of the pipeline and of every `metaadapt monitor` run: [index.html](index.html).")
    return "\n".join(sections) + "\n"
