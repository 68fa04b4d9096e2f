"""Tests for components.validation: real GE 1.24 suites on tiny frames."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from components.validation import (
    DataValidationError,
    ValidationOutcome,
    require_valid,
    validate_labelled_frame,
    write_outcome,
)

LABELS = ["neg", "pos"]


def _frame(n_per_label: int = 3) -> pd.DataFrame:
    rows = [(f"a {lbl} review number {i}", lbl) for lbl in LABELS for i in range(n_per_label)]
    return pd.DataFrame(rows, columns=["text", "label"])


def _validate(df: pd.DataFrame, **overrides) -> ValidationOutcome:
    kwargs = dict(name="unit", allowed_labels=LABELS, min_rows_per_label=2, max_text_chars=60)
    kwargs.update(overrides)
    return validate_labelled_frame(df, **kwargs)


def test_valid_frame_passes(tmp_path):
    outcome = _validate(_frame())
    assert outcome.success, outcome.failures
    assert outcome.failures == []
    assert outcome.statistics["unsuccessful_expectations"] == 0
    assert outcome.statistics["evaluated_expectations"] >= 8
    require_valid(outcome)  # does not raise

    path = tmp_path / "out" / "validation.json"
    write_outcome(outcome, path)
    stored = json.loads(path.read_text())
    assert stored["success"] is True and stored["name"] == "unit"
    assert set(stored) == {"name", "success", "failures", "failed_checks", "example_rows", "statistics", "result"}
    assert stored["result"]["statistics"]["evaluated_expectations"] >= 8


def test_repeated_calls_in_one_process():
    assert _validate(_frame(), name="same").success
    assert _validate(_frame(), name="same").success


def test_unknown_label_fails():
    df = _frame()
    df.loc[0, "label"] = "maybe"
    df.loc[1, "label"] = "maybe"
    outcome = _validate(df, min_rows_per_label=1)
    assert not outcome.success
    with pytest.raises(DataValidationError, match=r"label: 2 values not in allowed set \['neg', 'pos'\] \(e\.g\. 'maybe'\)"):
        require_valid(outcome)


def test_empty_text_fails():
    df = _frame()
    df.loc[2, "text"] = ""
    with pytest.raises(DataValidationError, match=r"text: 1 values with length outside \[1, 60\] chars \(e\.g\. '' \[0 chars\]\)"):
        require_valid(_validate(df))


def test_null_text_fails():
    df = _frame()
    df.loc[3, "text"] = None
    with pytest.raises(DataValidationError, match=r"text: 1 null values, expected none \(rows e\.g\. \[3\]\)"):
        require_valid(_validate(df))


def test_too_long_text_fails():
    df = _frame()
    df.loc[0, "text"] = "x" * 100
    outcome = _validate(df)
    assert not outcome.success
    assert any("text:" in f and "[1, 60]" in f and "[100 chars]" in f for f in outcome.failures)


def test_missing_column_fails():
    df = _frame().drop(columns=["label"])
    with pytest.raises(DataValidationError, match=r"table: expected columns \['label', 'text'\].*missing \['label'\]") as err:
        require_valid(_validate(df))
    # only the useful line, no GE metric-resolution errors for the absent column
    assert err.value.outcome.failures == [
        "table: expected columns ['label', 'text'], found ['text']; missing ['label']"
    ]


def test_extra_columns_are_allowed():
    df = _frame().assign(id=range(6))
    assert _validate(df).success


def test_too_few_rows_per_label_fails():
    df = _frame(n_per_label=3)
    with pytest.raises(DataValidationError, match=r"label \[pandas check\]: 2 label\(s\) with fewer than 4 rows: 'neg'=3, 'pos'=3"):
        require_valid(_validate(df, min_rows_per_label=4))


def test_absent_allowed_label_fails():
    df = _frame()
    df = df[df["label"] == "neg"]
    outcome = _validate(df)
    assert not outcome.success
    assert "label: expected every allowed label to appear, never seen: ['pos']" in outcome.failures
    assert "label [pandas check]: 1 label(s) with fewer than 2 rows: 'pos'=0" in outcome.failures


def test_too_many_duplicates_fails():
    df = _frame()
    df["text"] = ["same text"] * 5 + ["other"]
    with pytest.raises(DataValidationError, match=r"text: duplicate share 0\.67 exceeds maximum 0\.50"):
        require_valid(_validate(df))


def test_empty_frame_fails():
    df = pd.DataFrame({"text": pd.Series([], dtype=object), "label": pd.Series([], dtype=object)})
    with pytest.raises(DataValidationError, match=r"table: expected at least 1 rows, found 0"):
        require_valid(_validate(df))


def test_error_message_lists_every_failure():
    df = _frame()
    df.loc[0, "label"] = "maybe"
    df.loc[1, "text"] = ""
    outcome = _validate(df, min_rows_per_label=1)
    message = str(DataValidationError(outcome))
    assert len(outcome.failures) == 2
    assert all(line in message for line in outcome.failures)
    assert outcome.statistics["unsuccessful_expectations"] == 2
