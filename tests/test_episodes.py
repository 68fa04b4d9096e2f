"""Episode sampling invariants on a synthetic two-source pool with augmented copies."""
from __future__ import annotations

from collections import Counter

import pandas as pd
import pytest

from components.config import EpisodesConfig
from components.episodes import Episode, load_episodes, sample_episodes, save_episodes, split_pool_rows

CONFIG = EpisodesConfig(train_episodes=10, val_episodes=5, way_min=2, way_max=4, shot_min=1, shot_max=4, query=3)


def make_pool(copies: int = 2) -> pd.DataFrame:
    """Two sources: 'news' with 3 labels x 12 rows and 'intent' with 5 labels x 9 rows, each row with copies
    augmented copies appended after all originals (as prepare.with_augmentations lays them out)."""
    rows = []
    for source, n_labels, per_label in (("news", 3, 12), ("intent", 5, 9)):
        for label in range(n_labels):
            rows += [(f"{source} {label} text {i}", f"{source}-L{label}", source) for i in range(per_label)]
    pool = pd.DataFrame(rows, columns=["text", "label", "source"]).assign(augmented=False)
    pool["origin"] = pool.index
    copies_rows = [(f"{text} copy{c}", label, source, True, origin)
                   for origin, (text, label, source) in enumerate(zip(pool["text"], pool["label"], pool["source"]))
                   for c in range(copies)]
    if not copies_rows:
        return pool
    return pd.concat([pool, pd.DataFrame(copies_rows, columns=pool.columns)], ignore_index=True)


@pytest.fixture(scope="module")
def pool() -> pd.DataFrame:
    return make_pool()


@pytest.fixture(scope="module")
def episodes(pool) -> list[Episode]:
    return sample_episodes(pool, CONFIG, 60, seed=7)


def test_classes_balanced_in_support_and_query(episodes):
    for e in episodes:
        n = len(e.classes)
        support, query = Counter(e.support_labels), Counter(e.query_labels)
        assert sorted(support) == list(range(n)) and sorted(query) == list(range(n))
        assert len(set(support.values())) == 1, e
        assert len(set(query.values())) == 1, e
        assert len(e.support) == len(e.support_labels) and len(e.query) == len(e.query_labels)


def test_labels_match_the_pool_and_one_source_per_episode(pool, episodes):
    for e in episodes:
        rows = pool.loc[e.support + e.query]
        assert set(rows["source"]) == {e.source}
        for row, position in zip(e.support + e.query, e.support_labels + e.query_labels):
            assert pool.at[row, "label"] == e.classes[position]
        assert e.classes == sorted(e.classes)


def test_support_and_query_disjoint_also_through_augmented_copies(pool, episodes):
    for e in episodes:
        assert not set(e.support) & set(e.query)
        support_origins = set(pool.loc[e.support, "origin"])
        query_origins = set(pool.loc[e.query, "origin"])
        assert not support_origins & query_origins, e
        assert not pool.loc[e.query, "augmented"].any()  # queries are real rows, never augmented copies


def test_support_carries_the_augmented_copies_of_its_originals(pool, episodes):
    for e in episodes:
        support = pool.loc[e.support]
        originals = support[~support["augmented"]]
        copies = support[support["augmented"]]
        assert len(copies) == 2 * len(originals)
        assert set(copies["origin"]) == set(originals.index)


def test_way_and_shot_within_config_bounds(pool, episodes):
    for e in episodes:
        way = len(e.classes)
        assert CONFIG.way_min <= way <= CONFIG.way_max
        shot = sum(not pool.at[r, "augmented"] for r in e.support) // way
        assert CONFIG.shot_min <= shot <= CONFIG.shot_max
        assert 1 <= len(e.query) // way <= CONFIG.query
    # The ranges are actually explored, not pinned to one value.
    assert len({len(e.classes) for e in episodes}) > 1


def test_episodes_mix_sources(episodes):
    assert {e.source for e in episodes} == {"news", "intent"}


def test_same_seed_same_episodes_different_seed_different(pool, episodes):
    assert sample_episodes(pool, CONFIG, 60, seed=7) == episodes
    assert sample_episodes(pool, CONFIG, 60, seed=8) != episodes
    # Episode i does not depend on how many episodes are drawn.
    assert sample_episodes(pool, CONFIG, 5, seed=7) == episodes[:5]


def test_way_capped_by_the_labels_a_source_has():
    pool = make_pool(copies=0)
    config = EpisodesConfig(way_min=2, way_max=10, shot_min=1, shot_max=2, query=2)
    for e in sample_episodes(pool, config, 30, seed=0):
        assert len(e.classes) <= (3 if e.source == "news" else 5)


def test_no_eligible_source_is_a_clear_error():
    pool = make_pool(copies=0)
    config = EpisodesConfig(shot_min=12, shot_max=16)
    with pytest.raises(ValueError, match=r"no source in the meta-training pool has 2 labels with >= 13 rows"):
        sample_episodes(pool, config, 3, seed=0)


def test_split_pool_rows_keeps_originals_with_their_copies(pool):
    train, val = split_pool_rows(pool, 0.25, seed=3)
    assert set(train.index).isdisjoint(val.index)
    assert len(train) + len(val) == len(pool)
    for part in (train, val):
        originals = set(part.index[~part["augmented"]])
        assert set(part["origin"]) == originals  # every copy sits beside its original
    # Stratified by (source, label): round(12 * 0.25) = 3 and round(9 * 0.25) = 2 originals held per label.
    held = val[~val["augmented"]].groupby(["source", "label"]).size()
    assert set(held[held.index.get_level_values(0) == "news"]) == {3}
    assert set(held[held.index.get_level_values(0) == "intent"]) == {2}
    again_train, again_val = split_pool_rows(pool, 0.25, seed=3)
    assert list(again_val.index) == list(val.index)
    assert list(split_pool_rows(pool, 0.25, seed=4)[1].index) != list(val.index)


def test_split_pool_rows_holds_out_whole_classes_of_many_label_sources():
    """A source with many labels gives validation whole unseen classes; a few-label source gives it rows."""
    many = pd.DataFrame([(f"intent {label} {i}", f"intent-{label}", "intents")
                         for label in range(12) for i in range(4)], columns=["text", "label", "source"])
    few = pd.DataFrame([(f"sent {label} {i}", f"sent-{label}", "sentiment") for label in range(2) for i in range(8)],
                       columns=["text", "label", "source"])
    pool = pd.concat([many, few], ignore_index=True).assign(augmented=False)
    pool["origin"] = pool.index
    copies = pool.assign(text=pool["text"] + " copy", augmented=True)
    pool = pd.concat([pool, copies], ignore_index=True)
    train, val = split_pool_rows(pool, 0.25, seed=0, class_holdout_min_labels=10)
    for part in (train, val):
        assert set(part["origin"]) == set(part.index[~part["augmented"]])
    intents_train = set(train.loc[train["source"] == "intents", "label"])
    intents_val = set(val.loc[val["source"] == "intents", "label"])
    assert len(intents_val) == 3 and not intents_train & intents_val  # round(12 * 0.25) whole classes
    assert len(val[(val["source"] == "intents") & ~val["augmented"]]) == 3 * 4
    sentiment_val = val[(val["source"] == "sentiment") & ~val["augmented"]]
    assert sentiment_val["label"].value_counts().to_dict() == {"sent-0": 2, "sent-1": 2}


def test_episodes_from_split_pools_never_cross(pool):
    train, val = split_pool_rows(pool, 0.25, seed=3)
    config = EpisodesConfig(way_min=2, way_max=3, shot_min=1, shot_max=1, query=1)
    val_rows = {r for e in sample_episodes(val, config, 20, seed=1) for r in e.support + e.query}
    train_rows = {r for e in sample_episodes(train, CONFIG, 20, seed=1) for r in e.support + e.query}
    assert val_rows <= set(val.index) and train_rows <= set(train.index)
    assert not set(pool.loc[list(val_rows), "origin"]) & set(pool.loc[list(train_rows), "origin"])


def test_save_load_roundtrip(tmp_path, episodes):
    path = tmp_path / "nested" / "episodes.json"
    save_episodes(episodes, path)
    assert load_episodes(path) == episodes
