"""Meta-training the projection head for entity extraction: word features of the source sentences, word-level
episodes, and ``components.meta.meta_train`` (token-level prototypical loss through the head, frozen encoder).

The pieces are the classification path's own (ProjectionHead, meta_train with validation-chosen epoch, MetaConfig);
only the episodes differ: an Episode's rows are words of the concatenated source sentences, class 0 is O.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import torch

from components.config import EntitiesConfig, MetaConfig
from components.entities import abstract_transitions
from components.episodes import Episode
from components.meta import Learner, MetaTrainResult, ProjectionHead, meta_train
from components.token_episodes import WordPool, sample_word_episodes


@dataclass
class EntityHead:
    head: ProjectionHead
    transitions: dict[str, float]
    result: MetaTrainResult | None


def split_sentences(sources: Sequence[str], seed: int, val_fraction: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation sentence indices, split within each source (validation episodes never share a
    sentence with training episodes)."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for source in sorted(set(sources)):
        members = rng.permutation([i for i, s in enumerate(sources) if s == source])
        cut = max(1, int(len(members) * val_fraction))
        val.extend(members[:cut])
        train.extend(members[cut:])
    return np.sort(np.asarray(train, dtype=np.int64)), np.sort(np.asarray(val, dtype=np.int64))


def source_episodes(tags: Sequence[Sequence[str]], sources: Sequence[str], config: EntitiesConfig,
                    seed: int) -> tuple[list[Episode], list[Episode]]:
    """Train and validation word episodes whose rows index the concatenation of every source sentence's words."""
    lengths = np.array([len(t) for t in tags], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    train_idx, val_idx = split_sentences(sources, seed)
    out = []
    for index, count, offset in ((train_idx, config.train_episodes, 0), (val_idx, config.val_episodes, 1)):
        pool = WordPool.build([sources[i] for i in index], [tags[i] for i in index])
        rows = np.concatenate([np.arange(starts[i], starts[i] + lengths[i]) for i in index]) \
            if len(index) else np.zeros(0, np.int64)
        episodes = sample_word_episodes(pool, count, seed + offset, config.way_min, config.shot_max,
                                        config.query_shots)
        out.append([replace(e, support=rows[e.support].tolist(), query=rows[e.query].tolist()) for e in episodes])
    return out[0], out[1]


def train_head(matrix: np.ndarray, train_eps: Sequence[Episode], val_eps: Sequence[Episode], epochs: int,
               meta: MetaConfig, seed: int) -> tuple[ProjectionHead, MetaTrainResult | None]:
    """The head after ``epochs`` passes of token-level ProtoNet, keeping the validation-best epoch (0 = identity)."""
    head = ProjectionHead(int(matrix.shape[1]), meta.temperature_init)
    if epochs == 0 or not train_eps:
        return head.eval(), None
    learner = Learner(head)
    table = torch.from_numpy(np.ascontiguousarray(matrix, dtype=np.float32))
    config = meta.model_copy(update={"epochs": epochs, "scope": "head", "algorithm": "protonet"})
    result = meta_train(learner, train_eps, val_eps, lambda rows: table[list(rows)], config, seed)
    return learner.head.eval(), result


def train_entity_head(vectors: Sequence[np.ndarray], tags: Sequence[Sequence[str]], sources: Sequence[str],
                      config: EntitiesConfig, meta: MetaConfig, seed: int) -> EntityHead:
    """Episodes, head and the sources' abstract BIO transitions in one call (benchmarks, tests)."""
    train_eps, val_eps = source_episodes(tags, sources, config, seed) if config.epochs else ([], [])
    matrix = np.concatenate(vectors) if len(vectors) else np.zeros((0, 1), np.float32)
    head, result = train_head(matrix, train_eps, val_eps, config.epochs, meta, seed)
    return EntityHead(head, abstract_transitions(tags), result)
