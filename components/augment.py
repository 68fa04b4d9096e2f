"""Model-free text augmentation for few-shot support sets.

Why model-free by default: no masked-LM or seq2seq model ships offline here, and generated paraphrases can flip a
label. Token dropout keeps the words that carry the label most of the time and costs nothing.
"""
from __future__ import annotations

import numpy as np


def token_dropout(text: str, probability: float, rng: np.random.Generator) -> str:
    """Drop each whitespace token with the given probability; never return an empty text."""
    tokens = text.split()
    if len(tokens) < 2 or probability <= 0:
        return text
    keep = rng.random(len(tokens)) >= probability
    if not keep.any():
        keep[rng.integers(len(tokens))] = True
    return " ".join(t for t, k in zip(tokens, keep) if k)


def augment_texts(texts: list[str], copies: int, probability: float, seed: int) -> list[list[str]]:
    """For each text, `copies` augmented variants (deterministic by seed)."""
    rng = np.random.default_rng(seed)
    return [[token_dropout(t, probability, rng) for _ in range(copies)] for t in texts]
