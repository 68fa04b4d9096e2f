"""Reading labelled files: every supported format, and an actionable DataError for every way a file can be wrong."""
from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from components.config import DatasetSpec
from components.data import DataError, control_chars, load_split, read_labelled_file, text_hash, visible_text

ROWS = [{"text": "great phone", "label": "pos"}, {"text": "awful battery", "label": "neg"},
        {"text": "  works fine ", "label": " pos "}]
EXPECTED = [{"text": "great phone", "label": "pos"}, {"text": "awful battery", "label": "neg"},
            {"text": "works fine", "label": "pos"}]


def _write(path, frame: pd.DataFrame):
    suffix = path.suffix
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".tsv":
        frame.to_csv(path, sep="\t", index=False)
    elif suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in frame.to_dict("records")), encoding="utf-8")
    else:
        frame.to_parquet(path, index=False)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".parquet"])
def test_read_each_format(tmp_path, suffix):
    path = _write(tmp_path / f"data{suffix}", pd.DataFrame(ROWS))
    frame = read_labelled_file(path)
    assert list(frame.columns) == ["text", "label"]
    assert frame.to_dict("records") == EXPECTED


def test_custom_columns_integer_labels_and_blank_rows(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"sentence": "up 5%", "y": 1}\n{"sentence": "down", "y": 0}\n{"sentence": " ", "y": 1}\n',
                    encoding="utf-8")
    frame = read_labelled_file(path, text_column="sentence", label_column="y")
    assert frame.to_dict("records") == [{"text": "up 5%", "label": "1"}, {"text": "down", "label": "0"}]


def test_csv_quoted_commas_and_newlines_survive(tmp_path):
    path = tmp_path / "q.csv"
    path.write_text('text,label\n"I love it, really",pos\n"two\nlines",neg\n', encoding="utf-8")
    assert read_labelled_file(path).to_dict("records") == [{"text": "I love it, really", "label": "pos"},
                                                           {"text": "two\nlines", "label": "neg"}]


def test_empty_file(tmp_path):
    path = tmp_path / "empty.csv"
    path.write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.csv: file is empty"):
        read_labelled_file(path)


def test_header_only_file_has_no_rows(tmp_path):
    path = tmp_path / "header.csv"
    path.write_text("text,label\n", encoding="utf-8")
    with pytest.raises(DataError, match="no rows with both a text and a label"):
        read_labelled_file(path)


def test_missing_column_names_it_and_the_fix(tmp_path):
    path = tmp_path / "cols.csv"
    path.write_text("sentence,label\nhello,pos\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"missing column\(s\) \['text'\]; found \['sentence', 'label'\]\. "
                                        r"Set text_column/label_column"):
        read_labelled_file(path)


@pytest.mark.parametrize("suffix, content", [
    (".csv", "text,label\ncafé,pos\n"),
    (".jsonl", '{"text": "café", "label": "pos"}\n'),
])
def test_non_utf8_bytes(tmp_path, suffix, content):
    path = tmp_path / f"latin{suffix}"
    path.write_bytes(content.encode("latin-1"))
    with pytest.raises(DataError, match=r"not valid UTF-8 \(byte \d+\); re-save the file as UTF-8"):
        read_labelled_file(path)


@pytest.mark.parametrize("content, detail", [
    ('text,label\n"hello world,pos\nfine,neg\n', "EOF inside string"),
    ("text,label\nhello,pos\nbad,row,extra\n", "Expected 2 fields in line 3, saw 3"),
])
def test_malformed_csv(tmp_path, content, detail):
    path = tmp_path / "bad.csv"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=rf"bad\.csv: malformed csv file: .*{detail}"):
        read_labelled_file(path)


def test_unquoted_comma_in_every_row_is_malformed_not_silently_truncated(tmp_path):
    path = tmp_path / "commas.csv"
    path.write_text("text,label\nI love it, really,pos\nnot great, sadly,neg\n", encoding="utf-8")
    with pytest.raises(DataError, match="malformed csv file"):
        read_labelled_file(path)


def test_malformed_jsonl(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "a", "label": "pos"\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad\.jsonl: malformed jsonl file"):
        read_labelled_file(path)


def test_corrupt_parquet(tmp_path):
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match=r"bad\.parquet: (malformed|cannot read as) parquet"):
        read_labelled_file(path)


def test_unsupported_suffix(tmp_path):
    path = tmp_path / "data.xlsx"
    path.write_text("text,label\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"unsupported file type '\.xlsx'; use one of \['\.csv', "):
        read_labelled_file(path)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.csv: file not found"):
        read_labelled_file(tmp_path / "nope.csv")


def test_source_file_is_never_modified(tmp_path):
    path = tmp_path / "keep.csv"
    path.write_text("text,label\n  padded  , pos\n,\n", encoding="utf-8")
    before = path.read_bytes()
    read_labelled_file(path)
    assert path.read_bytes() == before


# --------------------------------------------------------------------------------------------- load_split


def _mirror_file(mirror, name, file, rows):
    (mirror / name).mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(mirror / name / file, index=False)


def test_load_split_reads_the_mirror_copy(tmp_path):
    mirror = tmp_path / "mirror"
    _mirror_file(mirror, "toy", "train.csv", [{"text": "from mirror", "label": "a"}])
    spec = DatasetSpec(files={"train": "train.csv"})
    assert load_split("toy", spec, "train", mirror).to_dict("records") == [{"text": "from mirror", "label": "a"}]


def test_load_split_absolute_user_file_wins_over_the_mirror(tmp_path):
    mirror = tmp_path / "mirror"
    _mirror_file(mirror, "toy", "train.csv", [{"text": "from mirror", "label": "a"}])
    user = tmp_path / "mine.csv"
    pd.DataFrame([{"text": "from user", "label": "b"}]).to_csv(user, index=False)
    spec = DatasetSpec(files={"train": str(user)})
    assert load_split("toy", spec, "train", mirror).to_dict("records") == [{"text": "from user", "label": "b"}]
    # An absolute file is never silently replaced by the mirror when it is missing.
    user.unlink()
    with pytest.raises(DataError, match=rf"{re.escape(str(user))}: file not found"):
        load_split("toy", spec, "train", mirror)


def test_load_split_uses_the_datasets_columns(tmp_path):
    mirror = tmp_path / "mirror"
    _mirror_file(mirror, "toy", "all.csv", [{"sentence": "hi", "intent": "greet"}])
    spec = DatasetSpec(files={"all": "all.csv"}, text_column="sentence", label_column="intent")
    assert load_split("toy", spec, "all", mirror).to_dict("records") == [{"text": "hi", "label": "greet"}]


def test_declared_split_without_mirror_copy_or_public_source(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    spec = DatasetSpec(files={"train": "train.csv"})
    with pytest.raises(DataError, match=rf"data set 'toy' split 'train': not found in mirror {re.escape(str(mirror))}"
                                        r", and no public source \(`hub` or `url`\)"):
        load_split("toy", spec, "train", mirror)
    with pytest.raises(DataError, match=r"data set 'toy' split 'train': not found in no data mirror "
                                        r"\(set METAADAPT_DATA_MIRROR\)"):
        load_split("toy", spec, "train", None)


def test_text_hash_normalises_case_and_whitespace():
    assert text_hash("Hello  World") == text_hash(" hello\tworld\n")
    assert text_hash("Hello World") != text_hash("Hello Worlds")
    assert re.fullmatch(r"[0-9a-f]{40}", text_hash("x"))


def test_read_texts_needs_only_a_text_column(tmp_path) -> None:
    from components.data import read_texts

    path = tmp_path / "batch.csv"
    path.write_text("id,text\n1,hello there\n2,\"a, quoted\"\n", encoding="utf-8")
    assert read_texts(path) == ["hello there", "a, quoted"]
    (tmp_path / "bad.csv").write_text("id,body\n1,x\n", encoding="utf-8")
    with pytest.raises(DataError, match="no 'text' column"):
        read_texts(tmp_path / "bad.csv")


@pytest.mark.parametrize("suffix", [".csv", ".tsv"])
def test_nul_bytes_are_kept_not_cut_so_validation_can_refuse_them(tmp_path, suffix):
    """pandas' C parser cut a field at NUL ("abc\\x00def" -> "abc"): texts that became equal looked like duplicates."""
    sep = b"," if suffix == ".csv" else b"\t"
    path = tmp_path / f"nul{suffix}"
    path.write_bytes(b"text" + sep + b"label\nthe zip broke\x00 on day one" + sep + b"neg\n"
                     b"the zip broke\x00 after a week" + sep + b"neg\n\"quoted,\nnul\x00\"" + sep + b"pos\n")
    frame = read_labelled_file(path)
    assert frame["text"].tolist() == ["the zip broke\x00 on day one", "the zip broke\x00 after a week",
                                      "quoted,\nnul\x00"]


def test_nul_bytes_in_the_header_mean_utf16(tmp_path):
    path = tmp_path / "utf16.csv"
    path.write_bytes("text,label\ngreat phone,pos\n".encode("utf-16-le"))  # no BOM: every byte is valid UTF-8
    with pytest.raises(DataError, match=r"utf16\.csv: the header line contains NUL bytes: the file looks UTF-16"):
        read_labelled_file(path)


def test_visible_text_removes_format_characters_and_normalises():
    assert visible_text("\u200b\u2060\ufeff\u200c \u00a0") == ""
    assert visible_text(" a\u200bb ") == "ab"
    assert visible_text("\uff21\uff22") == "AB"  # NFKC: full-width letters
    assert visible_text("\U0001F44D") == "\U0001F44D"


def test_control_chars_lists_each_kind_once():
    assert control_chars("a\x00b\x00\tc\n\r\x7f\x85") == ["U+0000", "U+007F"]   # C1 (U+0085) is allowed
    assert control_chars("tab\tnew\nline\r") == []


def test_texts_of_only_invisible_characters_are_dropped_like_empty_ones(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "\\u200b", "label": "pos"}\n{"text": "fine", "label": "pos"}\n'
                    '{"text": "\\u2060\\ufeff", "label": "neg"}\n{"text": "\\ud83d\\udc4d", "label": "pos"}\n',
                    encoding="utf-8")
    assert read_labelled_file(path)["text"].tolist() == ["fine", "\U0001F44D"]
