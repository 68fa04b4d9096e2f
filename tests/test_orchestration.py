"""Event-driven orchestration with real flows, a real Prefect server (test harness) and `metaadapt serve`.

A tiny DVC project (tests/tiny_project.py) is served by the project's own deployments (`python -m
flows.deployments`, a subprocess, as `metaadapt serve` runs it). The tests run in order and share it:
a new batch's event adapts and promotes; with a margin no candidate can meet the next batch stays challenger;
two triggers for one domain run one after the other; drift with no labelled data waiting gives an alert.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from components.batches import content_hash, read_ledger, store_batch
from components.config import PROJECT_ROOT, load_params
from tiny_project import make_project, sentences

DOMAIN = "reviews"
ADAPT_DEPLOYMENT = "metaadapt-adapt-domain/adapt-on-new-batch"


# ------------------------------------------------------------------------------ components.batches (no Prefect)


def test_same_rows_in_another_file_or_order_are_one_batch(tmp_path: Path) -> None:
    frame = pd.DataFrame({"text": [" b text ", "a text"], "label": ["x", "y"]})
    first = store_batch(frame, DOMAIN, "one.csv", tmp_path)
    again = store_batch(frame.iloc[::-1], DOMAIN, "copy-of-one.csv", tmp_path)
    other = store_batch(frame.assign(label=["y", "y"]), DOMAIN, "two.csv", tmp_path)
    assert first.is_new and not again.is_new and other.is_new
    assert again.path == first.path and content_hash(frame) == first.record.sha256
    assert [r.source for r in read_ledger(tmp_path, DOMAIN)] == ["one.csv", "two.csv"]
    assert pd.read_parquet(first.path)["text"].tolist() == ["a text", "b text"]  # normalised, sorted


def test_merge_batches_never_touches_the_evaluation_split() -> None:
    from components.prepare import DomainData, merge_batches

    data = DomainData(adapt=pd.DataFrame({"text": ["a", "b"], "label": ["x", "y"]}),
                      eval=pd.DataFrame({"text": ["held out"], "label": ["x"]}), meta_pool=pd.DataFrame(),
                      manifest={"domain": DOMAIN, "adapt_rows": 2})
    batch = pd.DataFrame({"text": ["new", "held out", "a"], "label": ["y", "x", "x"]})
    merged = merge_batches(data, batch)
    assert merged.adapt["text"].tolist() == ["a", "b", "new"] and merged.eval.equals(data.eval)
    assert merged.manifest["batches"] == {"rows_added": 1, "rows_dropped_as_eval_duplicates": 1,
                                          "rows_dropped_as_pool_duplicates": 1}
    assert merge_batches(data, batch.iloc[:0]) is data  # no batches: byte-identical default run


def test_only_transient_io_errors_are_retried() -> None:
    from components.data import DataError
    from components.quarantine import BatchRejected
    from flows.orchestration import is_transient

    assert is_transient(OSError("disk busy")) and is_transient(ConnectionError("reset"))
    assert is_transient(TimeoutError("slow share"))
    assert not is_transient(DataError("bad file")) and not is_transient(ValueError("bad value"))
    assert issubclass(BatchRejected, ValueError)  # a rejected batch is never retried


def test_watcher_takes_good_files_quarantines_bad_ones_and_goes_on(tmp_path: Path, tiny_bert_dir, prefect_session) -> None:
    """Runs before the served deployments start: its events reach no trigger."""
    from flows.incoming import watch_incoming

    root = make_project(tmp_path, tiny_bert_dir)
    incoming = root / "data" / "incoming" / DOMAIN
    incoming.mkdir(parents=True)
    (incoming / "bad.csv").write_text("text,label\nsome text,no_such_label\nmore text,no_such_label\n")
    write_batch(incoming / "good.csv", seed=7)
    results = {r["source"]: r for r in watch_incoming(str(root))}
    assert results["good.csv"]["is_new"] and results["good.csv"]["event_id"]
    assert "no_such_label" in results["bad.csv"]["rejected"]
    assert [r.source for r in read_ledger(root, DOMAIN)] == ["good.csv"]
    assert not list(incoming.glob("*.csv")) and list((incoming / "processed").glob("*good.csv"))
    assert list((root / "data" / "quarantine" / DOMAIN).glob("*/bad.csv"))


# ------------------------------------------------------------------------------ served deployments


def wait_for(predicate, timeout: float, what: str, poll: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def history(root: Path) -> list[dict]:
    path = root / "reports" / "orchestration" / f"{DOMAIN}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def latest_artifact(key: str) -> str | None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                      sort=ArtifactSort.CREATED_DESC, limit=1)
    return found[0].data if found else None


def write_batch(path: Path, seed: int) -> Path:
    rows = [(text, label) for label in ("positive", "negative") for text in sentences(label, 4, seed)]
    pd.DataFrame(rows, columns=["text", "label"]).to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_bert_dir) -> Path:
    return make_project(tmp_path_factory.mktemp("orchestration"), tiny_bert_dir)


@pytest.fixture(scope="module")
def served(project: Path, prefect_session, tmp_path_factory):
    """`python -m flows.deployments --root <project>` against the harness's API, until the module ends."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_RUNNER_POLL_FREQUENCY": "1",
           "PREFECT_HOME": str(tmp_path_factory.mktemp("prefect-home")), "PREFECT_LOGGING_LEVEL": "WARNING"}
    log = (project / "serve.log").open("w")
    process = subprocess.Popen([sys.executable, "-m", "flows.deployments", "--root", str(project)], cwd=PROJECT_ROOT,
                               env=env, stdout=log, stderr=subprocess.STDOUT)

    def deployed() -> bool:
        with get_client(sync_client=True) as client:
            try:
                return bool(client.read_deployment_by_name(ADAPT_DEPLOYMENT))
            except Exception:  # noqa: BLE001 - not registered yet
                return False

    try:
        wait_for(deployed, 120, "the served deployments")
        time.sleep(3)  # the runner's trigger automations are created right after the deployments
        yield process
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def adapted_runs(root: Path, count: int, timeout: float = 240) -> list[dict]:
    return wait_for(lambda: history(root) if len(history(root)) >= count else None, timeout,
                    f"{count} adaptation run(s) of {DOMAIN} (see serve.log)")


def test_new_batch_event_starts_adaptation_and_first_model_becomes_champion(project: Path, served) -> None:
    from components.registry import champion_info
    from flows.incoming import ingest_batch

    started = time.monotonic()
    batch = ingest_batch(DOMAIN, str(write_batch(project / "batch1.csv", seed=101)), str(project))
    assert batch["is_new"] and batch["event_id"]
    assert (project / "data" / "batches.dvc").is_file()  # versioned by DVC (cache + .dvc file)
    params = load_params(project / "params.yaml")
    champion = wait_for(lambda: champion_info(DOMAIN, params.registry, project), 240, "a champion (see serve.log)")
    print(f"\ntrigger-to-champion latency (tiny project, served, cold): {time.monotonic() - started:.1f} s")
    (run,) = adapted_runs(project, 1)
    assert run["status"] == "ok" and run["promoted"] is True and run["batches"] == [batch["sha256"][:16]]
    assert champion["version"] == 1
    assert [r.status for r in read_ledger(project, DOMAIN)] == ["adapted"]
    assert "promoted to champion" in latest_artifact("adaptation-reviews")

    again = ingest_batch(DOMAIN, str(project / "batch1.csv"), str(project))  # the same file twice: no work
    assert not again["is_new"] and again["event_id"] is None


def test_candidate_below_the_margin_stays_challenger_with_the_reason_recorded(project: Path, served) -> None:
    from mlflow.tracking import MlflowClient

    from components.registry import champion_info, registered_name, tracking_uri
    from flows.incoming import ingest_batch

    raw = yaml.safe_load((project / "params.yaml").read_text())
    raw["registry"]["promote_margin"] = 1.0  # no candidate can beat the champion by a whole macro-F1
    (project / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    ingest_batch(DOMAIN, str(write_batch(project / "batch2.csv", seed=202)), str(project))
    run = adapted_runs(project, 2)[-1]
    assert run["status"] == "ok" and run["promoted"] is False
    params = load_params(project / "params.yaml")
    assert champion_info(DOMAIN, params.registry, project)["version"] == 1  # champion unchanged
    registry = json.loads((project / "reports" / "registry" / f"{DOMAIN}.json").read_text())
    assert registry["version"] == 2 and "margin" in registry["reason"]
    uri = tracking_uri(params.registry, project)
    version = MlflowClient(uri, uri).get_model_version(registered_name(DOMAIN), "2")
    assert version.tags.get("promotion_reason") == registry["reason"]
    assert "challenger" in latest_artifact("adaptation-reviews")


def test_concurrent_triggers_for_one_domain_run_one_at_a_time(project: Path, served) -> None:
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    before = len(history(project))
    for n in (1, 2):
        run_deployment(ADAPT_DEPLOYMENT, timeout=0,
                       parameters={"domain": DOMAIN, "root": str(project), "reason": f"concurrent-{n}"})
    runs = [r for r in adapted_runs(project, before + 2) if r["reason"].startswith("concurrent-")]
    first, second = sorted(runs, key=lambda r: r["started"])
    assert first["status"] == second["status"] == "ok"
    assert first["finished"] <= second["started"], (first, second)  # the adaptations did not overlap ...
    with get_client(sync_client=True) as client:
        flow_runs = [client.read_flow_run(r["flow_run"]) for r in (first, second)]
    assert flow_runs[1].start_time < flow_runs[0].end_time  # ... although both flow runs were running at once


def test_drift_with_no_labelled_data_waiting_publishes_an_alert(project: Path, served) -> None:
    from flows.monitor import monitor

    traffic = project / "data" / "traffic" / DOMAIN
    traffic.mkdir(parents=True)
    odd = [f"ERROR 0x{n:08X} ### {n * 7919} ### checksum {n * 104729} ### retry" for n in range(40)]
    pd.DataFrame({"text": odd}).to_csv(traffic / "today.csv", index=False)
    results = monitor(root=str(project))
    assert results[DOMAIN]["drift_detected"], results
    alert = wait_for(lambda: latest_artifact("drift-alert-reviews"), 120, "the drift alert artifact (see serve.log)")
    assert "no labelled batch is waiting" in alert and "what drifted" in alert
    assert results[DOMAIN]["alert"] is True
    # the next tick finds the same file and the same champion: skipped (no new report, MLflow run or event)
    reports = sorted((project / "reports" / "drift" / DOMAIN).glob("*/summary.json"))
    again = monitor(root=str(project))
    assert again[DOMAIN]["skipped"] is True and again[DOMAIN]["alert"] is False
    assert sorted((project / "reports" / "drift" / DOMAIN).glob("*/summary.json")) == reports


def test_failed_adaptation_keeps_champion_and_batches_and_says_why(project: Path, served) -> None:
    from components.registry import champion_info
    from flows.adaptation import adapt_domain

    params = load_params(project / "params.yaml")
    champion = champion_info(DOMAIN, params.registry, project)
    frame = pd.read_csv(write_batch(project / "batch3.csv", seed=303))
    # stored past the batch suite, a text over data.max_text_chars: the validate stage must stop the chain
    # (fewer than K rows per label no longer does: every labelled row counts)
    too_long = pd.DataFrame({"text": ["x" * (params.data.max_text_chars + 1)], "label": ["positive"]})
    stored = store_batch(pd.concat([frame, too_long], ignore_index=True), DOMAIN, "batch3.csv", project)
    with pytest.raises(RuntimeError, match=r"failed at stage (validate|adapt).*champion and data unchanged"):
        adapt_domain(DOMAIN, str(project), reason="bad batch")
    assert champion_info(DOMAIN, params.registry, project) == champion
    assert [r.status for r in read_ledger(project, DOMAIN) if r.sha256 == stored.record.sha256] == ["accepted"]
    assert history(project)[-1]["status"] == "failed"
    assert "failed at stage" in latest_artifact("adaptation-reviews")
