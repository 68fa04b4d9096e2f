"""Unwritable storage and tampered artifacts: a clear error naming the path, nothing partial left, old content intact.

Tests run as root here, where chmod does not stop writes: an unwritable folder is simulated by a file standing where
the folder should be, and a full disk by making ``os.fsync`` / ``os.replace`` raise ENOSPC (where a real full disk
fails). The chmod variant runs only as a normal user.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

from components import learner as learner_module
from components import stages
from components.config import EpisodesConfig, RegistryConfig, load_params
from components.episodes import sample_episodes, save_episodes
from components.meta import CosineClassifier, Learner, ProjectionHead
from components.model_io import (AdaptedModel, ModelIntegrityError, StorageError, atomic_write_text, load_model,
                                 require_writable, save_model)

pytestmark = pytest.mark.usefixtures("single_thread")


def leftovers(directory: Path) -> list[str]:
    """Hidden temp files, staging folders and backups: what a failed write must not leave."""
    return sorted(p.name for p in directory.rglob("*") if p.name.startswith(".") or p.name.endswith((".old", ".tmp")))


def disk_full(monkeypatch, function: str, after: int = 0, when=lambda *args: True):
    """Make os.<function> raise ENOSPC from its (after+1)-th matching call on."""
    real = getattr(os, function)
    calls = {"n": 0}

    def failing(*args, **kwargs):
        if when(*args):
            calls["n"] += 1
            if calls["n"] > after:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kwargs)
    monkeypatch.setattr(os, function, failing)


# ------------------------------------------------------------------------------------- single files (reports)


@pytest.mark.parametrize("function", ["fsync", "replace"])
def test_report_write_on_a_full_disk_keeps_the_old_report(tmp_path, monkeypatch, function):
    report = tmp_path / "reports" / "metrics" / "toy.json"
    stages._write_json(report, {"accuracy": 0.5})
    disk_full(monkeypatch, function)
    with pytest.raises(StorageError, match=rf"cannot write {report}: No space left on device \(the disk is full"):
        stages._write_json(report, {"accuracy": 0.9})
    monkeypatch.undo()
    assert json.loads(report.read_text()) == {"accuracy": 0.5}
    assert leftovers(tmp_path) == []


def test_report_folder_that_is_a_file_gives_a_clear_error(tmp_path):
    (tmp_path / "reports").write_text("not a folder")
    with pytest.raises(StorageError, match=rf"cannot write {tmp_path}/reports/metrics/toy.json: .*"):
        stages._write_json(tmp_path / "reports" / "metrics" / "toy.json", {"a": 1})
    assert (tmp_path / "reports").read_text() == "not a folder"
    with pytest.raises(StorageError, match=rf"report folder {tmp_path}/reports/x is not writable"):
        require_writable(tmp_path / "reports" / "x", "report folder")


def test_permission_denied_names_the_path_and_the_fix(tmp_path, monkeypatch):
    """What a read-only folder raises for a normal user, injected where it would happen (creating the temp file)."""
    import tempfile

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")
    monkeypatch.setattr(tempfile, "mkstemp", denied)
    with pytest.raises(StorageError, match=rf"cannot write {tmp_path}/a.json: Permission denied \(permission denied; "
                                           r"make it writable or point the project elsewhere\)"):
        atomic_write_text(tmp_path / "a.json", "{}")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_report_folder_gives_permission_denied(tmp_path):
    folder = tmp_path / "reports"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(StorageError, match=r"Permission denied \(permission denied; make it writable"):
            atomic_write_text(folder / "a.json", "{}")
    finally:
        folder.chmod(0o700)
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------- model directories


def model(seed: int) -> AdaptedModel:
    torch.manual_seed(seed)
    return AdaptedModel(ProjectionHead(8), CosineClassifier(["a", "b"], torch.randn(2, 8), 10.0), {"name": "x"}, "head")


@pytest.mark.parametrize("function, after", [("fsync", 0), ("fsync", 2), ("replace", 1)])
def test_model_save_on_a_full_disk_keeps_the_previous_model(tmp_path, monkeypatch, function, after):
    directory = tmp_path / "models" / "toy" / "candidate"
    save_model(model(0), directory)
    before = {p.name: p.read_bytes() for p in directory.iterdir()}
    disk_full(monkeypatch, function, after)
    with pytest.raises(StorageError, match=r"No space left on device \(the disk is full"):
        save_model(model(1), directory)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == before
    assert leftovers(tmp_path) == []
    load_model(directory)


def test_model_swap_failing_at_the_last_rename_restores_the_previous_model(tmp_path, monkeypatch):
    directory = tmp_path / "candidate"
    save_model(model(0), directory)
    expected = load_model(directory).classifier.weights
    disk_full(monkeypatch, "replace", when=lambda src, dst, *a: Path(src).name.startswith(".candidate-"))  # staging
    with pytest.raises(StorageError, match=f"cannot write {directory}"):
        save_model(model(1), directory)
    monkeypatch.undo()
    assert torch.equal(load_model(directory).classifier.weights, expected)
    assert leftovers(tmp_path) == []


def test_model_folder_that_is_a_file_gives_a_clear_error(tmp_path):
    (tmp_path / "models").write_text("oops")
    with pytest.raises(StorageError, match=rf"cannot write {tmp_path}/models/toy/candidate: .*"):
        save_model(model(0), tmp_path / "models" / "toy" / "candidate")


# ------------------------------------------------------------------------------------- meta_train stage


@pytest.fixture
def meta_root(tmp_path) -> tuple[Path, object]:
    """A project root with one domain's prepared meta-training inputs (random clustered embeddings)."""
    rng = np.random.default_rng(0)
    labels = np.repeat([f"l{i}" for i in range(6)], 12)
    vectors = (np.repeat(rng.normal(size=(6, 16)), 12, axis=0) + rng.normal(size=(72, 16))).astype(np.float32)
    pool = pd.DataFrame({"text": [f"t{i}" for i in range(72)], "label": labels, "source": "s", "augmented": False,
                         "origin": np.arange(72)})
    prepared = tmp_path / "data" / "prepared" / "toy"
    prepared.mkdir(parents=True)
    pool.to_parquet(prepared / "meta_pool.parquet", index=False)
    np.save(prepared / "meta_embeddings.npy", vectors)
    config = EpisodesConfig(way_min=2, way_max=3, shot_min=1, shot_max=3, query=3)
    save_episodes(sample_episodes(pool, config, 30, 1), prepared / "episodes_train.json")
    save_episodes(sample_episodes(pool, config, 5, 2), prepared / "episodes_val.json")
    raw = load_params().model_dump()
    raw["meta"].update(epochs=2, checkpoint_every=10)
    raw["encoder"]["device"] = "cpu"
    raw["registry"] = RegistryConfig(experiment="faults").model_dump()
    raw["domains"] = {"toy": raw["domains"]["customer_intent"]}
    from components.config import parse_params
    yield tmp_path, parse_params(raw)
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID"):
        os.environ.pop(name, None)


def test_meta_train_refuses_an_unwritable_mlflow_store_before_training(meta_root):
    root, params = meta_root
    (root / "mlruns").write_text("a file where the MLflow store should be")
    with pytest.raises(StorageError, match=rf"MLflow store {root}/mlruns is not writable"):
        stages.meta_train(params, "toy", root)
    assert not (root / "models" / "toy" / "meta").exists()
    assert not (root / "data" / "cache" / "checkpoints").exists() or \
        not any((root / "data" / "cache" / "checkpoints").rglob("step-*"))


def test_meta_train_stage_resumes_after_a_crash_and_cleans_up(meta_root, monkeypatch):
    root, params = meta_root
    real_embed_fn = learner_module.embed_fn

    def crashing_embed_fn(*args):
        inner, calls = real_embed_fn(*args), {"n": 0}

        def embed(rows):
            calls["n"] += 1
            if calls["n"] > 10 + 2 * 45:     # validation (5 episodes) + 45 training episodes: checkpoints at 10..40
                raise KeyboardInterrupt("simulated kill")
            return inner(rows)
        return embed
    monkeypatch.setattr(learner_module, "embed_fn", crashing_embed_fn)
    with pytest.raises(KeyboardInterrupt):
        stages.meta_train(params, "toy", root)
    assert not (root / "models" / "toy" / "meta").exists()
    checkpoints = root / "data" / "cache" / "checkpoints" / "shared"   # one run per shared learner, any domain
    assert sorted(p.name for p in checkpoints.rglob("step-*.json")) == ["step-000000030.json", "step-000000040.json"]

    monkeypatch.setattr(learner_module, "embed_fn", real_embed_fn)
    summary = stages.meta_train(params, "toy", root)
    assert summary["resumed_from_episode"] == 40 and len(summary["val_accuracy"]) == 3
    assert not checkpoints.exists()
    meta = json.loads((root / "models" / "toy" / "meta" / "meta.json").read_text())
    assert set(meta["files"]) == {"head.safetensors"} and leftovers(root / "models") == []

    # A tampered meta-trained head is refused before anything loads it.
    head = root / "models" / "toy" / "meta" / "head.safetensors"
    data = bytearray(head.read_bytes())
    data[-3] ^= 0xFF
    head.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match="head.safetensors: missing or checksum mismatch; refusing to load"):
        learner_module.load_learner(root / "models" / "toy" / "meta", params)


def test_meta_dir_write_on_a_full_disk_keeps_the_previous_head(meta_root, monkeypatch):
    root, params = meta_root
    directory = root / "models" / "toy" / "meta"
    learner = Learner(ProjectionHead(16))
    learner_module.save_learner(learner, None, params, directory, {"trained": True})
    before = {p.name: p.read_bytes() for p in directory.iterdir()}
    disk_full(monkeypatch, "fsync")
    with pytest.raises(StorageError, match="No space left on device"):
        learner_module.save_learner(Learner(ProjectionHead(16, 5.0)), None, params, directory, {"trained": True})
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == before and leftovers(root / "models") == []


# ------------------------------------------------------------------------------------- registered models


def _registration_inputs(root: Path, tiny_bert_dir: Path) -> None:
    """What the register stage reads: a candidate model (tiny random BERT encoder) and the domain's reports."""
    encoder = {"name": str(tiny_bert_dir), "max_length": 16, "batch_size": 8, "device": "cpu", "num_threads": 0}
    save_model(AdaptedModel(ProjectionHead(32), CosineClassifier(["a", "b"], torch.randn(2, 32), 10.0), encoder,
                            "head"), root / "models" / "toy" / "candidate")
    for kind, payload in {"metrics": {"macro_f1": 0.5, "accuracy": 0.5}, "confusion": {}, "validation": {}}.items():
        stages._write_json(root / "reports" / kind / "toy.json", payload)
    stages._write_json(root / "data" / "prepared" / "toy" / "manifest.json", {"dataset": "toy_set", "full": False})
    stages._write_json(root / "models" / "toy" / "adapt_info.json", {"chosen": "cosine", "warnings": []})


def test_registration_logs_no_credentials_and_an_altered_registered_model_is_refused(tmp_path, tiny_bert_dir,
                                                                                      monkeypatch):
    from components.config import TRACKING_ENV, parse_params

    monkeypatch.delenv(TRACKING_ENV, raising=False)
    secret_url = "https://alice:s3cret@wiki.example.com/labels?token=abc123"
    raw = load_params().model_dump()
    raw["registry"] = RegistryConfig(experiment="tamper-at-load").model_dump()
    raw["domains"] = {"toy": {**raw["domains"]["customer_intent"], "label_descriptions": {"a": f"see {secret_url}"}}}
    params = parse_params(raw)
    _registration_inputs(tmp_path, tiny_bert_dir)
    try:
        result = stages.register(params, "toy", tmp_path)
        run = mlflow.get_run(result["run_id"])
        logged = {**run.data.params, **run.data.tags}
        assert logged["domain.label_descriptions.a"] == "see https://wiki.example.com/labels?token=***"
        assert not [k for k, v in logged.items() if "s3cret" in v or "abc123" in v or "alice:" in v]

        uri = f"models:/{result['name']}/{result['version']}"
        assert len(mlflow.pyfunc.load_model(uri).predict(pd.DataFrame({"text": ["fine"]}))) == 1   # intact: it serves
        stored = list((tmp_path / "mlruns" / "artifacts").rglob("classifier.safetensors"))
        assert stored, "the registered model directory was not found in the artifact store"
        for path in stored:                                                   # alter the registered copy
            data = bytearray(path.read_bytes())
            data[-2] ^= 0xFF
            path.write_bytes(bytes(data))
        with pytest.raises(ModelIntegrityError, match="classifier.safetensors: checksum mismatch"):
            mlflow.pyfunc.load_model(uri)
    finally:
        if mlflow.active_run():
            mlflow.end_run()
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
        for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID"):
            os.environ.pop(name, None)
        shutil.rmtree(tmp_path / "mlruns", ignore_errors=True)
