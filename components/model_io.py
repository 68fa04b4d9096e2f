"""Saving and loading an adapted model as a directory of safetensors files plus a checksummed manifest.

Nothing is pickled: a model directory holds tensors and JSON only, and loading refuses any file whose SHA-256
differs from the manifest, so a truncated copy or a tampered file never serves predictions.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from components.meta import CosineClassifier, ProjectionHead

MANIFEST = "model.json"
FORMAT_VERSION = 1


class ModelIntegrityError(RuntimeError):
    """A model directory is incomplete or does not match its manifest's checksums."""


@dataclass
class AdaptedModel:
    """Everything needed to predict: the meta-trained head, the adapted classifier, and how to embed texts."""

    head: ProjectionHead
    classifier: CosineClassifier
    encoder: dict[str, Any]                 # EncoderConfig as a dict (name, max_length, ...)
    scope: str                              # head | lora | full
    encoder_state: dict[str, torch.Tensor] | None = None   # LoRA adapter or full encoder weights
    lora: dict[str, Any] | None = None      # LoraConfig as a dict when scope == "lora"
    metadata: dict[str, Any] | None = None

    @property
    def labels(self) -> list[str]:
        return self.classifier.labels


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_model(model: AdaptedModel, directory: Path) -> Path:
    """Write into a temporary sibling, then swap in: a crash mid-write never leaves a half model in place."""
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    tensors = {"head.safetensors": {k: v.detach().cpu().contiguous() for k, v in model.head.state_dict().items()},
               "classifier.safetensors": {"weights": model.classifier.weights.detach().cpu().contiguous()}}
    if model.encoder_state:
        tensors["encoder.safetensors"] = {k: v.detach().cpu().contiguous() for k, v in model.encoder_state.items()}
    for name, state in tensors.items():
        save_file(state, str(staging / name))
    manifest = {"format_version": FORMAT_VERSION, "labels": model.labels, "temperature": model.classifier.temperature,
                "dim": int(model.classifier.weights.shape[1]), "encoder": model.encoder, "scope": model.scope,
                "lora": model.lora, "adapt_info": _jsonable(model.classifier.info), "metadata": model.metadata or {},
                "files": {name: sha256(staging / name) for name in tensors}}
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")
    backup = directory.with_name(directory.name + ".old")
    if directory.exists():
        shutil.rmtree(backup, ignore_errors=True)
        directory.rename(backup)
    staging.rename(directory)
    shutil.rmtree(backup, ignore_errors=True)
    return directory


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def read_manifest(directory: Path) -> dict[str, Any]:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise ModelIntegrityError(f"{directory}: no {MANIFEST}; not a MetaAdapt model directory")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ModelIntegrityError(f"{directory}: model format {manifest.get('format_version')} is not {FORMAT_VERSION}")
    return manifest


def verify(directory: Path) -> dict[str, Any]:
    """The manifest, after checking every listed file exists and matches its SHA-256."""
    manifest = read_manifest(directory)
    for name, expected in manifest["files"].items():
        path = Path(directory) / name
        if not path.is_file():
            raise ModelIntegrityError(f"{path}: listed in the manifest but missing")
        if sha256(path) != expected:
            raise ModelIntegrityError(f"{path}: checksum mismatch (file changed or corrupt); refusing to load")
    return manifest


def load_model(directory: Path) -> AdaptedModel:
    """Load a verified model directory onto the CPU."""
    directory = Path(directory)
    manifest = verify(directory)
    head = ProjectionHead(manifest["dim"])
    head.load_state_dict(load_file(str(directory / "head.safetensors")))
    weights = load_file(str(directory / "classifier.safetensors"))["weights"]
    classifier = CosineClassifier(manifest["labels"], weights, manifest["temperature"], manifest.get("adapt_info", {}))
    encoder_state = load_file(str(directory / "encoder.safetensors")) if "encoder.safetensors" in manifest["files"] else None
    return AdaptedModel(head.eval(), classifier, manifest["encoder"], manifest["scope"], encoder_state,
                        manifest.get("lora"), manifest.get("metadata"))
