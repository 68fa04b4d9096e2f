"""Incoming labelled batches: validate with the domain's `batch` suite, or quarantine the file untouched.

`accept_batch` is the one entry point (the orchestration's `metaadapt ingest` / incoming-folder watcher calls it).
A rejected file is moved, byte-identical, to ``<root>/<validation.quarantine_dir>/<domain>/<UTC timestamp>/`` with
``validation.json`` and ``README.txt`` beside it. Nothing else is written: the prepared data, the models and the
registry champion are never touched here, so a bad batch cannot damage what already works.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pandas as pd

from components.config import Params
from components.data import READERS, DataError, _read_checked, file_sha256
from components.validation import (
    LABEL,
    TEXT,
    ValidationOutcome,
    batch_spec,
    outcome_payload,
    read_failure,
    validate_frame,
)

_SEPARATORS = {";": "semicolon", "\t": "tab", "|": "pipe"}
_TEXT_FORMATS = {"csv", "tsv", "jsonl"}
_EXAMPLE_CHARS = 60


class BatchRejected(ValueError):
    """A batch failed validation; str() names the file, each failing expectation, example rows and what to do."""

    def __init__(self, message: str, quarantine_dir: Path, failures: list[str], outcome: ValidationOutcome):
        super().__init__(message)
        self.quarantine_dir = quarantine_dir
        self.failures = failures
        self.outcome = outcome


def accept_batch(file: Path, domain: str, params: Params, root: Path) -> pd.DataFrame:
    """Read + validate a user's labelled batch for `domain` with the incoming-batch suite.

    On success return the clean frame (columns text, label; the file is left where it is).
    On any failure (unreadable, non-UTF-8, empty, wrong columns, unknown label not declared in
    domains.<d>.new_labels, too long, duplicates, rows that equal texts of the
    domain's evaluation split data/prepared/<domain>/eval.parquet when it exists) move the file,
    byte-identical, to <root>/data/quarantine/<domain>/<UTC timestamp>/ with validation.json beside it,
    and raise BatchRejected.
    """
    file, root = Path(file), Path(root)
    if not file.is_file():
        raise DataError(f"{file}: file not found (nothing to validate or quarantine)")
    if params.domain(domain).task == "entities":  # (an unknown domain raises here: nothing is moved)
        from components.ner_validation import accept_token_batch

        return accept_token_batch(file, domain, params, root)
    spec = batch_spec(params, domain, known_labels(domain, params, root), _eval_texts(domain, root))
    frame, outcome = _read_batch(file, spec.name)
    if outcome is None:
        outcome = validate_frame(frame, spec)
    if outcome.success:
        return frame.reset_index(drop=True)
    target = quarantine(file, domain, params, root, outcome)
    message = rejection_message(file, domain, params, outcome, frame, target)
    (target / "README.txt").write_text(message + "\n", encoding="utf-8")
    raise BatchRejected(message, target, outcome.failures, outcome)


# --------------------------------------------------------------------------- reading


def _read_batch(file: Path, name: str) -> tuple[pd.DataFrame | None, ValidationOutcome | None]:
    """The raw table with blank cells as nulls, or a read-check outcome when the bytes cannot be a table."""
    if READERS.get(file.suffix.lower()) in _TEXT_FORMATS:  # parquet is binary; unknown suffixes fail below
        problem = utf8_problem(file)
        if problem:
            return None, read_failure(name, "utf8", problem)
    try:
        frame = _read_checked(file)
    except DataError as error:
        return None, read_failure(name, "read", str(error))
    return _blanks_to_null(frame), None


def utf8_problem(file: Path) -> str | None:
    """Where the bytes stop being UTF-8 (checked on the bytes, before any parser guesses), or None.

    The offset is exact in the whole file (pandas' own UnicodeDecodeError counts from the start of its read
    chunk, so it is wrong past the first chunk). Also used by `metaadapt predict --file`.
    """
    raw = file.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        return f"{file.name} is not valid UTF-8: byte 0x{raw[error.start]:02x} at offset {error.start} (line {line})"
    return None


def _blanks_to_null(frame: pd.DataFrame) -> pd.DataFrame:
    """Strip text/label cells and turn blanks into nulls, so the not-null expectations see them.

    A UTF-8 byte-order mark (spreadsheets' "CSV UTF-8") is dropped from the header, where it would hide `text`.
    """
    frame = frame.copy()
    frame.columns = [str(c).lstrip("\ufeff") for c in frame.columns]
    for column in (TEXT, LABEL):
        if column in frame.columns:
            values = frame[column].map(lambda v: v.strip() if isinstance(v, str) else v)
            frame[column] = values.map(lambda v: None if v is None or v == "" or v is pd.NA else v).astype(object)
    return frame


def known_labels(domain: str, params: Params, root: Path) -> list[str]:
    """The domain's label set: its prepared adaptation pool, else its data set read through components.prepare."""
    adapt = Path(root) / "data" / "prepared" / domain / "adapt.parquet"
    if adapt.is_file():
        return sorted(pd.read_parquet(adapt, columns=[LABEL])[LABEL].unique())
    from components.config import resolve_mirror
    from components.prepare import target_splits

    pool, _, _ = target_splits(domain, params.domain(domain), params, resolve_mirror(params.data, root))
    return sorted(pool[LABEL].unique())


def _eval_texts(domain: str, root: Path) -> list[str]:
    path = Path(root) / "data" / "prepared" / domain / "eval.parquet"
    return pd.read_parquet(path, columns=[TEXT])[TEXT].tolist() if path.is_file() else []


# --------------------------------------------------------------------------- quarantine


def quarantine(file: Path, domain: str, params: Params, root: Path, outcome: ValidationOutcome) -> Path:
    """Move the file into a fresh quarantine directory (never losing it) and store the validation result there."""
    digest = file_sha256(file)
    target = new_quarantine_dir(Path(root) / params.validation.quarantine_dir / domain)
    moved = move_file(file, target / file.name)
    payload = {"domain": domain, "original_path": str(file), "quarantined_file": str(moved), "sha256": digest,
               "bytes": moved.stat().st_size, "rejected_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               **outcome_payload(outcome)}
    (target / "validation.json").write_text(json.dumps(payload, indent=2, default=str), encoding="utf-8")
    return target


def new_quarantine_dir(base: Path) -> Path:
    """<base>/<UTC timestamp>/, with -2, -3, ... when that second is taken (mkdir is the atomic claim)."""
    base.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for n in range(1, 10_000):
        candidate = base / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise RuntimeError(f"{base}: no free quarantine directory for {stamp}")


def move_file(src: Path, dst: Path) -> Path:
    """Rename on one filesystem; across filesystems copy, fsync, verify size + SHA-256, and only then delete."""
    if dst.exists():
        raise FileExistsError(f"{dst} exists; refusing to overwrite it")
    try:
        os.rename(src, dst)
        return dst
    except OSError as error:
        if error.errno != errno.EXDEV:
            raise
    return _copy_verify_delete(src, dst)


def _copy_verify_delete(src: Path, dst: Path) -> Path:
    shutil.copyfile(src, dst)
    with open(dst, "rb") as handle:
        os.fsync(handle.fileno())
    if dst.stat().st_size != src.stat().st_size or file_sha256(dst) != file_sha256(src):
        dst.unlink()
        raise OSError(f"copy of {src} to {dst} does not match the original; the original was kept")
    src.unlink()
    return dst


# --------------------------------------------------------------------------- the message


def rejection_message(file: Path, domain: str, params: Params, outcome: ValidationOutcome,
                      frame: pd.DataFrame | None, target: Path) -> str:
    """File, failing expectations, example rows, where the file is now, and what to do."""
    lines = [f"incoming batch {file} rejected for domain {domain!r} (suite {outcome.name})",
             "failing expectations:", *[f"  - {f}" for f in outcome.failures]]
    examples = _example_rows(frame, outcome.example_rows)
    if examples:
        lines += ["example rows (0-based data rows, header excluded):", *examples]
    lines += [f"the file was moved, byte-identical, to {target}/ (validation.json and README.txt beside it); "
              f"earlier data and the current champion are unchanged",
              "what to do:", *[f"  - {h}" for h in _hints(domain, params, outcome, frame)],
              "  - then drop the fixed file into the domain's incoming folder again"]
    return "\n".join(lines)


def _example_rows(frame: pd.DataFrame | None, rows: list[int]) -> list[str]:
    if frame is None:
        return []
    out = []
    for row in rows:
        if row < len(frame):
            cells = {c: frame[c].iloc[row] for c in (TEXT, LABEL) if c in frame.columns}
            shown = ", ".join(f"{c}={_clip(v)}" for c, v in cells.items())
            out.append(f"  row {row}: {shown}")
    return out


def _clip(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _EXAMPLE_CHARS else f"{text[:_EXAMPLE_CHARS - 3]}... [{len(str(value))} chars]"


def _hints(domain: str, params: Params, outcome: ValidationOutcome, frame: pd.DataFrame | None) -> list[str]:
    checks = params.validation
    hints = {
        "utf8": "re-save the file as UTF-8 (spreadsheets: 'CSV UTF-8')",
        "expect_column_values_to_not_match_regex":
            "remove control characters (NUL and other invisible codes) from the texts, or re-save the file as UTF-8 text",
        "read": "fix the file as the message says: a header row text,label, one row per example, "
                "texts with commas, quotes or newlines inside double quotes (\"\" for a quote)",
        "expect_table_columns_to_match_set": "a batch has exactly two columns, text and label, with that header row",
        "expect_table_row_count_to_be_between": "the file has a header but no rows: add labelled examples",
        "expect_column_values_to_not_be_null": "fill in or delete rows with an empty text or label",
        "expect_column_values_to_be_of_type": "texts must be strings",
        "expect_column_value_lengths_to_be_between":
            f"shorten or split texts longer than data.max_text_chars = {params.data.max_text_chars} characters",
        "expect_column_values_to_be_in_set":
            f"fix misspelt labels; a label that is new on purpose must be declared in params.yaml under "
            f"domains.{domain}.new_labels",
        "expect_column_values_to_not_be_in_set":
            "remove the rows whose text is in the domain's evaluation split (training on them would leak the test set)",
        "expect_column_proportion_of_unique_values_to_be_between":
            f"remove duplicated rows (at most validation.max_duplicate_fraction = {checks.max_duplicate_fraction} "
            f"of the rows may repeat a text)",
        "rows_per_label [pandas check]": "every label a batch carries needs at least one row",
    }
    found = [hints[c] for c in dict.fromkeys(outcome.failed_checks) if c in hints]
    separator = _wrong_separator(frame)
    if separator:
        found.insert(0, f"the header looks {separator}-separated: save the file as comma-separated CSV (.csv) "
                        f"or tab-separated with a .tsv name")
    return found or ["see the failing expectations above"]


def _wrong_separator(frame: pd.DataFrame | None) -> str | None:
    if frame is None or len(frame.columns) != 1:
        return None
    header = str(frame.columns[0])
    return next((name for sep, name in _SEPARATORS.items() if sep in header), None)
