"""Glue between the configured scope and the meta-learning core: build, save, reload and adapt a learner.

The head scope works on cached embeddings (fast on a CPU); lora/full run texts through a trainable encoder. Both
go through the same ``meta_train`` and ``adapt`` functions, on whatever device the encoder sits on.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file

from components.config import Params
from components.encoder import TextEncoder, load_encoder, pick_device
from components.meta import EmbedFn, Extras, Learner, ProjectionHead, make_extras, zero_shot
from components.model_io import (AdaptedModel, ModelIntegrityError, atomic_directory, atomic_save_tensors,
                                 atomic_write_text, recover_interrupted_swap, save_model, sha256)
from components.scopes import encoder_delta, prepare_encoder, restore_encoder


def encoder_dim(params: Params) -> int:
    from transformers import AutoConfig

    from components.encoder import resolve_model_path

    return int(AutoConfig.from_pretrained(resolve_model_path(params.encoder.name)).hidden_size)


def build_learner(params: Params, dim: int | None = None) -> tuple[Learner, TextEncoder | None]:
    """A fresh learner for the configured scope; the encoder is loaded only when the scope trains it."""
    encoder = None
    if params.meta.scope != "head":
        encoder = prepare_encoder(load_encoder(params.encoder), params.meta.scope, params.meta.lora)
        dim = encoder.dim
    head = ProjectionHead(dim or encoder_dim(params), params.meta.temperature_init)
    device = encoder.device if encoder is not None else pick_device(params.encoder.device)
    return Learner(head, encoder).to(device), encoder


def embed_fn(scope: str, vectors: torch.Tensor, texts: Sequence[str], encoder: TextEncoder | None) -> EmbedFn:
    """Rows -> embeddings: a table lookup (head) or a forward pass through the trainable encoder."""
    if scope == "head":
        return lambda rows: vectors[list(rows)].to(torch.float32)
    assert encoder is not None
    return lambda rows: encoder([texts[i] for i in rows])


def save_learner(learner: Learner, encoder: TextEncoder | None, params: Params, directory: Path, summary: dict) -> None:
    """Head (+ encoder delta) as safetensors and meta.json with their SHA-256, swapped in atomically."""
    tensors = {"head.safetensors": learner.head.state_dict()}
    delta = encoder_delta(encoder, params.meta.scope) if encoder is not None else None
    if delta:
        tensors["encoder.safetensors"] = delta
    with atomic_directory(directory) as staging:
        for name, state in tensors.items():
            atomic_save_tensors(state, staging / name)
        files = {name: sha256(staging / name) for name in tensors}
        atomic_write_text(staging / "meta.json",
                          json.dumps({**summary, "scope": params.meta.scope, "files": files}, indent=2))


def _verified_meta(directory: Path) -> dict:
    """meta.json after checking each listed weights file against its SHA-256 (a tampered head is refused)."""
    recover_interrupted_swap(directory)    # a crash between the two renames of the last save left only .old
    path = directory / "meta.json"
    if not path.is_file():
        raise ModelIntegrityError(f"{directory}: no meta.json; run the meta_train stage first")
    meta = json.loads(path.read_text(encoding="utf-8"))
    if "files" not in meta:
        raise ModelIntegrityError(f"{directory}: meta.json lists no checksums (written by an older version); "
                                  f"rerun the meta_train stage")
    for name, expected in meta["files"].items():
        if not (directory / name).is_file() or sha256(directory / name) != expected:
            raise ModelIntegrityError(f"{directory / name}: missing or checksum mismatch; refusing to load")
    return meta


def load_learner(directory: Path, params: Params) -> tuple[ProjectionHead, TextEncoder, dict | None]:
    """The meta-trained head and an encoder with the meta-trained delta applied (frozen, for adaptation)."""
    meta = _verified_meta(directory)
    state = load_file(str(directory / "head.safetensors"))
    head = ProjectionHead(state["linear.weight"].shape[0])
    head.load_state_dict(state)
    delta = load_file(str(directory / "encoder.safetensors")) if "encoder.safetensors" in meta["files"] else None
    encoder = restore_encoder(load_encoder(params.encoder), meta["scope"], params.meta.lora.model_dump(), delta)
    return head.eval(), encoder, delta


def label_prompt(label: str, descriptions: dict[str, str]) -> str:
    """Zero-shot text for a label: its description when given, else its name in words."""
    return descriptions.get(label) or label.replace("_", " ").replace("-", " ")


def support_extras(params: Params, support: pd.DataFrame, vectors: torch.Tensor, encoder: TextEncoder,
                   labels: list[str]) -> Extras | None:
    """Augmented support rows per ``params.augment`` (None when support-set augmentation is off).

    Text copies go through the same encoder as the support set; paraphrases (opt-in) are loaded only when enabled.
    """
    from components.augment import augment_support, plan_from_config

    plan = plan_from_config(params.augment)
    if not plan.active:
        return None
    paraphrase = None
    if plan.paraphrase_copies:
        from components.paraphrase import paraphraser_from_config

        paraphrase = paraphraser_from_config(params.augment.paraphrase, encoder, params.encoder.batch_size)
    seed = params.seed if params.augment.seed is None else params.augment.seed
    extra = augment_support(support["text"].tolist(), support["label"].tolist(), vectors.cpu().numpy(), plan, seed,
                            lambda texts: encoder.encode(texts, params.encoder.batch_size), paraphrase)
    return make_extras(extra.vectors, extra.labels, extra.origins, labels, vectors.device)


def support_record(support: pd.DataFrame, labels: list[str], descriptions: dict[str, str]) -> dict[str, list[str]]:
    """The examples the prototypes were built from, saved with the model so predictions can be explained
    (zero-shot: the label prompts)."""
    if len(support):
        return {"texts": support["text"].astype(str).tolist(), "labels": support["label"].astype(str).tolist()}
    return {"texts": [label_prompt(label, descriptions) for label in labels], "labels": list(labels)}


def adapt_domain(params: Params, domain: str, meta_dir: Path, support: pd.DataFrame, labels: list[str],
                 descriptions: dict[str, str], out_dir: Path, pool_counts: dict[str, int] | None = None,
                 traffic_texts: Sequence[str] = (), cached_embed: Callable[[list[str]], np.ndarray] | None = None) -> dict:
    """Embed the training rows, fit the classifier the data supports (components.classifier), apply the domain's
    class prior; save the model.

    ``pool_counts`` are the labelled pool's rows per label (the `pool` prior; default: the training rows' counts);
    ``traffic_texts`` are unlabelled rows for the `traffic` prior (EM), embedded here too. ``cached_embed`` (the
    pipeline's embedding cache, valid only while the encoder is the frozen base one: the head scope) spares
    re-encoding thousands of rows that earlier stages already embedded.
    """
    from components.classifier import apply_prior, estimate_prior, fit_classifier

    head, encoder, delta = load_learner(meta_dir, params)
    started = time.perf_counter()
    device = encoder.device
    head = head.to(device)
    if len(support):
        encode = cached_embed if cached_embed is not None and delta is None else \
            (lambda texts: encoder.encode(texts, params.encoder.batch_size))
        vectors = torch.as_tensor(np.asarray(encode(support["text"].tolist())), device=device)
        extras = support_extras(params, support, vectors, encoder, labels)
        prompts = torch.as_tensor(encode([label_prompt(label, descriptions) for label in labels]), device=device)
        embedded = time.perf_counter()
        _, head, classifier = fit_classifier(candidate_heads(head, params), vectors, support["label"].tolist(), params.adapt,
                                             params.seed, label_order=labels, extras=extras, prompts=prompts)
        counts = pool_counts or support["label"].value_counts().to_dict()
        traffic = _traffic_probabilities(classifier, head, encoder, traffic_texts, params)
        estimate = estimate_prior(params.domain_prior(domain), [counts.get(label, 0) for label in labels], traffic,
                                  params.adapt)
        apply_prior(classifier, estimate, params.domain(domain).metric)
    else:
        prompts = [label_prompt(label, descriptions) for label in labels]
        vectors = torch.as_tensor(encoder.encode(prompts, params.encoder.batch_size), device=device)
        embedded = time.perf_counter()
        classifier = zero_shot(head, vectors, labels)
    finished = time.perf_counter()
    classifier.weights = classifier.weights.cpu()
    scope = json.loads((meta_dir / "meta.json").read_text(encoding="utf-8"))["scope"]
    encoder_config, scope, delta, lora = shipped_encoder(params, scope, delta)
    model = AdaptedModel(head.cpu(), classifier, encoder_config, scope, delta, lora,
                         {"domain": domain, "k": params.domain(domain).k, "seed": params.seed},
                         support_record(support, labels, descriptions), vectors.detach().cpu())  # rows or prompts
    save_model(model, out_dir)
    info = classifier.info
    return {"steps": info.get("steps", 0), "method": info.get("method", "zero_shot"), "chosen": info.get("chosen"),
            "cv_balanced_accuracy": info.get("cv_balanced_accuracy", {}), "head": info.get("head", "meta"),
            "scale": info.get("scale", 1.0), "prior": info.get("prior"), "rows_per_label": info.get("rows_per_label"),
            "description_rows": info.get("description_rows", 0),
            "augmented_rows": info.get("augmented_rows", 0),
            "adapt_seconds": finished - embedded, "embed_support_seconds": embedded - started,
            "adapt_total_seconds": finished - started, "support_rows": len(support), "labels": len(labels)}


def shipped_encoder(params: Params, scope: str, delta: dict | None) -> tuple[dict, str, dict | None, dict | None]:
    """(encoder settings, scope, delta, LoRA settings) a model ships with, so that it loads anywhere from the base
    encoder: a tuned encoder (the tune_encoder stage) travels as its own delta, not as a path on this machine."""
    if not params.encoder.tuned:
        return params.encoder.model_dump(), scope, delta, params.meta.lora.model_dump() if scope == "lora" else None
    from components.encoder_tuning import load_tuned

    tuned_scope, lora, tuned_delta, _ = load_tuned(Path(params.encoder.tuned))
    return params.encoder.model_copy(update={"tuned": None}).model_dump(), tuned_scope, tuned_delta, lora


def candidate_heads(head: ProjectionHead, params: Params) -> dict[str, ProjectionHead]:
    """The heads adaptation's cross-validation chooses between: the meta-trained one, and (adapt.select_head) an
    untrained identity head on the same device, for source tasks that do not transfer."""
    heads = {"meta": head}
    if params.adapt.select_head:
        device = next(head.parameters()).device
        heads["identity"] = ProjectionHead(head.linear.in_features, params.meta.temperature_init).to(device)
    return heads


def _traffic_probabilities(classifier, head: ProjectionHead, encoder: TextEncoder, texts: Sequence[str],
                           params: Params):
    """Uniform-prior posteriors of the traffic rows (what EM re-weights), or None without traffic."""
    if not len(texts):
        return None
    return classifier.balanced_proba(head, encoder.encode(list(texts), params.encoder.batch_size))
