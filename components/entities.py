"""Entity spans in BIO tags: reading token files, checking and repairing BIO, spans with character offsets, and
Viterbi decoding under BIO transition constraints (StructShot-style abstract transitions).

Why a separate module: sentence classification has one label per text; entity extraction has one tag per word and
its outputs are spans. Everything here is pure (no encoder, no I/O beyond reading a file) so it is unit-tested on
hand-made sentences.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from components.data import DataError, require_nonempty_file

TOKEN_READERS = {".jsonl": "jsonl", ".json": "jsonl", ".conll": "conll", ".txt": "conll", ".tsv": "conll",
                 ".iob": "conll", ".bio": "conll"}
WORD_RE = re.compile(r"\w+(?:[-'’.]\w+)*|[^\w\s]", re.UNICODE)
OUTSIDE = "O"


@dataclass(frozen=True)
class Span:
    """One entity: its type, word range [start, end), and (for raw text) character offsets and a score."""

    type: str
    start: int
    end: int
    text: str = ""
    char_start: int | None = None
    char_end: int | None = None
    score: float | None = None

    def as_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


# ------------------------------------------------------------------------------------------------- reading


def read_token_file(path: Path, tokens_column: str = "tokens", tags_column: str = "tags") -> pd.DataFrame:
    """A JSONL ({tokens, tags}) or CoNLL column file (token first, tag last, blank line between sentences) as a
    frame with list columns ``tokens`` and ``tags``; errors name the file and the fix, the file is only read."""
    path = Path(path)
    kind = TOKEN_READERS.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"{path}: unsupported token file type {path.suffix!r}; use one of {sorted(TOKEN_READERS)}")
    require_nonempty_file(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not valid UTF-8 (byte {error.start}); re-save the file as UTF-8") from None
    rows = _jsonl_rows(text, path, tokens_column, tags_column) if kind == "jsonl" else _conll_rows(text)
    if not rows:
        raise DataError(f"{path}: no sentences found")
    return pd.DataFrame(rows, columns=["tokens", "tags"])


def _jsonl_rows(text: str, path: Path, tokens_column: str, tags_column: str) -> list[tuple[list, list]]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}: line {number} is not JSON ({error.msg})") from None
        if not isinstance(record, dict) or tokens_column not in record or tags_column not in record:
            found = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise DataError(f"{path}: line {number} lacks {tokens_column!r}/{tags_column!r}; found {found}. "
                            f"Set tokens_column/tags_column for this data set in params.yaml")
        tokens, tags = record[tokens_column], record[tags_column]
        if not isinstance(tokens, list) or not isinstance(tags, list):
            raise DataError(f"{path}: line {number}: {tokens_column!r} and {tags_column!r} must be JSON lists")
        rows.append(([str(t) for t in tokens], [str(t) for t in tags]))
    return rows


def _conll_rows(text: str) -> list[tuple[list, list]]:
    """CoNLL columns: first column the token, last the tag; ``-DOCSTART-`` lines dropped."""
    rows, tokens, tags = [], [], []
    for line in text.splitlines() + [""]:
        fields = line.split()
        if fields and fields[0] == "-DOCSTART-":
            continue
        if not fields:
            if tokens:
                rows.append((tokens, tags))
            tokens, tags = [], []
            continue
        tokens.append(fields[0])
        tags.append(fields[-1] if len(fields) > 1 else "")
    return rows


# ------------------------------------------------------------------------------------------------- BIO


def tag_type(tag: str) -> str | None:
    """The entity type of a BIO tag (None for O)."""
    return None if tag == OUTSIDE else tag[2:]


def bio_errors(tags: Sequence[str]) -> list[str]:
    """What is wrong with one sentence's BIO tags: malformed tags and ``I-X`` not preceded by ``B-X``/``I-X``."""
    problems, previous = [], OUTSIDE
    for i, tag in enumerate(tags):
        if tag != OUTSIDE and (len(tag) < 3 or tag[:2] not in ("B-", "I-")):
            problems.append(f"tag {i} {tag!r} is not O, B-TYPE or I-TYPE")
        elif tag.startswith("I-") and previous not in (f"B-{tag[2:]}", tag):
            problems.append(f"tag {i} {tag!r} follows {previous!r} (an I- needs its B-)")
        previous = tag
    return problems


def entity_types(tag_lists: Iterable[Sequence[str]]) -> list[str]:
    """Sorted entity types named by B-/I- tags."""
    return sorted({t[2:] for tags in tag_lists for t in tags if t[:2] in ("B-", "I-") and len(t) > 2})


def spans_from_tags(tags: Sequence[str]) -> list[Span]:
    """Spans of a valid BIO sequence (an orphan I- starts a span, as seqeval's default mode does)."""
    spans, start, kind = [], None, None
    for i, tag in enumerate(list(tags) + [OUTSIDE]):
        continues = tag.startswith("I-") and kind == tag[2:]
        if start is not None and not continues:
            spans.append(Span(kind, start, i))
            start, kind = None, None
        if tag != OUTSIDE and not continues:
            start, kind = i, tag[2:]
    return spans


def mention_counts(tag_lists: Iterable[Sequence[str]]) -> dict[str, int]:
    """Entity mentions (B- tags) per type."""
    counts: dict[str, int] = {}
    for tags in tag_lists:
        for span in spans_from_tags(tags):
            counts[span.type] = counts.get(span.type, 0) + 1
    return counts


def restrict_tags(tags: Sequence[str], types: Iterable[str]) -> list[str]:
    """Tags of other entity types become O (how an N-way episode sees a sentence)."""
    keep = set(types)
    return [t if t != OUTSIDE and t[2:] in keep else OUTSIDE for t in tags]


# ------------------------------------------------------------------------------------------------- text


def split_words(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    """Words and punctuation of raw text with their character offsets (what the pyfunc and the CLI tag)."""
    matches = list(WORD_RE.finditer(text))
    return [m.group() for m in matches], [(m.start(), m.end()) for m in matches]


def spans_with_offsets(spans: Sequence[Span], words: Sequence[str], offsets: Sequence[tuple[int, int]] | None,
                       text: str | None, scores: np.ndarray | None = None) -> list[Span]:
    """Spans given their surface text, character offsets (when the words came from raw text) and mean score."""
    out = []
    for s in spans:
        score = float(np.mean(scores[s.start:s.end])) if scores is not None else None
        if offsets is not None and text is not None:
            a, b = offsets[s.start][0], offsets[s.end - 1][1]
            out.append(Span(s.type, s.start, s.end, text[a:b], a, b, score))
        else:
            out.append(Span(s.type, s.start, s.end, " ".join(words[s.start:s.end]), score=score))
    return out


# ------------------------------------------------------------------------------------------------- decoding

# Abstract transitions (Hou et al. 2020, StructShot): probabilities between O, a B/I of the same type and a B of
# another type, estimated on the source data and shared by every target type set.
ABSTRACT = ("O->O", "O->B", "B->O", "B->I", "B->B_same", "B->B_other", "I->O", "I->I", "I->B_same", "I->B_other")


def bio_labels(types: Sequence[str]) -> list[str]:
    """O, then B-/I- of each type in order."""
    return [OUTSIDE] + [f"{p}-{t}" for t in types for p in ("B", "I")]


def abstract_transitions(tag_lists: Iterable[Sequence[str]], smoothing: float = 1.0) -> dict[str, float]:
    """Estimate the abstract transition probabilities from BIO data (add-``smoothing`` counts, per-origin normalised,
    with the B/I "other type" mass split by nothing: it is per target type pair, see ``transition_matrix``)."""
    counts = {key: smoothing for key in ABSTRACT}
    for tags in tag_lists:
        for a, b in zip(tags, tags[1:]):
            key = _abstract_key(a, b)
            if key is not None:
                counts[key] += 1
    probs = {}
    for origin in ("O", "B", "I"):
        keys = [k for k in ABSTRACT if k.startswith(origin + "->")]
        total = sum(counts[k] for k in keys)
        probs.update({k: counts[k] / total for k in keys})
    return probs


def _abstract_key(a: str, b: str) -> str | None:
    origin = "O" if a == OUTSIDE else a[0]
    if b == OUTSIDE:
        return f"{origin}->O"
    if b.startswith("I-"):
        if a == OUTSIDE or a[2:] != b[2:]:
            return None  # invalid BIO: not counted
        return f"{origin}->I"
    if origin == "O":
        return "O->B"
    return f"{origin}->B_same" if a[2:] == b[2:] else f"{origin}->B_other"


def transition_matrix(types: Sequence[str], probs: dict[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """Log transition scores between ``bio_labels(types)`` (``-inf`` where BIO forbids it) and log start scores.

    The "O->B" and "B->B_other" masses are shared equally among the target types they can go to.
    """
    labels = bio_labels(types)
    n_types = max(len(types), 1)
    trans = np.full((len(labels), len(labels)), -np.inf)
    start = np.full(len(labels), -np.inf)
    for j, b in enumerate(labels):
        start[j] = np.log(probs["O->O"]) if b == OUTSIDE else (np.log(probs["O->B"] / n_types) if b[0] == "B" else -np.inf)
        for i, a in enumerate(labels):
            key = _abstract_key(a, b)
            if key is None:
                continue
            p = probs[key]
            if key == "O->B":
                p /= n_types
            elif key.endswith("B_other"):
                p /= max(n_types - 1, 1)
            trans[i, j] = np.log(p)
    return trans, start


def viterbi(emissions: np.ndarray, trans: np.ndarray, start: np.ndarray, weight: float = 1.0) -> list[int]:
    """Best label path for one sentence: log emissions (words x labels) plus ``weight`` x transitions.

    Forbidden transitions are ``-inf`` whatever the weight, so the result is always well-formed BIO.
    """
    n, m = emissions.shape
    if n == 0:
        return []
    trans_w = np.where(np.isinf(trans), -np.inf, weight * trans)
    start_w = np.where(np.isinf(start), -np.inf, weight * start)
    score = start_w + emissions[0]
    back = np.zeros((n, m), dtype=np.int64)
    for t in range(1, n):
        candidates = score[:, None] + trans_w
        back[t] = candidates.argmax(axis=0)
        score = candidates.max(axis=0) + emissions[t]
    path = [int(score.argmax())]
    for t in range(n - 1, 0, -1):
        path.append(int(back[t, path[-1]]))
    return path[::-1]


def type_to_bio_emissions(log_type_probs: np.ndarray) -> np.ndarray:
    """Word-level log scores over [O, type1, ...] as scores over ``bio_labels``: B-X and I-X both get X's score
    (the transitions decide between starting and continuing a span)."""
    o = log_type_probs[:, :1]
    entity = np.repeat(log_type_probs[:, 1:], 2, axis=1)
    return np.concatenate([o, entity], axis=1)


def load_token_split(name: str, spec, split: str, mirror: Path | None) -> pd.DataFrame:
    """One split of a declared entity data set (mirror copy or the user's absolute path), JSONL or CoNLL."""
    from components.data import _local_file

    path = _local_file(name, spec, split, mirror)
    if path is None:
        where = f"mirror {mirror}" if mirror else "no data mirror (set METAADAPT_DATA_MIRROR)"
        raise DataError(f"entity data set {name!r} split {split!r}: no file in {where}; declare `files` with "
                        f"`mirror_folder` or an absolute path in params.yaml (hub/url sources are sentence-level only)")
    return read_token_file(path, spec.tokens_column, spec.tags_column)
