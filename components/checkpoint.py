"""Resumable meta-training: checkpoints of the learner, optimizer, RNG states and loop position.

A checkpoint is two files in the run's folder: ``step-<episodes>.safetensors`` (every tensor: trainable weights,
best-so-far weights, optimizer moments, torch RNG states, the epoch's episode order) and ``step-<episodes>.json``
(everything else, plus the SHA-256 of the tensor file). Both are written atomically (temp file, fsync, rename),
the JSON last: it is the commit marker, so a run killed mid-write leaves at most an uncommitted tensor file or a
hidden temp file, which ``latest`` ignores. Nothing is pickled.

The folder is ``data/cache/checkpoints/<domain>/<run key>/``: outside DVC's outputs (DVC deletes a stage's
outputs before rerunning it), and keyed by a hash of everything that determines the run, so a checkpoint is only
ever resumed by the run it belongs to. A successful run removes its domain's checkpoints.
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
import re
import shutil
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from components.meta import Learner, LoopState, TrainingRandomness
from components.model_io import atomic_save_tensors, atomic_write_text, sha256

log = logging.getLogger("metaadapt")
FORMAT = 1
STEP_FILE = re.compile(r"^step-(\d{9})\.json$")


def run_key(settings: dict[str, Any], files: Iterable[Path]) -> str:
    """A hash of the settings (JSON) and the contents of the input files: equal keys mean the same run."""
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode("utf-8"))
    for path in files:
        digest.update(Path(path).name.encode("utf-8"))
        digest.update(sha256(Path(path)).encode("ascii"))
    return digest.hexdigest()[:20]


def checkpoint_root(root: Path, domain: str) -> Path:
    return Path(root) / "data" / "cache" / "checkpoints" / domain


def _trainable(learner: Learner) -> dict[str, torch.Tensor]:
    return {name: p for name, p in learner.named_parameters() if p.requires_grad}


class CheckpointStore:
    """Checkpoints of one run in `directory`, every `every` episodes (0 = never), keeping the newest `keep`."""

    def __init__(self, directory: Path, every: int, keep: int = 2):
        self.directory = Path(directory)
        self.every = every
        self.keep = keep

    def due(self, episodes_done: int) -> bool:
        return self.every > 0 and episodes_done % self.every == 0

    # ------------------------------------------------------------------------------------------- saving

    def save(self, state: LoopState, learner: Learner, optimizer: torch.optim.Optimizer,
             randomness: TrainingRandomness) -> Path:
        """Write one checkpoint (tensor file, then its JSON commit marker) and prune older ones."""
        stem = f"step-{state.episodes_done:09d}"
        tensors, record = _capture(state, learner, optimizer, randomness)
        weights = atomic_save_tensors(tensors, self.directory / f"{stem}.safetensors")
        record["tensors_sha256"] = sha256(weights)
        commit = atomic_write_text(self.directory / f"{stem}.json", json.dumps(record))
        self._prune()
        return commit

    def _prune(self) -> None:
        """Keep the newest `keep` committed checkpoints; drop older ones and uncommitted leftovers."""
        committed = sorted(p for p in self.directory.glob("step-*.json") if STEP_FILE.match(p.name))
        for old in committed[:-self.keep]:
            old.with_suffix(".safetensors").unlink(missing_ok=True)
            old.unlink(missing_ok=True)
        kept = {p.with_suffix(".safetensors").name for p in committed[-self.keep:]}
        for tensor_file in self.directory.glob("step-*.safetensors"):
            if tensor_file.name not in kept:
                tensor_file.unlink(missing_ok=True)
        for temp in self.directory.glob(".step-*.tmp"):
            temp.unlink(missing_ok=True)

    # ------------------------------------------------------------------------------------------ loading

    def latest(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
        """(record, tensors) of the newest committed checkpoint whose tensor file matches its checksum, or None."""
        if not self.directory.is_dir():
            return None
        for commit in sorted(self.directory.glob("step-*.json"), reverse=True):
            if not STEP_FILE.match(commit.name):
                continue
            loaded = _read_checkpoint(commit)
            if loaded is not None:
                return loaded
        return None

    def restore(self, learner: Learner, optimizer: torch.optim.Optimizer,
                randomness: TrainingRandomness) -> LoopState | None:
        """Load the newest complete checkpoint into learner, optimizer and RNGs; None when there is none."""
        loaded = self.latest()
        if loaded is None:
            return None
        record, tensors = loaded
        state = _apply(record, tensors, learner, optimizer, randomness)
        log.info("resuming meta-training from %s: epoch %d, %d episodes done", self.directory, state.epoch,
                 state.episodes_done)
        return state

    def clear(self, whole_domain: bool = True) -> None:
        """Remove this run's checkpoints (by default every run folder of the domain: they are stale now)."""
        shutil.rmtree(self.directory.parent if whole_domain else self.directory, ignore_errors=True)


def _read_checkpoint(commit: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]] | None:
    tensor_file = commit.with_suffix(".safetensors")
    try:
        record = json.loads(commit.read_text(encoding="utf-8"))
        if record.get("format") != FORMAT or not tensor_file.is_file():
            raise ValueError("foreign format or missing tensor file")
        if sha256(tensor_file) != record.get("tensors_sha256"):
            raise ValueError("tensor file checksum mismatch")
        return record, load_file(str(tensor_file))
    except (OSError, ValueError, SafetensorError) as error:
        log.warning("ignoring checkpoint %s: %s", commit, error)
        return None


# --------------------------------------------------------------------------------- state <-> files


def _capture(state: LoopState, learner: Learner, optimizer: torch.optim.Optimizer,
             randomness: TrainingRandomness) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split everything a resume needs into tensors (safetensors) and plain values (JSON)."""
    trainable = _trainable(learner)
    tensors = {f"learner.{name}": p.detach() for name, p in trainable.items()}
    tensors.update({f"best.{name}": state.best_state[name] for name in trainable})
    optim = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in optim["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"optim.{index}.{key}"] = value.detach()
            else:
                scalars.setdefault(str(index), {})[key] = value
    tensors["rng.torch"] = torch.get_rng_state()
    tensors["rng.noise"] = randomness.noise.get_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, cuda_state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = cuda_state
    if state.order is not None:
        tensors["order"] = torch.tensor(state.order, dtype=torch.int64)
    np_state = np.random.get_state()
    record = {"format": FORMAT, "epoch": state.epoch, "index": state.index, "episodes_done": state.episodes_done,
              "epoch_losses": state.epoch_losses, "losses": state.losses, "val_acc": state.val_acc,
              "seconds": state.seconds, "trainable": sorted(trainable),
              "optimizer": {"param_groups": optim["param_groups"], "scalars": scalars},
              "rng": {"python": random.getstate(), "order": randomness.order.bit_generator.state,
                      "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]]}}
    return {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, record


def _apply(record: dict[str, Any], tensors: dict[str, torch.Tensor], learner: Learner,
           optimizer: torch.optim.Optimizer, randomness: TrainingRandomness) -> LoopState:
    """Put a checkpoint back into the live objects and return the loop position."""
    trainable = _trainable(learner)
    if sorted(trainable) != record["trainable"]:
        raise ValueError(f"checkpoint trains {len(record['trainable'])} tensors, this learner "
                         f"{len(trainable)}: it belongs to another configuration")
    best_state = {k: v.detach().clone() for k, v in learner.state_dict().items()}
    with torch.no_grad():
        for name, param in trainable.items():
            param.copy_(tensors[f"learner.{name}"])
            best_state[name] = tensors[f"best.{name}"].to(param.device, param.dtype)
    optimizer.load_state_dict(_optimizer_state(record["optimizer"], tensors))
    _restore_rngs(record["rng"], tensors, randomness)
    order = tensors["order"].tolist() if "order" in tensors else None
    return LoopState(val_acc=list(record["val_acc"]), best_state=best_state, epoch=record["epoch"],
                     index=record["index"], order=order, epoch_losses=list(record["epoch_losses"]),
                     losses=list(record["losses"]), episodes_done=record["episodes_done"],
                     seconds=record["seconds"])


def _optimizer_state(saved: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, tensor in tensors.items():
        if key.startswith("optim."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = tensor
    for index, values in saved["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": saved["param_groups"]}


def _restore_rngs(saved: dict[str, Any], tensors: dict[str, torch.Tensor], randomness: TrainingRandomness) -> None:
    version, internal, gauss = saved["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = saved["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    randomness.order.bit_generator.state = saved["order"]
    torch.set_rng_state(tensors["rng.torch"])
    randomness.noise.set_state(tensors["rng.noise"])
    cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
