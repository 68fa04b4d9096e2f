"""Augmentation of few-shot support sets: model-free text operations and embedding-space operations.

Why model-free by default: no masked-LM or seq2seq model ships offline here, and generated paraphrases can flip a
label (see ``components.paraphrase`` for the opt-in, similarity-filtered generator). Every operation only makes
*copies labelled as their source*, so no operation can change a label:

- text operations are pure functions ``(text, strength, rng) -> text`` over whitespace tokens, deterministic for a
  seed, and never return an empty text (they fall back to the source);
- embedding operations add vectors: Gaussian noise around a support example, and mixup between two support
  examples *of the same label* with convex weights; both are re-normalised like the encoder's outputs.

Each added row records the support example(s) it came from (``origins``), so the support-set cross-validation that
chooses the number of fine-tuning steps can keep a held-out example's copies out of the training folds.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

TextOp = Callable[[str, float, np.random.Generator], str]
EmbedTexts = Callable[[list[str]], np.ndarray]


# ---------------------------------------------------------------------------------------------- text operations


def token_dropout(text: str, probability: float, rng: np.random.Generator) -> str:
    """Drop each whitespace token with the given probability; never return an empty text."""
    tokens = text.split()
    if len(tokens) < 2 or probability <= 0:
        return text
    keep = rng.random(len(tokens)) >= probability
    if not keep.any():
        keep[rng.integers(len(tokens))] = True
    return " ".join(t for t, k in zip(tokens, keep) if k)


def _span_length(n_tokens: int, strength: float, minimum: int) -> int:
    return int(min(n_tokens, max(minimum, round(strength * n_tokens))))


def random_swap(text: str, strength: float, rng: np.random.Generator) -> str:
    """Swap max(1, strength x tokens) random pairs of tokens (EDA's random swap)."""
    tokens = text.split()
    if len(tokens) < 2 or strength <= 0:
        return text
    for _ in range(_span_length(len(tokens), strength, 1)):
        i, j = rng.choice(len(tokens), size=2, replace=False)
        tokens[i], tokens[j] = tokens[j], tokens[i]
    return " ".join(tokens)


def random_deletion(text: str, strength: float, rng: np.random.Generator) -> str:
    """Delete one contiguous span of max(1, strength x tokens) tokens, always keeping at least one token.

    Unlike token dropout (independent tokens), this removes a whole phrase, the way a shorter message would.
    """
    tokens = text.split()
    if len(tokens) < 2 or strength <= 0:
        return text
    length = min(_span_length(len(tokens), strength, 1), len(tokens) - 1)
    start = int(rng.integers(0, len(tokens) - length + 1))
    return " ".join(tokens[:start] + tokens[start + length:])


def span_shuffle(text: str, strength: float, rng: np.random.Generator) -> str:
    """Shuffle the token order inside one random span of max(2, strength x tokens) tokens."""
    tokens = text.split()
    if len(tokens) < 2 or strength <= 0:
        return text
    length = _span_length(len(tokens), strength, 2)
    start = int(rng.integers(0, len(tokens) - length + 1))
    span = tokens[start:start + length]
    tokens[start:start + length] = [span[i] for i in rng.permutation(length)]
    return " ".join(tokens)


TEXT_OPS: dict[str, TextOp] = {"token_dropout": token_dropout, "random_swap": random_swap,
                               "random_deletion": random_deletion, "span_shuffle": span_shuffle}


def augment_text(text: str, strengths: dict[str, float], rng: np.random.Generator) -> str:
    """One copy of `text` made by one operation drawn uniformly among those with a strength > 0.

    Falls back to the source when no operation is enabled or the result would be blank.
    """
    unknown = sorted(set(strengths) - set(TEXT_OPS))
    if unknown:
        raise ValueError(f"unknown text operation(s) {unknown}; known: {sorted(TEXT_OPS)}")
    enabled = [name for name in TEXT_OPS if strengths.get(name, 0.0) > 0]
    if not enabled:
        return text
    name = enabled[int(rng.integers(len(enabled)))]
    result = TEXT_OPS[name](text, strengths[name], rng)
    return result if result.strip() else text


def text_rng(seed: int, text: str) -> np.random.Generator:
    """A generator that depends only on (seed, text): a text's copies do not change when the rest of the set does."""
    digest = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")
    return np.random.default_rng([seed, digest])


def text_copies(texts: Sequence[str], copies: int, strengths: dict[str, float], seed: int) -> list[list[str]]:
    """For each text, `copies` augmented variants (deterministic by seed and text)."""
    out = []
    for text in texts:
        rng = text_rng(seed, text)
        out.append([augment_text(text, strengths, rng) for _ in range(copies)])
    return out


def augment_texts(texts: list[str], copies: int, probability: float, seed: int) -> list[list[str]]:
    """For each text, `copies` token-dropout variants (deterministic by seed): the meta-pool augmentation at ingest."""
    rng = np.random.default_rng(seed)
    return [[token_dropout(t, probability, rng) for _ in range(copies)] for t in texts]


# ----------------------------------------------------------------------------------------- embedding operations


def _normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def noise_copies(vectors: np.ndarray, copies: int, std: float, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray]:
    """`copies` noisy, re-normalised versions of each vector; returns (vectors, source row of each)."""
    if copies <= 0 or std <= 0 or len(vectors) == 0:
        return np.zeros((0, vectors.shape[1]), np.float32), np.zeros(0, dtype=int)
    source = np.repeat(np.arange(len(vectors)), copies)
    noisy = vectors[source] + std * rng.standard_normal((len(source), vectors.shape[1]))
    return _normalise(noisy), source


def mixup_copies(vectors: np.ndarray, labels: Sequence[str], copies: int, alpha: float,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Same-label mixup: for each row with a same-label partner, `copies` convex mixes lam*x_i + (1-lam)*x_j.

    lam ~ Beta(alpha, alpha) folded to [0.5, 1], so each mix stays nearer its own row; rows whose label has no other
    example get no copy (mixing a row with itself is the row). Returns (vectors, (i, j) source rows of each).
    """
    labels = np.asarray(labels)
    mixed, pairs = [], []
    if copies > 0 and alpha > 0:
        for i in range(len(vectors)):
            partners = np.flatnonzero((labels == labels[i]) & (np.arange(len(labels)) != i))
            for _ in range(copies if len(partners) else 0):
                j = int(rng.choice(partners))
                lam = rng.beta(alpha, alpha)
                lam = max(lam, 1.0 - lam)
                mixed.append(lam * vectors[i] + (1.0 - lam) * vectors[j])
                pairs.append((i, j))
    if not mixed:
        return np.zeros((0, vectors.shape[1]), np.float32), np.zeros((0, 2), dtype=int)
    return _normalise(np.stack(mixed)), np.asarray(pairs, dtype=int)


# ------------------------------------------------------------------------------------- support-set augmentation


@dataclass
class SupportExtras:
    """Rows added to a support set: vectors, labels (copied from the source) and the support rows they came from.

    ``origins[r]`` holds the indices (into the original support set) of the row(s) extra row r was made from, as a
    pair (i, i) for a copy of one row and (i, j) for a mixup; cross-validation keeps a row out of a training fold
    when any of its origins is held out.
    """

    vectors: np.ndarray
    labels: list[str]
    origins: np.ndarray
    kinds: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def empty(cls, dim: int) -> SupportExtras:
        return cls(np.zeros((0, dim), np.float32), [], np.zeros((0, 2), dtype=int), [])

    def extend(self, vectors: np.ndarray, labels: list[str], origins: np.ndarray, kind: str) -> SupportExtras:
        return SupportExtras(np.concatenate([self.vectors, vectors.astype(np.float32)]), self.labels + labels,
                             np.concatenate([self.origins, origins.reshape(-1, 2)]), self.kinds + [kind] * len(labels))


@dataclass(frozen=True)
class SupportAugmentation:
    """What to add to a support set (a plain mirror of the config's numbers, so this module stays config-free)."""

    text_copies: int = 0
    text_ops: tuple[tuple[str, float], ...] = ()
    noise_copies: int = 0
    noise_std: float = 0.0
    mixup_copies: int = 0
    mixup_alpha: float = 0.0
    paraphrase_copies: int = 0

    @property
    def active(self) -> bool:
        return bool(self.text_copies or self.noise_copies or self.mixup_copies or self.paraphrase_copies)


def augment_support(texts: Sequence[str], labels: Sequence[str], vectors: np.ndarray, plan: SupportAugmentation,
                    seed: int, embed_texts: EmbedTexts,
                    paraphrase: Callable[[list[str], int], list[list[str]]] | None = None) -> SupportExtras:
    """Extra support rows: text copies (embedded with `embed_texts`), paraphrases, then noise and mixup vectors.

    Embedding operations act on the original support vectors only, so they never compound the text copies' noise.
    Copies identical to their source are dropped (they would only re-weight the prototype).
    """
    if len(texts) != len(labels) or len(texts) != len(vectors):
        raise ValueError(f"support texts ({len(texts)}), labels ({len(labels)}) and vectors ({len(vectors)}) differ")
    vectors = np.asarray(vectors, dtype=np.float32)
    extras = SupportExtras.empty(vectors.shape[1])
    generated: list[tuple[str, int, str]] = []
    if plan.text_copies:
        variants = text_copies(texts, plan.text_copies, dict(plan.text_ops), seed)
        generated += [(v, i, "text") for i, vs in enumerate(variants) for v in dict.fromkeys(vs) if v != texts[i]]
    if plan.paraphrase_copies:
        if paraphrase is None:
            raise ValueError("paraphrase_copies > 0 needs a paraphrase function (augment.paraphrase.enabled: true)")
        variants = paraphrase(list(texts), plan.paraphrase_copies)
        generated += [(v, i, "paraphrase") for i, vs in enumerate(variants) for v in dict.fromkeys(vs) if v != texts[i]]
    if generated:
        embedded = np.asarray(embed_texts([g[0] for g in generated]), dtype=np.float32)
        for kind in ("text", "paraphrase"):
            rows = [r for r, g in enumerate(generated) if g[2] == kind]
            if rows:
                sources = np.asarray([generated[r][1] for r in rows])
                extras = extras.extend(embedded[rows], [labels[s] for s in sources],
                                       np.stack([sources, sources], axis=1), kind)
    rng = np.random.default_rng([seed, 1])
    noisy, sources = noise_copies(vectors, plan.noise_copies, plan.noise_std, rng)
    extras = extras.extend(noisy, [labels[s] for s in sources], np.stack([sources, sources], axis=1), "noise")
    mixed, pairs = mixup_copies(vectors, labels, plan.mixup_copies, plan.mixup_alpha, rng)
    return extras.extend(mixed, [labels[i] for i, _ in pairs], pairs, "mixup")


def plan_from_config(config) -> SupportAugmentation:
    """The support-set plan of an ``AugmentationConfig`` (nothing when ``adapt.enabled`` is false)."""
    adapt = config.adapt
    if not adapt.enabled:
        return SupportAugmentation()
    return SupportAugmentation(text_copies=adapt.text_copies, text_ops=tuple(config.text_ops.model_dump().items()),
                               noise_copies=adapt.noise_copies, noise_std=adapt.noise_std,
                               mixup_copies=adapt.mixup_copies, mixup_alpha=adapt.mixup_alpha,
                               paraphrase_copies=adapt.paraphrase_copies)
