"""Great Expectations suite for entity (token) data: one row per sentence, checked on columns derived from its
words and BIO tags, so GE's own result says which sentences broke which rule.

Expectations (suite ``metaadapt.<domain>.<role>``, built from params.yaml ``entities``):
  - tokens and tags of equal length (``n_tokens`` == ``n_tags``)
  - valid BIO: no ``I-X`` without a ``B-X``/``I-X`` before it, no tag that is not O/B-X/I-X (``bio_errors`` == 0)
  - every tag in the declared set (the adaptation pool's types; ``unknown_tags`` empty) -- eval and batch roles
  - sentence length within ``entities.min_sentence_words`` .. ``max_sentence_words``
  - no empty word and no control character in a word (``bad_words`` == 0)
and, as a pandas check (no GE expectation counts mentions per type), every entity type with at least K mentions in
the adaptation pool. A failure raises DataValidationError with one line per broken rule; an incoming batch that
fails is quarantined like a sentence-label batch (``components.quarantine``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from components.data import DataError, control_chars
from components.entities import bio_errors, mention_counts
from components.validation import SuiteRunner, ValidationOutcome, read_failure

_SHOWN = 3


def derived_columns(frame: pd.DataFrame, allowed_tags: Sequence[str] | None) -> pd.DataFrame:
    """Per-sentence facts the expectations check (the frame's list columns ``tokens``/``tags`` are kept aside)."""
    allowed = set(allowed_tags) if allowed_tags is not None else None
    tokens, tags = frame["tokens"], frame["tags"]
    return pd.DataFrame({
        "n_tokens": tokens.map(len).astype(int),
        "n_tags": tags.map(len).astype(int),
        "bio_errors": tags.map(lambda t: len(bio_errors(t))).astype(int),
        "unknown_tags": tags.map(lambda t: " ".join(sorted({x for x in t if allowed is not None and x not in allowed}))),
        "bad_words": tokens.map(lambda ws: sum(1 for w in ws if not str(w).strip() or control_chars(str(w)))).astype(int),
    })


def expectations(allowed_tags: Sequence[str] | None, min_words: int, max_words: int) -> list[Any]:
    import great_expectations.expectations as gxe

    out = [gxe.ExpectColumnPairValuesToBeEqual(column_A="n_tokens", column_B="n_tags"),
           gxe.ExpectColumnValuesToBeBetween(column="bio_errors", min_value=0, max_value=0),
           gxe.ExpectColumnValuesToBeBetween(column="n_tokens", min_value=min_words, max_value=max_words),
           gxe.ExpectColumnValuesToBeBetween(column="bad_words", min_value=0, max_value=0),
           gxe.ExpectTableRowCountToBeBetween(min_value=1)]
    if allowed_tags is not None:
        out.append(gxe.ExpectColumnValuesToBeInSet(column="unknown_tags", value_set=[""]))
    return out


def validate_token_frame(frame: pd.DataFrame, name: str, allowed_tags: Sequence[str] | None, min_words: int,
                         max_words: int, min_mentions: int = 0, runner: SuiteRunner | None = None) -> ValidationOutcome:
    """Run the token suite on a {tokens, tags} frame; ``min_mentions`` > 0 adds the mentions-per-type check."""
    runner = runner or SuiteRunner()
    derived = derived_columns(frame, allowed_tags)
    suite = runner.add_suite(name, expectations(allowed_tags, min_words, max_words))
    result = runner.run(derived, suite)
    failed = [r for r in result.get("results", []) if not r.get("success")]
    failures = [describe(r["expectation_config"], frame, derived, allowed_tags, min_words, max_words) for r in failed]
    checks = [r["expectation_config"]["type"] for r in failed]
    mention_failure = _mention_check(frame, derived, min_mentions)
    if mention_failure:
        failures.append(mention_failure)
        checks.append("mentions_per_type [pandas check]")
    rows = sorted({int(i) for r in failed for i in r.get("result", {}).get("partial_unexpected_index_list") or []})
    statistics = dict(result.get("statistics", {}))
    statistics["pandas_checks_evaluated"] = 1 if min_mentions else 0
    statistics["pandas_checks_unsuccessful"] = 1 if mention_failure else 0
    return ValidationOutcome(suite.name, bool(result.get("success")) and not mention_failure, failures, statistics,
                             result, checks, rows[:20])


def describe(config: dict, frame: pd.DataFrame, derived: pd.DataFrame, allowed_tags, min_words: int,
             max_words: int) -> str:
    """One line per broken rule: what is wrong, in which sentences (0-based rows), and an example."""
    kind, column = config["type"], config["kwargs"].get("column")
    if kind == "expect_column_pair_values_to_be_equal":
        bad = derived.index[derived["n_tokens"] != derived["n_tags"]]
        r = bad[0]
        return (f"tokens and tags differ in length in {len(bad)} sentence(s) (rows {_rows(bad)}; row {r}: "
                f"{derived.at[r, 'n_tokens']} tokens, {derived.at[r, 'n_tags']} tags): give one tag per token")
    if column == "bio_errors":
        bad = derived.index[derived["bio_errors"] > 0]
        return (f"invalid BIO in {len(bad)} sentence(s) (rows {_rows(bad)}; row {bad[0]}: "
                f"{bio_errors(frame['tags'].iloc[bad[0]])[0]}): use O, B-TYPE, I-TYPE with I- only after its B-")
    if column == "unknown_tags":
        bad = derived.index[derived["unknown_tags"] != ""]
        found = sorted({t for v in derived.loc[bad, "unknown_tags"] for t in v.split()})
        return (f"tags not in the declared set in {len(bad)} sentence(s) (rows {_rows(bad)}): {found[:10]}; "
                f"known: {sorted(allowed_tags)[:12]}{' ...' if len(allowed_tags) > 12 else ''}")
    if column == "n_tokens":
        bad = derived.index[(derived["n_tokens"] < min_words) | (derived["n_tokens"] > max_words)]
        return (f"{len(bad)} sentence(s) outside {min_words}..{max_words} words (rows {_rows(bad)}; row {bad[0]} has "
                f"{derived.at[bad[0], 'n_tokens']}): split long sentences (entities.max_sentence_words)")
    if column == "bad_words":
        bad = derived.index[derived["bad_words"] > 0]
        return f"empty words or control characters in {len(bad)} sentence(s) (rows {_rows(bad)})"
    if kind == "expect_table_row_count_to_be_between":
        return "no sentences"
    return f"{kind} failed on {column}"


def _rows(index) -> str:
    shown = ", ".join(str(int(i)) for i in list(index)[:_SHOWN])
    return shown + (f", ... ({len(index)} in all)" if len(index) > _SHOWN else "")


def _mention_check(frame: pd.DataFrame, derived: pd.DataFrame, min_mentions: int) -> str | None:
    """Every type needs ``min_mentions`` mentions (a K-shot support); only sentences that pass the BIO rules count."""
    if min_mentions <= 0:
        return None
    usable = frame["tags"][(derived["bio_errors"] == 0) & (derived["n_tokens"] == derived["n_tags"])]
    counts = mention_counts(usable)
    short = {t: c for t, c in sorted(counts.items()) if c < min_mentions}
    if not counts:
        return "[pandas check] no entity mention at all: an entity domain needs labelled mentions"
    if short:
        listed = ", ".join(f"{t} has {c}" for t, c in list(short.items())[:10])
        return (f"[pandas check] too few mentions for a {min_mentions}-shot support: {listed}"
                f"{' ...' if len(short) > 10 else ''}; label more sentences or lower the domain's k")
    return None


def read_token_failure(name: str, error: DataError) -> ValidationOutcome:
    """An unreadable token file, reported like a failed expectation (as components.validation does for CSVs)."""
    return read_failure(name, "read_token_file", str(error))


def validate_token_file(path: Path, name: str, allowed_tags, min_words: int, max_words: int, min_mentions: int = 0,
                        tokens_column: str = "tokens", tags_column: str = "tags") -> tuple[pd.DataFrame | None,
                                                                                         ValidationOutcome]:
    """Read and validate a token file; an unreadable file gives a failed outcome instead of a frame."""
    from components.entities import read_token_file

    try:
        frame = read_token_file(path, tokens_column, tags_column)
    except DataError as error:
        return None, read_token_failure(name, error)
    return frame, validate_token_frame(frame, name, allowed_tags, min_words, max_words, min_mentions)


def accept_token_batch(file: Path, domain: str, params: Any, root: Path) -> pd.DataFrame:
    """An incoming batch of labelled sentences for an entity domain: read + token suite (tags the domain's
    adaptation pool knows); a bad or unreadable file is moved, byte-identical, to the quarantine folder with
    validation.json and README.txt beside it, and BatchRejected is raised (as components.quarantine does)."""
    from components.quarantine import BatchRejected, quarantine

    file, root = Path(file), Path(root)
    if not file.is_file():
        raise DataError(f"{file}: file not found (nothing to validate or quarantine)")
    known = _known_tags(root, domain)
    config = params.entities
    frame, outcome = validate_token_file(file, f"metaadapt.{domain}.batch", known, config.min_sentence_words,
                                         config.max_sentence_words)
    if outcome.success:
        return frame
    target = quarantine(file, domain, params, root, outcome)
    message = "\n".join([f"incoming token batch {file} rejected for domain {domain!r} (suite {outcome.name})",
                         *[f"  - {f}" for f in outcome.failures],
                         f"the file was moved, byte-identical, to {target}/; earlier data and the champion are "
                         f"unchanged. Fix the sentences and hand the file over again"])
    (target / "README.txt").write_text(message + "\n", encoding="utf-8")
    raise BatchRejected(message, target, outcome.failures, outcome)


def _known_tags(root: Path, domain: str) -> list[str] | None:
    """The BIO tags of the domain's prepared adaptation pool (None before the first ingest: any tag set)."""
    pool = Path(root) / "data" / "prepared" / domain / "adapt.parquet"
    if not pool.is_file():
        return None
    tags = pd.read_parquet(pool, columns=["tags"])["tags"]
    return sorted({str(t) for row in tags for t in row} | {"O"})
