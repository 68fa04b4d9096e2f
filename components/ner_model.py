"""Few-shot entity extraction on frozen word features: adaptation from a support set, decoding, explanation and
storage.

Adaptation (seconds on a CPU): support words go through the meta-trained projection head; each entity type is
scored by its prototype (ProtoBERT) or its nearest support word (NNShot); the O class is always scored by its
nearest support word, because "everything else" is many clusters and one mean would swamp rare types; an O bias
and the Viterbi transition weight are chosen by leave-one-sentence-out cross-validation on the support set itself
(entity-level F1). Decoding is Viterbi over BIO labels with StructShot-style abstract transitions estimated on the
source data, so every output span is well formed.
"""
from __future__ import annotations

import functools
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import torch
from safetensors.torch import load_file
from torch.nn import functional as F

from components.entities import (OUTSIDE, Span, bio_labels, spans_from_tags, spans_with_offsets, split_words,
                                  transition_matrix, type_to_bio_emissions, viterbi)
from components.meta import ProjectionHead, small_ops_threading
from components.model_io import (FORMAT_VERSION, MANIFEST, atomic_directory, atomic_save_tensors,
                                 atomic_write_text, sha256, verify)
from components.token_episodes import support_types

Method = Literal["proto", "nnshot"]
TASK = "entities"


@dataclass(frozen=True)
class DecodeSettings:
    """How scores become tags: the type scorer, the O bias (added to O's cosine) and the transition weight."""

    method: Method = "proto"
    o_bias: float = 0.0
    transition_weight: float = 1.0


@dataclass
class EntityModel:
    """An adapted entity extractor: head, support words with their type ids, transitions and decode settings."""

    types: list[str]
    head: ProjectionHead
    support_vectors: np.ndarray          # raw encoder word vectors of the support sentences, row for row
    support_labels: np.ndarray           # 0 = O, i = types[i-1]
    support_sentence: np.ndarray         # which support sentence each row came from
    support_tokens: list[list[str]]      # the support sentences (explain shows their mentions)
    transitions: dict[str, float]        # abstract transition probabilities (entities.abstract_transitions)
    settings: DecodeSettings = DecodeSettings()
    encoder: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    @property
    def labels(self) -> list[str]:
        return bio_labels(self.types)

    def project(self, vectors: np.ndarray) -> np.ndarray:
        """Words through the head, L2-normalised (cosine space)."""
        with torch.no_grad(), small_ops_threading():
            return self.head(torch.from_numpy(np.asarray(vectors, np.float32))).numpy()

    def support_space(self) -> np.ndarray:
        return self.project(self.support_vectors)

    def type_log_probs(self, vectors: np.ndarray, settings: DecodeSettings | None = None) -> np.ndarray:
        """Log p(class | word) over [O, types...] for words (rows)."""
        settings = settings or self.settings
        sims = class_similarities(self.project(vectors), self.support_space(), self.support_labels,
                                  len(self.types) + 1, settings.method)
        return log_softmax(sims, float(self.head.temperature.detach()), settings.o_bias)

    def decode(self, vectors: np.ndarray, settings: DecodeSettings | None = None) -> tuple[list[str], np.ndarray]:
        """BIO tags of one sentence (Viterbi) and each word's probability of its decoded type."""
        settings = settings or self.settings
        log_p = self.type_log_probs(vectors, settings)
        return decode_tags(log_p, self.types, self.transitions, settings.transition_weight)

    def extract(self, vectors: np.ndarray, words: Sequence[str], text: str | None = None,
                offsets: Sequence[tuple[int, int]] | None = None) -> list[Span]:
        """Entity spans of one sentence with type, surface text, offsets (raw text) and mean type probability."""
        tags, scores = self.decode(vectors)
        return spans_with_offsets(spans_from_tags(tags), words, offsets, text, scores)

    def nearest_mentions(self, vector: np.ndarray, top: int = 3) -> list[dict]:
        """The support words most similar to one word (in the head's space) and the mention each belongs to."""
        z = self.project(vector[None])[0]
        sims = self.support_space() @ z
        out = []
        for row in np.argsort(-sims)[:top]:
            sentence = int(self.support_sentence[row])
            label = int(self.support_labels[row])
            out.append({"word": self._support_word(row), "type": OUTSIDE if label == 0 else self.types[label - 1],
                        "similarity": round(float(sims[row]), 4), "sentence": " ".join(self.support_tokens[sentence])})
        return out

    def _support_word(self, row: int) -> str:
        sentence = int(self.support_sentence[row])
        first = int(np.flatnonzero(self.support_sentence == sentence)[0])
        return self.support_tokens[sentence][row - first]


def class_similarities(z: np.ndarray, support: np.ndarray, labels: np.ndarray, n_classes: int,
                       method: Method, exclude: np.ndarray | None = None) -> np.ndarray:
    """Cosine of each word to each class: O by its nearest support word; entity types by their prototype (proto)
    or nearest support word (nnshot). ``exclude`` (words x support rows, bool) hides rows, for leave-one-out."""
    sims = z @ support.T
    if exclude is not None:
        sims = np.where(exclude, -np.inf, sims)
    out = np.full((len(z), n_classes), -1.0, dtype=np.float32)
    for c in range(n_classes):
        member = labels == c
        if not member.any():
            continue
        if c == 0 or method == "nnshot":
            best = sims[:, member].max(axis=1)
            out[:, c] = np.where(np.isfinite(best), best, -1.0)
        else:
            out[:, c] = _prototype_cosines(z, support, member, exclude)
    return out


def _prototype_cosines(z: np.ndarray, support: np.ndarray, member: np.ndarray, exclude: np.ndarray | None) -> np.ndarray:
    """Cosine to the class mean; with ``exclude``, each word's prototype leaves out its hidden rows."""
    if exclude is None:
        proto = support[member].mean(axis=0)
        return (z @ proto) / max(np.linalg.norm(proto), 1e-9)
    keep = (~exclude) & member[None, :]
    counts = keep.sum(axis=1, keepdims=True)
    protos = (keep.astype(np.float32) @ support) / np.maximum(counts, 1)
    cos = (z * protos).sum(axis=1) / np.maximum(np.linalg.norm(protos, axis=1), 1e-9)
    return np.where(counts[:, 0] > 0, cos, -1.0)


def log_softmax(sims: np.ndarray, temperature: float, o_bias: float) -> np.ndarray:
    logits = temperature * (sims + np.eye(1, sims.shape[1], 0, dtype=np.float32) * o_bias)
    logits = logits - logits.max(axis=1, keepdims=True)
    return logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))


@functools.lru_cache(maxsize=64)
def _transitions(types: tuple[str, ...], transitions: tuple[tuple[str, float], ...]) -> tuple[np.ndarray, np.ndarray]:
    """The BIO transition matrix of a type set, built once (decoding calls it per sentence)."""
    return transition_matrix(list(types), dict(transitions))


def decode_tags(log_p: np.ndarray, types: Sequence[str], transitions: dict[str, float],
                weight: float) -> tuple[list[str], np.ndarray]:
    """Viterbi over BIO labels from type-level log probabilities; returns tags and the decoded type's probability."""
    labels = bio_labels(types)
    trans, start = _transitions(tuple(types), tuple(sorted(transitions.items())))
    path = viterbi(type_to_bio_emissions(log_p), trans, start, weight)
    type_index = [0 if j == 0 else (j - 1) // 2 + 1 for j in path]
    return [labels[j] for j in path], np.exp(log_p[np.arange(len(path)), type_index])


# ------------------------------------------------------------------------------------------------- adaptation


def support_labels_of(tag_lists: Sequence[Sequence[str]], types: Sequence[str]) -> np.ndarray:
    index = {t: i + 1 for i, t in enumerate(types)}
    return np.array([0 if t == OUTSIDE else index.get(t[2:], 0) for tags in tag_lists for t in tags], dtype=np.int64)


def adapt_entities(head: ProjectionHead, support_vectors: Sequence[np.ndarray], support_tokens: Sequence[Sequence[str]],
                   support_tags: Sequence[Sequence[str]], transitions: dict[str, float],
                   methods: Sequence[str] = ("proto", "nnshot"), o_biases: Sequence[float] = (-0.15, -0.1, -0.05, 0.0, 0.05),
                   transition_weights: Sequence[float] = (0.5, 1.0), encoder: dict | None = None,
                   other_heads: Sequence[ProjectionHead] = (), head_margin: float = 0.05) -> EntityModel:
    """An EntityModel whose head and decode settings maximise leave-one-sentence-out entity F1 on the support set.

    ``other_heads`` (e.g. the untrained identity head) compete with ``head`` in that CV, as ``adapt.select_head``
    does for sentence labels: meta-training on news entities need not help slot types, and the support set says so.
    An other head must beat ``head``'s best CV F1 by more than ``head_margin``: CV on a handful of sentences is
    noisy, and without a margin it dropped the meta-trained head on a finer_ord 5-shot support where that head
    scored 49 F1 against 24 on held-out sentences. With a single candidate nothing is cross-validated.
    """
    types = support_types(support_tags)
    if not types:
        raise ValueError("the support set has no entity mention: nothing to adapt to")
    heads = [head, *other_heads]
    grid = [DecodeSettings(m, b, w) for m, b, w in itertools.product(methods, o_biases, transition_weights)]
    best, scores = None, {}
    for index, candidate in enumerate(heads):
        model = EntityModel(types, candidate.eval(), np.concatenate(support_vectors).astype(np.float32),
                            support_labels_of(support_tags, types),
                            np.concatenate([np.full(len(v), i) for i, v in enumerate(support_vectors)]),
                            [list(t) for t in support_tokens], dict(transitions), encoder=dict(encoder or {}))
        if len(grid) * len(heads) == 1:
            return _chosen(model, grid[0], {}, 0)
        sims = {m: loo_similarities(model, m) for m in methods}
        for settings in grid:
            scores[(index, settings)] = cross_validated_f1(model, support_tags, settings, sims[settings.method])
            penalty = head_margin if index else 0.0
            key = (scores[(index, settings)] - penalty, -index, -abs(settings.o_bias), settings.transition_weight)
            if best is None or key > best[0]:
                best = (key, model, settings, index)
    return _chosen(best[1], best[2], scores, best[3])


def _chosen(model: EntityModel, settings: DecodeSettings, scores: dict, head_index: int) -> EntityModel:
    model.settings = settings
    model.info = {"types": model.types, "support_sentences": len(model.support_tokens),
                  "settings": settings.__dict__, "head": "given" if head_index == 0 else f"alternative {head_index}",
                  "cv_f1": {f"head{i}|{s.method}|{s.o_bias}|{s.transition_weight}": round(v, 4)
                            for (i, s), v in scores.items()}}
    return model


def loo_similarities(model: EntityModel, method: Method) -> np.ndarray:
    """Class similarities of every support word against the support rows of the other sentences."""
    space = model.support_space()
    exclude = model.support_sentence[:, None] == model.support_sentence[None, :]
    return class_similarities(space, space, model.support_labels, len(model.types) + 1, method, exclude)


def cross_validated_f1(model: EntityModel, support_tags: Sequence[Sequence[str]], settings: DecodeSettings,
                       sims: np.ndarray | None = None) -> float:
    """Leave-one-sentence-out entity micro-F1 of ``settings`` on the support set (each sentence scored against the
    support rows of the other sentences; ``sims`` = ``loo_similarities`` when already computed)."""
    sims = loo_similarities(model, settings.method) if sims is None else sims
    log_p = log_softmax(sims, float(model.head.temperature.detach()), settings.o_bias)
    predicted = []
    for i in range(len(support_tags)):
        rows = model.support_sentence == i
        predicted.append(decode_tags(log_p[rows], model.types, model.transitions, settings.transition_weight)[0])
    return span_f1(support_tags, predicted)


def span_f1(truth: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> float:
    """Entity-level micro-F1 (exact type and boundaries), as seqeval's default mode computes it, without its
    overhead: the support-set CV scores dozens of candidate settings."""
    gold = {(i, s.type, s.start, s.end) for i, tags in enumerate(truth) for s in spans_from_tags(tags)}
    found = {(i, s.type, s.start, s.end) for i, tags in enumerate(predicted) for s in spans_from_tags(tags)}
    hits = len(gold & found)
    return 2 * hits / (len(gold) + len(found)) if gold or found else 0.0


def tag_sentences(model: EntityModel, vectors: Sequence[np.ndarray]) -> list[list[str]]:
    """Decoded BIO tags of many sentences (word vectors per sentence), projected in one pass."""
    if not vectors:
        return []
    log_p = model.type_log_probs(np.concatenate(vectors))
    out, start = [], 0
    for v in vectors:
        out.append(decode_tags(log_p[start:start + len(v)], model.types, model.transitions,
                               model.settings.transition_weight)[0])
        start += len(v)
    return out


def text_entities(model: EntityModel, text: str, vectors_of) -> list[dict]:
    """Spans of raw text: split into words (offsets kept), encode with ``vectors_of(words)``, decode."""
    words, offsets = split_words(text)
    if not words:
        return []
    return [s.as_dict() for s in model.extract(vectors_of(words), words, text, offsets)]


# ------------------------------------------------------------------------------------------------- storage

ENTITY_TENSORS = "entities.safetensors"
ENTITY_SUPPORT = "entity_support.json"


def save_entity_model(model: EntityModel, directory: Path) -> Path:
    """safetensors + JSON + a SHA-256 manifest (``components.model_io.verify`` checks it), written atomically."""
    with atomic_directory(Path(directory)) as staging:
        atomic_save_tensors(model.head.state_dict(), staging / "head.safetensors")
        atomic_save_tensors({"vectors": torch.from_numpy(model.support_vectors).to(torch.float16),
                             "labels": torch.from_numpy(model.support_labels),
                             "sentence": torch.from_numpy(model.support_sentence.astype(np.int64))},
                            staging / ENTITY_TENSORS)
        atomic_write_text(staging / ENTITY_SUPPORT, json.dumps({"tokens": model.support_tokens}, ensure_ascii=False))
        names = ["head.safetensors", ENTITY_TENSORS, ENTITY_SUPPORT]
        manifest = {"format_version": FORMAT_VERSION, "task": TASK, "types": model.types, "labels": model.labels,
                    "dim": int(model.support_vectors.shape[1]), "transitions": model.transitions,
                    "settings": model.settings.__dict__, "encoder": model.encoder, "adapt_info": model.info,
                    "files": {n: sha256(staging / n) for n in names}}
        atomic_write_text(staging / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True))
    return Path(directory)


def load_entity_model(directory: Path) -> EntityModel:
    """A verified entity model directory, on the CPU."""
    directory = Path(directory)
    manifest = verify(directory)
    if manifest.get("task") != TASK:
        raise ValueError(f"{directory}: not an entity model (task {manifest.get('task', 'classification')!r})")
    head = ProjectionHead(manifest["dim"])
    head.load_state_dict(load_file(str(directory / "head.safetensors")))
    tensors = load_file(str(directory / ENTITY_TENSORS))
    support = json.loads((directory / ENTITY_SUPPORT).read_text(encoding="utf-8"))
    return EntityModel(manifest["types"], head.eval(), tensors["vectors"].float().numpy(), tensors["labels"].numpy(),
                       tensors["sentence"].numpy(), support["tokens"], manifest["transitions"],
                       DecodeSettings(**manifest["settings"]), manifest["encoder"], manifest.get("adapt_info", {}))


def is_entity_model(directory: Path) -> bool:
    path = Path(directory) / MANIFEST
    return path.is_file() and json.loads(path.read_text(encoding="utf-8")).get("task") == TASK
