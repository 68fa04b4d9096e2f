"""Ingest: a domain's adaptation pool, its held-out evaluation split and its meta-training pool.

Leakage is checked here, where the splits are made: adaptation rows and meta-training rows whose normalised text
also appears in the evaluation split are removed and counted, and the counts go into the manifest.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from components.augment import augment_texts
from components.config import DomainConfig, Params
from components.data import DataError, load_split, text_hash


@dataclass
class DomainData:
    adapt: pd.DataFrame                  # text,label: support sets are sampled from here; drift reference
    eval: pd.DataFrame                   # text,label: held out, never used for adaptation
    meta_pool: pd.DataFrame              # text,label,source,augmented,origin
    manifest: dict = field(default_factory=dict)


def stratified_sample(frame: pd.DataFrame, max_rows: int, seed: int, min_per_label: int = 0) -> pd.DataFrame:
    """At most max_rows rows with label shares kept; the floor min(its rows, min_per_label) per label wins over
    max_rows when both cannot hold."""
    if len(frame) <= max_rows:
        return frame.reset_index(drop=True)
    share = max_rows / len(frame)
    groups = list(frame.groupby("label", sort=True))
    counts = [min(len(rows), max(min_per_label, int(round(len(rows) * share)))) for _, rows in groups]
    floors = [min(len(rows), min_per_label) for _, rows in groups]
    excess = sum(counts) - max_rows
    for i in sorted(range(len(counts)), key=lambda j: -counts[j]):  # rounding overshoot: trim the largest labels
        cut = min(max(excess, 0), counts[i] - floors[i])
        counts[i] -= cut
        excess -= cut
    parts = [rows.sample(n=n, random_state=seed + i) for i, ((_, rows), n) in enumerate(zip(groups, counts))]
    return pd.concat(parts).sample(frac=1.0, random_state=seed).reset_index(drop=True)


def cap_per_label(frame: pd.DataFrame, per_label: int, seed: int) -> pd.DataFrame:
    parts = [rows.sample(n=min(len(rows), per_label), random_state=seed + i)
             for i, (_, rows) in enumerate(frame.groupby("label", sort=True))]
    return pd.concat(parts).reset_index(drop=True)


def split_holdout(frame: pd.DataFrame, fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Stratified (adapt, eval) split of one table, deterministic by seed."""
    rng = np.random.default_rng(seed)
    held = np.zeros(len(frame), dtype=bool)
    for _, rows in frame.reset_index(drop=True).groupby("label", sort=True):
        idx = rng.permutation(rows.index.to_numpy())
        held[idx[: max(1, int(round(len(idx) * fraction)))]] = True
    frame = frame.reset_index(drop=True)
    return frame[~held].reset_index(drop=True), frame[held].reset_index(drop=True)


def _remove_overlap(frame: pd.DataFrame, banned: set[str]) -> tuple[pd.DataFrame, int]:
    keep = ~frame["text"].map(text_hash).isin(banned)
    return frame[keep].reset_index(drop=True), int((~keep).sum())


def target_splits(name: str, domain: DomainConfig, params: Params, mirror: Path | None,
                  full: bool = False) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """(adapt pool, eval split, counts) for one domain; eval texts never appear in the adapt pool."""
    spec = params.datasets[domain.dataset]
    cache = Path(params.data.hub_cache_dir)
    adapt = load_split(domain.dataset, spec, domain.adapt_split, mirror, cache)
    if domain.eval_split == domain.adapt_split:
        adapt, evaluation = split_holdout(adapt, domain.eval_fraction, params.seed)
    else:
        evaluation = load_split(domain.dataset, spec, domain.eval_split, mirror, cache)
    adapt, leaked = _remove_overlap(adapt, set(evaluation["text"].map(text_hash)))
    limits = params.limits
    if not full:
        evaluation = stratified_sample(evaluation, limits.eval_max_rows, params.seed)
        adapt = stratified_sample(adapt, limits.adapt_pool_max_rows, params.seed, min_per_label=limits.adapt_min_rows_per_label)
    return adapt, evaluation, {"adapt_rows": len(adapt), "eval_rows": len(evaluation),
                               "adapt_rows_removed_as_eval_duplicates": leaked}


def meta_pool(domain: DomainConfig, params: Params, mirror: Path | None, banned: set[str],
              full: bool = False) -> tuple[pd.DataFrame, dict]:
    """All meta-training sources of a domain, capped, minus any text of the domain's evaluation split."""
    frames, counts = [], {}
    limits = params.limits
    for source in domain.meta_sources:
        spec = params.datasets[source]
        table = pd.concat([load_split(source, spec, split, mirror, Path(params.data.hub_cache_dir))
                           for split in spec.splits], ignore_index=True)
        if not full:
            per_source = domain.meta_max_rows_per_source or limits.meta_max_rows_per_source
            per_label = min(limits.meta_max_rows_per_label, max(2, per_source // table["label"].nunique()))
            table = cap_per_label(table, per_label, params.seed)
        table, removed = _remove_overlap(table, banned)
        counts[source] = {"rows": len(table), "labels": int(table["label"].nunique()), "removed_eval_overlap": removed}
        frames.append(table.assign(source=source))
    if not frames:
        return pd.DataFrame(columns=["text", "label", "source", "augmented", "origin"]), counts
    pool = with_augmentations(pd.concat(frames, ignore_index=True), params)
    # token dropout can turn a meta text into an evaluation text: drop such copies too
    clean = ~(pool["augmented"] & pool["text"].map(text_hash).isin(banned))
    return pool[clean].reset_index(drop=True), counts


def with_augmentations(pool: pd.DataFrame, params: Params) -> pd.DataFrame:
    """Append token-dropout copies of every row, each pointing at its original through `origin`."""
    pool = pool.reset_index(drop=True).assign(augmented=False)
    pool["origin"] = pool.index
    augment = params.episodes.augment
    if augment.copies == 0 or augment.token_dropout == 0:
        return pool
    variants = augment_texts(pool["text"].tolist(), augment.copies, augment.token_dropout, params.seed)
    rows = [(text, label, source, True, origin)
            for origin, (texts, label, source) in enumerate(zip(variants, pool["label"], pool["source"]))
            for text in texts]
    copies = pd.DataFrame(rows, columns=["text", "label", "source", "augmented", "origin"])
    return pd.concat([pool, copies], ignore_index=True)


def build_domain_data(name: str, params: Params, mirror: Path | None, full: bool = False) -> DomainData:
    """Everything the later stages of one domain read, plus a manifest of counts and caps."""
    domain = params.domain(name)
    adapt, evaluation, counts = target_splits(name, domain, params, mirror, full)
    if adapt.empty or evaluation.empty:
        raise DataError(f"domain {name!r}: empty adaptation pool or evaluation split after loading")
    pool, sources = meta_pool(domain, params, mirror, set(evaluation["text"].map(text_hash)), full)
    manifest = {"domain": name, "dataset": domain.dataset, "labels": sorted(adapt["label"].unique()),
                **counts, "meta_sources": sources, "meta_pool_rows": len(pool), "full": full,
                "caps": None if full else params.limits.model_dump()}
    return DomainData(adapt, evaluation, pool, manifest)


def merge_batches(data: DomainData, batches: pd.DataFrame) -> DomainData:
    """Append a user's accepted labelled batches (components.batches) to the adaptation pool — never to the
    evaluation split. Rows whose text is an evaluation text or already in the pool are dropped and counted; the
    size caps do not apply (fresh labelled data is the point); labels new to the domain are allowed (the batch
    suite accepted them only when declared in `domains.<d>.new_labels`). No batches: `data` is returned
    unchanged, so the default run's outputs stay byte-identical."""
    if batches.empty:
        return data
    # labels were checked when the batch was accepted (known labels or domains.<d>.new_labels); validate rechecks
    rows, leaked = _remove_overlap(batches[["text", "label"]].astype(str), set(data.eval["text"].map(text_hash)))
    rows, duplicates = _remove_overlap(rows, set(data.adapt["text"].map(text_hash)))
    adapt = pd.concat([data.adapt, rows], ignore_index=True)
    manifest = {**data.manifest, "adapt_rows": len(adapt),
                "batches": {"rows_added": len(rows), "rows_dropped_as_eval_duplicates": leaked,
                            "rows_dropped_as_pool_duplicates": duplicates}}
    return DomainData(adapt, data.eval, data.meta_pool, manifest)


def assert_no_leakage(evaluation: pd.DataFrame, *others: pd.DataFrame) -> None:
    """Raise when any evaluation text appears in an adaptation or meta-training table."""
    banned = set(evaluation["text"].map(text_hash))
    for other in others:
        overlap = int(other["text"].map(text_hash).isin(banned).sum())
        if overlap:
            raise DataError(f"{overlap} evaluation text(s) found in training data; refusing to continue")
