"""Encoder meta-fine-tuning: train the encoder itself on the meta-training source tasks, once per source set.

The meta-learned head adapts a frozen encoder's space; when the sources are close to the target (intents from other
assistants, sentiment from other products) the encoder can be moved toward "texts with the same label of the same
task sit together" — the supervised contrastive pre-fine-tuning of Zhang et al. 2021 (CPFT) and the body training
of SetFit — so that K examples of a new task form tighter clusters. Each step draws one source task and a balanced
batch of its labels (``labels_per_batch`` × ``rows_per_label``) and minimises the supervised contrastive loss
(Khosla et al. 2020) on the mean-pooled, L2-normalised embeddings. Labels never mix across tasks: "positive" in
tweets and "positive" in reviews are different classes.

Two trainable scopes: ``lora`` (peft adapters on attention; a few hundred kB to ship) and ``full`` (every weight; the
whole encoder ships with each model). Training sequences are cut to ``max_length`` tokens (short texts are the
norm in the sources, and the cost is quadratic in length) and each batch is padded only to its own longest text.

The result is keyed by content (``tuning_key``: the base encoder, the source rows' fingerprint and these settings),
so every domain naming the same sources reuses one tuned encoder (the tune_encoder stage).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from components.config import EncoderConfig, EncoderTuningConfig
from components.encoder import TextEncoder

log = logging.getLogger("metaadapt")
FORMAT = 1


@dataclass(frozen=True)
class SourceRows:
    """The meta-training rows as the tuner sees them: text, its source task and its label within that task."""

    texts: list[str]
    tasks: list[str]
    labels: list[str]

    def __post_init__(self) -> None:
        if not (len(self.texts) == len(self.tasks) == len(self.labels)):
            raise ValueError("texts, tasks and labels must have the same length")

    def fingerprint(self) -> str:
        """SHA-256 over every (task, label, text): equal fingerprints mean the same training rows."""
        digest = hashlib.sha256()
        for task, label, text in sorted(zip(self.tasks, self.labels, self.texts)):
            digest.update(f"{task}\x1f{label}\x1f{text}\x1e".encode("utf-8"))
        return digest.hexdigest()


def tuning_key(encoder: EncoderConfig, rows: SourceRows, config: EncoderTuningConfig, seed: int) -> str:
    """What determines the tuned weights: base encoder, training rows, tuning settings, seed and format."""
    settings = {"encoder": encoder.name, "config": config.model_dump(), "seed": seed, "format": FORMAT,
                "rows": rows.fingerprint()}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def label_groups(rows: SourceRows, min_rows: int = 2) -> dict[str, list[np.ndarray]]:
    """Row indices per label, per task; labels with fewer than ``min_rows`` rows have no positive pair and are
    left out, and so are tasks left with fewer than two labels."""
    tasks = np.asarray(rows.tasks)
    labels = np.asarray(rows.labels)
    groups: dict[str, list[np.ndarray]] = {}
    for task in sorted(set(rows.tasks)):
        in_task = tasks == task
        per_label = [np.flatnonzero(in_task & (labels == label)) for label in sorted(set(labels[in_task]))]
        per_label = [idx for idx in per_label if len(idx) >= min_rows]
        if len(per_label) >= 2:
            groups[task] = per_label
    return groups


def batch_plan(groups: dict[str, list[np.ndarray]], steps: int, labels_per_batch: int, rows_per_label: int,
               seed: int, min_batch_rows: int = 0) -> list[np.ndarray]:
    """Row indices of each step's batch: a task drawn in proportion to the square root of its row count (large
    sources do not drown small ones), then up to ``labels_per_batch`` of its labels, ``rows_per_label`` rows each —
    more per label when the task has few labels, so a batch has at least ``min_batch_rows`` rows (a binary task
    would otherwise give 8-row batches with too few negatives)."""
    if not groups:
        raise ValueError("encoder tuning needs a source task with at least two labels of two rows each")
    rng = np.random.default_rng(seed)
    names = sorted(groups)
    weights = np.sqrt([sum(len(idx) for idx in groups[name]) for name in names])
    weights /= weights.sum()
    plan = []
    for _ in range(steps):
        per_label = groups[names[rng.choice(len(names), p=weights)]]
        chosen = rng.choice(len(per_label), size=min(labels_per_batch, len(per_label)), replace=False)
        per = max(rows_per_label, math.ceil(min_batch_rows / len(chosen)))
        plan.append(np.concatenate([rng.choice(per_label[c], size=min(per, len(per_label[c])), replace=False)
                                    for c in chosen]))
    return plan


def supervised_contrastive_loss(embeddings: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """SupCon (Khosla et al. 2020) on L2-normalised rows: every other row of the same label is a positive."""
    z = torch.nn.functional.normalize(embeddings, dim=-1)
    logits = z @ z.T / temperature
    self_mask = torch.eye(len(z), dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    counts = positives.sum(dim=1)
    keep = counts > 0
    per_row = -(log_prob.masked_fill(~positives, 0.0).sum(dim=1)[keep] / counts[keep])
    return per_row.mean()


def _optimizer(encoder: TextEncoder, config: EncoderTuningConfig, steps: int):
    trainable = [p for p in encoder.parameters() if p.requires_grad]
    lr = config.lora_lr if config.scope == "lora" else config.lr
    optimizer = torch.optim.AdamW(trainable, lr=lr, weight_decay=config.weight_decay)
    warmup = max(1, int(0.1 * steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) * max(0.0, (steps - step) / max(1, steps - warmup))
        if step >= warmup else (step + 1) / warmup)
    return trainable, optimizer, schedule


def _checkpoint(directory: Path, step: int, losses: list[float], trainable: list[torch.Tensor], optimizer) -> None:
    """Trainable weights and AdamW moments after `step` steps; the JSON (written last) commits the checkpoint."""
    from components.model_io import atomic_save_tensors, atomic_write_text

    directory.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for i, parameter in enumerate(trainable):
        tensors[f"weight.{i}"] = parameter.detach().cpu().contiguous()
        state = optimizer.state.get(parameter, {})
        for name in ("exp_avg", "exp_avg_sq"):
            if name in state:
                tensors[f"{name}.{i}"] = state[name].detach().cpu().contiguous()
    atomic_save_tensors(tensors, directory / "checkpoint.safetensors")
    atomic_write_text(directory / "checkpoint.json", json.dumps({"step": step, "losses": losses}))


def _resume(directory: Path | None, trainable: list[torch.Tensor], optimizer, schedule) -> tuple[int, list[float]]:
    """(first step, losses so far) from the folder's checkpoint, restoring weights and moments; (0, []) without."""
    if directory is None or not (directory / "checkpoint.json").is_file():
        return 0, []
    from safetensors.torch import load_file

    meta = json.loads((directory / "checkpoint.json").read_text(encoding="utf-8"))
    tensors = load_file(str(directory / "checkpoint.safetensors"))
    with torch.no_grad():
        for i, parameter in enumerate(trainable):
            parameter.copy_(tensors[f"weight.{i}"])
            if f"exp_avg.{i}" in tensors:
                optimizer.state[parameter] = {"step": torch.tensor(float(meta["step"])),
                                              "exp_avg": tensors[f"exp_avg.{i}"].to(parameter.device),
                                              "exp_avg_sq": tensors[f"exp_avg_sq.{i}"].to(parameter.device)}
    with warnings.catch_warnings():   # replaying the schedule's position, not skipping an optimizer step
        warnings.simplefilter("ignore", UserWarning)
        for _ in range(meta["step"]):
            schedule.step()
    return int(meta["step"]), list(meta["losses"])


def contrastive_tune(encoder: TextEncoder, rows: SourceRows, config: EncoderTuningConfig, seed: int,
                 progress: Callable[[str], None] | None = None, checkpoints: Path | None = None) -> dict:
    """Train ``encoder`` in place (its trainable scope already prepared) with the supervised contrastive loss.

    Stops after ``config.steps`` steps or ``config.max_minutes`` of wall time, whichever comes first (a CPU budget:
    the same settings run further on a GPU). With ``checkpoints`` (a folder keyed like the result), the trainable
    weights and optimizer moments are saved every ``config.checkpoint_every`` steps and a killed run resumes from
    the last one (the batch plan is a function of the seed, so it continues where it stopped).
    Returns a summary of what was done.
    """
    torch.manual_seed(seed)
    groups = label_groups(rows)
    plan = batch_plan(groups, config.steps, config.labels_per_batch, config.rows_per_label, seed,
                      config.min_batch_rows)
    trainable, optimizer, schedule = _optimizer(encoder, config, len(plan))
    first_step, losses = _resume(checkpoints, trainable, optimizer, schedule)
    if first_step and progress:
        progress(f"encoder tuning resumed at step {first_step} from {checkpoints}")
    if config.gradient_checkpointing and hasattr(encoder.model, "gradient_checkpointing_enable"):
        encoder.model.gradient_checkpointing_enable()
    task_label = {key: i for i, key in enumerate(sorted(set(zip(rows.tasks, rows.labels))))}
    codes = np.asarray([task_label[key] for key in zip(rows.tasks, rows.labels)])
    saved_length, encoder.max_length = encoder.max_length, config.max_length
    started, done = time.perf_counter(), first_step
    encoder.train()
    try:
        for step, batch in enumerate(plan[first_step:], start=first_step):
            if config.max_minutes and time.perf_counter() - started > 60 * config.max_minutes:
                break
            loss = supervised_contrastive_loss(encoder([rows.texts[i] for i in batch]),
                                               torch.as_tensor(codes[batch], device=encoder.device),
                                               config.temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            schedule.step()
            losses.append(float(loss.detach()))
            done = step + 1
            if checkpoints is not None and config.checkpoint_every and done % config.checkpoint_every == 0:
                _checkpoint(checkpoints, done, losses, trainable, optimizer)
            if progress and (done % 50 == 0 or done == len(plan)):
                progress(f"encoder tuning step {done}/{len(plan)}: loss {np.mean(losses[-50:]):.3f} "
                         f"({time.perf_counter() - started:.0f} s)")
    finally:
        encoder.max_length = saved_length
        encoder.eval()
        encoder.requires_grad_(False)
    window = max(1, min(50, len(losses) // 3))    # mean loss of the first and last stretch of steps
    first, last = losses[:window], losses[-window:]
    return {"steps": done, "planned_steps": len(plan), "seconds": round(time.perf_counter() - started, 1),
            "loss_first": float(np.mean(first)) if first else math.nan,
            "loss_last": float(np.mean(last)) if last else math.nan, "tasks": len(groups),
            "rows": len(rows.texts), "scope": config.scope}


def source_rows(pool, max_rows: int | None, seed: int) -> SourceRows:
    """The meta pool (text, label, source) as SourceRows, capped to ``max_rows`` rows balanced over tasks."""
    frame = pool[["text", "label", "source"]]
    if max_rows is not None and len(frame) > max_rows:
        per_task = max(1, max_rows // frame["source"].nunique())
        frame = frame.groupby("source", group_keys=False).apply(
            lambda part: part.sample(n=min(len(part), per_task), random_state=seed))
    return SourceRows(frame["text"].astype(str).tolist(), frame["source"].astype(str).tolist(),
                      frame["label"].astype(str).tolist())


def describe(summary: dict) -> str:
    """One log line for a tuning summary."""
    return (f"{summary['scope']} tuning: {summary['steps']} steps over {summary['tasks']} source tasks in "
            f"{summary['seconds']:.0f} s, loss {summary['loss_first']:.3f} -> {summary['loss_last']:.3f}")


# ------------------------------------------------------------------------------------- the content-keyed store


def store_dir(root: Path, key: str) -> Path:
    """Where the tuned encoder of one key lives: outside DVC's per-stage outputs, shared by every domain."""
    return Path(root) / "data" / "cache" / "encoders" / key


def save_tuned(directory: Path, scope: str, lora: dict | None, delta: dict[str, torch.Tensor], summary: dict) -> Path:
    """The delta (LoRA adapter tensors, or every weight for `full`) and tuned.json with its SHA-256, atomically."""
    from components.model_io import atomic_directory, atomic_save_tensors, atomic_write_text, sha256

    with atomic_directory(directory) as staging:
        atomic_save_tensors(delta, staging / "encoder.safetensors")
        meta = {"format": FORMAT, "scope": scope, "lora": lora, "sha256": sha256(staging / "encoder.safetensors"),
                "summary": summary}
        atomic_write_text(staging / "tuned.json", json.dumps(meta, indent=2))
    return directory


def load_tuned(directory: Path) -> tuple[str, dict | None, dict[str, torch.Tensor], dict]:
    """(scope, lora settings, delta, summary) of a stored tuned encoder, after checking its checksum."""
    from safetensors.torch import load_file

    from components.model_io import ModelIntegrityError, sha256

    meta_path = Path(directory) / "tuned.json"
    if not meta_path.is_file():
        raise ModelIntegrityError(f"{directory}: no tuned.json; rerun the tune_encoder stage")
    meta = json.loads(meta_path.read_text(encoding="utf-8"))
    weights = Path(directory) / "encoder.safetensors"
    if not weights.is_file() or sha256(weights) != meta.get("sha256"):
        raise ModelIntegrityError(f"{weights}: missing or checksum mismatch; refusing to load")
    return meta["scope"], meta.get("lora"), load_file(str(weights)), meta.get("summary", {})


def apply_tuned(encoder: TextEncoder, directory: Path) -> TextEncoder:
    """The base encoder with a stored tuning applied (LoRA merged), frozen: what every later stage embeds with."""
    from components.scopes import restore_encoder

    scope, lora, delta, _ = load_tuned(directory)
    return restore_encoder(encoder, scope, lora, delta)
