"""A throw-away MetaAdapt project for serving / monitoring tests: the real params.yaml with the tiny random BERT as
encoder, a small reference set, and a champion registered in a real MLflow SQLite store under the project."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
import yaml

from components import registry
from components.config import PROJECT_ROOT, RegistryConfig, load_params
from components.meta import CosineClassifier, ProjectionHead
from components.model_io import AdaptedModel, save_model

DOMAIN = "finance_sentiment"
LABELS = ["neg", "pos"]
WORDS = {"neg": "bad awful loss decline weak poor drop".split(), "pos": "good great gain growth strong rise profit".split()}
COMMON = "the company said its quarterly results were in line with the market".split()


def sentences(n: int, seed: int) -> pd.DataFrame:
    """Short labelled sentences from a fixed vocabulary: a stable 'domain' for drift tests."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(LABELS, n)
    texts = [" ".join(rng.choice(COMMON, rng.integers(4, 9)).tolist() + rng.choice(WORDS[label], 2).tolist())
             for label in labels]
    return pd.DataFrame({"text": texts, "label": labels})


def migrated_store(directory: Path) -> Path:
    """An MLflow SQLite file with its schema migrated (a fresh one costs seconds of migrations): copy it per test."""
    uri = registry.tracking_uri(RegistryConfig(), directory)
    mlflow.MlflowClient(uri, uri).search_experiments()
    return directory / "mlruns" / "mlflow.db"


def make_project(root: Path, tiny_bert: Path, store: Path, register: bool = True) -> Path:
    """params.yaml (tiny encoder), data/prepared/<DOMAIN>/adapt.parquet, and (optionally) a registered champion."""
    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    raw["encoder"].update(name=str(tiny_bert), max_length=32, batch_size=16, device="cpu")
    raw["registry"].update(experiment="tiny", tracking_uri=None)
    raw["drift"]["min_rows"] = 20
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    prepared = root / "data" / "prepared" / DOMAIN
    prepared.mkdir(parents=True)
    reference = sentences(120, seed=0)
    reference.to_parquet(prepared / "adapt.parquet", index=False)
    (root / "mlruns").mkdir()
    shutil.copy(store, root / "mlruns" / "mlflow.db")
    if register:
        support = reference.groupby("label").head(4)
        model_dir = save_model(tiny_model(tiny_bert, support), root / "models" / "candidate")
        params = load_params(root / "params.yaml")
        registry.use_experiment(params.registry, root)
        registry.register_domain_model(domain=DOMAIN, model_dir=model_dir, metrics={"macro_f1": 0.8, "accuracy": 0.8},
                                       params={}, tags={}, artifacts={}, config=params.registry, root=root)
    return root


def tiny_model(tiny_bert: Path, support: pd.DataFrame) -> AdaptedModel:
    """Prototypes = mean tiny-BERT embeddings of the support texts per label (a real, if weak, prototype model)."""
    from components.config import EncoderConfig
    from components.encoder import load_encoder

    torch.manual_seed(0)
    encoder_config = {"name": str(tiny_bert), "max_length": 32, "batch_size": 16, "device": "cpu", "num_threads": 0}
    encoder = load_encoder(EncoderConfig(**encoder_config))
    head = ProjectionHead(32)
    with torch.no_grad():
        vectors = head(torch.as_tensor(encoder.encode(support["text"].tolist(), 16), dtype=torch.float32))
    prototypes = torch.stack([vectors[torch.as_tensor((support["label"] == l).to_numpy())].mean(0) for l in LABELS])
    return AdaptedModel(head, CosineClassifier(LABELS, prototypes, 10.0), encoder_config, "head",
                        support={"texts": support["text"].tolist(), "labels": support["label"].tolist()})


def reset_mlflow() -> None:
    """MLflow keeps the tracking URI, registry URI and active experiment in globals and env vars: reset all."""
    if mlflow.active_run():
        mlflow.end_run()
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)
    mlflow.tracking.fluent._active_experiment_id = None
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID"):
        os.environ.pop(name, None)


def module_project(tmp_path_factory, tiny_bert: Path) -> Path:
    """A serving project for a whole test module (its tests only read it): store migrated once, model registered."""
    store = migrated_store(tmp_path_factory.mktemp("store"))
    root = make_project(tmp_path_factory.mktemp("project"), tiny_bert, store)
    reset_mlflow()
    return root
