"""Texts in, labels and probabilities out, from a saved model directory: what serving and batch scoring use."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from components.config import EncoderConfig
from components.encoder import TextEncoder, load_encoder
from components.model_io import AdaptedModel, load_model
from components.scopes import restore_encoder

_SURROGATE = re.compile("[\ud800-\udfff]")
MAX_PREDICT_CHARS = 20_000   # longer inputs are truncated before tokenising (the encoder sees max_length tokens anyway)


@dataclass
class LabelEvidence:
    """One candidate label of an explanation: its probability and the support examples closest to the text."""

    label: str
    score: float
    nearest: list[tuple[str, float]] = field(default_factory=list)   # (support text, cosine similarity)


@dataclass
class Explanation:
    text: str
    label: str
    top: list[LabelEvidence]

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "label": self.label,
                "top": [{"label": e.label, "score": e.score,
                         "nearest": [{"text": t, "similarity": s} for t, s in e.nearest]} for e in self.top]}


class Predictor:
    """A loaded, verified model plus its encoder; build once, call many times."""

    def __init__(self, model: AdaptedModel, encoder: TextEncoder | None = None, device: str = "auto"):
        self.model = model
        config = EncoderConfig(**{**model.encoder, "device": device})
        self.batch_size = config.batch_size
        base = encoder if encoder is not None and model.scope == "head" else load_encoder(config)
        self.encoder = restore_encoder(base, model.scope, model.lora, model.encoder_state)

    @classmethod
    def from_directory(cls, directory: Path | str, device: str = "auto") -> Predictor:
        return cls(load_model(Path(directory)), device=device)

    @property
    def labels(self) -> list[str]:
        return self.model.labels

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        cleaned = [_clean(t) for t in texts]
        return self.encoder.encode(cleaned, self.batch_size)

    def predict_proba_embeddings(self, embeddings: np.ndarray) -> np.ndarray:
        x = torch.as_tensor(embeddings, dtype=torch.float32)
        return self.model.classifier.predict_proba(self.model.head, x).numpy()

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        return self.predict_proba_embeddings(self.embed(texts))

    def predict(self, texts: Sequence[str]) -> list[str]:
        return [self.labels[i] for i in self.predict_proba(texts).argmax(1)]

    def explain(self, text: str, top_labels: int = 3, examples: int = 3) -> Explanation:
        """The prediction plus, for each of the top labels, the support examples nearest to the text.

        A prototype model decides by cosine similarity to each label's mean support embedding in the head's
        space, so the nearest support examples in that same space are the model's own reasons.
        """
        support = self.model.support
        if not support or not support.get("texts"):
            raise ValueError("this model directory holds no support examples (saved before explanations existed); "
                             "re-run adaptation to explain its predictions")
        query = self.embed([text])
        stored = self.model.support_vectors
        rows = stored.numpy() if stored is not None and len(stored) == len(support["texts"]) \
            else self.embed(support["texts"])   # models saved before the embeddings were stored with them
        vectors = self._head_space(np.concatenate([query, rows]))
        similarity = (vectors[1:] @ vectors[0]).tolist()
        probabilities = self.predict_proba_embeddings(query)[0]
        order = np.argsort(-probabilities)[:top_labels]
        top = []
        for i in order:
            label = self.labels[i]
            candidates = [(t, s) for t, l, s in zip(support["texts"], support["labels"], similarity) if l == label]
            top.append(LabelEvidence(label, float(probabilities[i]),
                                     sorted(candidates, key=lambda pair: -pair[1])[:examples]))
        return Explanation(text, self.labels[order[0]], top)

    def _head_space(self, embeddings: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.model.head(torch.as_tensor(embeddings, dtype=torch.float32)).numpy()


def _clean(text: object) -> str:
    """Non-strings and empty texts are scored as empty strings rather than crashing a whole batch.

    A lone surrogate (undecodable input) would crash the tokenizer for the whole batch: it becomes U+FFFD here.
    Callers that must *refuse* such texts (the CLI, the pyfunc) check them first with safety.text_problem.
    """
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    text = text[:MAX_PREDICT_CHARS]
    return _SURROGATE.sub("\ufffd", text)
