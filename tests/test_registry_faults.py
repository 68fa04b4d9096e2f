"""A registration killed midway (real SIGKILL of a subprocess) leaves the MLflow registry consistent.

The child process registers a tiny model into a real SQLite store and kills itself (SIGKILL, no cleanup, no
`finally`) at one point of `register_domain_model`: after the run's data, after the model version was created,
right before the alias move, right after it. Afterwards, in this process: the champion alias still points at a
version that loads and predicts; every version left is complete or is deleted by the next registration; a run
left RUNNING is marked FAILED; the rerun of the registration completes (new version, gate applied, `complete`).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch

from components import registry
from components.config import PROJECT_ROOT, RegistryConfig
from components.meta import CosineClassifier, ProjectionHead
from components.model_io import AdaptedModel, ModelIntegrityError, save_model
from serving_project import reset_mlflow

DOMAIN = "toy"
NAME = registry.registered_name(DOMAIN)
CONFIG = RegistryConfig(experiment="faults")

# Runs in the child: wraps one step of the registration so the process SIGKILLs itself there.
CHILD = textwrap.dedent('''
    import os, signal, sys
    from pathlib import Path
    import mlflow.pyfunc
    from mlflow.tracking import MlflowClient
    from components import registry
    from components.config import RegistryConfig

    point, root, model_dir = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])

    def die():
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)

    def after(function):
        def wrapped(*args, **kwargs):
            result = function(*args, **kwargs)
            die()
        return wrapped

    def before(function):
        def wrapped(*args, **kwargs):
            die()
        return wrapped

    if point == "after_run_data":
        registry._log_run_data = after(registry._log_run_data)
    elif point == "after_version_created":
        mlflow.pyfunc.log_model = after(mlflow.pyfunc.log_model)
    elif point == "before_alias":
        MlflowClient.set_registered_model_alias = before(MlflowClient.set_registered_model_alias)
    elif point == "after_alias":
        MlflowClient.set_registered_model_alias = after(MlflowClient.set_registered_model_alias)
    config = RegistryConfig(experiment="faults")
    registry.register_domain_model(domain="toy", model_dir=model_dir, metrics={"macro_f1": 0.9, "accuracy": 0.9},
                                   params={"k": 4}, tags={}, artifacts={}, config=config, root=root)
    print("registration finished without being killed")
''')


@pytest.fixture(autouse=True)
def clean_mlflow():
    yield
    reset_mlflow()


def model_dir(tiny_bert_dir: Path, directory: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    classifier = CosineClassifier(["neg", "pos"], torch.randn(2, 32), 10.0)
    encoder = {"name": str(tiny_bert_dir), "max_length": 16, "batch_size": 8, "device": "cpu", "num_threads": 0}
    return save_model(AdaptedModel(ProjectionHead(32), classifier, encoder, "head"), directory)


def register(root: Path, directory: Path, f1: float) -> registry.RegistrationResult:
    registry.use_experiment(CONFIG, root)
    return registry.register_domain_model(domain=DOMAIN, model_dir=directory, metrics={"macro_f1": f1, "accuracy": f1},
                                          params={"k": 4}, tags={}, artifacts={}, config=CONFIG, root=root)


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> Path:
    """An MLflow SQLite file with its schema migrated once (a fresh one costs seconds of migrations)."""
    template = tmp_path_factory.mktemp("template")
    uri = registry.tracking_uri(CONFIG, template)
    mlflow.MlflowClient(uri, uri).search_experiments()
    return template / "mlruns" / "mlflow.db"


@pytest.fixture
def root(tmp_path, empty_store, tiny_bert_dir) -> Path:
    """A project root with its own store in which v1 is the champion."""
    (tmp_path / "mlruns").mkdir()
    shutil.copy(empty_store, tmp_path / "mlruns" / "mlflow.db")
    register(tmp_path, model_dir(tiny_bert_dir, tmp_path / "models" / "v1", seed=1), 0.5)
    return tmp_path


def client(root: Path) -> mlflow.MlflowClient:
    uri = registry.tracking_uri(CONFIG, root)
    return mlflow.MlflowClient(uri, uri)


def predict(root: Path) -> list[str]:
    return list(registry.load_champion(DOMAIN, CONFIG, root).predict(pd.DataFrame({"text": ["good", "bad"]}))["label"])


def kill_registration(point: str, root: Path, directory: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    return subprocess.run([sys.executable, "-c", CHILD, point, str(root), str(directory)], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("point", ["after_run_data", "after_version_created", "before_alias", "after_alias"])
def test_a_registration_killed_midway_leaves_the_registry_consistent(point: str, root: Path, tiny_bert_dir) -> None:
    before = predict(root)
    candidate = model_dir(tiny_bert_dir, root / "models" / "v2", seed=2)
    done = kill_registration(point, root, candidate)
    assert done.returncode == -9, (done.returncode, done.stdout, done.stderr[-3000:])

    champion = registry.champion_info(DOMAIN, CONFIG, root)
    if point == "after_alias":      # the alias moved to a version already verified: it is a complete champion
        assert champion["version"] == 2
    else:
        assert champion["version"] == 1
        assert predict(root) == before                       # the previous champion still serves
    for version in client(root).search_model_versions(f"name='{NAME}'"):
        registry.verify_registered_version(NAME, int(version.version))   # no version without its artifacts

    rerun = register(root, candidate, 0.9)                  # the rerun completes the work
    assert rerun.promoted and registry.champion_info(DOMAIN, CONFIG, root)["version"] == rerun.version
    assert len(predict(root)) == 2 and set(predict(root)) <= {"neg", "pos"}   # the new champion serves
    store = client(root)
    versions = {int(v.version): v for v in store.search_model_versions(f"name='{NAME}'")}
    incomplete = {n for n, v in versions.items() if v.tags.get("complete") != "true" and "promoted" not in v.tags}
    assert not incomplete, f"versions left half-registered: {incomplete}"
    if point in ("after_version_created", "before_alias"):
        assert 2 not in versions                             # the killed one was deleted, v3 took its place
        assert rerun.version == 3
    runs = store.search_runs([mlflow.get_experiment_by_name(CONFIG.experiment).experiment_id])
    assert not [r.info.run_id for r in runs if r.info.status == "RUNNING"]   # dangling runs were marked FAILED
    abandoned = [r for r in runs if "abandoned" in r.data.tags]
    assert (len(abandoned) >= 1) == (point != "after_alias"), [r.data.tags.get("abandoned") for r in runs]


def test_a_version_whose_stored_artifacts_do_not_verify_never_gets_an_alias(root: Path, tiny_bert_dir,
                                                                             monkeypatch) -> None:
    """The stored copy is damaged between the upload and the alias move: refused, champion kept, cleaned later."""
    real_log_model = mlflow.pyfunc.log_model
    known = set((root / "mlruns" / "artifacts").rglob("classifier.safetensors"))

    def log_then_damage(*args, **kwargs):
        info = real_log_model(*args, **kwargs)
        fresh = set((root / "mlruns" / "artifacts").rglob("classifier.safetensors")) - known
        assert fresh, "the new version's weights were not found in the local artifact store"
        for path in fresh:
            path.write_bytes(b"damaged")
        return info

    monkeypatch.setattr(mlflow.pyfunc, "log_model", log_then_damage)
    before = predict(root)
    with pytest.raises(ModelIntegrityError, match="classifier.safetensors"):
        register(root, model_dir(tiny_bert_dir, root / "models" / "v2", seed=2), 0.9)
    assert registry.champion_info(DOMAIN, CONFIG, root)["version"] == 1
    assert predict(root) == before                                     # v1 still serves
    monkeypatch.setattr(mlflow.pyfunc, "log_model", real_log_model)
    rerun = register(root, model_dir(tiny_bert_dir, root / "models" / "v3", seed=3), 0.9)
    versions = {int(v.version) for v in client(root).search_model_versions(f"name='{NAME}'")}
    assert rerun.promoted and versions == {1, rerun.version} and 2 not in versions


# ------------------------------------------------------------------------- a model-folder swap cut in half


def test_a_crash_between_the_two_renames_of_a_model_swap_is_recovered(tmp_path: Path, tiny_bert_dir) -> None:
    """`_swap_in` renames <dir> → <dir>.old, then staging → <dir>. Killed in between, only <dir>.old is left:
    the next load (and the next save) renames it back instead of failing with 'no model.json'."""
    from components.model_io import load_model, read_manifest

    directory = model_dir(tiny_bert_dir, tmp_path / "candidate", seed=1)
    expected = read_manifest(directory)["files"]
    os.replace(directory, directory.with_name("candidate.old"))           # the state the crash leaves
    assert not directory.exists()
    assert load_model(directory).labels == ["neg", "pos"] and read_manifest(directory)["files"] == expected
    assert not directory.with_name("candidate.old").exists()

    os.replace(directory, directory.with_name("candidate.old"))
    model_dir(tiny_bert_dir, directory, seed=2)                           # the next save also recovers first
    assert read_manifest(directory)["files"] != expected and not directory.with_name("candidate.old").exists()


def test_an_interrupted_swap_of_the_meta_trained_head_is_recovered(tmp_path: Path) -> None:
    from components.learner import _verified_meta

    meta = tmp_path / "meta"
    meta.with_name("meta.old").mkdir()
    (meta.with_name("meta.old") / "meta.json").write_text('{"files": {}}')
    assert _verified_meta(meta) == {"files": {}} and (meta / "meta.json").is_file()
