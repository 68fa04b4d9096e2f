"""Work shared by domains (components.shared_store, components.shared_stages): built once per content key,
reused by every domain with the same sources, rebuilt when damaged, computed once under concurrency."""
from __future__ import annotations

import json
import multiprocessing
import os
import time
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import yaml

from components import stages
from components.config import load_params
from components.shared_store import SharedStore, content_key, frame_digest
from tests.tiny_project import make_project


def _slow_build(base: str, marker_dir: str) -> str:
    """A build that takes a while and leaves one marker per call: counts how many processes really built."""
    def build(staging: Path) -> dict:
        (Path(marker_dir) / f"built-{os.getpid()}").touch()
        time.sleep(1.0)
        (staging / "value.txt").write_text("42")
        return {"answer": 42}

    entry = SharedStore(Path(base)).fetch_or_build("demo", "k1", build, built_by=str(os.getpid()))
    return (entry.path / "value.txt").read_text()


def test_concurrent_processes_build_one_key_once(tmp_path: Path) -> None:
    markers = tmp_path / "markers"
    markers.mkdir()
    context = multiprocessing.get_context("spawn")
    with context.Pool(3) as pool:
        values = pool.starmap(_slow_build, [(str(tmp_path / "store"), str(markers))] * 3)
    assert values == ["42", "42", "42"]
    assert len(list(markers.iterdir())) == 1
    assert not [p for p in (tmp_path / "store" / "demo").iterdir() if p.name.startswith(".k1-")]  # no staging left


def test_a_damaged_entry_is_rebuilt_not_used(tmp_path: Path) -> None:
    store, calls = SharedStore(tmp_path), []

    def build(staging: Path) -> dict:
        calls.append(1)
        (staging / "value.txt").write_text("good")
        return {}

    entry = store.fetch_or_build("demo", "k", build)
    assert entry.built and not store.fetch_or_build("demo", "k", build).built and len(calls) == 1
    (entry.path / "value.txt").write_text("tampered")       # e.g. an in-place write through a hard link
    again = store.fetch_or_build("demo", "k", build)
    assert again.built and (again.path / "value.txt").read_text() == "good" and len(calls) == 2


def test_keys_follow_content_not_names() -> None:
    rows = pd.DataFrame({"text": ["a", "b"], "label": ["x", "y"]})
    assert frame_digest(rows) == frame_digest(rows.copy())
    assert frame_digest(rows) != frame_digest(rows.assign(label=["x", "x"]))
    assert content_key("k", {"a": 1, "b": 2}) == content_key("k", {"b": 2, "a": 1})
    assert content_key("k", {"a": 1, "b": 2}) != content_key("k", {"a": 2, "b": 2})


def test_two_domains_with_the_same_sources_share_validation_episodes_and_meta_training(tmp_path: Path,
                                                                                       tiny_bert_dir) -> None:
    root = make_project(tmp_path, tiny_bert_dir, domains=("reviews", "news"))
    params = load_params(root / "params.yaml")
    mlflow.set_tracking_uri(None)
    for domain in ("reviews", "news"):
        for stage in ("ingest", "validate", "episodes", "meta_train"):
            result = stages.DOMAIN_STAGES[stage](params, domain, root)
        assert result["reused"] is (domain == "news"), result
    store = SharedStore.for_project(root)
    for kind in ("source_validation", "episodes", "meta_train"):
        keys = [p.name for p in (store.base / kind).iterdir() if not p.name.startswith(".")]
        assert len(keys) == 1, (kind, keys)
        assert store.users(kind, keys[0]) == ["news", "reviews"]
    for name in ("meta_embeddings.npy", "episodes_train.json"):
        assert (root / "data/prepared/reviews" / name).read_bytes() == (root / "data/prepared/news" / name).read_bytes()
    assert (root / "models/reviews/meta/head.safetensors").read_bytes() == \
        (root / "models/news/meta/head.safetensors").read_bytes()
    report = json.loads((root / "reports/validation/news.json").read_text())
    assert set(report["suites"]) == {"adapt", "eval", "meta_pool_leakage", "meta_source.tiny_meta"}
    assert report["suites"]["meta_pool_leakage"]["success"] and report["shared_sources"]["tiny_meta"]["key"]
    runs = mlflow.search_runs(experiment_names=[params.registry.experiment], filter_string="tags.stage = 'meta_train'")
    assert len(runs) == 1
    assert runs.iloc[0]["tags.used_by.reviews"] == "true" and runs.iloc[0]["tags.used_by.news"] == "true"


def test_a_domain_whose_evaluation_texts_overlap_a_source_gets_its_own_artifacts(tmp_path: Path,
                                                                                  tiny_bert_dir) -> None:
    """Leakage is never traded for sharing: the overlapping rows leave that domain's pool, so its key differs."""
    root = make_project(tmp_path, tiny_bert_dir, domains=("reviews", "news"))
    raw = yaml.safe_load((root / "params.yaml").read_text())
    source = pd.read_csv(root / "mirror/tiny_meta/all.csv")
    news = pd.read_csv(root / "mirror/tiny_news/all.csv")
    pd.concat([news, source.head(30)]).to_csv(root / "mirror/tiny_news/all.csv", index=False)  # shared texts
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    params = load_params(root / "params.yaml")
    mlflow.set_tracking_uri(None)
    stats = {}
    for domain in ("reviews", "news"):
        for stage in ("ingest", "validate", "episodes"):
            stats[domain] = stages.DOMAIN_STAGES[stage](params, domain, root)
    assert stats["news"]["shared_key"] != stats["reviews"]["shared_key"] and not stats["news"]["reused"]


@pytest.fixture(autouse=True)
def _reset_mlflow():
    yield
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID"):
        os.environ.pop(name, None)
