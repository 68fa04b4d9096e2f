"""Texts in, labels and probabilities out, from a saved model directory: what serving and batch scoring use."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from components.config import EncoderConfig
from components.encoder import TextEncoder, load_encoder
from components.model_io import AdaptedModel, load_model
from components.scopes import restore_encoder

MAX_PREDICT_CHARS = 20_000   # longer inputs are truncated before tokenising (the encoder sees max_length tokens anyway)


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


def _clean(text: object) -> str:
    """Non-strings and empty texts are scored as empty strings rather than crashing a whole batch."""
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    return text[:MAX_PREDICT_CHARS]
