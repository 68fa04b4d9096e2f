"""Data validation of labelled text frames with Great Expectations (GE 1.x).

Prefect-free on purpose: flows wrap these functions in tasks, tests call them directly.
``great_expectations`` is imported inside functions because its import costs several
seconds, which every CLI command and test collection would otherwise pay.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

TEXT, LABEL = "text", "label"
REQUIRED_COLUMNS = (TEXT, LABEL)
_MAX_EXAMPLES = 3
_MAX_EXAMPLE_CHARS = 40


@dataclass(frozen=True)
class ValidationOutcome:
    """What a validation run found, in a form that is easy to log, store and assert on."""

    name: str
    success: bool
    failures: list[str]
    statistics: dict[str, Any]
    result_json: dict[str, Any]


class DataValidationError(ValueError):
    """Raised with outcome attached; str() lists every failing expectation."""

    def __init__(self, outcome: ValidationOutcome):
        self.outcome = outcome
        lines = "\n".join(f"  - {line}" for line in outcome.failures)
        super().__init__(f"data validation '{outcome.name}' failed:\n{lines}")


def validate_labelled_frame(
    df: pd.DataFrame,
    *,
    name: str,
    allowed_labels: Sequence[str] | None,
    min_rows_per_label: int,
    max_text_chars: int,
    min_text_chars: int = 1,
    max_duplicate_fraction: float = 0.5,
) -> ValidationOutcome:
    """Validate a frame with columns text,label against a fresh GE suite.

    Everything GE can express runs in GE, so the stored result is GE's own. The per-label
    minimum row count has no GE expectation; it is checked in pandas and reported as a
    separate, clearly labelled "[pandas check]" failure line.
    """
    labels = list(allowed_labels) if allowed_labels is not None else None
    expectations = _build_expectations(
        set(df.columns), labels, min_rows_per_label, min_text_chars, max_text_chars,
        max_duplicate_fraction,
    )
    result_json = _run_ge_suite(df, name, expectations)
    failures = [_describe_failure(r) for r in _ordered_failed_results(result_json, expectations)]
    pandas_failures = _check_rows_per_label(df, labels, min_rows_per_label)
    statistics = dict(result_json.get("statistics", {}))
    statistics["pandas_checks_evaluated"] = 1 if LABEL in df.columns and min_rows_per_label > 0 else 0
    statistics["pandas_checks_unsuccessful"] = len(pandas_failures)
    failures += pandas_failures
    success = bool(result_json.get("success")) and not pandas_failures
    return ValidationOutcome(name, success, failures, statistics, result_json)


def write_outcome(outcome: ValidationOutcome, path: Path) -> None:
    """Write the outcome as JSON so pipelines (DVC, MLflow) can track it as an artifact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "name": outcome.name,
        "success": outcome.success,
        "failures": outcome.failures,
        "statistics": outcome.statistics,
        "result": outcome.result_json,
    }
    path.write_text(json.dumps(payload, indent=2, default=str), encoding="utf-8")


def require_valid(outcome: ValidationOutcome) -> None:
    """Stop a pipeline on bad data instead of training or evaluating on it."""
    if not outcome.success:
        raise DataValidationError(outcome)


# --------------------------------------------------------------------------- GE suite


def _build_expectations(
    columns: set[str],
    labels: list[str] | None,
    min_rows_per_label: int,
    min_text_chars: int,
    max_text_chars: int,
    max_duplicate_fraction: float,
) -> list[Any]:
    """Return the expectations for this frame.

    Column-level expectations are only added for columns that exist: on a missing column GE
    raises a metric-resolution error per expectation, which would bury the one useful line
    ("missing columns ['label']") under tracebacks. Extra columns (ids, splits) are allowed.
    """
    import great_expectations.expectations as gxe

    exps: list[Any] = [
        gxe.ExpectTableColumnsToMatchSet(column_set=list(REQUIRED_COLUMNS), exact_match=False),
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
    ]
    if TEXT in columns:
        exps += [
            gxe.ExpectColumnValuesToNotBeNull(column=TEXT),
            # Lengths of non-strings are not checked by GE, so demand strings explicitly.
            gxe.ExpectColumnValuesToBeOfType(column=TEXT, type_="str"),
            gxe.ExpectColumnValueLengthsToBeBetween(
                column=TEXT, min_value=min_text_chars, max_value=max_text_chars
            ),
            gxe.ExpectColumnProportionOfUniqueValuesToBeBetween(
                column=TEXT, min_value=max(0.0, 1.0 - max_duplicate_fraction)
            ),
        ]
    if LABEL in columns:
        exps.append(gxe.ExpectColumnValuesToNotBeNull(column=LABEL))
        if labels is not None:
            exps.append(gxe.ExpectColumnValuesToBeInSet(column=LABEL, value_set=labels))
            if min_rows_per_label > 0:
                exps.append(gxe.ExpectColumnDistinctValuesToContainSet(column=LABEL, value_set=labels))
    return exps


def _run_ge_suite(df: pd.DataFrame, name: str, expectations: list[Any]) -> dict[str, Any]:
    """Run the expectations in a fresh ephemeral context; unique names allow repeated calls."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    uid = f"{name}-{uuid.uuid4().hex[:8]}"
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch_def = (
        ctx.data_sources.add_pandas(f"pandas-{uid}")
        .add_dataframe_asset(f"asset-{uid}")
        .add_batch_definition_whole_dataframe(f"batch-{uid}")
    )
    suite = ctx.suites.add(gx.ExpectationSuite(name=f"suite-{uid}"))
    for exp in expectations:
        suite.add_expectation(exp)
    vdef = ctx.validation_definitions.add(
        gx.ValidationDefinition(name=f"validation-{uid}", data=batch_def, suite=suite)
    )
    return vdef.run(batch_parameters={"dataframe": df}).to_json_dict()


def _ordered_failed_results(result_json: dict[str, Any], expectations: list[Any]) -> list[dict]:
    """Failed results in suite order (GE reorders them), so messages read table -> columns."""
    order = {str(e.id): i for i, e in enumerate(expectations)}
    failed = [r for r in result_json.get("results", []) if not r.get("success")]
    return sorted(failed, key=lambda r: order.get(str(r["expectation_config"].get("id")), 1_000))


# --------------------------------------------------------------------------- messages


def _example(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _MAX_EXAMPLE_CHARS else text[: _MAX_EXAMPLE_CHARS - 3] + "..."


def _examples(result: dict[str, Any]) -> str:
    counts = result.get("partial_unexpected_counts") or []
    values = [c.get("value") for c in counts] or list(result.get("partial_unexpected_list") or [])
    if not values:
        return ""
    return " (e.g. " + ", ".join(_example(v) for v in values[:_MAX_EXAMPLES]) + ")"


def _length_examples(result: dict[str, Any]) -> str:
    values = list(result.get("partial_unexpected_list") or [])[:_MAX_EXAMPLES]
    if not values:
        return ""
    return " (e.g. " + ", ".join(f"{_example(v)} [{len(str(v))} chars]" for v in values) + ")"


def _describe_failure(res: dict[str, Any]) -> str:
    """One line per failed expectation: which column, what was expected, what was found."""
    cfg = res["expectation_config"]
    kind, kw, result = cfg["type"], cfg.get("kwargs", {}), res.get("result") or {}
    where = kw.get("column", "table")
    exc = res.get("exception_info") or {}
    if exc.get("raised_exception") or any(isinstance(v, dict) for v in exc.values()):
        msg = exc.get("exception_message") or next(
            (v.get("exception_message") for v in exc.values() if isinstance(v, dict)), "error"
        )
        return f"{where}: {kind} could not be evaluated: {msg}"
    n_bad, ex = result.get("unexpected_count"), _examples(result)
    describe = {
        "expect_table_columns_to_match_set": lambda: _columns_message(kw, result),
        "expect_table_row_count_to_be_between": lambda: (
            f"table: expected at least {kw.get('min_value')} rows, found {result.get('observed_value')}"
        ),
        "expect_column_values_to_not_be_null": lambda: (
            f"{where}: {n_bad} null values, expected none"
            f" (rows e.g. {list(result.get('partial_unexpected_index_list') or [])[:_MAX_EXAMPLES]})"
        ),
        "expect_column_values_to_be_of_type": lambda: (
            f"{where}: {n_bad} values not of type {kw.get('type_')}{ex}"
        ),
        "expect_column_value_lengths_to_be_between": lambda: (
            f"{where}: {n_bad} values with length outside "
            f"[{kw.get('min_value')}, {kw.get('max_value')}] chars{_length_examples(result)}"
        ),
        "expect_column_values_to_be_in_set": lambda: (
            f"{where}: {n_bad} values not in allowed set {list(kw.get('value_set') or [])}{ex}"
        ),
        "expect_column_distinct_values_to_contain_set": lambda: (
            f"{where}: expected every allowed label to appear, never seen: "
            f"{list(result.get('partial_missing_list') or [])}"
        ),
        "expect_column_proportion_of_unique_values_to_be_between": lambda: _unique_message(
            where, kw, result
        ),
    }
    if kind in describe:
        return describe[kind]()
    return f"{where}: {kind} failed with {kw} -> {result}"


def _columns_message(kw: dict[str, Any], result: dict[str, Any]) -> str:
    missing = (result.get("details") or {}).get("mismatched", {}).get("missing", [])
    return (
        f"table: expected columns {sorted(kw.get('column_set') or [])}, "
        f"found {result.get('observed_value')}; missing {missing}"
    )


def _unique_message(where: str, kw: dict[str, Any], result: dict[str, Any]) -> str:
    observed = result.get("observed_value")
    minimum = float(kw.get("min_value") or 0.0)
    if observed is None or float(observed) == 0.0:  # 0 only happens with no non-null values
        return f"{where}: unique share could not be computed (no non-null values)"
    return (
        f"{where}: duplicate share {1 - float(observed):.2f} exceeds maximum {1 - minimum:.2f}"
        f" (unique share {float(observed):.2f}, expected >= {minimum:.2f})"
    )


# --------------------------------------------------------------------------- pandas check


def _check_rows_per_label(
    df: pd.DataFrame, labels: list[str] | None, min_rows_per_label: int
) -> list[str]:
    """Per-label minimum row counts, which GE 1.24 cannot express directly.

    Counts cover the allowed labels (absent ones count 0) or, without an allowed set, the
    labels that occur. Unknown labels are left to the GE in-set expectation.
    """
    if LABEL not in df.columns or min_rows_per_label <= 0:
        return []
    counts = df[LABEL].dropna().value_counts()
    if labels is not None:
        counts = counts.reindex(labels, fill_value=0)
    low = counts[counts < min_rows_per_label]
    if low.empty:
        return []
    found = ", ".join(f"{_example(lbl)}={int(n)}" for lbl, n in low.items())
    return [
        f"label [pandas check]: {len(low)} label(s) with fewer than {min_rows_per_label} rows: {found}"
    ]
