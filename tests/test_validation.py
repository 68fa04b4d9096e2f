"""Tests for components.validation: real GE 1.24 suites on tiny frames."""

from __future__ import annotations

import json
import re

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
    assert set(stored) == {"name", "success", "failures", "warnings", "failed_checks", "example_rows", "statistics", "result"}
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
    """An empty string is blank (like a null), not a too-short text."""
    df = _frame()
    df.loc[2, "text"] = ""
    with pytest.raises(DataValidationError, match=r"text: 1 null or blank values, expected none \(rows e\.g\. \[2\]\)"):
        require_valid(_validate(df))


@pytest.mark.parametrize("invisible", ["\u200b", "\u2060", "\ufeff", "\u200c", "\u200b \u2060\ufeff\u200c\u00a0"])
def test_text_of_only_invisible_format_characters_is_blank(invisible):
    """Zero-width space, word joiner, BOM, ZWNJ (Unicode category Cf) are removed before the blank check."""
    df = _frame()
    df.loc[1, "text"] = invisible
    df.loc[4, "text"] = "\u200b"
    outcome = _validate(df)
    assert not outcome.success
    assert outcome.failed_checks == ["expect_column_values_to_not_be_null"]
    assert outcome.example_rows == [1, 4]
    with pytest.raises(DataValidationError, match=r"text: 2 null or blank values, expected none \(rows e\.g\. \[1, 4\]\); "
                                                  r"rows \[1, 4\] hold only invisible characters"):
        require_valid(outcome)


def test_length_is_counted_on_the_visible_text():
    """Format characters do not count towards the length bounds: 60 visible chars padded with 100 ZWSP pass."""
    df = _frame()
    df.loc[0, "text"] = "x" * 60 + "\u200b" * 100
    df.loc[1, "text"] = "a\u200bb"  # two visible chars, stored as given
    outcome = _validate(df)
    assert outcome.success, outcome.failures
    df.loc[2, "text"] = "y" * 61 + "\u200b"
    with pytest.raises(DataValidationError, match=r"text: 1 values with length outside \[1, 60\] chars"):
        require_valid(_validate(df))
    too_short = _validate(_frame(), min_text_chars=3)
    assert too_short.success, too_short.failures


@pytest.mark.parametrize("emoji", ["\U0001F44D", "\U0001F621\U0001F621", "\u2764\ufe0f", "\U0001F468\u200d\U0001F469"])
def test_emoji_only_text_is_accepted(emoji):
    """An emoji-only text carries sentiment: it is a (short) text, not a blank one (ZWJ sequences included)."""
    df = _frame()
    df.loc[0, "text"] = emoji
    outcome = _validate(df)
    assert outcome.success, outcome.failures


@pytest.mark.parametrize("char", ["\x00", "\x01", "\x08", "\x0b", "\x0c", "\x1b", "\x1f", "\x7f"])
def test_control_characters_in_text_fail_with_rows(char):
    df = _frame()
    df.loc[2, "text"] = f"the zip broke{char} on day one"
    df.loc[5, "text"] = f"{char}the colour faded"
    outcome = _validate(df)
    assert not outcome.success
    assert outcome.failed_checks == ["expect_column_values_to_not_match_regex"]
    assert outcome.example_rows == [2, 5]
    code = f"U+{ord(char):04X}"
    with pytest.raises(DataValidationError, match=rf"text: 2 values contain control characters \[{re.escape(repr(code))}\] "
                                                  r"\(rows e\.g\. \[2, 5\]\); only tab, newline and carriage return"):
        require_valid(outcome)


def test_c1_codes_from_windows_1252_mojibake_are_allowed():
    """Real tweets hold U+009D (a mis-decoded right double quote): refusing C1 would refuse a public data set."""
    df = _frame()
    df.loc[2, "text"] = "shares up \u00e2\u0080\u009d says CEO"
    assert _validate(df).success


def test_tab_newline_and_carriage_return_are_allowed():
    df = _frame()
    df.loc[0, "text"] = "line one\nline two\r\n\tindented"
    outcome = _validate(df)
    assert outcome.success, outcome.failures


def test_null_text_fails():
    df = _frame()
    df.loc[3, "text"] = None
    with pytest.raises(DataValidationError, match=r"text: 1 null or blank values, expected none \(rows e\.g\. \[3\]\)"):
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


# --------------------------------------------------------------------------- suites per role

from bad_inputs.tiny_domain import ADAPT, DOMAIN, EVAL, make_project, tree_digest  # noqa: E402

from components.validation import (  # noqa: E402
    text_keys,
    SuiteSpec,
    adapt_spec,
    batch_spec,
    eval_spec,
    meta_source_spec,
    outcome_payload,
    validate_domain,
    validate_frame,
)


@pytest.fixture
def shop(tmp_path):
    return tmp_path, make_project(tmp_path)


def _pairs(rows) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["text", "label"])


def test_role_specs_come_from_params(shop):
    _, params = shop
    labels = ["neg", "pos"]
    adapt = adapt_spec(params, DOMAIN, labels, ["x"])
    assert adapt.name == "metaadapt.shop.adapt" and adapt.min_rows_per_label == 1 and adapt.require_every_label
    assert adapt.max_duplicate_fraction == params.validation.max_duplicate_fraction == 0.1
    assert adapt.max_text_chars == params.data.max_text_chars and len(adapt.banned_text_keys) == 1
    evaluation = eval_spec(params, DOMAIN, labels)
    assert evaluation.name == "metaadapt.shop.eval" and not evaluation.require_every_label
    source = meta_source_spec(params, DOMAIN, "cr", [])
    assert source.name == "metaadapt.shop.meta_source.cr" and source.allowed_labels is None
    batch = batch_spec(params, DOMAIN, labels)
    assert batch.exact_columns and not batch.require_every_label and batch.allowed_labels == ("neg", "pos")
    assert batch.min_rows_per_label == 1


def test_leakage_is_a_ge_expectation_on_normalised_texts(shop):
    _, params = shop
    frame = _pairs(ADAPT + [("  The Pocket is far  too SMALL ", "neg")])
    outcome = validate_frame(frame, adapt_spec(params, DOMAIN, ["neg", "pos"], [t for t, _ in EVAL]))
    assert not outcome.success
    assert outcome.failures == ["text: 1 rows repeat a text of the evaluation split (leakage) "
                                "(rows e.g. [6]: '  The Pocket is far  too SMALL ')"]
    assert outcome.failed_checks == ["expect_column_values_to_not_be_in_set"] and outcome.example_rows == [6]
    kinds = [r["expectation_config"]["type"] for r in outcome.result_json["results"]]
    assert "expect_column_values_to_not_be_in_set" in kinds  # GE ran it, not pandas
    assert validate_frame(_pairs(ADAPT), adapt_spec(params, DOMAIN, ["neg", "pos"], [t for t, _ in EVAL])).success


def test_leakage_expectation_scales_to_thousands_of_eval_texts(shop):
    import time

    _, params = shop
    eval_texts = [f"evaluation sentence number {i}" for i in range(5000)]
    frame = _pairs([(f"adaptation sentence {i}", ("neg", "pos")[i % 2]) for i in range(3000)])
    frame.loc[17, "text"] = "Evaluation sentence number 4321"
    started = time.perf_counter()
    outcome = validate_frame(frame, adapt_spec(params, DOMAIN, ["neg", "pos"], eval_texts))
    seconds = time.perf_counter() - started
    print(f"leakage suite: 3000 rows vs 5000 evaluation texts in {seconds:.2f} s")
    assert outcome.example_rows == [17] and outcome.failed_checks == ["expect_column_values_to_not_be_in_set"]
    assert seconds < 20


def test_batch_suite_is_stricter_than_pipeline_suites(shop):
    _, params = shop
    with_id = _pairs(ADAPT).assign(id=range(len(ADAPT)))
    assert validate_frame(with_id, eval_spec(params, DOMAIN, ["neg", "pos"])).success
    outcome = validate_frame(with_id, batch_spec(params, DOMAIN, ["neg", "pos"]))
    assert outcome.failures == ["table: expected columns ['label', 'text'], found "
                                "['id', 'label', 'text']; unexpected ['id']"]


def test_batch_may_leave_out_labels_the_pool_must_cover(shop):
    _, params = shop
    only_pos = _pairs([r for r in ADAPT if r[1] == "pos"])
    assert validate_frame(only_pos, batch_spec(params, DOMAIN, ["neg", "pos"])).success
    adapt = validate_frame(only_pos, adapt_spec(params, DOMAIN, ["neg", "pos"]))
    assert "label [pandas check]: 1 label(s) with fewer than 1 row: 'neg'=0" in adapt.failures
    assert "label: expected every allowed label to appear, never seen: ['neg']" in adapt.failures


# ------------------------------------------------ every labelled row counts: fewer than K rows is not a failure


def test_adapt_pool_accepts_a_label_with_fewer_than_k_rows(tmp_path):
    params = make_project(tmp_path, k=5)          # ADAPT has 3 rows per label; data.min_rows_per_label is 2
    one_neg = _pairs([r for r in ADAPT if r[1] == "pos"] + [("the buttons fell off", "neg")])
    for frame in (_pairs(ADAPT), one_neg):
        outcome = validate_frame(frame, adapt_spec(params, DOMAIN, ["neg", "pos"]))
        assert outcome.success, outcome.failures
        assert outcome.statistics["pandas_checks_evaluated"] == 1


def test_meta_sources_still_need_data_min_rows_per_label(shop):
    _, params = shop
    source = _pairs([("good a", "good"), ("good b", "good"), ("bad a", "bad")])
    outcome = validate_frame(source, meta_source_spec(params, DOMAIN, "cr"))
    assert outcome.failures == ["label [pandas check]: 1 label(s) with fewer than 2 rows: 'bad'=1"]


def test_batch_accepts_new_and_known_labels_with_fewer_than_k_rows(tmp_path):
    params = make_project(tmp_path, k=5, new_labels=("neutral",))
    frame = _pairs([("it came on a tuesday", "neutral"), ("great value, fits well", "pos"),
                    ("runs two sizes small", "neg"), ("the hem came loose", "neg")])
    outcome = validate_frame(frame, batch_spec(params, DOMAIN, ["neg", "pos"]))
    assert outcome.success, outcome.failures


def test_eval_split_without_a_new_label_or_a_pool_label_is_valid(tmp_path):
    """A label the domain knows but the evaluation split lacks is simply not evaluated."""
    params = make_project(tmp_path, new_labels=("neutral",))
    spec = eval_spec(params, DOMAIN, ["neg", "pos", "neutral"])
    assert spec.allowed_labels == ("neg", "neutral", "pos")
    only_neg = _pairs([r for r in EVAL if r[1] == "neg"])
    for frame in (_pairs(EVAL), only_neg):
        outcome = validate_frame(frame, spec)
        assert outcome.success, outcome.failures
    assert validate_frame(_pairs(EVAL), eval_spec(params, DOMAIN, ["neg", "pos"])).success  # neutral: declared only


def test_eval_split_with_an_unknown_label_still_fails(tmp_path):
    params = make_project(tmp_path, new_labels=("neutral",))
    frame = _pairs(EVAL + [("it is a shirt", "maybe")])
    outcome = validate_frame(frame, eval_spec(params, DOMAIN, ["neg", "pos"]))
    assert outcome.failures == ["label: 1 values not in allowed set ['neg', 'neutral', 'pos'] (e.g. 'maybe')"]


def test_domain_with_a_one_row_new_label_validates(tmp_path):
    """A declared new label with one labelled row, merged into the pool and absent from the evaluation split."""
    params = make_project(tmp_path, k=4, new_labels=("neutral",))
    adapt = _pairs(ADAPT + [("it came on a tuesday", "neutral")])
    outcomes = validate_domain(params, DOMAIN, adapt, _pairs(EVAL), pd.DataFrame(columns=["text", "label"]))
    assert set(outcomes) == {"adapt", "eval"}
    assert all(o.success for o in outcomes.values()), {k: o.failures for k, o in outcomes.items()}


def test_declared_new_labels_join_the_batch_label_set(tmp_path):
    params = make_project(tmp_path, new_labels=("neutral",))
    frame = _pairs(ADAPT + [("it came on a tuesday", "neutral"), ("the box was brown", "neutral")])
    assert validate_frame(frame, batch_spec(params, DOMAIN, ["neg", "pos"])).success


def test_each_meta_source_is_its_own_suite(shop):
    _, params = shop
    pool = pd.DataFrame({"text": ["good a", "good b", "bad a", "bad b", "lonely"],
                         "label": ["good", "good", "bad", "bad", "odd"], "source": ["cr"] * 4 + ["yelp"]})
    outcomes = validate_domain(params, DOMAIN, _pairs(ADAPT), _pairs(EVAL), pool)
    assert set(outcomes) == {"adapt", "eval", "meta_source.cr", "meta_source.yelp"}
    assert outcomes["meta_source.cr"].success and outcomes["adapt"].success and outcomes["eval"].success
    assert outcomes["meta_source.yelp"].name == "metaadapt.shop.meta_source.yelp"
    assert outcomes["meta_source.yelp"].failures == ["label [pandas check]: 1 label(s) with fewer than 2 rows: 'odd'=1"]


def test_augmented_copies_are_not_counted_as_duplicates(shop):
    _, params = shop
    originals = pd.DataFrame({"text": ["good a", "good b", "bad a", "bad b"], "label": ["good", "good", "bad", "bad"]})
    pool = pd.concat([originals.assign(augmented=False), originals.assign(augmented=True)]).assign(source="cr")
    outcomes = validate_domain(params, DOMAIN, _pairs(ADAPT), _pairs(EVAL), pool)
    assert outcomes["meta_source.cr"].success
    assert outcomes["meta_source.cr"].statistics["evaluated_expectations"] >= 7
    doubled = validate_domain(params, DOMAIN, _pairs(ADAPT), _pairs(EVAL), pool.drop(columns="augmented"))
    assert any("duplicate share 0.50" in w for w in doubled["meta_source.cr"].warnings)  # reported, not refused
    assert doubled["meta_source.cr"].success


def test_stored_payload_clips_huge_texts():
    df = _frame()
    df.loc[0, "text"] = "y" * 100_000
    payload = json.dumps(outcome_payload(_validate(df)))
    assert "[100000 chars]" in payload and len(payload) < 20_000


def test_data_docs_are_built_offline_and_replaced(tmp_path):
    """One self-contained page per domain: every suite, a badge per expectation, no external asset, no script."""
    from components.data_docs import write_data_docs

    spec = SuiteSpec(domain="docs", role="adapt", allowed_labels=tuple(LABELS), min_rows_per_label=2,
                     max_text_chars=60, require_every_label=True, banned_text_keys=text_keys([f"e{i}" for i in range(50)]))
    outcome = validate_frame(_frame(), spec)
    assert outcome.success
    (tmp_path / "docs" / "stale.html").parent.mkdir()
    (tmp_path / "docs" / "stale.html").write_text("old run")
    index = write_data_docs(tmp_path / "docs", "docs", {"adapt": outcome})
    page = index.read_text(encoding="utf-8")
    assert index == (tmp_path / "docs" / "index.html").resolve() and not (tmp_path / "docs" / "stale.html").exists()
    assert "metaadapt.docs.adapt" in page and page.count("✔ PASS") == len(outcome.result_json["results"]) + 2
    assert "50 hashes of the evaluation split's texts (not listed)" in page   # not 50 hashes
    assert "<script" not in page and "http://" not in page and "https://" not in page


def test_duplicates_in_a_data_set_warn_and_leakage_still_fails():
    """A source's own repeated texts are reported as a warning; an evaluation text in it is still refused."""
    frame = _frame()
    doubled = pd.concat([frame, frame], ignore_index=True)
    spec = SuiteSpec(domain="d", role="meta_source.x", allowed_labels=None, min_rows_per_label=1, max_text_chars=60,
                     max_duplicate_fraction=0.1, duplicates_warn_only=True)
    outcome = validate_frame(doubled, spec)
    assert outcome.success and outcome.failures == []
    assert outcome.warnings == ["text: duplicate share 0.50 exceeds maximum 0.10 (unique share 0.50, expected >= 0.90)"]
    leaking = SuiteSpec(**{**spec.__dict__, "banned_text_keys": text_keys([frame["text"][0]])})
    assert not validate_frame(doubled, leaking).success


def _prepared_domain(root, adapt_rows, eval_rows):
    prepared = root / "data" / "prepared" / DOMAIN
    _pairs(adapt_rows).to_parquet(prepared / "adapt.parquet", index=False)
    _pairs(eval_rows).to_parquet(prepared / "eval.parquet", index=False)
    pool = pd.DataFrame({"text": ["good a", "good b", "bad a", "bad b"], "label": ["good", "good", "bad", "bad"],
                         "source": ["cr"] * 4, "augmented": [False] * 4, "origin": [-1] * 4})
    pool.to_parquet(prepared / "meta_pool.parquet", index=False)


def test_validate_stage_failure_writes_result_and_docs_and_touches_nothing_else(shop):
    from components import stages

    root, params = shop
    _prepared_domain(root, ADAPT + [EVAL[0]], EVAL)  # one evaluation text leaked into the adaptation pool
    before = tree_digest(root / "data" / "prepared", root / "models")
    with pytest.raises(DataValidationError, match=r"(?s)metaadapt\.shop\.adapt.*leakage"):
        stages.validate(params, DOMAIN, root)
    report = json.loads((root / "reports" / "validation" / f"{DOMAIN}.json").read_text())
    assert report["success"] is False and report["suites"]["meta_source.cr"]["success"] is True
    assert report["suites"]["adapt"]["suite"] == "metaadapt.shop.adapt" and not report["suites"]["adapt"]["success"]
    assert report["data_docs"] == "reports/data_docs/shop/index.html"
    assert (root / report["data_docs"]).is_file()
    assert tree_digest(root / "data" / "prepared", root / "models") == before

    assert "[shop](data_docs/shop/index.html)" in stages.render_data_docs_links(params, root)  # summary.md's link


def test_validate_stage_passes_on_clean_tables(shop):
    from components import stages

    root, params = shop
    _prepared_domain(root, ADAPT, EVAL)
    summary = stages.validate(params, DOMAIN, root)
    assert set(summary) == {"adapt", "eval", "meta_pool_leakage", "meta_source.cr"} and all(s["success"] for s in summary.values())


def _with_descriptions(params, descriptions: dict[str, str]):
    domain = params.domains[DOMAIN].model_copy(update={"label_descriptions": descriptions})
    return params.model_copy(update={"domains": {**params.domains, DOMAIN: domain}})


def test_label_description_for_an_unknown_label_fails_the_adaptation_pool(tmp_path):
    """A typo in a label_descriptions key (`negtive`) was ignored silently; labels are known from the pool, so the
    adapt suite names the key and the known labels."""
    params = _with_descriptions(make_project(tmp_path, new_labels=("neutral",)),
                                {"negtive": "bad news", "pos": "good news", "neutral": "no news"})
    outcomes = validate_domain(params, DOMAIN, _pairs(ADAPT), _pairs(EVAL), pd.DataFrame(columns=["text", "label"]))
    adapt = outcomes["adapt"]
    assert not adapt.success and outcomes["eval"].success
    assert adapt.failed_checks == ["label_descriptions [params check]"]
    assert adapt.failures == [
        "label_descriptions [params check]: domains.shop.label_descriptions has key(s) ['negtive'] that are not "
        "labels of the domain; known labels: ['neg', 'neutral', 'pos'] (the adaptation pool's and "
        "domains.shop.new_labels); fix the key's spelling in params.yaml"]
    assert adapt.statistics["pandas_checks_unsuccessful"] == 1


def test_label_descriptions_of_pool_and_new_labels_pass(tmp_path):
    params = _with_descriptions(make_project(tmp_path, new_labels=("neutral",)),
                                {"neg": "bad news", "pos": "good news", "neutral": "no news"})
    outcomes = validate_domain(params, DOMAIN, _pairs(ADAPT), _pairs(EVAL), pd.DataFrame(columns=["text", "label"]))
    assert all(o.success for o in outcomes.values()), {k: o.failures for k, o in outcomes.items()}
