"""Augmentation of few-shot support sets: determinism, label preservation, no CV leakage, paraphrase filter/cache."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from components.augment import (TEXT_OPS, SupportAugmentation, augment_support, augment_text, mixup_copies,
                                noise_copies, plan_from_config, random_deletion, random_swap, span_shuffle,
                                text_copies, token_dropout)
from components.config import AdaptConfig, AugmentationConfig, ConfigError, EncoderConfig, parse_params
from components.classifier import fit_classifier
from components.meta import ProjectionHead, fold_train, make_extras
from components.paraphrase import Paraphraser, ParaphraseCache, clean_output, similarity_filter

SENTENCE = "the quick brown fox jumps over the lazy dog near the river bank"
ALL_OPS = {"token_dropout": 0.2, "random_swap": 0.2, "random_deletion": 0.2, "span_shuffle": 0.3}


# ------------------------------------------------------------------------------------------------ text operations


@pytest.mark.parametrize("name", sorted(TEXT_OPS))
def test_text_op_is_deterministic_for_a_seed_and_varies_across_seeds(name):
    op = TEXT_OPS[name]
    first = [op(SENTENCE, 0.3, np.random.default_rng(7)) for _ in range(3)]
    assert len(set(first)) == 1
    assert len({op(SENTENCE, 0.3, np.random.default_rng(seed)) for seed in range(20)}) > 1


@pytest.mark.parametrize("name", sorted(TEXT_OPS))
@pytest.mark.parametrize("text", ["", "   ", "word", "two words"])
def test_text_op_never_returns_an_empty_text(name, text):
    for seed in range(10):
        out = TEXT_OPS[name](text, 0.99, np.random.default_rng(seed))
        assert out == text if len(text.split()) < 2 else out.strip()


def test_swap_and_shuffle_keep_every_token_deletions_keep_an_ordered_subset():
    tokens = Counter(SENTENCE.split())
    for seed in range(10):
        rng = np.random.default_rng(seed)
        assert Counter(random_swap(SENTENCE, 0.3, rng).split()) == tokens
        assert Counter(span_shuffle(SENTENCE, 0.3, rng).split()) == tokens
        for op in (random_deletion, token_dropout):
            kept = op(SENTENCE, 0.3, rng).split()
            assert 1 <= len(kept) < len(SENTENCE.split())
            rest = iter(SENTENCE.split())
            assert all(word in rest for word in kept)  # a subsequence, in order


def test_random_deletion_removes_one_contiguous_span_of_the_given_share():
    out = random_deletion("a b c d e f g h i j", 0.3, np.random.default_rng(0)).split()
    assert len(out) == 7
    removed = [t for t in "a b c d e f g h i j".split() if t not in out]
    positions = ["a b c d e f g h i j".split().index(t) for t in removed]
    assert positions == list(range(positions[0], positions[0] + 3))


def test_augment_text_rejects_unknown_ops_and_returns_the_source_when_none_enabled():
    with pytest.raises(ValueError, match=r"unknown text operation\(s\) \['synonym'\]"):
        augment_text(SENTENCE, {"synonym": 0.5}, np.random.default_rng(0))
    assert augment_text(SENTENCE, {"token_dropout": 0.0}, np.random.default_rng(0)) == SENTENCE


def test_text_copies_depend_only_on_seed_and_text():
    texts = ["refund my money please now", "card was stolen yesterday evening", SENTENCE]
    a = text_copies(texts, 3, ALL_OPS, seed=5)
    assert a == text_copies(texts, 3, ALL_OPS, seed=5)
    assert text_copies(texts[::-1], 3, ALL_OPS, seed=5) == a[::-1]  # order of the set does not matter
    assert a != text_copies(texts, 3, ALL_OPS, seed=6)
    assert all(len(c) == 3 and all(v.strip() for v in c) for c in a)


# ------------------------------------------------------------------------------------------ embedding operations


def unit_rows(n: int, dim: int = 8, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_noise_copies_are_normalised_near_their_source_and_seeded():
    x = unit_rows(4)
    noisy, source = noise_copies(x, 3, 0.05, np.random.default_rng(1))
    assert noisy.shape == (12, 8) and source.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    np.testing.assert_allclose(np.linalg.norm(noisy, axis=1), 1.0, rtol=1e-5)
    assert ((noisy * x[source]).sum(1) > 0.9).all()
    np.testing.assert_array_equal(noisy, noise_copies(x, 3, 0.05, np.random.default_rng(1))[0])


def test_mixup_only_mixes_rows_of_the_same_label_with_convex_weights_nearer_the_own_row():
    x, labels = unit_rows(5), ["a", "a", "a", "b", "c"]
    mixed, pairs = mixup_copies(x, labels, 4, 0.4, np.random.default_rng(0))
    assert len(mixed) == 12  # 3 rows of "a" x 4; "b" and "c" have no partner, so no copy
    for (i, j), v in zip(pairs, mixed):
        assert labels[i] == labels[j] and i != j
        assert np.linalg.norm(v) == pytest.approx(1.0, rel=1e-5)
        # v is the normalised lam*x_i + (1-lam)*x_j with lam >= 0.5: on the arc between them, nearer x_i
        assert v @ x[i] >= v @ x[j] - 1e-6
        residual = v - np.linalg.lstsq(np.stack([x[i], x[j]], 1), v, rcond=None)[0] @ np.stack([x[i], x[j]])
        assert np.abs(residual).max() < 1e-5
        coefficients = np.linalg.lstsq(np.stack([x[i], x[j]], 1), v, rcond=None)[0]
        assert (coefficients >= -1e-6).all()


# ----------------------------------------------------------------------------------- support-set augmentation


def bag_of_words(texts: list[str], dim: int = 64) -> np.ndarray:
    """A deterministic stand-in encoder for unit tests: hashed word counts, L2-normalised."""
    out = np.zeros((len(texts), dim), np.float32)
    for row, text in enumerate(texts):
        for word in text.lower().split():
            out[row, sum(map(ord, word)) % dim] += 1.0
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


SUPPORT = ["please refund my money right now", "I want my money back today",
           "my card was stolen on the bus", "someone stole my card last night", "hello"]
SUPPORT_LABELS = ["refund", "refund", "stolen", "stolen", "greeting"]
PLAN = SupportAugmentation(text_copies=2, text_ops=tuple(ALL_OPS.items()), noise_copies=1, noise_std=0.05,
                           mixup_copies=2, mixup_alpha=0.4)


def test_augment_support_preserves_labels_and_records_origins():
    extras = augment_support(SUPPORT, SUPPORT_LABELS, bag_of_words(SUPPORT), PLAN, 3, bag_of_words)
    assert set(extras.kinds) == {"text", "noise", "mixup"}
    assert len(extras.vectors) == len(extras.labels) == len(extras.origins) == len(extras.kinds)
    for label, (i, j), kind in zip(extras.labels, extras.origins, extras.kinds):
        assert label == SUPPORT_LABELS[i] == SUPPORT_LABELS[j]
        assert kind == "mixup" or i == j
    # "hello" has one token (text ops keep it, and identical copies are dropped) and no same-label partner
    assert [k for k, (i, _) in zip(extras.kinds, extras.origins) if i == 4] == ["noise"]


def test_augment_support_is_deterministic_for_a_seed():
    a = augment_support(SUPPORT, SUPPORT_LABELS, bag_of_words(SUPPORT), PLAN, 3, bag_of_words)
    b = augment_support(SUPPORT, SUPPORT_LABELS, bag_of_words(SUPPORT), PLAN, 3, bag_of_words)
    c = augment_support(SUPPORT, SUPPORT_LABELS, bag_of_words(SUPPORT), PLAN, 4, bag_of_words)
    np.testing.assert_array_equal(a.vectors, b.vectors)
    assert (a.labels, a.origins.tolist()) == (b.labels, b.origins.tolist())
    assert not np.array_equal(a.vectors, c.vectors)


def test_augment_support_refuses_paraphrases_without_a_paraphraser_and_mismatched_inputs():
    with pytest.raises(ValueError, match="needs a paraphrase function"):
        augment_support(SUPPORT, SUPPORT_LABELS, bag_of_words(SUPPORT), SupportAugmentation(paraphrase_copies=1), 0,
                        bag_of_words)
    with pytest.raises(ValueError, match=r"support texts \(5\), labels \(4\)"):
        augment_support(SUPPORT, SUPPORT_LABELS[:4], bag_of_words(SUPPORT), PLAN, 0, bag_of_words)


def test_plan_follows_the_config_and_is_off_by_default():
    assert not plan_from_config(AugmentationConfig()).active
    config = AugmentationConfig.model_validate({"adapt": {"enabled": True, "text_copies": 3, "mixup_copies": 1}})
    plan = plan_from_config(config)
    assert (plan.text_copies, plan.mixup_copies, dict(plan.text_ops)["span_shuffle"]) == (3, 1, 0.2)


def test_config_refuses_paraphrase_copies_without_the_backend_enabled():
    from components.config import load_params

    raw = load_params().model_dump()
    raw["augment"] = {"adapt": {"enabled": True, "paraphrase_copies": 2}}
    with pytest.raises(ConfigError, match="paraphrase.enabled"):
        parse_params(raw)
    raw["augment"] = {"adapt": {"text_copies": -1}}
    with pytest.raises(ConfigError, match=r"augment\.adapt\.text_copies"):
        parse_params(raw)


# ------------------------------------------------------------------------------ adaptation with augmented rows


def noisy_support(per_label: int = 6, seed: int = 0):
    """Overlapping classes, so held-out CV accuracy is well below 1 unless held-out rows leak into training."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3 * per_label, 6, generator=g)
    y = torch.arange(3).repeat_interleave(per_label)
    return x, y


def test_fold_training_rows_exclude_every_augmented_row_with_a_held_out_origin():
    x, y = noisy_support(per_label=2)
    extras = make_extras(np.ones((3, 6)), ["1", "1", "0"], [(0, 0), (2, 3), (1, 1)], ["0", "1", "2"], "cpu")
    x_train, y_train = fold_train(x, y, held=np.array([0, 2]), extras=extras)
    assert len(x_train) == 4 + 1  # the 4 rows not held out + only the copy of row 1 (the others touch 0 or 2)
    assert y_train.tolist() == [0, 1, 2, 2, 0]


def cv_scores(x, y, config, extras=None) -> dict[str, float]:
    labels = ["0", "1", "2"]
    fitted = fit_classifier({"h": ProjectionHead(6)}, x, [labels[i] for i in y.tolist()], config, 0, labels, extras)
    return fitted[2].info["cv_balanced_accuracy"]


def test_cv_with_exact_copies_equals_cv_without_them_so_held_out_copies_do_not_leak():
    x, y = noisy_support()
    config = AdaptConfig(method="proto_finetune", step_candidates=[0, 10, 40], lr=0.05, cv_folds=2)
    plain = cv_scores(x, y, config)
    labels = ["0", "1", "2"]
    copies = make_extras(x.numpy(), [labels[i] for i in y.tolist()], np.repeat(np.arange(len(y))[:, None], 2, 1),
                         labels, "cpu")
    # Exact duplicates of the training fold leave its prototypes and mean loss unchanged: identical scores.
    assert cv_scores(x, y, config, copies) == pytest.approx(plain)
    # The same copies with origins that never count as held out leak the held-out rows: scores go up.
    leaky = make_extras(x.numpy(), [labels[i] for i in y.tolist()], np.full((len(y), 2), -1), labels, "cpu")
    assert max(cv_scores(x, y, config, leaky).values()) > max(plain.values())


def test_adapt_uses_augmented_rows_in_the_prototypes_and_reports_them():
    x, y = noisy_support(per_label=2)
    labels = ["0", "1", "2"]
    support_labels = [labels[i] for i in y.tolist()]
    far = torch.nn.functional.normalize(torch.randn(3, 6, generator=torch.Generator().manual_seed(9)), dim=-1)
    extras = make_extras(far.numpy(), labels, [(0, 0), (2, 2), (4, 4)], labels, "cpu")
    proto = AdaptConfig(method="proto")
    plain = fit_classifier({"h": ProjectionHead(6)}, x, support_labels, proto, 0, labels)[2]
    augmented = fit_classifier({"h": ProjectionHead(6)}, x, support_labels, proto, 0, labels, extras)[2]
    assert augmented.info["augmented_rows"] == 3 and plain.info["augmented_rows"] == 0
    assert not torch.allclose(plain.weights, augmented.weights)
    with pytest.raises(ValueError, match=r"augmented rows carry label\(s\) \['9'\]"):
        make_extras(far.numpy()[:1], ["9"], [(0, 0)], labels, "cpu")


def test_support_extras_embeds_text_copies_with_the_encoder(tiny_bert_dir, single_thread):
    import pandas as pd

    from components.config import load_params
    from components.encoder import load_encoder
    from components.learner import support_extras

    params = load_params()
    encoder_config = EncoderConfig(name=str(tiny_bert_dir), device="cpu")
    encoder = load_encoder(encoder_config)
    params = params.model_copy(update={"encoder": encoder_config})
    support = pd.DataFrame({"text": SUPPORT[:4], "label": SUPPORT_LABELS[:4]})
    vectors = torch.as_tensor(encoder.encode(SUPPORT[:4], 8))
    assert support_extras(params, support, vectors, encoder, ["refund", "stolen"]) is None  # off by default
    on = params.model_copy(update={"augment": AugmentationConfig.model_validate(
        {"adapt": {"enabled": True, "text_copies": 2, "mixup_copies": 1}})})
    extras = support_extras(on, support, vectors, encoder, ["refund", "stolen"])
    assert len(extras.y) >= 4 + 1  # at least one text copy, plus one mixup per row
    n_text = len(extras.y) - 4
    copies = text_copies(SUPPORT[:4], 2, AugmentationConfig().text_ops.model_dump(), params.seed)
    first = next(c for c in copies[0] if c != SUPPORT[0])
    torch.testing.assert_close(extras.x[0], torch.as_tensor(encoder.encode([first], 8)[0]), atol=1e-5, rtol=1e-4)
    assert extras.y[:n_text].tolist() == [0 if o < 2 else 1 for o in extras.origins[:n_text, 0]]


# ------------------------------------------------------------------------------------------------- paraphrases


def fake_generator(calls: list[str]):
    """A tiny deterministic generator: a near-copy (kept) and an unrelated sentence (filtered out)."""
    def generate(prompt: str, n: int) -> list[str]:
        calls.append(prompt)
        source = prompt.rsplit("Sentence: ", 1)[1]
        return [f'Rewritten sentence: "{source} indeed"', "completely unrelated words about weather"][:n]
    return generate


def test_paraphraser_keeps_similar_outputs_drops_dissimilar_and_caches_raw_generations(tmp_path):
    calls: list[str] = []
    cache = ParaphraseCache(tmp_path / "cache", "fake-model")
    paraphraser = Paraphraser(fake_generator(calls), bag_of_words, cache, min_similarity=0.6)
    kept = paraphraser(SUPPORT[:2], 2)
    assert kept == [[f"{SUPPORT[0]} indeed"], [f"{SUPPORT[1]} indeed"]]
    assert paraphraser.stats == {"generated": 4, "from_cache": 0, "kept": 2, "dropped": 2}
    assert len(calls) == 2
    # A second paraphraser on the same cache generates nothing; a stricter threshold only re-filters.
    strict = Paraphraser(fake_generator(calls), bag_of_words, cache, min_similarity=0.999)
    assert strict(SUPPORT[:2], 2) == [[], []]
    assert len(calls) == 2 and strict.stats["from_cache"] == 4
    # The cache key includes the model: another model generates afresh.
    other = Paraphraser(fake_generator(calls), bag_of_words, ParaphraseCache(tmp_path / "cache", "other"), 0.6)
    other(SUPPORT[:1], 1)
    assert len(calls) == 3


def test_paraphrase_helpers():
    assert clean_output('\n  Paraphrase: "My card is gone."\nextra line') == "My card is gone."
    sources = bag_of_words(["a b", "c d"])
    mask = similarity_filter(sources, bag_of_words(["a b", "a b"]), [0, 1], 0.9)
    assert mask.tolist() == [True, False]
