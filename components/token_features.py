"""Word-level features from the frozen encoder: one vector per word (first sub-token piece or the mean of its
pieces), length-bucketed batches, and a per-word content-hash cache.

Why per word and cached: every entity method (prototypes, nearest neighbours, the meta-trained head, the linear
probe) works on word vectors of a frozen encoder, so each sentence is encoded once per model and reused by every
episode, seed and method. The cache is the project's ``EmbeddingCache`` (parquet shards), keyed by the sentence,
the word position and how pieces are pooled.
"""
from __future__ import annotations

import hashlib
from typing import Literal, Sequence

import numpy as np
import torch

from components.encoder import EmbeddingCache, TextEncoder, encoding_threads

Pooling = Literal["first", "mean"]


def word_keys(key: str, sentences: Sequence[Sequence[str]], pooling: Pooling,
              layers: Sequence[int] = (-1,)) -> list[list[bytes]]:
    """Cache digests of every word: sha256(model key, pooling, layers, the sentence's words, the word's position)."""
    out = []
    for words in sentences:
        base = hashlib.sha256(f"{key}|{pooling}|{list(layers)}\n".encode() + "\x1f".join(words).encode("utf-8")).digest()
        out.append([hashlib.sha256(base + i.to_bytes(4, "little")).digest() for i in range(len(words))])
    return out


@torch.inference_mode()
def encode_words(encoder: TextEncoder, sentences: Sequence[Sequence[str]], pooling: Pooling = "first",
                 max_length: int = 256, batch_size: int = 32, layers: Sequence[int] = (-1,)) -> list[np.ndarray]:
    """One (words x dim) float32 array per sentence: the mean of the hidden states of ``layers`` (indices into
    embeddings + each transformer layer; -1 = the last). Words cut off by ``max_length`` get zero vectors (the
    validation suite bounds sentence length so that this does not happen on accepted data)."""
    if not sentences:
        return []
    batch = encoder.tokenizer([list(s) for s in sentences], is_split_into_words=True, truncation=True,
                              max_length=max_length, padding="longest", return_tensors="np",
                              return_token_type_ids=False)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    word_ids = [batch.word_ids(i) for i in range(len(sentences))]
    lengths = mask.sum(axis=1)
    order = np.argsort(lengths, kind="stable")
    out: list[np.ndarray | None] = [None] * len(sentences)
    was_training = encoder.training
    encoder.eval()
    try:
        with encoding_threads(encoder.num_threads):
            for begin in range(0, len(order), batch_size):
                rows = order[begin:begin + batch_size]
                width = int(lengths[rows].max())
                output = encoder.model(input_ids=torch.from_numpy(ids[rows, :width]).to(encoder.device),
                                       attention_mask=torch.from_numpy(mask[rows, :width]).to(encoder.device),
                                       output_hidden_states=True)
                hidden = torch.stack([output.hidden_states[i] for i in layers]).mean(0).float().cpu().numpy()
                for r, h in zip(rows, hidden):
                    out[r] = pool_pieces(h, word_ids[r], len(sentences[r]), pooling)
    finally:
        encoder.train(was_training)
    return out  # type: ignore[return-value]


def pool_pieces(hidden: np.ndarray, word_ids: Sequence[int | None], n_words: int, pooling: Pooling) -> np.ndarray:
    """Word vectors from sub-token states: the first piece of each word, or the mean of its pieces."""
    vectors = np.zeros((n_words, hidden.shape[1]), dtype=np.float32)
    counts = np.zeros(n_words, dtype=np.float32)
    for position, word in enumerate(word_ids):
        if word is None or (pooling == "first" and counts[word] > 0):
            continue
        vectors[word] += hidden[position]
        counts[word] += 1
    return vectors / np.maximum(counts, 1.0)[:, None]


def word_features(sentences: Sequence[Sequence[str]], encoder_loader, cache: EmbeddingCache | None,
                  pooling: Pooling = "first", max_length: int = 256, batch_size: int = 32,
                  layers: Sequence[int] = (-1,)) -> list[np.ndarray]:
    """Word vectors of every sentence, encoding only sentences with a word missing from the cache.

    ``encoder_loader`` is called (once) only when something must be encoded, so a warm cache never loads torch's
    model weights.
    """
    key = cache.key if cache else "nocache"
    keys = word_keys(key, sentences, pooling, layers)
    flat = [d for row in keys for d in row]
    known = cache.lookup(flat) if cache else {}
    todo = [i for i, row in enumerate(keys) if any(d not in known for d in row)]
    if todo:
        encoder = encoder_loader()
        fresh = encode_words(encoder, [sentences[i] for i in todo], pooling, max_length, batch_size, layers)
        digests = [d for i in todo for d in keys[i]]
        vectors = np.concatenate([f for f in fresh if len(f)]) if any(len(f) for f in fresh) else None
        if cache and vectors is not None:
            cache.store(digests, vectors)
        for i, f in zip(todo, fresh):
            known.update(zip(keys[i], f))
    if cache:
        cache.stats.hits += len(sentences) - len(todo)
        cache.stats.misses += len(todo)
    dim = next(iter(known.values())).shape[0] if known else 0
    return [np.stack([known[d] for d in row]) if row else np.zeros((0, dim), np.float32) for row in keys]


def word_cache(params, root) -> EmbeddingCache:
    """The pipeline's embedding cache folder, under its own key for word vectors (never mixed with sentence ones)."""
    from components.encoder import model_key

    return EmbeddingCache(root / "data" / "cache" / "embeddings", model_key(params.encoder) + "-words")


def encoder_settings(params) -> dict:
    """What a saved entity model records to rebuild its word features: the encoder and the word options."""
    return {**params.encoder.model_dump(), "pooling": params.entities.pooling,
            "word_max_length": params.entities.max_length, "layers": list(params.entities.layers)}


def pipeline_word_features(sentences: Sequence[Sequence[str]], params, root, encoder: TextEncoder | None = None
                           ) -> list[np.ndarray]:
    """Word vectors as configured in params.yaml ``entities``, through the pipeline's cache."""
    from components.encoder import load_encoder

    loaded = [encoder]

    def loader() -> TextEncoder:
        if loaded[0] is None:
            loaded[0] = load_encoder(params.encoder)
        return loaded[0]

    config = params.entities
    return word_features(sentences, loader, word_cache(params, root), config.pooling, config.max_length,
                         layers=tuple(config.layers))
