"""N-way K-shot episodes for entity extraction: greedy support sampling (Yang and Katiyar 2020) and meta-training
episodes over word rows, so the project's meta-learner (``components.meta.meta_train``) trains the projection head
with a token-level prototypical loss unchanged.

Why greedy: sentences carry several mentions of several types, so "K sentences per type" is not K mentions per
type. The sampler adds sentences in random order while some type still has fewer than K mentions, skipping a
sentence that would push a type beyond 2K when it can, so each type ends with K..2K mentions (fewer only when the
pool has fewer).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from components.entities import OUTSIDE, mention_counts, restrict_tags, spans_from_tags
from components.episodes import Episode


class SamplingError(ValueError):
    """The pool cannot give every requested type K mentions."""


def sentence_mentions(tag_lists: Sequence[Sequence[str]]) -> list[dict[str, int]]:
    """Mentions per type in each sentence."""
    return [mention_counts([tags]) for tags in tag_lists]


def greedy_support(mentions: Sequence[dict[str, int]], types: Sequence[str], k: int, rng: np.random.Generator,
                   exclude: set[int] = frozenset(), strict: bool = True) -> list[int]:
    """Sentence indices whose mentions give every type in ``types`` at least ``k`` (greedy, Yang and Katiyar 2020).

    ``strict``: a type the pool cannot fill raises SamplingError; otherwise the support takes what there is.
    """
    wanted = set(types)
    counts = dict.fromkeys(types, 0)
    chosen: list[int] = []
    order = [i for i in rng.permutation(len(mentions)) if i not in exclude and wanted & set(mentions[i])]
    deferred = []
    for i in order:
        own = {t: c for t, c in mentions[i].items() if t in wanted}
        if not any(counts[t] < k for t in own):
            continue
        if any(counts[t] + c > 2 * k for t, c in own.items()):
            deferred.append(i)  # would overshoot 2K: used only if nothing else fills the gap
            continue
        _take(i, own, counts, chosen)
        if all(c >= k for c in counts.values()):
            return chosen
    for i in deferred:
        own = {t: c for t, c in mentions[i].items() if t in wanted}
        if any(counts[t] < k for t in own):
            _take(i, own, counts, chosen)
    short = {t: c for t, c in counts.items() if c < k}
    if short and strict:
        raise SamplingError(f"too few mentions for a {k}-shot support: " +
                            ", ".join(f"{t} has {c}" for t, c in sorted(short.items())))
    return chosen


def _take(i: int, own: dict[str, int], counts: dict[str, int], chosen: list[int]) -> None:
    chosen.append(int(i))
    for t, c in own.items():
        counts[t] += c


@dataclass(frozen=True)
class WordPool:
    """Sentences of the meta-training sources flattened to word rows (``offsets[i]`` = first word of sentence i)."""

    source: list[str]
    tags: list[list[str]]
    offsets: np.ndarray

    @classmethod
    def build(cls, sources: Sequence[str], tag_lists: Sequence[Sequence[str]]) -> "WordPool":
        lengths = np.array([len(t) for t in tag_lists], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if len(lengths) else np.zeros(0, np.int64)
        return cls(list(sources), [list(t) for t in tag_lists], offsets)

    def rows(self, sentence: int) -> range:
        start = int(self.offsets[sentence])
        return range(start, start + len(self.tags[sentence]))


def word_episode(pool: WordPool, sentences: Sequence[int], query: Sequence[int], types: Sequence[str],
                 source: str) -> Episode:
    """An Episode over word rows: class 0 is O (and every type outside the episode), class i the i-th type."""
    index = {t: i + 1 for i, t in enumerate(types)}

    def rows_and_labels(chosen):
        rows, labels = [], []
        for s in chosen:
            tags = restrict_tags(pool.tags[s], types)
            rows.extend(pool.rows(s))
            labels.extend(0 if t == OUTSIDE else index[t[2:]] for t in tags)
        return rows, labels

    s_rows, s_labels = rows_and_labels(sentences)
    q_rows, q_labels = rows_and_labels(query)
    return Episode(source, [OUTSIDE, *types], s_rows, s_labels, q_rows, q_labels)


def sample_word_episodes(pool: WordPool, count: int, seed: int, way_min: int = 2, shot_max: int = 5,
                         query_shots: int = 2) -> list[Episode]:
    """``count`` episodes: a source, N of its types (way_min..all), K in 1..shot_max, a greedy support and a
    disjoint greedy query of ``query_shots`` mentions per type."""
    by_source: dict[str, list[int]] = {}
    for i, s in enumerate(pool.source):
        by_source.setdefault(s, []).append(i)
    mentions = sentence_mentions(pool.tags)
    episodes = []
    for e in range(count):
        rng = np.random.default_rng([seed, e])
        source = sorted(by_source)[int(rng.integers(len(by_source)))]
        members = by_source[source]
        local = [mentions[i] for i in members]
        all_types = sorted({t for m in local for t in m})
        way = int(rng.integers(min(way_min, len(all_types)), len(all_types) + 1))
        types = sorted(rng.choice(all_types, size=way, replace=False).tolist())
        k = int(rng.integers(1, shot_max + 1))
        support = greedy_support(local, types, k, rng, strict=False)
        query = greedy_support(local, types, query_shots, rng, exclude=set(support), strict=False)
        episodes.append(word_episode(pool, [members[i] for i in support], [members[i] for i in query], types, source))
    return episodes


def support_types(tag_lists: Sequence[Sequence[str]]) -> list[str]:
    """Entity types present in a support set, sorted."""
    return sorted({s.type for tags in tag_lists for s in spans_from_tags(tags)})
