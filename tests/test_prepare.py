"""Ingest: stratified splits and caps, leakage removal between evaluation and training texts, support sampling."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from components.config import Params, parse_params
from components.data import DataError, text_hash
from components.prepare import (assert_no_leakage, build_domain_data, cap_per_label, split_holdout,
                                stratified_sample, with_augmentations)
from components.stages import sample_support


def labelled(counts: dict[str, int]) -> pd.DataFrame:
    rows = [(f"{label} text {i}", label) for label, n in counts.items() for i in range(n)]
    return pd.DataFrame(rows, columns=["text", "label"])


# ------------------------------------------------------------------------------------------ splits and caps


def test_split_holdout_is_stratified_disjoint_and_deterministic():
    frame = labelled({"a": 10, "b": 20, "c": 3})
    adapt, held = split_holdout(frame, 0.3, seed=1)
    assert held["label"].value_counts().to_dict() == {"a": 3, "b": 6, "c": 1}
    assert adapt["label"].value_counts().to_dict() == {"a": 7, "b": 14, "c": 2}
    assert not set(adapt["text"]) & set(held["text"])
    assert sorted(adapt["text"].tolist() + held["text"].tolist()) == sorted(frame["text"])
    again_adapt, again_held = split_holdout(frame, 0.3, seed=1)
    assert again_held.equals(held) and again_adapt.equals(adapt)
    assert set(split_holdout(frame, 0.3, seed=2)[1]["text"]) != set(held["text"])


def test_split_holdout_ignores_the_input_index():
    frame = labelled({"a": 6, "b": 6})
    shuffled = frame.sample(frac=1.0, random_state=0).set_axis(range(100, 112))
    adapt, held = split_holdout(shuffled, 0.5, seed=0)
    assert len(adapt) == 6 and len(held) == 6 and not set(adapt["text"]) & set(held["text"])


def test_stratified_sample_caps_rows_and_keeps_label_shares():
    frame = labelled({"a": 60, "b": 30, "c": 10})
    sample = stratified_sample(frame, 50, seed=0)
    assert sample["label"].value_counts().to_dict() == {"a": 30, "b": 15, "c": 5}
    assert set(sample["text"]) <= set(frame["text"]) and not sample["text"].duplicated().any()
    assert stratified_sample(frame, 50, seed=0).equals(sample)
    assert stratified_sample(frame, 500, seed=0).equals(frame)  # under the cap: untouched


def test_stratified_sample_keeps_min_per_label():
    frame = labelled({"a": 96, "b": 4})
    sample = stratified_sample(frame, 20, seed=0, min_per_label=8)
    counts = sample["label"].value_counts().to_dict()
    assert counts["b"] == 4  # min(its rows, min_per_label)
    assert counts["a"] == 16  # its share round(96 * 0.2) = 19, trimmed so the total stays at max_rows
    rare = stratified_sample(labelled({"a": 190, "b": 10}), 20, seed=0, min_per_label=8)
    assert rare["label"].value_counts().to_dict() == {"a": 12, "b": 8}


def test_stratified_sample_never_exceeds_max_rows_without_a_minimum():
    sample = stratified_sample(labelled({"a": 7, "b": 7, "c": 7}), 20, seed=0)
    assert len(sample) <= 20


def test_cap_per_label():
    capped = cap_per_label(labelled({"a": 9, "b": 2}), 4, seed=0)
    assert capped["label"].value_counts().to_dict() == {"a": 4, "b": 2}


def test_with_augmentations_points_copies_at_their_originals():
    params = _params(copies=2, token_dropout=0.5)
    pool = with_augmentations(labelled({"a": 3, "b": 2}).assign(source="s"), params)
    originals, copies = pool[~pool["augmented"]], pool[pool["augmented"]]
    assert len(originals) == 5 and len(copies) == 10
    assert (originals["origin"] == originals.index).all()
    assert copies["origin"].value_counts().to_dict() == {i: 2 for i in range(5)}
    for _, copy in copies.iterrows():
        original = pool.loc[copy["origin"]]
        assert (copy["label"], copy["source"]) == (original["label"], original["source"])
        assert set(copy["text"].split()) <= set(original["text"].split())
    assert pool["augmented"].dtype == bool


# ------------------------------------------------------------------------------------- build_domain_data


def _params(copies: int = 1, token_dropout: float = 0.1, eval_split: str = "all", **limits) -> Params:
    target_files = {"all": "all.csv"} if eval_split == "all" else {"all": "all.csv", "test": "test.csv"}
    return parse_params({
        "seed": 5,
        "datasets": {"target": {"files": target_files},
                     "source": {"files": {"train": "train.csv", "validation": "validation.csv"}}},
        "encoder": {"name": "unused"},
        "domains": {"toy": {"dataset": "target", "adapt_split": "all", "eval_split": eval_split,
                            "eval_fraction": 0.3, "k": 2, "meta_sources": ["source"]}},
        "episodes": {"augment": {"copies": copies, "token_dropout": token_dropout}},
        "limits": limits,
    })


def _write(mirror: Path, name: str, file: str, frame: pd.DataFrame) -> None:
    (mirror / name).mkdir(parents=True, exist_ok=True)
    frame.to_csv(mirror / name / file, index=False)


@pytest.fixture
def mirror(tmp_path) -> Path:
    """Target: 3 labels x 10 texts. Meta source: its own 4 labels x 6 texts over two splits, plus every target
    text again with other case and spacing (so every evaluation text has a twin in the meta source)."""
    mirror = tmp_path / "mirror"
    target = labelled({"neg": 10, "neu": 10, "pos": 10})
    _write(mirror, "target", "all.csv", target)
    own = labelled({"w": 6, "x": 6, "y": 6, "z": 6})
    twins = pd.DataFrame({"text": ["  " + t.upper().replace(" ", "   ") for t in target["text"]],
                          "label": ["w", "x", "y", "z", "w", "x"] * 5})
    _write(mirror, "source", "train.csv", pd.concat([own.iloc[:12], twins.iloc[:15]]))
    _write(mirror, "source", "validation.csv", pd.concat([own.iloc[12:], twins.iloc[15:]]))
    return mirror


def test_build_domain_data_removes_eval_texts_from_the_meta_pool(mirror):
    data = build_domain_data("toy", _params(), mirror)
    eval_hashes = set(data.eval["text"].map(text_hash))
    assert len(data.eval) == 9 and len(data.adapt) == 21  # 3 of 10 per label held out
    assert data.manifest["meta_sources"]["source"]["removed_eval_overlap"] == 9
    assert data.manifest["meta_sources"]["source"]["rows"] == 24 + 30 - 9
    assert data.manifest["adapt_rows_removed_as_eval_duplicates"] == 0
    assert data.manifest["labels"] == ["neg", "neu", "pos"] and data.manifest["meta_pool_rows"] == len(data.meta_pool)
    originals = data.meta_pool[~data.meta_pool["augmented"]]
    assert not originals["text"].map(text_hash).isin(eval_hashes).any()
    assert not data.adapt["text"].map(text_hash).isin(eval_hashes).any()
    # Twins of adaptation texts may stay: only evaluation texts are banned from meta-training.
    assert originals["text"].map(text_hash).isin(set(data.adapt["text"].map(text_hash))).sum() == 21
    assert list(data.meta_pool.columns) == ["text", "label", "source", "augmented", "origin"]


def test_build_domain_data_counts_adapt_rows_that_duplicate_eval_rows(mirror):
    _write(mirror, "target", "test.csv", pd.DataFrame({"text": ["NEG TEXT 0", "pos text 1", "brand new"],
                                                      "label": ["neg", "pos", "pos"]}))
    data = build_domain_data("toy", _params(eval_split="test"), mirror)
    assert data.manifest["adapt_rows_removed_as_eval_duplicates"] == 2
    assert len(data.adapt) == 28 and len(data.eval) == 3
    assert data.manifest["meta_sources"]["source"]["removed_eval_overlap"] == 2


def test_build_domain_data_applies_the_caps_unless_full(mirror):
    capped = build_domain_data("toy", _params(copies=0, meta_max_rows_per_label=3, eval_max_rows=10), mirror)
    assert capped.meta_pool["label"].value_counts().max() <= 3
    assert capped.manifest["caps"]["meta_max_rows_per_label"] == 3
    full = build_domain_data("toy", _params(copies=0, meta_max_rows_per_label=3), mirror, full=True)
    assert full.manifest["caps"] is None and len(full.meta_pool) == 24 + 30 - 9


def test_build_domain_data_missing_meta_source_names_it(mirror):
    (mirror / "source" / "validation.csv").unlink()
    with pytest.raises(DataError, match=r"data set 'source' split 'validation': not found in mirror"):
        build_domain_data("toy", _params(), mirror)


def test_augmented_copies_never_reproduce_an_eval_text(tmp_path):
    mirror = tmp_path / "mirror"
    words = [f"word{i}" for i in range(60)]
    _write(mirror, "target", "all.csv", pd.DataFrame({"text": words, "label": ["pos", "neg"] * 30}))
    padded = pd.DataFrame({"text": [f"{w} padding" for w in words], "label": ["a", "b", "c"] * 20})
    _write(mirror, "source", "train.csv", padded.iloc[:30])
    _write(mirror, "source", "validation.csv", padded.iloc[30:])
    data = build_domain_data("toy", _params(copies=1, token_dropout=0.1), mirror)
    assert_no_leakage(data.eval, data.adapt, data.meta_pool)


def test_assert_no_leakage_raises_on_overlap():
    evaluation = labelled({"a": 3})
    clean = labelled({"b": 3})
    assert_no_leakage(evaluation, clean, clean.iloc[:0])
    leaky = pd.concat([clean, pd.DataFrame({"text": ["  A TEXT 1 "], "label": ["b"]})])
    with pytest.raises(DataError, match=r"1 evaluation text\(s\) found in training data; refusing to continue"):
        assert_no_leakage(evaluation, clean, leaky)


# ------------------------------------------------------------------------------------------ support sets


def test_sample_support_k_per_label_deterministic():
    adapt = labelled({"a": 5, "b": 8, "c": 3})
    support = sample_support(adapt, 3, seed=0)
    assert support["label"].value_counts().to_dict() == {"a": 3, "b": 3, "c": 3}
    assert set(support["text"]) <= set(adapt["text"]) and not support["text"].duplicated().any()
    assert sample_support(adapt, 3, seed=0).equals(support)
    assert not sample_support(adapt, 3, seed=1).equals(support)


def test_a_label_with_fewer_rows_than_k_is_kept_with_what_it_has_and_warned_about():
    from components.stages import short_label_warnings, training_rows

    adapt = labelled({"a": 5, "b": 2, "c": 1})
    assert sample_support(adapt, 3, seed=0)["label"].value_counts().to_dict() == {"a": 3, "b": 2, "c": 1}
    assert short_label_warnings(adapt, 3) == ["label 'b' has 2 labelled row(s) < k=3: adapted from what it has",
                                              "label 'c' has 1 labelled row(s) < k=3: adapted from what it has"]
    assert len(training_rows(adapt, None, seed=0)) == 8                         # every labelled row counts
    assert training_rows(adapt, 2, seed=0)["label"].value_counts().to_dict() == {"a": 2, "b": 2, "c": 1}


# ------------------------------------------------------------------------------ ingest: unchanged inputs kept


def _ingest(params: Params, root: Path, mirror_dir: Path) -> dict:
    from components import stages

    params = params.model_copy(update={"data": params.data.model_copy(update={"mirror": str(mirror_dir)})})
    return stages.ingest(params, "toy", root)


def test_ingest_keeps_outputs_when_inputs_are_unchanged_and_rebuilds_when_they_change(mirror, tmp_path):
    root = tmp_path / "project"
    prepared = root / "data" / "prepared" / "toy"
    first = _ingest(_params(), root, mirror)
    stamps = {p.name: p.stat().st_mtime_ns for p in prepared.iterdir()}
    assert first["inputs_fingerprint"] and set(first["output_sha256"]) == {"adapt.parquet", "eval.parquet",
                                                                           "meta_pool.parquet"}

    again = _ingest(_params(), root, mirror)                       # nothing changed: nothing rewritten
    assert again == first
    assert {p.name: p.stat().st_mtime_ns for p in prepared.iterdir()} == stamps

    changed_params = _ingest(_params(eval_max_rows=12), root, mirror)   # a param ingest reads
    assert changed_params["inputs_fingerprint"] != first["inputs_fingerprint"]

    (prepared / "adapt.parquet").write_bytes(b"edited by hand")    # a damaged output is rebuilt, not trusted
    rebuilt = _ingest(_params(eval_max_rows=12), root, mirror)
    assert rebuilt["output_sha256"] == changed_params["output_sha256"]
    assert pd.read_parquet(prepared / "adapt.parquet").shape[0] == rebuilt["adapt_rows"]

    extra = pd.DataFrame({"text": ["one more negative text"], "label": ["neg"]})
    frame = pd.concat([pd.read_csv(mirror / "target" / "all.csv"), extra])
    frame.to_csv(mirror / "target" / "all.csv", index=False)       # the source file changed
    assert _ingest(_params(eval_max_rows=12), root, mirror)["inputs_fingerprint"] != rebuilt["inputs_fingerprint"]
