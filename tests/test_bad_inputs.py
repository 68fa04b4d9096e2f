"""The bad-input corpus: each kind of broken batch gets its own clear error, and nothing is lost.

Table-driven: one row per kind (a committed fixture under tests/bad_inputs/, or a generated one) -> the
message fragments the user must see. Each case asserts the message, that the original bytes now sit in
data/quarantine/<domain>/<timestamp>/ with validation.json beside them, and that the prepared data and the
registered model directory of the project are byte-for-byte unchanged.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from bad_inputs.tiny_domain import DOMAIN, HERE, make_project, tree_digest
from components.quarantine import BatchRejected, accept_batch


def _huge_text(path: Path) -> None:
    """A 1 MB text (generated here, not committed): far over data.max_text_chars."""
    path.write_text("text,label\n" + "x" * 1_000_000 + ",pos\nthe fabric feels lovely,pos\n"
                    "the zip broke on day one,neg\nthe colour faded after a wash,neg\n", encoding="utf-8")


def _spreadsheet(path: Path) -> None:
    """An Excel workbook saved where a CSV was expected (a zip archive, so not UTF-8 text either)."""
    path.write_bytes(b"PK\x03\x04" + bytes(range(256)))


CASES = [
    # (kind, fixture or generator, regex fragments that must all be in the message)
    ("empty file", "empty.csv", [r"file \[read\]: .*empty\.csv: file is empty"]),
    ("header only", "header_only.csv", [r"table: expected at least 1 rows, found 0", r"add labelled examples"]),
    ("missing column", "missing_column.csv",
     [r"expected columns \['label', 'text'\], found \['text'\]; missing \['label'\]", r"exactly two columns"]),
    ("extra columns", "extra_columns.csv", [r"unexpected \['customer_id'\]", r"exactly two columns"]),
    ("wrong delimiter", "wrong_delimiter.csv",
     [r"found \['text;label'\]", r"header looks semicolon-separated: save the file as comma-separated"]),
    ("non-UTF-8 bytes", "non_utf8.csv",
     [r"file \[utf8\]: non_utf8\.csv is not valid UTF-8: byte 0xe9 at offset 46 \(line 3\)", r"re-save the file as UTF-8"]),
    ("null labels", "null_labels.csv",
     [r"label: 2 null or blank values, expected none \(rows e\.g\. \[4, 5\]\)", r"row 4: text='the collar is fine"]),
    ("empty text", "empty_text.csv", [r"text: 1 null or blank values", r"row 4: text=None, label='pos'"]),
    ("unknown label", "unknown_label.csv",
     [r"label: 2 values not in allowed set \['neg', 'pos'\] \(e\.g\. 'neutral'\)", r"domains\.shop\.new_labels"]),
    ("a 1 MB text", _huge_text,
     [r"text: 1 values with length outside \[1, 100000\] chars \(e\.g\. 'xxx.*\[1000000 chars\]\)",
      r"data\.max_text_chars = 100000"]),
    ("duplicated rows", "duplicated_rows.csv",
     [r"text: duplicate share 0\.50 exceeds maximum 0\.10", r"remove duplicated rows"]),
    ("leaked evaluation rows", "leaked_eval_rows.csv",
     [r"text: 1 rows repeat a text of the evaluation split \(leakage\) \(rows e\.g\. \[4\]: 'The  Pocket Is Far Too Small'\)",
      r"would leak the test set"]),
    ("a spreadsheet instead of a CSV", _spreadsheet,
     [r"file \[read\]: .*batch\.xlsx: unsupported file type '\.xlsx'; use one of \['\.csv', '\.json', '\.jsonl', '\.parquet', '\.tsv'\]"]),
    ("unbalanced quote across lines", "broken_quotes.csv",
     [r"malformed csv file: .*EOF inside string", r"inside double quotes"]),
    # the C parser cut texts at NUL: "the zip broke" twice was reported as "duplicate share", the NUL never
    ("NUL bytes in texts", "nul_bytes.csv",
     [r"text: 2 values contain control characters \['U\+0000'\] \(rows e\.g\. \[2, 3\]\)",
      r"row 2: text='the zip broke\\x00 on day one'", r"^(?!.*duplicate share)"]),
    ("texts of only invisible characters", "invisible_text.csv",
     [r"text: 2 null or blank values, expected none \(rows e\.g\. \[1, 3\]\); rows \[1, 3\] hold only invisible",
      r"row 1: text='\\u200b', label='pos'", r"fill in or delete rows with an empty text"]),
]


@pytest.fixture
def project(tmp_path):
    params = make_project(tmp_path)
    return tmp_path, params


@pytest.mark.parametrize("kind, source, fragments", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_rejected_with_a_clear_error_and_nothing_is_lost(project, kind, source, fragments):
    root, params = project
    incoming = root / "data" / "incoming" / DOMAIN
    incoming.mkdir(parents=True)
    batch = incoming / (source if isinstance(source, str) else {_huge_text: "huge_text.csv",
                                                                 _spreadsheet: "batch.xlsx"}[source])
    if isinstance(source, str):
        shutil.copyfile(HERE / source, batch)
    else:
        source(batch)
    original = batch.read_bytes()
    before = tree_digest(root / "data" / "prepared", root / "models")

    with pytest.raises(BatchRejected) as rejected:
        accept_batch(batch, DOMAIN, params, root)

    message = str(rejected.value)
    for fragment in fragments:
        assert re.search(fragment, message, flags=re.DOTALL), f"{kind}: {fragment!r} not in\n{message}"
    assert str(batch) in message and "what to do:" in message
    # nothing lost: the untouched file is in quarantine, the rest of the project is unchanged
    quarantined = rejected.value.quarantine_dir
    assert quarantined.parent == root / "data" / "quarantine" / DOMAIN
    assert not batch.exists()
    assert (quarantined / batch.name).read_bytes() == original
    stored = json.loads((quarantined / "validation.json").read_text(encoding="utf-8"))
    assert stored["success"] is False and stored["failures"] == rejected.value.failures
    assert (quarantined / "README.txt").read_text(encoding="utf-8").strip() == message
    assert tree_digest(root / "data" / "prepared", root / "models") == before


def test_corpus_covers_at_least_twelve_kinds():
    assert len({kind for kind, _, _ in CASES}) >= 12
    committed = {source for _, source, _ in CASES if isinstance(source, str)}
    assert all((HERE / name).is_file() for name in committed)


def test_quoted_newlines_and_quotes_are_accepted(project):
    """A well-formed CSV with newlines, quotes and separators inside quoted texts is not bad input."""
    root, params = project
    batch = root / "embedded.csv"
    shutil.copyfile(HERE / "embedded_newlines_ok.csv", batch)
    frame = accept_batch(batch, DOMAIN, params, root)
    assert frame["text"].tolist()[0] == 'the fabric feels lovely,\nsoft and "warm"'
    assert frame["text"].tolist()[2] == "the zip broke on day one;\nI sent it back"
    assert list(frame.columns) == ["text", "label"] and len(frame) == 4
    assert batch.is_file() and not (root / "data" / "quarantine").exists()


def test_fewer_than_k_rows_for_a_label_is_accepted(project):
    """Every labelled row counts: one `pos` row with K = 2 is merged as it is (adaptation uses what it has)."""
    root, params = project
    batch = root / "few.csv"
    shutil.copyfile(HERE / "fewer_than_k_ok.csv", batch)
    frame = accept_batch(batch, DOMAIN, params, root)
    assert frame["label"].value_counts().to_dict() == {"neg": 3, "pos": 1}
    assert batch.is_file() and not (root / "data" / "quarantine").exists()
