"""How many texts are longer than the encoder reads: accepted (the encoder truncates), counted for the reader.

Why a count and not a refusal: ordinary product reviews run to 2,000-3,200 characters while the encoder reads
``encoder.max_length`` tokens (64 by default). Refusing them made a new user's first run of a review domain fail;
accepting them silently would hide that the model only sees each text's beginning. The validation report and the
Data Docs page show the count per table, so a reviewer can judge it. Only the tokenizer is loaded (milliseconds),
never the model.
"""
from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from typing import Any


@lru_cache(maxsize=4)
def _tokenizer(name: str) -> Any:
    from transformers import AutoTokenizer  # slow import, kept off module import

    from components.encoder import resolve_model_path

    return AutoTokenizer.from_pretrained(resolve_model_path(name))


def count_over_window(texts: Iterable[Any], encoder_name: str, max_length: int) -> int:
    """Texts whose token count (with the encoder's special tokens) exceeds `max_length`.

    A WordPiece/BPE token covers at least one character, so a text of at most `max_length - 2` characters cannot
    exceed the window and is never tokenized: most short-text sets cost nothing.
    """
    candidates = [t for t in texts if isinstance(t, str) and len(t) > max_length - 2]
    if not candidates:
        return 0
    ids = _tokenizer(encoder_name)(candidates, add_special_tokens=True, truncation=False,
                                   return_attention_mask=False, return_token_type_ids=False)["input_ids"]
    return sum(len(row) > max_length for row in ids)


def window_counts(tables: dict[str, Iterable[Any]], encoder_name: str, max_length: int) -> dict[str, dict[str, int]]:
    """Per table: rows, and rows over the encoder window (`truncated`), for the validation report."""
    counts = {}
    for name, texts in tables.items():
        texts = list(texts)
        counts[name] = {"rows": len(texts), "truncated": count_over_window(texts, encoder_name, max_length),
                        "max_tokens": max_length}
    return counts
