"""Hostile names, labels, paths and URIs: refused with a clear error at the edge (config load, data read, logging)."""
from __future__ import annotations

import copy
import re

import pytest
import yaml

from components.config import PROJECT_ROOT, TRACKING_ENV, ConfigError, DatasetSpec, parse_params
from components.data import DataError, load_split, read_labelled_file
from components.safety import (UnsafeInputError, check_label, check_name, csv_safe, has_credentials, redact_secrets,
                               redact_uri, safe_child, text_problem)


@pytest.fixture(scope="module")
def raw_params() -> dict:
    return yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", ["finance_sentiment", "banking77", "a", "v1.2-b_c", "A" * 64])
def test_check_name_accepts_plain_names(name):
    assert check_name("domain", name) == name


@pytest.mark.parametrize("name", ["..", "../x", "a/b", "a\\b", "/etc", "", ".hidden", "-x", "a..b", "A" * 65,
                                  "a\nb", "a b", "ü", "con\x00"])
def test_check_name_refuses_traversal_and_odd_characters(name):
    with pytest.raises(UnsafeInputError, match=r"domain name .* is not allowed: use 1-64 letters"):
        check_name("domain", name)


def test_check_name_refuses_non_strings():
    with pytest.raises(UnsafeInputError, match="must be a string, got int"):
        check_name("data set", 7)


def test_check_label_strips_and_bounds():
    assert check_label("  card_arrival ") == "card_arrival"
    assert check_label("très bien 👍") == "très bien 👍"
    for bad, message in [("red\x1b[31m", r"control characters \['\\\\x1b'\]"), ("a\nb", "control characters"),
                         ("a\u202eb", "control characters"), ("   ", "is empty"), ("x" * 201, "201 characters")]:
        with pytest.raises(UnsafeInputError, match=message):
            check_label(bad)


def test_safe_child_stays_inside_base(tmp_path):
    base = tmp_path / "mirror"
    (base / "sub").mkdir(parents=True)
    assert safe_child(base, "sub/file.csv") == (base / "sub" / "file.csv").resolve()
    for bad, message in [("../x.csv", r"contains '\.\.'"), ("sub/../../x", r"contains '\.\.'"),
                         ("/etc/passwd", "not absolute"), ("~/x", "not absolute"), ("", "empty"),
                         ("a\x00b", "control characters")]:
        with pytest.raises(UnsafeInputError, match=message):
            safe_child(base, bad)


def test_safe_child_refuses_a_symlink_escaping_base(tmp_path):
    base, outside = tmp_path / "mirror", tmp_path / "secret.csv"
    base.mkdir()
    outside.write_text("text,label\nx,y\n")
    (base / "link.csv").symlink_to(outside)
    (base / "inner.csv").symlink_to(base / "real.csv")
    with pytest.raises(UnsafeInputError, match="outside .* symlink"):
        safe_child(base, "link.csv")
    assert safe_child(base, "inner.csv") == (base / "real.csv").resolve()


# ----------------------------------------------------------------------------------------- config wiring


def _with(raw: dict, **edits) -> dict:
    out = copy.deepcopy(raw)
    for dotted, value in edits.items():
        node = out
        *parents, last = dotted.split("/")
        for key in parents:
            node = node[key]
        node[last] = value
    return out


@pytest.mark.parametrize("evil", ["../../tmp/evil", "/abs", "a/b", "x\ny"])
def test_config_refuses_unsafe_domain_names(raw_params, evil):
    raw = _with(raw_params)
    raw["domains"][evil] = raw["domains"]["customer_intent"]
    with pytest.raises(ConfigError, match=r"domain name .* is not allowed"):
        parse_params(raw)


def test_config_refuses_unsafe_dataset_names_and_files(raw_params):
    raw = _with(raw_params)
    raw["datasets"]["../up"] = {"files": {"all": "all.csv"}}
    with pytest.raises(ConfigError, match=r"data set name '\.\./up' is not allowed"):
        parse_params(raw)
    with pytest.raises(ConfigError, match=r"path '\.\./\.\./etc/passwd' contains '\.\.'"):
        parse_params(_with(raw_params, **{"datasets/snips/files": {"train": "../../etc/passwd"}}))
    with pytest.raises(ConfigError, match=r"split name '\.\.' is not allowed"):
        parse_params(_with(raw_params, **{"datasets/snips/files": {"..": "train.csv"}}))
    # An absolute path is the documented way to point at the user's own file: allowed.
    assert parse_params(_with(raw_params, **{"datasets/snips/files": {"train": "/data/t.csv", "validation": "v.csv"}}))


def test_config_refuses_control_characters_in_labels(raw_params):
    raw = _with(raw_params, **{"domains/finance_sentiment/label_descriptions": {"neg\x1b[2J": "bad news"}})
    with pytest.raises(ConfigError, match=r"label_descriptions label 'neg\\x1b\[2J' contains control characters"):
        parse_params(raw)


def test_config_refuses_credentials_and_takes_them_from_the_environment(raw_params, monkeypatch):
    monkeypatch.delenv(TRACKING_ENV, raising=False)
    secret = "https://alice:hunter2@mlflow.example.com"
    with pytest.raises(ConfigError, match=r"carries credentials.*METAADAPT_TRACKING_URI") as info:
        parse_params(_with(raw_params, **{"registry/tracking_uri": secret}))
    assert "hunter2" not in str(info.value) and "mlflow.example.com" in str(info.value)
    with pytest.raises(ConfigError, match="carries credentials"):
        parse_params(_with(raw_params, **{"datasets/snips/url": {"train": "https://h/x.csv?token=abc"}}))
    monkeypatch.setenv(TRACKING_ENV, secret)
    assert parse_params(raw_params).registry.tracking_uri == secret
    assert parse_params(_with(raw_params, **{"registry/tracking_uri": "http://127.0.0.1:5000"})).registry.tracking_uri \
        == secret


# ----------------------------------------------------------------------------------------- data wiring


def test_mirror_symlink_out_of_the_data_set_folder_is_refused(tmp_path):
    mirror, outside = tmp_path / "mirror", tmp_path / "private.csv"
    (mirror / "toy").mkdir(parents=True)
    outside.write_text("text,label\nsecret,x\nother,y\n")
    (mirror / "toy" / "all.csv").symlink_to(outside)
    with pytest.raises(DataError, match=r"data set 'toy' split 'all': path 'all.csv' resolves to .*outside"):
        load_split("toy", DatasetSpec(files={"all": "all.csv"}), "all", mirror)


def test_labels_with_control_characters_are_refused_naming_the_file(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text('text,label\nfine,ok\nhello,"evil\x1b]0;title\x07"\n', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.csv: label .* contains control characters"):
        read_labelled_file(path)


# ----------------------------------------------------------------------------------------- redaction


def test_redaction_strips_userinfo_and_secret_query_values():
    assert redact_uri("https://u:p@host:5000/x?token=abc&a=1") == "https://host:5000/x?token=***&a=1"
    assert redact_uri("sqlite:////tmp/mlruns/mlflow.db") == "sqlite:////tmp/mlruns/mlflow.db"
    assert redact_secrets("runs at http://bob:pw@h/api and s3://b/k?X-Amz-Signature=zz") == \
        "runs at http://h/api and s3://b/k?X-Amz-Signature=***"
    assert redact_secrets(0.5) == 0.5
    assert has_credentials("https://u:p@h") and not has_credentials("https://h/x") and not has_credentials("sqlite:///a")


# ----------------------------------------------------------------------------------------- params.yaml


SECRET_KEY = re.compile(r"(^|_)(password|passwd|secret|token|api_?key|access_?key|credentials?|private_?key)$", re.I)
SECRET_VALUE = re.compile(r"(AKIA[0-9A-Z]{16}|hf_[A-Za-z0-9]{30,}|gh[pousr]_[A-Za-z0-9]{30,}|sk-[A-Za-z0-9]{20,}|"
                          r"xox[abp]-[A-Za-z0-9-]{10,}|-----BEGIN [A-Z ]*PRIVATE KEY-----|[a-z][a-z0-9+.-]*://[^/\s@:]+:[^/\s@]+@)")


def _walk(node, prefix=""):
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, f"{prefix}{key}.")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{prefix}{i}.")
    else:
        yield prefix.rstrip("."), node


def credential_findings(text: str) -> list[str]:
    """Credential-like keys with a value, and credential-looking strings anywhere (comments included)."""
    found = [f"{key} = {value!r}" for key, value in _walk(yaml.safe_load(text))
             if isinstance(value, str) and value and SECRET_KEY.search(key.rsplit(".", 1)[-1])]
    found += [f"line {n}: {SECRET_VALUE.search(line).group(0)[:12]}..." for n, line in enumerate(text.splitlines(), 1)
              if SECRET_VALUE.search(line)]
    return found


def test_params_yaml_holds_no_credentials():
    assert credential_findings((PROJECT_ROOT / "params.yaml").read_text(encoding="utf-8")) == []


@pytest.mark.parametrize("text", ["registry: {tracking_uri: 'https://bob:pw@mlflow.example.com'}",
                                  "hub: {api_token: abc}", "x: hf_abcdefghijklmnopqrstuvwxyz0123456789",
                                  "# aws AKIAABCDEFGHIJKLMNOP in a comment"])
def test_the_credential_scan_finds_planted_secrets(text):
    assert credential_findings(text)


def test_stage_paths_refuse_a_traversing_domain(tmp_path):
    from components.stages import StagePaths

    assert StagePaths(tmp_path, "finance_sentiment").models == tmp_path / "models" / "finance_sentiment"
    with pytest.raises(UnsafeInputError, match=r"domain name '\.\./\.\./etc' is not allowed"):
        StagePaths(tmp_path, "../../etc")


@pytest.mark.parametrize("cell", ["=cmd|' /C calc'!A0", "+1+1", "-2+3", "@SUM(A1:A2)", "\t=1", "\r=1"])
def test_csv_safe_quotes_cells_a_spreadsheet_would_run_as_formulas(cell):
    assert csv_safe(cell) == "'" + cell


def test_csv_safe_leaves_other_values_and_escapes_whole_frames():
    import pandas as pd

    for value in ["plain text", "a=b", "", " =x", 1.5, -3, None]:
        assert csv_safe(value) == value
    frame = pd.DataFrame({"text": ["=1+1", "ok"], "label": ["-neg", "pos"], "score": [-0.5, 0.5], "=bad": ["@x", "y"]})
    safe = csv_safe(frame)
    assert safe.to_dict(orient="list") == {"text": ["'=1+1", "ok"], "label": ["'-neg", "pos"], "score": [-0.5, 0.5],
                                           "'=bad": ["'@x", "y"]}
    assert frame["text"].tolist() == ["=1+1", "ok"]          # the caller's frame is not modified


@pytest.mark.parametrize("value, reason", [
    ("ok", None), ("  a ", None), ("é ü 中", None),
    ("", "empty text"), (" \t\n", "empty text"), (None, "missing text"), (float("nan"), "missing text"),
    (b"\xff", "bytes, not text"), (3, "not a string (got int)"),
    ("ab\udcff", "not valid UTF-8 text: lone surrogate '\\udcff' at character 2")])
def test_text_problem_names_why_a_text_cannot_be_scored(value, reason):
    problem = text_problem(value)
    assert problem == reason if reason is None else problem.startswith(reason)
