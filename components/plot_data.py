"""Plot data in the files `dvc plots show` / `dvc plots diff` read (declared under `plots:` in dvc.yaml).

DVC renders its own plots from small CSV files with a template (confusion, bar_horizontal, linear); these functions
write them beside the stage that owns the numbers: the evaluate stage (confusion rows, per-label F1, the
meta-training learning curve) and the register stage (the domain's champion history from the registry). CSV because
DVC reads it without a schema and a reviewer can open it; one folder per domain, `reports/dvc_plots/<domain>/`.
"""
from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

PLOTS_DIR = Path("reports") / "dvc_plots"


def plot_dir(root: Path, domain: str) -> Path:
    return Path(root) / PLOTS_DIR / domain


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    """A small CSV, written whole (DVC diffs it by revision)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_evaluation_plots(root: Path, domain: str, truth: Sequence[str], predicted: Sequence[str],
                           per_label_f1: dict[str, float | None], meta_summary: dict[str, Any]) -> list[Path]:
    """predictions.csv (the confusion template's rows), per_label_f1.csv and learning_curve.csv for one domain."""
    folder = plot_dir(root, domain)
    f1_rows = [(label, round(f1, 4)) for label, f1 in sorted(per_label_f1.items()) if f1 is not None]
    accuracy, loss = meta_summary.get("val_accuracy") or [], meta_summary.get("train_loss") or []
    # val_accuracy[0] is before the first epoch; train_loss[i] belongs to epoch i + 1
    curve = [(epoch, round(acc, 4), "" if epoch == 0 or epoch > len(loss) else round(loss[epoch - 1], 4))
             for epoch, acc in enumerate(accuracy)]
    return [write_csv(folder / "predictions.csv", ("label", "predicted"), zip(truth, predicted)),
            write_csv(folder / "per_label_f1.csv", ("label", "f1"), f1_rows),
            write_csv(folder / "learning_curve.csv", ("epoch", "val_episode_accuracy", "train_loss"), curve)]


def write_champion_history(root: Path, domain: str, history: list[dict[str, Any]]) -> Path:
    """champion_history.csv: every registered version's macro-F1 and accuracy, and whether it was promoted."""
    def number(value: float | None) -> Any:
        return "" if value is None else round(value, 4)

    rows = [(r["version"], r.get("registered_at") or "", number(r.get("macro_f1")), number(r.get("accuracy")),
             str(bool(r.get("promoted"))).lower()) for r in history]
    return write_csv(plot_dir(root, domain) / "champion_history.csv",
                     ("version", "registered_at", "macro_f1", "accuracy", "promoted"), rows)
