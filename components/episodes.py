"""N-way K-shot Q-query episodes sampled from a multi-source meta-training pool.

An episode is indices into the pool, so it is small to store (a DVC output) and exact to replay. Invariants,
tested: classes balanced, support and query disjoint (also through augmented copies, which share an ``origin``),
the same seed gives the same episodes, and episodes mix the pool's source tasks.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from components.config import EpisodesConfig


@dataclass(frozen=True)
class Episode:
    source: str
    classes: list[str]
    support: list[int]          # pool row indices (originals, then their augmented copies)
    support_labels: list[int]   # 0..N-1, position in `classes`
    query: list[int]
    query_labels: list[int]


def _eligible_sources(pool: pd.DataFrame, min_rows: int) -> dict[str, dict[str, np.ndarray]]:
    """Per source, per label: the original (non-augmented) row indices, keeping labels with enough rows."""
    originals = pool[~pool["augmented"]]
    sources: dict[str, dict[str, np.ndarray]] = {}
    for source, frame in originals.groupby("source", sort=True):
        labels = {str(label): rows.index.to_numpy() for label, rows in frame.groupby("label", sort=True)
                  if len(rows) >= min_rows}
        if len(labels) >= 2:
            sources[str(source)] = labels
    return sources


def _copies_by_origin(pool: pd.DataFrame) -> dict[int, list[int]]:
    augmented = pool[pool["augmented"]]
    copies: dict[int, list[int]] = {}
    for index, origin in zip(augmented.index, augmented["origin"]):
        copies.setdefault(int(origin), []).append(int(index))
    return copies


def sample_episodes(pool: pd.DataFrame, config: EpisodesConfig, count: int, seed: int) -> list[Episode]:
    """Sample `count` episodes; each picks a source (weighted by its number of labels), then way, shot, rows."""
    sources = _eligible_sources(pool, min_rows=config.shot_min + 1)
    if not sources:
        raise ValueError(f"no source in the meta-training pool has 2 labels with >= {config.shot_min + 1} rows")
    names = sorted(sources)
    weights = np.array([len(sources[n]) for n in names], dtype=float) ** 0.5
    weights /= weights.sum()
    copies = _copies_by_origin(pool)
    return [_one_episode(sources, names, weights, copies, config, np.random.default_rng([seed, i]))
            for i in range(count)]


def _one_episode(sources, names, weights, copies, config: EpisodesConfig, rng: np.random.Generator) -> Episode:
    source = names[rng.choice(len(names), p=weights)]
    labels = sources[source]
    way = int(rng.integers(config.way_min, min(config.way_max, len(labels)) + 1))
    classes = sorted(rng.choice(sorted(labels), size=way, replace=False).tolist())
    smallest = min(len(labels[c]) for c in classes)
    shot = int(rng.integers(config.shot_min, max(config.shot_min, min(config.shot_max, smallest - 1)) + 1))
    query = max(1, min(config.query, smallest - shot))
    support_rows, support_labels, query_rows, query_labels = [], [], [], []
    for position, label in enumerate(classes):
        picked = rng.choice(labels[label], size=shot + query, replace=False)
        support_rows += picked[:shot].tolist()
        support_labels += [position] * shot
        query_rows += picked[shot:].tolist()
        query_labels += [position] * query
    augmented = [(c, label) for row, label in zip(support_rows, support_labels) for c in copies.get(int(row), [])]
    support_rows += [c for c, _ in augmented]
    support_labels += [label for _, label in augmented]
    return Episode(source, classes, [int(r) for r in support_rows], support_labels,
                   [int(r) for r in query_rows], query_labels)


def save_episodes(episodes: list[Episode], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([asdict(e) for e in episodes]), encoding="utf-8")


def load_episodes(path: Path) -> list[Episode]:
    return [Episode(**raw) for raw in json.loads(Path(path).read_text(encoding="utf-8"))]


def split_pool_rows(pool: pd.DataFrame, validation_fraction: float, seed: int,
                    class_holdout_min_labels: int = 10) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split the pool into train/validation pools; augmented copies always follow their original.

    Sources with many labels hold out whole classes, so validation measures transfer to unseen labels (what
    adapting to a new domain needs); sources with few labels (binary sentiment) hold out rows of every label.
    """
    rng = np.random.default_rng(seed)
    originals = pool[~pool["augmented"]]
    held: list[int] = []
    for _, source_rows in originals.groupby("source", sort=True):
        labels = sorted(source_rows["label"].unique())
        if len(labels) >= class_holdout_min_labels:
            chosen = rng.choice(labels, size=max(2, int(round(len(labels) * validation_fraction))), replace=False)
            held += source_rows.index[source_rows["label"].isin(set(chosen))].tolist()
            continue
        for _, rows in source_rows.groupby("label", sort=True):
            n_held = int(round(len(rows) * validation_fraction))
            held += rng.choice(rows.index.to_numpy(), size=n_held, replace=False).tolist()
    in_val = pool["origin"].isin(set(held))
    return pool[~in_val], pool[in_val]
