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
           title=f"{method}: accuracy against K")
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


def _save(fig, plt, out_png: Path) -> Path:
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def summary_plots(params: Any, root: Path) -> str:
    """Render both plots under reports/plots/ and return the markdown that embeds them in reports/summary.md.

    The champion history reads the project's MLflow store only when it exists (or a tracking URI is configured):
    a summary must not create an empty registry as a side effect.
    """
    from components.registry import version_history

    reports = Path(root) / "reports"
    (reports / "plots").mkdir(parents=True, exist_ok=True)   # a DVC output of the summary stage, even when empty
    sections = ["", "## Plots", ""]
    accuracy = accuracy_vs_k(Path(root) / "benchmarks" / "results" / "fewshot.json", reports / "plots" / "accuracy_vs_k.png")
    store = Path(root) / "mlruns" / "mlflow.db"
    histories = ({d: version_history(d, params.registry, root) for d in params.domains}
                 if params.registry.tracking_uri or store.is_file() else {})
    history = champion_history(histories, reports / "plots" / "champion_history.png")
    for title, path, missing in (("Accuracy against K (few-shot benchmark)", accuracy,
                                  "no benchmark results yet (`python benchmarks/fewshot.py`)"),
                                 ("Adaptation history: macro-F1 of every registered version", history,
                                  "no registered versions yet")):
        sections.append(f"![{title}]({path.relative_to(reports).as_posix()})" if path else f"{title}: {missing}.")
        sections.append("")
    sections.append("Drift reports of the pipeline and of every `metaadapt monitor` run: [index.html](index.html).")
    return "\n".join(sections) + "\n"
