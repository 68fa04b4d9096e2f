"""components.quarantine end to end: accept a good batch, quarantine a bad one untouched, never lose a file."""
from __future__ import annotations

import errno
import io
import hashlib
import json
import re
import shutil

import pandas as pd
import pytest

from bad_inputs.tiny_domain import DOMAIN, HERE, make_project, tree_digest
from components import quarantine as q
from components.data import DataError
from components.quarantine import BatchRejected, accept_batch

GOOD = "text,label\nthe fabric feels lovely,pos\na perfect fit for me,pos\nthe zip broke on day one,neg\n" \
       "the colour faded after a wash,neg\n"


def _batch(root, name="batch.csv", content=GOOD):
    path = root / "data" / "incoming" / DOMAIN / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content, encoding="utf-8")
    return path


def test_good_batch_is_returned_and_left_in_place(tmp_path):
    params = make_project(tmp_path)
    batch = _batch(tmp_path, content=GOOD.replace("a perfect fit for me", "  a perfect fit for me  "))
    frame = accept_batch(batch, DOMAIN, params, tmp_path)
    assert list(frame.columns) == ["text", "label"]
    assert frame["text"].tolist()[1] == "a perfect fit for me"  # stripped
    assert sorted(frame["label"].unique()) == ["neg", "pos"]
    assert batch.is_file() and not (tmp_path / "data" / "quarantine").exists()


def test_rejected_batch_is_moved_byte_identical_with_result_and_readme(tmp_path):
    params = make_project(tmp_path)
    content = GOOD + "x" * 5000 + ",pos\n"  # one text over data.max_text_chars
    batch = _batch(tmp_path, content=content)
    digest = hashlib.sha256(batch.read_bytes()).hexdigest()
    before = tree_digest(tmp_path / "data" / "prepared", tmp_path / "models")

    with pytest.raises(BatchRejected) as rejected:
        accept_batch(batch, DOMAIN, params, tmp_path)

    target = rejected.value.quarantine_dir
    assert re.fullmatch(r"\d{8}T\d{6}Z", target.name) and target.parent == tmp_path / "data" / "quarantine" / DOMAIN
    assert sorted(p.name for p in target.iterdir()) == ["README.txt", "batch.csv", "validation.json"]
    assert hashlib.sha256((target / "batch.csv").read_bytes()).hexdigest() == digest and not batch.exists()
    stored = json.loads((target / "validation.json").read_text())
    assert stored["sha256"] == digest and stored["original_path"] == str(batch) and stored["domain"] == DOMAIN
    assert stored["name"] == "metaadapt.shop.batch" and stored["failed_checks"] == ["expect_column_value_lengths_to_be_between"]
    assert stored["example_rows"] == [4]
    assert "[5000 chars]" in json.dumps(stored) and len(json.dumps(stored)) < 20_000  # long texts are clipped
    assert rejected.value.failures == stored["failures"]
    assert "row 4: text='xxxx" in str(rejected.value)
    assert tree_digest(tmp_path / "data" / "prepared", tmp_path / "models") == before


def test_rejections_in_the_same_second_get_distinct_directories(tmp_path):
    params = make_project(tmp_path)
    targets = []
    for name in ("a.csv", "b.csv", "c.csv"):
        with pytest.raises(BatchRejected) as rejected:
            accept_batch(_batch(tmp_path, name, content="text,label\n"), DOMAIN, params, tmp_path)
        targets.append(rejected.value.quarantine_dir)
    assert len(set(targets)) == 3
    assert all((t / n).is_file() for t, n in zip(targets, ("a.csv", "b.csv", "c.csv")))


def test_new_quarantine_dir_adds_a_suffix_when_the_second_is_taken(tmp_path, monkeypatch):
    monkeypatch.setattr(q.time, "gmtime", lambda *a: pd.Timestamp("2026-01-02T03:04:05").timetuple())
    first, second = q.new_quarantine_dir(tmp_path), q.new_quarantine_dir(tmp_path)
    assert (first.name, second.name) == ("20260102T030405Z", "20260102T030405Z-2")


def test_declared_new_label_is_accepted(tmp_path):
    params = make_project(tmp_path, new_labels=("neutral",))
    frame = accept_batch(_batch(tmp_path, content=(HERE / "unknown_label.csv").read_text()), DOMAIN, params, tmp_path)
    assert "neutral" in set(frame["label"])


def test_known_labels_without_prepared_data_come_from_the_data_set(tmp_path, no_mirror_env):
    params = make_project(tmp_path)
    shutil.rmtree(tmp_path / "data" / "prepared")
    assert q.known_labels(DOMAIN, params, tmp_path) == ["neg", "pos"]
    batch = _batch(tmp_path, content=GOOD.replace(",pos", ",positive"))
    with pytest.raises(BatchRejected, match=r"values not in allowed set \['neg', 'pos'\] \(e\.g\. 'positive'\)"):
        accept_batch(batch, DOMAIN, params, tmp_path)


def test_missing_file_and_unknown_domain_move_nothing(tmp_path):
    params = make_project(tmp_path)
    with pytest.raises(DataError, match="file not found"):
        accept_batch(tmp_path / "nope.csv", DOMAIN, params, tmp_path)
    batch = _batch(tmp_path, content="text,label\n")
    with pytest.raises(ValueError, match="unknown domain 'other'"):
        accept_batch(batch, "other", params, tmp_path)
    assert batch.is_file() and not (tmp_path / "data" / "quarantine").exists()


def test_move_across_filesystems_copies_verifies_then_deletes(tmp_path, monkeypatch):
    """os.rename fails with EXDEV across mounts; the fallback must end with exactly one identical copy."""
    src, dst = tmp_path / "src.csv", tmp_path / "q" / "src.csv"
    dst.parent.mkdir()
    src.write_bytes(b"text,label\n\xe2\x82\xac,pos\n" * 1000)
    data = src.read_bytes()

    def cross_device(a, b):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(q.os, "rename", cross_device)
    assert q.move_file(src, dst) == dst
    assert dst.read_bytes() == data and not src.exists()


def test_failed_copy_verification_keeps_the_original(tmp_path, monkeypatch):
    src, dst = tmp_path / "src.csv", tmp_path / "q" / "src.csv"
    dst.parent.mkdir()
    src.write_bytes(b"text,label\nfine,pos\n")
    monkeypatch.setattr(q.os, "rename", lambda a, b: (_ for _ in ()).throw(OSError(errno.EXDEV, "cross-device")))
    monkeypatch.setattr(q.shutil, "copyfile", lambda a, b: open(b, "wb").write(b"truncated"))
    with pytest.raises(OSError, match="does not match the original; the original was kept"):
        q.move_file(src, dst)
    assert src.read_bytes() == b"text,label\nfine,pos\n" and not dst.exists()


def test_move_never_overwrites(tmp_path):
    src, dst = tmp_path / "a.csv", tmp_path / "b.csv"
    src.write_text("one")
    dst.write_text("two")
    with pytest.raises(FileExistsError):
        q.move_file(src, dst)
    assert src.read_text() == "one" and dst.read_text() == "two"


@pytest.mark.parametrize("name, write", [
    ("excel_utf8.csv", lambda p: p.write_bytes(b"\xef\xbb\xbf" + GOOD.encode("utf-8"))),  # spreadsheets add a BOM
    ("batch.tsv", lambda p: p.write_text(GOOD.replace(",", "\t"), encoding="utf-8")),
    ("batch.jsonl", lambda p: pd.read_csv(io.StringIO(GOOD)).to_json(p, orient="records", lines=True)),
    ("batch.parquet", lambda p: pd.read_csv(io.StringIO(GOOD)).to_parquet(p, index=False)),
])
def test_every_supported_format_is_accepted(tmp_path, name, write):
    params = make_project(tmp_path)
    batch = tmp_path / name
    write(batch)
    frame = accept_batch(batch, DOMAIN, params, tmp_path)
    assert frame.to_dict("list") == pd.read_csv(io.StringIO(GOOD)).to_dict("list")
