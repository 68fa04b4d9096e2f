"""`metaadapt batches` and `metaadapt withdraw` on a tiny DVC project: list the ledger, take one batch back.

A withdrawn batch's file leaves data/batches/<domain>/, its ledger line stays (stamped withdrawn, with the reason),
data/batches is re-versioned with DVC, and the next ingest no longer merges its rows.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from components.batches import (
    HASH_CHARS,
    MIN_PREFIX,
    batch_dir,
    content_hash,
    mark_adapted,
    pending_batches,
    read_ledger,
    store_batch,
)
from flows.cli import app

# Prefect and DVC bind their log handlers to sys.stdout/stderr when first imported; `withdraw` imports both (for
# `dvc add data/batches`). Imported here, they bind to pytest's streams, not to a CliRunner's, which are closed
# once the command returns and would break every later test that logs through them.
import dvc  # noqa: E402, F401, I001
import flows.incoming  # noqa: E402, F401
from tiny_project import make_project, sentences

DOMAIN = "reviews"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A DVC-initialised tiny project (the encoder is never loaded here)."""
    (tmp_path / "project").mkdir()
    return make_project(tmp_path / "project", tmp_path / "no-encoder-needed")


def batch(seed: int, per_label: tuple[int, int] = (3, 2)) -> pd.DataFrame:
    counts = zip(("positive", "negative"), per_label)
    rows = [(text, label) for label, n in counts for text in sentences(label, n, seed)]
    return pd.DataFrame(rows, columns=["text", "label"])


def run(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def two_batches_sharing_a_prefix() -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """Two one-row batches whose hashes start with the same MIN_PREFIX characters (found by search: ≈300 tries)."""
    seen: dict[str, pd.DataFrame] = {}
    for n in range(20_000):
        frame = pd.DataFrame({"text": [f"shared prefix row {n}"], "label": ["positive"]})
        prefix = content_hash(frame)[:MIN_PREFIX]
        if prefix in seen:
            return seen[prefix], frame, prefix
        seen[prefix] = frame
    raise AssertionError("no two hashes share a prefix")  # pragma: no cover


def dvc_tracked_files(root: Path) -> set[str]:
    """The files data/batches.dvc records (the directory listing DVC keeps in its cache)."""
    import yaml

    md5 = yaml.safe_load((root / "data" / "batches.dvc").read_text())["outs"][0]["md5"]
    listing = root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    return {entry["relpath"] for entry in json.loads(listing.read_text())}


def test_batches_lists_the_ledger_as_a_table_and_as_json(project: Path) -> None:
    first = store_batch(batch(1), DOMAIN, "/home/someone/first.csv", project).record
    second = store_batch(batch(2, (1, 4)), DOMAIN, "second.csv", project).record
    mark_adapted(project, DOMAIN, [first.sha256], "run-1")

    table = run("batches", "--domain", DOMAIN, "--root", str(project))
    assert table.exit_code == 0, table.output
    header, *lines = table.stdout.splitlines()
    assert header.split() == ["batch", "source", "rows", "labels", "accepted", "adapted", "withdrawn"]
    assert len(lines) == 2
    assert lines[0].split()[:5] == [first.sha256[:HASH_CHARS], "first.csv", "5", "negative=2", "positive=3"]
    assert lines[1].split()[:5] == [second.sha256[:HASH_CHARS], "second.csv", "5", "negative=4", "positive=1"]
    assert lines[0].split()[-1] == "no" and lines[1].split()[-2:] == ["no", "no"]  # adapted / withdrawn

    listed = json.loads(run("batches", "--domain", DOMAIN, "--root", str(project), "--json").stdout)
    assert [r["sha256"] for r in listed] == [first.sha256, second.sha256]
    assert listed[0]["status"] == "adapted" and listed[0]["flow_run"] == "run-1" and not listed[0]["withdrawn"]
    assert listed[1]["labels"] == {"negative": 4, "positive": 1} and listed[1]["received_at"]


def test_batches_of_an_unknown_domain_or_with_none_yet(project: Path) -> None:
    assert run("batches", "--domain", "nope", "--root", str(project)).exit_code == 2
    empty = run("batches", "--domain", DOMAIN, "--root", str(project))
    assert empty.exit_code == 0 and "no labelled batches yet" in empty.stdout


def test_withdraw_by_prefix_removes_the_file_keeps_the_history_and_versions_it(project: Path) -> None:
    kept = store_batch(batch(1), DOMAIN, "kept.csv", project).record
    gone = store_batch(batch(2), DOMAIN, "gone.csv", project).record
    mark_adapted(project, DOMAIN, [gone.sha256], "run-1")

    result = run("withdraw", "--domain", DOMAIN, "--root", str(project), "--reason", "mislabelled rows",
                 gone.sha256[:8])
    assert result.exit_code == 0, result.output
    assert f"withdrew batch {gone.sha256[:HASH_CHARS]} (gone.csv" in result.stdout
    assert "re-versioned with DVC" in result.stdout and f"metaadapt adapt {DOMAIN}" in result.stdout

    assert not (batch_dir(project, DOMAIN) / gone.file_name).exists()
    assert (batch_dir(project, DOMAIN) / kept.file_name).is_file()
    ledger = {r.sha256: r for r in read_ledger(project, DOMAIN)}
    assert len(ledger) == 2 and ledger[gone.sha256].withdrawn_reason == "mislabelled rows"
    assert ledger[gone.sha256].withdrawn_at and ledger[gone.sha256].status == "adapted"  # history kept
    assert not ledger[kept.sha256].withdrawn
    assert [r.sha256 for r in pending_batches(project, DOMAIN)] == [kept.sha256]
    versioned = dvc_tracked_files(project)
    assert f"{DOMAIN}/{kept.file_name}" in versioned and f"{DOMAIN}/ledger.json" in versioned
    assert f"{DOMAIN}/{gone.file_name}" not in versioned

    listed = json.loads(run("batches", "--domain", DOMAIN, "--root", str(project), "--json").stdout)
    assert [(r["withdrawn"], r["labels"]) for r in listed] == [(False, {"negative": 2, "positive": 3}), (True, None)]
    again = run("withdraw", "--domain", DOMAIN, "--root", str(project), gone.sha256)
    assert again.exit_code == 2 and "already withdrawn" in again.stderr


def test_withdraw_an_ambiguous_prefix_is_an_error_and_withdraws_nothing(project: Path) -> None:
    one, other, prefix = two_batches_sharing_a_prefix()
    hashes = [store_batch(frame, DOMAIN, f"{n}.csv", project).record.sha256 for n, frame in enumerate((one, other))]
    before = (batch_dir(project, DOMAIN) / "ledger.json").read_bytes()

    result = run("withdraw", "--domain", DOMAIN, "--root", str(project), prefix)
    assert result.exit_code == 2
    assert "ambiguous" in result.stderr and all(sha[:HASH_CHARS] in result.stderr for sha in hashes)
    assert (batch_dir(project, DOMAIN) / "ledger.json").read_bytes() == before
    assert len(list(batch_dir(project, DOMAIN).glob("*.parquet"))) == 2
    assert not (project / "data" / "batches.dvc").exists()


def test_withdraw_an_unknown_or_too_short_id_is_an_error(project: Path) -> None:
    stored = store_batch(batch(1), DOMAIN, "one.csv", project).record
    unknown = next(c for c in "0123456789abcdef" * 4 if not stored.sha256.startswith(c)) * 12
    result = run("withdraw", "--domain", DOMAIN, "--root", str(project), unknown)
    assert result.exit_code == 2 and "no batch" in result.stderr
    short = run("withdraw", "--domain", DOMAIN, "--root", str(project), stored.sha256[:MIN_PREFIX - 1])
    assert short.exit_code == 2 and "too short" in short.stderr
    assert not read_ledger(project, DOMAIN)[0].withdrawn


def test_the_next_ingest_no_longer_merges_a_withdrawn_batch(project: Path) -> None:
    from components import stages
    from components.config import load_params, resolve_mirror
    from components.fingerprint import ingest_fingerprint

    params = load_params(project / "params.yaml")
    kept, gone = batch(11), batch(12)  # seeds 1-3 are the mirror's own sentences
    store_batch(kept, DOMAIN, "kept.csv", project)
    gone_sha = store_batch(gone, DOMAIN, "gone.csv", project).record.sha256
    stages.ingest(params, DOMAIN, project)
    pool = pd.read_parquet(project / "data" / "prepared" / DOMAIN / "adapt.parquet")
    assert set(gone["text"]) <= set(pool["text"]) and set(kept["text"]) <= set(pool["text"])
    before = ingest_fingerprint(params, DOMAIN, project, resolve_mirror(params.data, project))

    assert run("withdraw", "--domain", DOMAIN, "--root", str(project), gone_sha[:10]).exit_code == 0
    assert ingest_fingerprint(params, DOMAIN, project, resolve_mirror(params.data, project)) != before  # reruns
    manifest = stages.ingest(params, DOMAIN, project)
    pool = pd.read_parquet(project / "data" / "prepared" / DOMAIN / "adapt.parquet")
    assert not set(gone["text"]) & set(pool["text"]) and set(kept["text"]) <= set(pool["text"])
    assert gone_sha not in manifest["batches"]["sha256"] and len(manifest["batches"]["sha256"]) == 1


def test_the_same_rows_handed_over_after_a_withdrawal_are_a_new_batch(project: Path) -> None:
    """Withdrawing is not a ban: the rows, fixed or not, can come back, and the ledger keeps both lines."""
    first = store_batch(batch(1), DOMAIN, "one.csv", project).record
    assert run("withdraw", "--domain", DOMAIN, "--root", str(project), first.sha256[:8]).exit_code == 0
    again = store_batch(batch(1), DOMAIN, "one-again.csv", project)
    assert again.is_new and again.path.is_file()
    ledger = [(r.source, r.withdrawn) for r in read_ledger(project, DOMAIN)]
    assert ledger == [("one.csv", True), ("one-again.csv", False)]
    assert [r.source for r in pending_batches(project, DOMAIN)] == ["one-again.csv"]
