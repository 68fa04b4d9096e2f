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
    content = GOOD + "x" * 100_001 + ",pos\n"  # one text over data.max_text_chars (100,000)
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
    assert "[100001 chars]" in json.dumps(stored) and len(json.dumps(stored)) < 20_000  # long texts are clipped
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


# ------------------------------------------------------------------ flows.incoming: whose files may be moved


def _outside(tmp_path, name="batch.csv", content="text,label\n"):
    """A user's file in a scratch folder beside (not inside) the project directory."""
    scratch = tmp_path / "scratch"
    scratch.mkdir(exist_ok=True)
    path = scratch / name
    path.write_text(content, encoding="utf-8")
    return path


def test_a_symlinked_batch_is_refused_and_the_file_it_points_to_stays(tmp_path):
    from flows.incoming import BatchRefused, accept

    root = tmp_path / "project"
    params = make_project(root)
    target = _outside(tmp_path)
    incoming_link = root / "data" / "incoming" / DOMAIN / "link.csv"
    incoming_link.parent.mkdir(parents=True)
    incoming_link.symlink_to(target)
    cli_link = tmp_path / "link.csv"
    cli_link.symlink_to(target)
    for link in (incoming_link, cli_link):
        with pytest.raises(BatchRefused, match="is a symbolic link .*nothing was read or moved"):
            accept(link, DOMAIN, params, root)
        assert link.is_symlink()
    assert target.read_text() == "text,label\n" and not (root / "data" / "quarantine").exists()


def test_a_rejected_batch_from_outside_the_project_is_quarantined_as_a_copy(tmp_path):
    from flows.incoming import accept

    root = tmp_path / "project"
    params = make_project(root)
    original = _outside(tmp_path, content=GOOD + "x" * 100_001 + ",pos\n")
    data = original.read_bytes()
    with pytest.raises(BatchRejected) as rejected:
        accept(original, DOMAIN, params, root)
    assert original.read_bytes() == data  # the user's file is where it was, unchanged
    target = rejected.value.quarantine_dir
    assert (target / "batch.csv").read_bytes() == data
    stored = json.loads((target / "validation.json").read_text())
    assert stored["original_path"] == str(original) and stored["original_left_in_place"] is True
    message = str(rejected.value)
    assert message.startswith(f"incoming batch {original} rejected") and "was left where it is" in message
    assert "was moved" not in message and (target / "README.txt").read_text() == message + "\n"
    assert sorted(p.name for p in (root / "data" / "quarantine").iterdir()) == [DOMAIN]  # no staging left


def test_a_good_batch_from_outside_the_project_is_read_and_left_alone(tmp_path):
    from flows.incoming import accept

    root = tmp_path / "project"
    params = make_project(root)
    original = _outside(tmp_path, content=GOOD)
    frame = accept(original, DOMAIN, params, root)
    assert len(frame) == 4 and original.read_text() == GOOD
    assert not list(root.glob("data/quarantine/*"))  # no staging copy left behind


def test_files_of_the_project_are_still_moved_to_quarantine(tmp_path):
    from flows.incoming import accept

    params = make_project(tmp_path)
    for batch in (_batch(tmp_path, content="text,label\n"), tmp_path / "in_project.csv"):
        batch.write_text("text,label\n")
        with pytest.raises(BatchRejected):
            accept(batch, DOMAIN, params, tmp_path)
        assert not batch.exists()


@pytest.mark.parametrize("name", ["esc\x1b[31m.csv", "new\nline.csv"])
def test_batch_names_with_control_characters_are_refused(tmp_path, name):
    from flows.incoming import BatchRefused, accept

    params = make_project(tmp_path)
    batch = _batch(tmp_path, name=name, content=GOOD)
    with pytest.raises(BatchRefused, match="contains control characters") as refused:
        accept(batch, DOMAIN, params, tmp_path)
    assert "\x1b" not in str(refused.value) and "\n" not in str(refused.value)
    assert batch.is_file() and not (tmp_path / "data" / "quarantine").exists()


def test_the_watcher_lists_links_so_they_are_refused_and_never_archives_one(tmp_path):
    from flows.incoming import _archive, incoming_files

    root = tmp_path / "project"
    params = make_project(root)
    target = _outside(tmp_path, content=GOOD)
    link = root / "data" / "incoming" / DOMAIN / "link.csv"
    link.parent.mkdir(parents=True)
    link.symlink_to(target)
    assert incoming_files(params, root) == [(DOMAIN, link)]
    assert _archive(link, DOMAIN, params, root) is None and link.is_symlink() and target.read_text() == GOOD
