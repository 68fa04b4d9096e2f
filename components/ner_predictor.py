"""Entity extraction from a saved entity model directory: text (or words) in, spans out; what serving, the pyfunc
and ``metaadapt predict`` / ``explain`` use for a domain with ``task: entities``."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from components.config import EncoderConfig
from components.encoder import TextEncoder, load_encoder
from components.entities import split_words
from components.ner_model import EntityModel, load_entity_model
from components.predictor import Explanation, LabelEvidence
from components.safety import text_problem
from components.token_features import encode_words


class EntityPredictor:
    """A verified entity model plus the frozen encoder it reads word vectors from."""

    def __init__(self, model: EntityModel, encoder: TextEncoder | None = None, device: str = "auto"):
        self.model = model
        settings = {k: v for k, v in model.encoder.items() if k not in ("pooling", "word_max_length", "layers")}
        config = EncoderConfig(**{**settings, "device": device})
        self.batch_size = config.batch_size
        self.encoder = encoder if encoder is not None else load_encoder(config)
        self.pooling = model.encoder.get("pooling", "first")
        self.max_length = int(model.encoder.get("word_max_length", 256))
        self.layers = tuple(model.encoder.get("layers", (-1,)))

    @classmethod
    def from_directory(cls, directory: Path | str, device: str = "auto") -> "EntityPredictor":
        return cls(load_entity_model(Path(directory)), device=device)

    @property
    def labels(self) -> list[str]:
        return self.model.labels

    def word_vectors(self, sentences: Sequence[Sequence[str]]) -> list[np.ndarray]:
        return encode_words(self.encoder, sentences, self.pooling, self.max_length, 32, self.layers)

    def extract(self, texts: Sequence[str]) -> list[list[dict]]:
        """Spans (type, text, word and character offsets, score) of each raw text."""
        split = [split_words(t) for t in texts]
        vectors = self.word_vectors([words for words, _ in split])
        return [[s.as_dict() for s in self.model.extract(v, words, text, offsets)] if words else []
                for text, (words, offsets), v in zip(texts, split, vectors)]

    def extract_tokens(self, sentences: Sequence[Sequence[str]]) -> list[list[dict]]:
        """Spans of pre-tokenised sentences (word offsets; no character offsets)."""
        vectors = self.word_vectors(sentences)
        return [[s.as_dict() for s in self.model.extract(v, list(words))] if len(words) else []
                for words, v in zip(sentences, vectors)]

    def explain(self, text: str, top_labels: int = 3, examples: int = 3) -> Explanation:
        """Each found span with its score and the support words nearest to its first word (the model tags a word
        by its similarity to support words: those are its reasons)."""
        words, offsets = split_words(text)
        if not words:
            raise ValueError("the text has no words to tag")
        vectors = self.word_vectors([words])[0]
        spans = self.model.extract(vectors, words, text, offsets)
        evidence = []
        for span in spans[:max(top_labels, 1)]:
            nearest = self.model.nearest_mentions(vectors[span.start], examples)
            evidence.append(LabelEvidence(f"{span.type}: {span.text!r} [{span.char_start}:{span.char_end}]",
                                          float(span.score or 0.0),
                                          [(f"{n['word']} ({n['type']}) in {n['sentence'][:120]!r}", n["similarity"])
                                           for n in nearest]))
        label = "; ".join(f"{s.type}: {s.text}" for s in spans) or "no entities"
        return Explanation(text, label, evidence)


def entities_frame(predictor: EntityPredictor, model_input: Any) -> pd.DataFrame:
    """The pyfunc's answer: one row per input with ``entities`` (a list of span dicts) and ``error``.

    Accepts what the sentence-level pyfunc accepts (a DataFrame with ``text``, a Series, a list of strings) and
    also a DataFrame with a ``tokens`` column of word lists (pre-tokenised input: spans with word offsets only).
    """
    from components.pyfunc_model import texts_from_input

    if isinstance(model_input, pd.DataFrame) and "tokens" in model_input.columns:
        sentences = [list(map(str, t)) for t in model_input["tokens"]]
        return pd.DataFrame({"entities": predictor.extract_tokens(sentences), "error": [""] * len(sentences)},
                            index=model_input.index)
    texts, index = texts_from_input(model_input)
    errors = [("" if text_problem(t) is None else f"row {i}: {text_problem(t)}") for i, t in enumerate(texts)]
    good = [i for i, e in enumerate(errors) if not e]
    found = dict(zip(good, predictor.extract([texts[i] for i in good]))) if good else {}
    return pd.DataFrame({"entities": [found.get(i, []) for i in range(len(texts))], "error": errors},
                        index=index if index is not None else None)
