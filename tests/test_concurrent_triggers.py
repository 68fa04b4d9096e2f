"""Five batches for one domain arriving at once: one adaptation at a time, every batch stored, merged and marked
exactly once; another domain's adaptation runs at the same time.

The flow test runs the real flows (`ingest_batch` then `adapt_domain`, what a `metaadapt.batch.accepted` event
starts) in six processes started together against the test harness's Prefect server: five for `reviews`, each
with its own batch, one for `news`. A tiny DVC project (tests/tiny_project.py) keeps it short.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from components.batches import ADAPTED, read_ledger, store_batch
from components.config import PROJECT_ROOT
from tiny_project import make_project, sentences

CHAIN = """
import sys, time
from flows.incoming import ingest_batch
from flows.adaptation import adapt_domain
domain, file, root, reason, start_at = sys.argv[1:]
time.sleep(max(0.0, float(start_at) - time.time()))   # every process starts its chain at the same moment
ingest_batch(domain, file, root)
adapt_domain(domain, root, reason=reason)
"""


def batch_frame(seed: int, labels=("positive", "negative")) -> pd.DataFrame:
    rows = [(text, label) for label in labels for text in sentences(label, 3, seed)]
    return pd.DataFrame(rows, columns=["text", "label"])


def _store(args: tuple[str, int, float]) -> str:
    root, seed, start_at = args
    time.sleep(max(0.0, start_at - time.time()))
    return store_batch(batch_frame(seed), "reviews", f"b{seed}.csv", Path(root)).record.sha256


def test_five_batches_stored_at_once_by_five_processes_are_all_in_the_ledger(tmp_path: Path) -> None:
    """Without the ledger lock the last writer's read-modify-write drops the others' records."""
    start_at = time.time() + 1.5
    with multiprocessing.get_context("fork").Pool(5) as pool:
        hashes = pool.map(_store, [(str(tmp_path), seed, start_at) for seed in range(5)])
    ledger = read_ledger(tmp_path, "reviews")
    assert sorted(r.sha256 for r in ledger) == sorted(hashes) and len(set(hashes)) == 5
    assert not list((tmp_path / "data" / "batches" / "reviews").glob("*.tmp"))


def history(root: Path, domain: str) -> list[dict]:
    path = root / "reports" / "orchestration" / f"{domain}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def test_five_triggers_for_one_domain_adapt_one_at_a_time_and_another_domain_in_parallel(
        tmp_path: Path, tiny_bert_dir, prefect_session) -> None:
    from prefect.settings import PREFECT_API_URL

    (tmp_path / "project").mkdir()
    root = make_project(tmp_path / "project", tiny_bert_dir, domains=("reviews", "news"))
    jobs = [("reviews", batch_frame(100 + n), f"trigger-{n}") for n in range(5)]
    jobs.append(("news", batch_frame(200, labels=("sports", "markets")), "other-domain"))
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_HOME": str(tmp_path / "prefect-home"),
           "PREFECT_LOGGING_LEVEL": "WARNING", "PYTHONPATH": str(PROJECT_ROOT)}
    start_at = time.time() + 25        # after every process has imported Prefect and the flows
    processes = []
    for n, (domain, frame, reason) in enumerate(jobs):
        file = tmp_path / f"{domain}-{n}.csv"
        frame.to_csv(file, index=False)
        log = (tmp_path / f"chain-{n}.log").open("w")
        processes.append((subprocess.Popen([sys.executable, "-c", CHAIN, domain, str(file), str(root), reason,
                                            str(start_at)], cwd=PROJECT_ROOT, env=env, stdout=log,
                                           stderr=subprocess.STDOUT), log, n))
    for process, log, n in processes:
        process.wait(timeout=600)
        log.close()
        assert process.returncode == 0, (tmp_path / f"chain-{n}.log").read_text()[-4000:]

    runs = sorted(history(root, "reviews"), key=lambda r: r["started"])
    assert sorted(r["reason"] for r in runs) == [f"trigger-{n}" for n in range(5)]
    assert all(r["status"] == "ok" for r in runs)
    for first, second in zip(runs, runs[1:]):
        assert first["finished"] <= second["started"], ("two adaptations of reviews overlapped", first, second)

    ledger = read_ledger(root, "reviews")
    assert len(ledger) == 5 and len({r.sha256 for r in ledger}) == 5              # each batch stored once
    assert all(r.status == ADAPTED for r in ledger)                               # ... and adapted
    marked = [sha for run in runs for sha in run["batches"]]
    assert sorted(marked) == sorted(r.sha256[:16] for r in ledger)                # ... by exactly one run
    manifest = json.loads((root / "data" / "prepared" / "reviews" / "manifest.json").read_text())
    assert sorted(manifest["batches"]["sha256"]) == sorted(r.sha256 for r in ledger)   # merged once each
    pool = pd.read_parquet(root / "data" / "prepared" / "reviews" / "adapt.parquet")
    assert not pool.duplicated(["text"]).any()

    (news,) = history(root, "news")
    assert news["status"] == "ok"
    overlapping = [r for r in runs if r["started"] < news["finished"] and news["started"] < r["finished"]]
    assert overlapping, ("the other domain's adaptation did not run alongside", news, runs)


def test_a_batch_file_written_before_its_ledger_line_changes_the_ingest_fingerprint(tmp_path: Path,
                                                                                     tiny_bert_dir) -> None:
    """store_batch writes the parquet, then the ledger line. An ingest that runs in between merges nothing new (it
    reads the ledger), so its fingerprint must not match the one taken once the ledger lists the batch: otherwise
    the next ingest would keep its outputs and the batch would never be merged."""
    from components.batches import batch_dir, content_hash
    from components.config import load_params, resolve_mirror
    from components.fingerprint import ingest_fingerprint

    root = make_project(tmp_path, tiny_bert_dir)
    params = load_params(root / "params.yaml")
    mirror = resolve_mirror(params.data, root)
    frame = batch_frame(7)
    stored = store_batch(frame, "reviews", "b7.csv", root)
    ledger = batch_dir(root, "reviews") / "ledger.json"
    full = ledger.read_text()
    ledger.write_text("[]")                               # the file is there, its ledger line not yet
    between = ingest_fingerprint(params, "reviews", root, mirror)
    ledger.write_text(full)
    assert stored.record.sha256 == content_hash(frame)
    assert ingest_fingerprint(params, "reviews", root, mirror) != between
