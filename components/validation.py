"""Data validation of labelled text frames with Great Expectations (GE 1.x), one suite per data role.

Roles (each an explicit GE ``ExpectationSuite`` named ``metaadapt.<domain>.<role>``, built in code from params):

- ``meta_source.<source>``: one meta-training source data set (validated separately per source),
- ``adapt``: the domain's adaptation pool (support sets are sampled from it),
- ``eval``: the domain's held-out evaluation split,
- ``batch``: a user's incoming labelled batch (see components.quarantine).

Prefect-free on purpose: flows wrap these functions in tasks, tests call them directly.
``great_expectations`` is imported inside functions because its import costs several
seconds, which every CLI command and test collection would otherwise pay.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from components.data import CONTROL_CHARS, control_chars, text_hash, visible_text

TEXT, LABEL = "text", "label"
TEXT_KEY = "text_key"  # sha1 of the normalised text, added only for the leakage expectation
# the text as a reader sees it (components.data.visible_text: NFKC, format characters removed, stripped; None when
# blank-looking); the blank, length and duplicate expectations run on it, so "\u200b" is blank and not a one-char
# text. A NUL in it is replaced by U+FFFD: pandas' unique()/nunique() cut object strings at NUL, so "ab\x00c" and
# "ab\x00d" counted as duplicates (the NUL itself is refused by the control-character expectation on `text`).
TEXT_VISIBLE = "text_visible"
DERIVED_COLUMNS = (TEXT_KEY, TEXT_VISIBLE)  # added by validate_frame, reported as `text`
REQUIRED_COLUMNS = (TEXT, LABEL)
_MAX_EXAMPLES = 3
_MAX_EXAMPLE_CHARS = 40
_MAX_STORED_CHARS = 500  # longer strings (a 1 MB text) are cut in stored JSON
WARNING = "warning"  # GE expectation severity whose failure is reported (validation JSON, Data Docs), never refused
LEAKAGE_NOTE = "no text may equal (after case/whitespace normalisation) a text of the domain's evaluation split"


@dataclass(frozen=True)
class SuiteSpec:
    """Everything one role's suite is built from; the role functions below fill it from params."""

    domain: str
    role: str
    allowed_labels: tuple[str, ...] | None
    min_rows_per_label: int
    max_text_chars: int
    min_text_chars: int = 1
    max_duplicate_fraction: float = 0.5
    exact_columns: bool = False           # a user batch may not carry extra columns
    require_every_label: bool = False     # the adaptation pool must cover every label (>= 1 row each)
    described_labels: tuple[str, ...] = ()  # keys of domains.<d>.label_descriptions: each must be a known label,
    new_labels: tuple[str, ...] = ()        # i.e. in allowed_labels or in domains.<d>.new_labels
    banned_text_keys: frozenset[str] = frozenset()  # text_hash of evaluation texts (leakage)
    duplicates_warn_only: bool = False    # a data set's own repeated texts are reported, not refused (leakage still is)

    @property
    def name(self) -> str:
        return f"metaadapt.{self.domain}.{self.role}"


@dataclass(frozen=True)
class ValidationOutcome:
    """What a validation run found, in a form that is easy to log, store and assert on."""

    name: str
    success: bool
    failures: list[str]
    statistics: dict[str, Any]
    result_json: dict[str, Any]
    failed_checks: list[str] = field(default_factory=list)   # expectation types (or pandas/read check names)
    example_rows: list[int] = field(default_factory=list)    # frame row numbers (0-based) that broke a check
    warnings: list[str] = field(default_factory=list)        # failed expectations of severity "warning": shown, not refused


class DataValidationError(ValueError):
    """Raised with outcome attached; str() lists every failing expectation."""

    def __init__(self, outcome: ValidationOutcome):
        self.outcome = outcome
        lines = "\n".join(f"  - {line}" for line in outcome.failures)
        super().__init__(f"data validation '{outcome.name}' failed:\n{lines}")


# --------------------------------------------------------------------------- suites per role


def meta_source_spec(params: Any, domain: str, source: str, eval_texts: Iterable[str] = ()) -> SuiteSpec:
    """A meta-training source: any labels, enough rows per label to sample episodes, no evaluation text."""
    return _spec(params, domain, f"meta_source.{source}", None, params.data.min_rows_per_label,
                 banned_text_keys=text_keys(eval_texts), duplicates_warn_only=True)


def adapt_spec(params: Any, domain: str, labels: Sequence[str], eval_texts: Iterable[str] = ()) -> SuiteSpec:
    """The adaptation pool: every label present, no evaluation text.

    One row is enough: a label with fewer than K rows is adapted on what it has (adaptation warns), because every
    labelled row a user gives counts; only a label with no row at all fails. `data.min_rows_per_label` is for
    meta-training sources, whose episodes need several rows per label."""
    return _spec(params, domain, "adapt", labels, 1, require_every_label=True, banned_text_keys=text_keys(eval_texts),
                 duplicates_warn_only=True, described_labels=tuple(params.domain(domain).label_descriptions),
                 new_labels=tuple(params.domain(domain).new_labels))


def eval_spec(params: Any, domain: str, labels: Sequence[str]) -> SuiteSpec:
    """The evaluation split: only labels the domain knows (the adaptation pool's and `domains.<d>.new_labels`).

    A known label absent here is simply not evaluated: a new label's few labelled rows all go to the pool, and
    failing the whole domain for it would leave the user with no model at all. An unknown label still fails."""
    return _spec(params, domain, "eval", with_new_labels(params, domain, labels), 1, duplicates_warn_only=True)


def batch_spec(params: Any, domain: str, known_labels: Sequence[str], eval_texts: Iterable[str] = ()) -> SuiteSpec:
    """A user's incoming batch: exactly text,label; known or declared-new labels; at least one row per label it
    has (fewer than K is accepted: the rows are merged into the pool, and a few labelled rows still count)."""
    return _spec(params, domain, "batch", with_new_labels(params, domain, known_labels), 1, exact_columns=True,
                 banned_text_keys=text_keys(eval_texts))


def with_new_labels(params: Any, domain: str, labels: Sequence[str]) -> list[str]:
    """The labels a domain knows: `labels` plus the ones declared new in `domains.<d>.new_labels`, sorted."""
    return sorted(set(labels) | set(params.domain(domain).new_labels))


def validate_domain(params: Any, domain: str, adapt: pd.DataFrame, evaluation: pd.DataFrame,
                    meta_pool: pd.DataFrame, runner: SuiteRunner | None = None,
                    shared_sources: Callable[[pd.DataFrame], dict[str, ValidationOutcome]] | None = None,
                    ) -> dict[str, ValidationOutcome]:
    """Every suite of a domain's prepared tables: adaptation pool, evaluation split, each meta-training source
    (its original rows; augmented copies are derived from them).

    With `shared_sources` (components.shared_stages.source_outcomes) the source suites, which do not depend on
    the domain, come from the shared store (run once per source content for all domains), and the one check
    that does depend on it, no evaluation text in the pool, runs here as a single `meta_pool_leakage` suite."""
    runner = runner or SuiteRunner()
    labels = sorted(adapt[LABEL].dropna().unique()) if LABEL in adapt.columns else []
    eval_texts = evaluation[TEXT].tolist() if TEXT in evaluation.columns else []
    outcomes = {"adapt": validate_frame(_pair(adapt), adapt_spec(params, domain, labels, eval_texts), runner),
                "eval": validate_frame(_pair(evaluation), eval_spec(params, domain, labels), runner)}
    if "augmented" in meta_pool.columns:
        # token-dropout copies often equal their original (nothing dropped from a short text): they are not
        # duplicates in the data set; ingest's assert_no_leakage already covers them
        meta_pool = meta_pool[~meta_pool["augmented"].astype(bool)]
    if len(meta_pool) and "source" in meta_pool.columns and shared_sources is not None:
        outcomes["meta_pool_leakage"] = pool_leakage_outcome(domain, meta_pool[TEXT].tolist(), eval_texts, runner)
        outcomes.update(shared_sources(meta_pool))
    elif len(meta_pool) and "source" in meta_pool.columns:
        for source, rows in meta_pool.groupby("source", sort=True):
            spec = meta_source_spec(params, domain, str(source), eval_texts)
            outcomes[f"meta_source.{source}"] = validate_frame(_pair(rows), spec, runner)
    return outcomes


def pool_leakage_outcome(domain: str, pool_texts: Sequence[str], eval_texts: Sequence[str],
                         runner: SuiteRunner) -> ValidationOutcome:
    """One GE suite per domain: no meta-training row repeats a text of the domain's evaluation split (hashed
    texts, so the suite stays small whatever the pool's size)."""
    import great_expectations.expectations as gxe

    frame = pd.DataFrame({TEXT_KEY: [text_hash(t) if isinstance(t, str) else None for t in pool_texts]})
    expectation = gxe.ExpectColumnValuesToNotBeInSet(column=TEXT_KEY, value_set=sorted(text_keys(eval_texts)),
                                                     meta={"check": "leakage"}, notes=LEAKAGE_NOTE)
    suite = runner.add_suite(f"metaadapt.{domain}.meta_pool_leakage", [expectation])
    result = runner.run(frame, suite)
    success = bool(result.get("success"))
    failed = [] if success else _ordered_failed_results(result, [expectation])
    failures = [f"text: {r['result'].get('unexpected_count')} meta-training rows repeat a text of the evaluation "
                f"split (leakage)" for r in failed]
    return ValidationOutcome(suite.name, success, failures, dict(result.get("statistics", {})), result,
                             ["leakage"] if failures else [], [])


def outcome_from_payload(payload: dict[str, Any]) -> ValidationOutcome:
    """A ValidationOutcome read back from `outcome_payload` JSON (a shared store entry)."""
    return ValidationOutcome(payload["name"], bool(payload["success"]), list(payload["failures"]),
                             dict(payload["statistics"]), dict(payload["result"]), list(payload["failed_checks"]),
                             list(payload["example_rows"]))


def _pair(frame: pd.DataFrame) -> pd.DataFrame:
    """The text,label columns (whichever exist), re-indexed so reported rows are positions."""
    return frame[[c for c in REQUIRED_COLUMNS if c in frame.columns]].reset_index(drop=True)


def _spec(params: Any, domain: str, role: str, labels: Sequence[str] | None, min_rows: int, **extra: Any) -> SuiteSpec:
    checks = params.validation
    return SuiteSpec(domain=domain, role=role, allowed_labels=tuple(labels) if labels is not None else None,
                     min_rows_per_label=min_rows, max_text_chars=params.data.max_text_chars,
                     min_text_chars=checks.min_text_chars, max_duplicate_fraction=checks.max_duplicate_fraction,
                     **extra)


def text_keys(texts: Iterable[str]) -> frozenset[str]:
    """Leakage keys: the same normalised hash components.prepare uses to remove evaluation overlap."""
    return frozenset(text_hash(t) for t in texts if isinstance(t, str))


def build_suite(spec: SuiteSpec, columns: Iterable[str], runner: SuiteRunner) -> Any:
    """The role's GE ExpectationSuite, added to the runner's context (GE suites need a live context)."""
    return runner.add_suite(spec.name, _build_expectations(spec, set(columns)))


# --------------------------------------------------------------------------- running


class SuiteRunner:
    """One ephemeral GE context holding the suites and results of one validation pass.

    A context is cheap (milliseconds); the GE import is what costs, and it is paid once per process.
    Suites never leak between runners, and a name used twice in one runner gets a suffix.
    """

    def __init__(self) -> None:
        import logging

        quiet = logging.getLogger("great_expectations")  # its INFO lines (import, temp dirs) bury the stage's own
        quiet.setLevel(logging.WARNING)
        import great_expectations as gx
        from great_expectations.data_context.types.base import ProgressBarsConfig

        # this module sets its own logger to INFO and logs a temp dir per context
        logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)
        self.context = gx.get_context(mode="ephemeral")
        self.context.variables.progress_bars = ProgressBarsConfig(globally=False)
        uid = uuid.uuid4().hex[:8]
        self._asset = self.context.data_sources.add_pandas(f"pandas-{uid}").add_dataframe_asset(f"frames-{uid}")
        self._names: set[str] = set()

    def add_suite(self, name: str, expectations: list[Any]) -> Any:
        import great_expectations as gx

        suite = self.context.suites.add(gx.ExpectationSuite(name=self._unique(name)))
        for expectation in expectations:
            suite.add_expectation(expectation)
        return suite

    def run(self, frame: pd.DataFrame, suite: Any) -> dict[str, Any]:
        import great_expectations as gx

        name = suite.name
        batch = self._asset.add_batch_definition_whole_dataframe(f"batch-{name}")
        definition = self.context.validation_definitions.add(
            gx.ValidationDefinition(name=f"validation-{name}", data=batch, suite=suite))
        return definition.run(batch_parameters={"dataframe": frame}).to_json_dict()

    def _unique(self, name: str) -> str:
        candidate, n = name, 1
        while candidate in self._names:
            n += 1
            candidate = f"{name}.{n}"
        self._names.add(candidate)
        return candidate


def validate_frame(df: pd.DataFrame, spec: SuiteSpec, runner: SuiteRunner | None = None) -> ValidationOutcome:
    """Validate a text,label frame against the role's suite.

    Everything GE can express runs in GE, so the stored result is GE's own. The per-label
    minimum row count has no GE expectation; it is checked in pandas and reported as a
    separate, clearly labelled "[pandas check]" failure line.
    """
    runner = runner or SuiteRunner()
    frame = _with_derived_columns(df, spec)
    suite = build_suite(spec, frame.columns, runner)
    expectations = list(suite.expectations)
    result_json = runner.run(frame, suite)
    every_failed = _without_empty_table_noise(_ordered_failed_results(result_json, expectations))
    failed = [r for r in every_failed if not _is_warning(r)]
    warnings = [_describe_failure(r, df) for r in every_failed if _is_warning(r)]
    failures = [_describe_failure(r, df) for r in failed]
    checks = [r["expectation_config"]["type"] for r in failed]
    rows = _example_rows(failed)
    labels = list(spec.allowed_labels) if spec.require_every_label and spec.allowed_labels is not None else None
    pandas_failures = _check_rows_per_label(df, labels, spec.min_rows_per_label)
    if pandas_failures:
        checks.append("rows_per_label [pandas check]")
    description_failures = _check_label_descriptions(spec)
    if description_failures:
        checks.append("label_descriptions [params check]")
    pandas_failures += description_failures
    statistics = dict(result_json.get("statistics", {}))
    statistics["pandas_checks_evaluated"] = ((1 if LABEL in df.columns and spec.min_rows_per_label > 0 else 0)
                                             + (1 if spec.described_labels else 0))
    statistics["pandas_checks_unsuccessful"] = len(pandas_failures)
    success = not failed and not pandas_failures
    statistics["warnings"] = len(warnings)
    return ValidationOutcome(suite.name, success, failures + pandas_failures, statistics, result_json, checks, rows,
                             warnings)


def _is_warning(result: dict[str, Any]) -> bool:
    """A failed expectation of severity "warning" (GE keeps the severity in the stored expectation config)."""
    return result["expectation_config"].get("severity") == WARNING


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
    """A one-off suite without params (ad-hoc frames, tests); every allowed label must appear."""
    spec = SuiteSpec(domain="adhoc", role=name,
                     allowed_labels=tuple(allowed_labels) if allowed_labels is not None else None,
                     min_rows_per_label=min_rows_per_label, max_text_chars=max_text_chars,
                     min_text_chars=min_text_chars, max_duplicate_fraction=max_duplicate_fraction,
                     require_every_label=allowed_labels is not None and min_rows_per_label > 0)
    outcome = validate_frame(df, spec)
    return ValidationOutcome(name, outcome.success, outcome.failures, outcome.statistics, outcome.result_json,
                             outcome.failed_checks, outcome.example_rows, outcome.warnings)


def read_failure(name: str, check: str, message: str) -> ValidationOutcome:
    """A file that could not be read (not UTF-8, empty, malformed), reported like a failed expectation."""
    return ValidationOutcome(name, False, [f"file [{check}]: {message}"],
                             {"evaluated_expectations": 0, "read_check_failed": check},
                             {"success": False, "read_check": {"check": check, "message": message}}, [check], [])


def outcome_payload(outcome: ValidationOutcome) -> dict[str, Any]:
    """The JSON form of an outcome; very long strings (a 1 MB text) are cut so the file stays readable."""
    return _clip({"name": outcome.name, "success": outcome.success, "failures": outcome.failures,
                  "warnings": outcome.warnings, "failed_checks": outcome.failed_checks, "example_rows": outcome.example_rows,
                  "statistics": outcome.statistics, "result": outcome.result_json})


def write_outcome(outcome: ValidationOutcome, path: Path) -> None:
    """Write the outcome as JSON so pipelines (DVC, MLflow) can track it as an artifact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(outcome_payload(outcome), indent=2, default=str), encoding="utf-8")


def require_valid(outcome: ValidationOutcome) -> None:
    """Stop a pipeline on bad data instead of training or evaluating on it."""
    if not outcome.success:
        raise DataValidationError(outcome)


def _clip(value: Any) -> Any:
    if isinstance(value, str) and len(value) > _MAX_STORED_CHARS:
        return value[:_MAX_STORED_CHARS] + f"... [{len(value)} chars]"
    if isinstance(value, dict):
        return {k: _clip(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clip(v) for v in value]
    return value


# --------------------------------------------------------------------------- GE suite


def _with_derived_columns(df: pd.DataFrame, spec: SuiteSpec) -> pd.DataFrame:
    """Add the visible text (blank, length, duplicate checks) and, with banned texts, the hashed text the leakage
    expectation runs on (hashes keep the value set small and fast). Non-strings stay as they are for the type check."""
    if TEXT not in df.columns:
        return df
    visible = df[TEXT].map(lambda t: (visible_text(t).replace("\x00", "\ufffd") or None) if isinstance(t, str) else t)
    visible = visible.astype(object)
    derived = {TEXT_VISIBLE: visible}
    if spec.banned_text_keys:
        derived[TEXT_KEY] = df[TEXT].map(lambda t: text_hash(t) if isinstance(t, str) else None)
    return df.assign(**derived)


def _build_expectations(spec: SuiteSpec, columns: set[str]) -> list[Any]:
    """Return the expectations for this frame.

    Column-level expectations are only added for columns that exist: on a missing column GE
    raises a metric-resolution error per expectation, which would bury the one useful line
    ("missing columns ['label']") under tracebacks.
    """
    import great_expectations.expectations as gxe

    leak = bool(spec.banned_text_keys) and TEXT in columns
    column_set = list(REQUIRED_COLUMNS) + ([TEXT_VISIBLE] if TEXT in columns else []) + ([TEXT_KEY] if leak else [])
    exps: list[Any] = [
        gxe.ExpectTableColumnsToMatchSet(column_set=column_set, exact_match=spec.exact_columns),
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
    ]
    if TEXT in columns:
        exps += _text_expectations(spec)
    if leak:
        exps.append(gxe.ExpectColumnValuesToNotBeInSet(column=TEXT_KEY, value_set=sorted(spec.banned_text_keys),
                                                       meta={"check": "leakage"}, notes=LEAKAGE_NOTE))
    if LABEL in columns:
        exps.append(gxe.ExpectColumnValuesToNotBeNull(column=LABEL))
        if spec.allowed_labels is not None:
            exps.append(gxe.ExpectColumnValuesToBeInSet(column=LABEL, value_set=list(spec.allowed_labels)))
            if spec.require_every_label:
                exps.append(gxe.ExpectColumnDistinctValuesToContainSet(column=LABEL,
                                                                       value_set=list(spec.allowed_labels)))
    return exps


def _text_expectations(spec: SuiteSpec) -> list[Any]:
    import great_expectations.expectations as gxe

    return [
        # null, empty or blank-looking (only whitespace and invisible format characters such as U+200B)
        gxe.ExpectColumnValuesToNotBeNull(column=TEXT_VISIBLE, meta={"check": "blank"},
                                          notes="the text after NFKC normalisation and removing format characters "
                                                "(Unicode category Cf) and surrounding whitespace"),
        # Lengths of non-strings are not checked by GE, so demand strings explicitly.
        gxe.ExpectColumnValuesToBeOfType(column=TEXT, type_="str"),
        gxe.ExpectColumnValuesToNotMatchRegex(column=TEXT, regex=CONTROL_CHARS, meta={"check": "control_chars"},
                                              notes="no control characters: C0 except tab/newline/CR, DEL, C1"),
        gxe.ExpectColumnValueLengthsToBeBetween(column=TEXT_VISIBLE, min_value=spec.min_text_chars,
                                                max_value=spec.max_text_chars),
        gxe.ExpectColumnProportionOfUniqueValuesToBeBetween(
            column=TEXT_VISIBLE, min_value=max(0.0, 1.0 - spec.max_duplicate_fraction),
            severity=WARNING if spec.duplicates_warn_only else "critical", meta={"check": "duplicates"},
            notes="repeated texts inside one data set: a warning for data sets (their own business; texts shared with "
                  "the evaluation split are refused by the leakage check), refused in an incoming batch"),
    ]


def _ordered_failed_results(result_json: dict[str, Any], expectations: list[Any]) -> list[dict]:
    """Failed results in suite order (GE reorders them), so messages read table -> columns."""
    order = {str(e.id): i for i, e in enumerate(expectations)}
    failed = [r for r in result_json.get("results", []) if not r.get("success")]
    return sorted(failed, key=lambda r: order.get(str(r["expectation_config"].get("id")), 1_000))


def _without_empty_table_noise(failed: list[dict]) -> list[dict]:
    """With no rows at all, "unique share cannot be computed" only repeats the row-count failure."""
    types = {r["expectation_config"]["type"] for r in failed}
    if "expect_table_row_count_to_be_between" not in types:
        return failed
    return [r for r in failed
            if r["expectation_config"]["type"] != "expect_column_proportion_of_unique_values_to_be_between"]


def _example_rows(failed: list[dict]) -> list[int]:
    rows: list[int] = []
    for res in failed:
        for index in (res.get("result") or {}).get("partial_unexpected_index_list") or []:
            if isinstance(index, int) and index not in rows:
                rows.append(index)
    return rows[:_MAX_EXAMPLES]


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


def _rows(result: dict[str, Any]) -> list[Any]:
    return list(result.get("partial_unexpected_index_list") or [])[:_MAX_EXAMPLES]


def _describe_failure(res: dict[str, Any], df: pd.DataFrame) -> str:
    """One line per failed expectation: which column, what was expected, what was found."""
    cfg = res["expectation_config"]
    kind, kw, result = cfg["type"], cfg.get("kwargs", {}), res.get("result") or {}
    where = kw.get("column", "table")
    where = TEXT if where in DERIVED_COLUMNS else where
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
        "expect_column_values_to_not_be_null": lambda: _null_message(where, n_bad, result, df),
        "expect_column_values_to_not_match_regex": lambda: _control_message(where, n_bad, result),
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
        "expect_column_values_to_not_be_in_set": lambda: _leakage_message(result, df),
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
    mismatched = (result.get("details") or {}).get("mismatched", {})
    expected = sorted(c for c in kw.get("column_set") or [] if c not in DERIVED_COLUMNS)
    found = [c for c in result.get("observed_value") or [] if c not in DERIVED_COLUMNS]
    message = f"table: expected columns {expected}, found {_some(found)}"
    if mismatched.get("missing"):
        message += f"; missing {_some(mismatched['missing'])}"
    if mismatched.get("unexpected"):
        message += f"; unexpected {_some(mismatched['unexpected'])}"
    return message


def _some(names: list[Any], shown: int = 20) -> str:
    """A list for a message: the first `shown` items and how many more (a 5,000-column file must not print them all)."""
    names = list(names)
    if len(names) <= shown:
        return repr([str(n)[:100] for n in names])
    head = ", ".join(repr(str(n)[:100]) for n in names[:shown])
    return f"{len(names)} columns: {head}, … and {len(names) - shown} more"


def _null_message(where: str, n_bad: Any, result: dict[str, Any], df: pd.DataFrame) -> str:
    rows = _rows(result)
    message = f"{where}: {n_bad} null or blank values, expected none (rows e.g. {rows})"
    invisible = [i for i in rows if where == TEXT and isinstance(i, int) and i < len(df)
                 and isinstance(df[TEXT].iloc[i], str) and df[TEXT].iloc[i].strip()]
    if invisible:
        message += (f"; rows {invisible} hold only invisible characters "
                    f"(e.g. {_example(df[TEXT].iloc[invisible[0]])}: zero-width space, word joiner, BOM, ...)")
    return message


def _control_message(where: str, n_bad: Any, result: dict[str, Any]) -> str:
    found: list[str] = []
    for value in result.get("partial_unexpected_list") or []:
        found += [c for c in control_chars(str(value)) if c not in found]
    return (f"{where}: {n_bad} values contain control characters {found} (rows e.g. {_rows(result)}); "
            f"only tab, newline and carriage return are allowed (a NUL, U+0000, usually means a UTF-16 or binary "
            f"file, or a text cut from one): remove them or re-save the file as UTF-8 text")


def _leakage_message(result: dict[str, Any], df: pd.DataFrame) -> str:
    rows = _rows(result)
    texts = [_example(df[TEXT].iloc[i]) for i in rows if isinstance(i, int) and i < len(df)]
    return (f"text: {result.get('unexpected_count')} rows repeat a text of the evaluation split (leakage)"
            f" (rows e.g. {rows}: {', '.join(texts)})")


def _unique_message(where: str, kw: dict[str, Any], result: dict[str, Any]) -> str:
    observed = result.get("observed_value")
    minimum = float(kw.get("min_value") or 0.0)
    if observed is None or float(observed) == 0.0:  # 0 only happens with no non-null values
        return f"{where}: unique share could not be computed (no non-null values)"
    return (
        f"{where}: duplicate share {1 - float(observed):.2f} exceeds maximum {1 - minimum:.2f}"
        f" (unique share {float(observed):.2f}, expected >= {minimum:.2f})"
    )


# --------------------------------------------------------------------------- pandas and params checks


def _check_label_descriptions(spec: SuiteSpec) -> list[str]:
    """Every key of domains.<d>.label_descriptions must be a label of the domain (a typo such as `negtive` would
    otherwise be ignored silently, and the real label would fall back to its bare name). Labels are only known
    from the data, so this runs with the adaptation pool's suite; labels declared in new_labels count as known."""
    if not spec.described_labels or spec.allowed_labels is None:
        return []
    known = sorted(set(spec.allowed_labels) | set(spec.new_labels))
    unknown = [label for label in spec.described_labels if label not in known]
    if not unknown:
        return []
    return [f"label_descriptions [params check]: domains.{spec.domain}.label_descriptions has key(s) {unknown} "
            f"that are not labels of the domain; known labels: {known} (the adaptation pool's and "
            f"domains.{spec.domain}.new_labels); fix the key's spelling in params.yaml"]


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
    rows = "row" if min_rows_per_label == 1 else "rows"
    return [f"label [pandas check]: {len(low)} label(s) with fewer than {min_rows_per_label} {rows}: {found}"]
