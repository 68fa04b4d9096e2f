"""A tiny, real MetaAdapt DVC project for orchestration tests: synthetic labelled CSVs, the tiny random BERT.

Same approach as test_pipeline_integration.py (a copy of dvc.yaml and components/, a params.yaml in a temporary
directory, `dvc init --no-scm`), but with data small enough that a whole domain's DVC chain runs in seconds.
"""
from __future__ import annotations

import random
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

from components.config import PROJECT_ROOT
from components.domains import write_expanded

WORDS = {
    "positive": ["great", "lovely", "excellent", "perfect", "wonderful", "comfortable", "superb", "fantastic"],
    "negative": ["awful", "broken", "terrible", "cheap", "disappointing", "useless", "poor", "horrible"],
    "sports": ["match", "goal", "league", "coach", "season", "striker", "tennis", "final"],
    "markets": ["stocks", "shares", "profit", "bank", "investors", "earnings", "bond", "market"],
}
NOUNS = ["dress", "shirt", "jacket", "fabric", "fit", "colour", "size", "zip", "pocket", "collar", "hem", "seam"]


def sentences(label: str, n: int, seed: int) -> list[str]:
    """Distinct short sentences whose key words carry the label."""
    rng = random.Random(f"{label}-{seed}")
    out: set[str] = set()
    while len(out) < n:
        words = rng.sample(WORDS[label], 2)
        out.add(f"the {rng.choice(NOUNS)} is {words[0]} and {words[1]} {rng.randint(0, 10_000)}")
    return sorted(out)


def labelled_frame(labels: list[str], per_label: int, seed: int) -> pd.DataFrame:
    rows = [(text, label) for label in labels for text in sentences(label, per_label, seed)]
    return pd.DataFrame(rows, columns=["text", "label"]).sample(frac=1.0, random_state=seed).reset_index(drop=True)


def write_mirror(mirror: Path) -> None:
    for name, labels, seed in (("tiny_reviews", ["positive", "negative"], 1), ("tiny_news", ["sports", "markets"], 2),
                               ("tiny_meta", ["positive", "negative", "sports", "markets"], 3)):
        (mirror / name).mkdir(parents=True, exist_ok=True)
        labelled_frame(labels, 40, seed).to_csv(mirror / name / "all.csv", index=False)


def tiny_params(mirror: Path, encoder_dir: Path, domains: tuple[str, ...] = ("reviews",), margin: float = 0.0) -> dict:
    """The project's params.yaml with tiny data sets and domains, tiny caps and the tiny random encoder."""
    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    raw["data"]["mirror"] = str(mirror)
    raw["datasets"] = {name: {"files": {"all": "all.csv"}} for name in ("tiny_reviews", "tiny_news", "tiny_meta")}
    all_domains = {"reviews": "tiny_reviews", "news": "tiny_news"}
    raw["domains"] = {d: {"dataset": all_domains[d], "adapt_split": "all", "eval_split": "all", "eval_fraction": 0.3,
                          "k": 2, "meta_sources": ["tiny_meta"]} for d in domains}
    raw["encoder"].update(name=str(encoder_dir), max_length=24, batch_size=64)
    raw["limits"].update(meta_max_rows_per_label=20, meta_max_rows_per_source=80, eval_max_rows=40,
                         adapt_pool_max_rows=60, adapt_min_rows_per_label=4)
    raw["episodes"].update(train_episodes=12, val_episodes=4, shot_max=2, query=2, way_max=3)
    raw["meta"]["epochs"] = 1
    raw["adapt"]["step_candidates"] = [0, 5]
    raw["drift"].update(current_rows=20)
    raw["registry"]["promote_margin"] = margin
    raw.setdefault("orchestration", {}).update(monitor_cron="0 0 1 1 *", retrain_cron="0 0 1 1 *",
                                               watch_seconds=86_400)
    return raw


def dvc(root: Path, *args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("dvc")
    return subprocess.run([str(exe), *args], cwd=root, capture_output=True, text=True, timeout=600)


def make_project(root: Path, encoder_dir: Path, domains: tuple[str, ...] = ("reviews",), margin: float = 0.0) -> Path:
    """dvc.yaml, components/ and params.yaml under `root`, DVC initialised (no data/batches: as a fresh clone)."""
    shutil.copy(PROJECT_ROOT / "dvc.yaml", root / "dvc.yaml")
    shutil.copytree(PROJECT_ROOT / "components", root / "components", ignore=shutil.ignore_patterns("__pycache__"))
    write_mirror(root / "mirror")
    params = tiny_params((root / "mirror").resolve(), encoder_dir, domains, margin)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    write_expanded(root)   # the domain list dvc.yaml iterates (what `metaadapt check-config` writes)
    done = dvc(root, "init", "--no-scm", "-q")
    assert done.returncode == 0, done.stderr
    return root
