"""Saving and loading an adapted model as a directory of safetensors files plus a checksummed manifest.

Nothing is pickled: a model directory holds tensors and JSON only, and loading refuses any file whose SHA-256
differs from the manifest, so a truncated copy or a tampered file never serves predictions.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors.torch import load_file, save

from components.data import file_sha256 as sha256
from components.meta import CosineClassifier, ProjectionHead

MANIFEST = "model.json"
SUPPORT = "support.json"      # the support texts and labels: what `metaadapt explain` shows as nearest examples
SUPPORT_VECTORS = "support.safetensors"   # their embeddings (float16): explain ranks them without re-encoding
FORMAT_VERSION = 1


class ModelIntegrityError(RuntimeError):
    """A model directory is incomplete or does not match its manifest's checksums."""


class StorageError(OSError):
    """A file or directory could not be written (permissions, disk full, a file where a folder should be).

    Raised after cleaning up: no temporary file is left behind and the previous content is intact.
    """


# ------------------------------------------------------------------------------------------ atomic writes


def _storage_error(path: Path, error: OSError) -> StorageError:
    hint = {errno.ENOSPC: "the disk is full; free space and rerun",
            errno.EDQUOT: "the disk quota is exceeded; free space and rerun",
            errno.EACCES: "permission denied; make it writable or point the project elsewhere",
            errno.EPERM: "operation not permitted; make it writable or point the project elsewhere",
            errno.EROFS: "the file system is read-only",
            errno.ENOTDIR: "a parent of this path is a file, not a directory",
            errno.EEXIST: "a file is in the way where a directory is needed"}.get(error.errno, "")
    return StorageError(f"cannot write {path}: {error.strerror or error}" + (f" ({hint})" if hint else ""))


def _fsync_directory(directory: Path) -> None:
    """Make a rename durable: fsync the directory entry (not supported everywhere; best effort there)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write `data` to `path` via a temporary sibling, fsync and rename: readers see the old file or the new one."""
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        tmp = Path(name)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_directory(path.parent)
    except OSError as error:
        raise _storage_error(path, error) from error
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> Path:
    """A safetensors file written atomically (tensors moved to the CPU and made contiguous first)."""
    return atomic_write_bytes(path, save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}))


def require_writable(directory: Path, purpose: str) -> Path:
    """Fail early, before any expensive work, when `directory` cannot take a file (creates it if missing)."""
    directory = Path(directory)
    probe = None
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=directory)
        with os.fdopen(fd, "wb") as handle:
            handle.write(b"0")
            os.fsync(handle.fileno())
    except OSError as error:
        raise StorageError(f"{purpose} {directory} is not writable: {_storage_error(directory, error)}") from error
    finally:
        if probe is not None:
            Path(probe).unlink(missing_ok=True)
    return directory


@contextlib.contextmanager
def atomic_directory(directory: Path) -> Iterator[Path]:
    """Yield an empty staging directory; on success it replaces `directory`, on failure it is removed.

    A crash mid-write leaves only a hidden ``.<name>-*`` staging folder, never a half-written `directory`;
    a failed write raises StorageError (for OSError) and keeps the previous `directory` as it was.
    """
    directory = Path(directory)
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        recover_interrupted_swap(directory)
        staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}-", dir=directory.parent))
    except OSError as error:
        raise _storage_error(directory, error) from error
    try:
        yield staging
        _swap_in(staging, directory)
    except StorageError:
        raise
    except OSError as error:
        raise _storage_error(directory, error) from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def recover_interrupted_swap(directory: Path) -> bool:
    """Put ``<name>.old`` back when a crash hit between the two renames of `_swap_in` (only the backup is left).

    The backup is the complete previous directory, so renaming it back restores exactly what was there; returns
    True when it did. Called by every load and before every save, so nobody has to do it by hand.
    """
    directory = Path(directory)
    backup = directory.with_name(directory.name + ".old")
    if directory.exists() or not backup.is_dir():
        return False
    os.replace(backup, directory)
    _fsync_directory(directory.parent)
    return True


def _swap_in(staging: Path, directory: Path) -> None:
    """Replace `directory` by `staging`; if the final rename fails the previous directory is put back."""
    for path in staging.iterdir():
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
    backup = directory.with_name(directory.name + ".old")
    shutil.rmtree(backup, ignore_errors=True)
    had_previous = directory.exists()
    if had_previous:
        os.replace(directory, backup)
    try:
        os.replace(staging, directory)
    except OSError:
        if had_previous:
            os.replace(backup, directory)
        raise
    _fsync_directory(directory.parent)
    shutil.rmtree(backup, ignore_errors=True)


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
    support: dict[str, list[str]] | None = None   # {"texts": [...], "labels": [...]} the prototypes came from
    support_vectors: torch.Tensor | None = None   # their encoder embeddings, row for row (None: re-encoded on demand)

    @property
    def labels(self) -> list[str]:
        return self.classifier.labels


def save_model(model: AdaptedModel, directory: Path) -> Path:
    """Write into a temporary sibling, then swap in: a crash mid-write never leaves a half model in place, and a
    failed write (disk full, permissions) raises StorageError with the previous model untouched."""
    directory = Path(directory)
    tensors = {"head.safetensors": model.head.state_dict(), "classifier.safetensors": classifier_tensors(model.classifier)}
    if model.encoder_state:
        tensors["encoder.safetensors"] = model.encoder_state
    if model.support_vectors is not None:
        tensors[SUPPORT_VECTORS] = {"vectors": model.support_vectors.to(torch.float16)}
    with atomic_directory(directory) as staging:
        for name, state in tensors.items():
            atomic_save_tensors(state, staging / name)
        names = list(tensors)
        if model.support:
            atomic_write_text(staging / SUPPORT, json.dumps(model.support, ensure_ascii=False))
            names.append(SUPPORT)
        manifest = {"format_version": FORMAT_VERSION, "labels": model.labels,
                    "temperature": model.classifier.temperature, "dim": int(model.classifier.weights.shape[1]),
                    "classifier_kind": model.classifier.kind, "scale": model.classifier.scale,
                    "prior": model.classifier.prior if model.classifier.log_prior is not None else None,
                    "encoder": model.encoder, "scope": model.scope, "lora": model.lora,
                    "adapt_info": _jsonable(model.classifier.info), "metadata": model.metadata or {},
                    "files": {name: sha256(staging / name) for name in names}}
        atomic_write_text(staging / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))
    return directory


def classifier_tensors(classifier: CosineClassifier) -> dict[str, torch.Tensor]:
    """The classifier's tensors: weights, and the bias and log prior where it has them."""
    tensors = {"weights": classifier.weights}
    if classifier.bias is not None:
        tensors["bias"] = classifier.bias
    if classifier.log_prior is not None:
        tensors["log_prior"] = classifier.log_prior
    return tensors


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def read_manifest(directory: Path) -> dict[str, Any]:
    recover_interrupted_swap(Path(directory))
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
    tensors = load_file(str(directory / "classifier.safetensors"))
    # models saved before calibration and priors existed have neither: cosine kind, scale 1, uniform prior
    classifier = CosineClassifier(manifest["labels"], tensors["weights"], manifest["temperature"],
                                  manifest.get("adapt_info", {}), manifest.get("classifier_kind", "cosine"),
                                  tensors.get("bias"), float(manifest.get("scale", 1.0)), tensors.get("log_prior"))
    encoder_state = load_file(str(directory / "encoder.safetensors")) if "encoder.safetensors" in manifest["files"] else None
    support = json.loads((directory / SUPPORT).read_text(encoding="utf-8")) if SUPPORT in manifest["files"] else None
    support_vectors = load_file(str(directory / SUPPORT_VECTORS))["vectors"].float() \
        if SUPPORT_VECTORS in manifest["files"] else None
    return AdaptedModel(head.eval(), classifier, manifest["encoder"], manifest["scope"], encoder_state,
                        manifest.get("lora"), manifest.get("metadata"), support, support_vectors)
