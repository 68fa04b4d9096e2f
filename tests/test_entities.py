"""Entity extraction: BIO rules, Viterbi under BIO constraints, greedy K-shot sampling, token file reading,
the token validation suite and adaptation + decoding + storage on a tiny random BERT."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pandas as pd
import pytest

from components.data import DataError
from components.entities import (abstract_transitions, bio_errors, bio_labels, read_token_file, spans_from_tags,
                                 split_words, transition_matrix, viterbi)
from components.token_episodes import SamplingError, WordPool, greedy_support, sample_word_episodes, sentence_mentions

SENTENCES = [
    (["Tim", "Cook", "runs", "Apple", "in", "Cupertino"], ["B-PER", "I-PER", "O", "B-ORG", "O", "B-LOC"]),
    (["Shares", "of", "Apple", "fell"], ["O", "O", "B-ORG", "O"]),
    (["Satya", "Nadella", "visited", "Paris"], ["B-PER", "I-PER", "O", "B-LOC"]),
    (["Microsoft", "and", "Google", "in", "New", "York"], ["B-ORG", "O", "B-ORG", "O", "B-LOC", "I-LOC"]),
    (["Nothing", "here"], ["O", "O"]),
    (["Angela", "Merkel", "met", "Siemens"], ["B-PER", "I-PER", "O", "B-ORG"]),
    (["Berlin", "is", "big"], ["B-LOC", "O", "O"]),
    (["Sundar", "spoke"], ["B-PER", "O"]),
]


def test_spans_and_bio_errors():
    assert [(s.type, s.start, s.end) for s in spans_from_tags(["B-PER", "I-PER", "O", "B-LOC", "B-LOC"])] == \
        [("PER", 0, 2), ("LOC", 3, 4), ("LOC", 4, 5)]
    assert bio_errors(["B-PER", "I-PER", "O"]) == []
    assert "needs its B-" in bio_errors(["O", "I-PER"])[0]
    assert "needs its B-" in bio_errors(["B-LOC", "I-PER"])[0]
    assert "is not O, B-TYPE or I-TYPE" in bio_errors(["PER"])[0]


def test_viterbi_never_emits_invalid_bio():
    """Emissions that prefer an orphan I- (argmax: O, I-A, I-B, ...) still decode to well-formed BIO."""
    rng = np.random.default_rng(0)
    types = ["A", "B"]
    trans, start = transition_matrix(types, abstract_transitions([tags for _, tags in SENTENCES]))
    labels = bio_labels(types)
    for _ in range(50):
        emissions = np.log(rng.dirichlet(np.ones(len(labels)) * 0.3, size=7))
        emissions[:, [2, 4]] += 2.0   # push the I- tags
        tags = [labels[j] for j in viterbi(emissions, trans, start)]
        assert bio_errors(tags) == [], tags


def test_viterbi_matches_brute_force():
    """The dynamic programme finds the best-scoring valid path (checked against every path of length 4)."""
    import itertools

    types = ["A"]
    trans, start = transition_matrix(types, abstract_transitions([["B-A", "I-A", "O"], ["O", "B-A"]]))
    emissions = np.log(np.random.default_rng(1).dirichlet(np.ones(3), size=4))
    best, best_score = None, -np.inf
    for path in itertools.product(range(3), repeat=4):
        score = start[path[0]] + emissions[0, path[0]] + sum(trans[a, b] + emissions[t + 1, b]
                                                              for t, (a, b) in enumerate(zip(path, path[1:])))
        if score > best_score:
            best, best_score = list(path), score
    assert viterbi(emissions, trans, start) == best


def test_greedy_support_gives_every_type_k_mentions_and_disjoint_query():
    mentions = sentence_mentions([tags for _, tags in SENTENCES])
    rng = np.random.default_rng(3)
    support = greedy_support(mentions, ["PER", "ORG", "LOC"], 2, rng)
    counts = Counter()
    for i in support:
        counts.update(mentions[i])
    assert all(counts[t] >= 2 for t in ("PER", "ORG", "LOC")), counts
    assert 4 not in support   # no sentence without a wanted mention
    query = greedy_support(mentions, ["PER"], 1, rng, exclude=set(support), strict=False)
    assert not set(query) & set(support)
    with pytest.raises(SamplingError, match="too few mentions for a 9-shot support: LOC has"):
        greedy_support(mentions, ["LOC"], 9, rng)


def test_word_episodes_index_words_and_map_other_types_to_o():
    tags = [t for _, t in SENTENCES]
    pool = WordPool.build(["news"] * len(tags), tags)
    episodes = sample_word_episodes(pool, 5, seed=0, way_min=1, shot_max=2, query_shots=1)
    flat = [t for sentence in tags for t in sentence]
    for episode in episodes:
        assert not set(episode.support) & set(episode.query)
        for row, label in zip(episode.support + episode.query, episode.support_labels + episode.query_labels):
            expected = flat[row][2:] if flat[row] != "O" and flat[row][2:] in episode.classes else "O"
            assert episode.classes[label] == expected


def test_read_token_files(tmp_path):
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text("\n".join(json.dumps({"words": w, "labels": t}) for w, t in SENTENCES[:2]))
    frame = read_token_file(jsonl, "words", "labels")
    assert frame["tokens"].tolist()[1] == ["Shares", "of", "Apple", "fell"]
    conll = tmp_path / "b.conll"
    conll.write_text("-DOCSTART- O\n\nTim NNP B-PER\nCook NNP I-PER\n\nHi UH O\n")
    assert read_token_file(conll)["tags"].tolist() == [["B-PER", "I-PER"], ["O"]]
    with pytest.raises(DataError, match="lacks 'tokens'/'tags'; found"):
        read_token_file(jsonl)
    (tmp_path / "c.jsonl").write_text("{not json\n")
    with pytest.raises(DataError, match="line 1 is not JSON"):
        read_token_file(tmp_path / "c.jsonl")


def test_split_words_keeps_character_offsets():
    text = "Tim Cook, CEO of Apple."
    words, offsets = split_words(text)
    assert [text[a:b] for a, b in offsets] == words == ["Tim", "Cook", ",", "CEO", "of", "Apple", "."]


BAD_TOKEN_ROWS = [
    ({"tokens": ["Tim", "Cook"], "tags": ["B-PER"]}, "tokens and tags differ in length in 1 sentence"),
    ({"tokens": ["New", "York"], "tags": ["I-LOC", "I-LOC"]}, "invalid BIO in 1 sentence"),
    ({"tokens": ["Acme"], "tags": ["B-FOO"]}, "tags not in the declared set in 1 sentence(s) (rows 0): ['B-FOO']"),
    ({"tokens": ["x"] * 400, "tags": ["O"] * 400}, "1 sentence(s) outside 1..150 words"),
    ({"tokens": ["a\x00b"], "tags": ["O"]}, "empty words or control characters in 1 sentence"),
]


@pytest.mark.parametrize("row,message", BAD_TOKEN_ROWS)
def test_token_suite_names_each_bad_input(row, message):
    from components.ner_validation import validate_token_frame

    frame = pd.DataFrame([row])
    outcome = validate_token_frame(frame, "t", ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"], 1, 150)
    assert not outcome.success
    assert any(message in failure for failure in outcome.failures), outcome.failures


def test_token_suite_counts_mentions_per_type_and_accepts_good_data():
    from components.ner_validation import validate_token_frame

    frame = pd.DataFrame([{"tokens": w, "tags": t} for w, t in SENTENCES])
    assert validate_token_frame(frame, "good", None, 1, 150, min_mentions=3).success
    outcome = validate_token_frame(frame, "short", None, 1, 150, min_mentions=5)
    assert outcome.failures == ["[pandas check] too few mentions for a 5-shot support: LOC has 4, PER has 4; "
                                "label more sentences or lower the domain's k"]


def test_adapt_decode_save_load_and_pyfunc_spans(tiny_bert_dir, tmp_path, single_thread):
    """Adaptation on a tiny random BERT: valid spans with offsets, identical after a save/load round trip, and the
    pyfunc answer (text or tokens in, spans out)."""
    from components.config import EncoderConfig
    from components.encoder import load_encoder
    from components.meta import ProjectionHead
    from components.ner_model import adapt_entities, load_entity_model, save_entity_model
    from components.ner_predictor import EntityPredictor, entities_frame
    from components.token_features import encode_words

    encoder = load_encoder(EncoderConfig(name=str(tiny_bert_dir), max_length=64))
    tokens, tags = [w for w, _ in SENTENCES], [t for _, t in SENTENCES]
    vectors = encode_words(encoder, tokens)
    assert [len(v) for v in vectors] == [len(w) for w in tokens]
    model = adapt_entities(ProjectionHead(encoder.dim), vectors, tokens, tags, abstract_transitions(tags),
                           encoder={"name": str(tiny_bert_dir), "max_length": 64})
    assert model.types == ["LOC", "ORG", "PER"] and set(model.info["cv_f1"]) and model.settings.method
    text = "Tim Cook visited Berlin and Apple"
    predictor = EntityPredictor(model, encoder)
    spans = predictor.extract([text])[0]
    for span in spans:
        assert text[span["char_start"]:span["char_end"]] == span["text"] and span["type"] in model.types
        assert 0.0 <= span["score"] <= 1.0
    save_entity_model(model, tmp_path / "m")
    reloaded = EntityPredictor(load_entity_model(tmp_path / "m"), encoder)
    again = reloaded.extract([text])[0]   # support vectors are stored as float16: scores move in the 3rd decimal
    assert [{k: v for k, v in s.items() if k != "score"} for s in again] == \
        [{k: v for k, v in s.items() if k != "score"} for s in spans]
    assert [s["score"] for s in again] == pytest.approx([s["score"] for s in spans], abs=1e-2)
    frame = entities_frame(reloaded, pd.DataFrame({"text": [text, ""]}))
    assert frame["error"].tolist()[0] == "" and "row 1" in frame["error"].tolist()[1]
    by_tokens = entities_frame(reloaded, pd.DataFrame({"tokens": [["Tim", "Cook", "visited", "Berlin"]]}))
    assert all("char_start" not in s for s in by_tokens["entities"][0])
    explanation = reloaded.explain(text)
    assert explanation.text == text and all(e.nearest for e in explanation.top)


def test_adapted_model_beats_chance_on_separable_words(single_thread):
    """With word vectors that separate the types, adaptation must find (almost) every mention: a test that fails
    if scoring, CV or decoding is broken."""
    from components.meta import ProjectionHead
    from components.ner_model import adapt_entities, span_f1, tag_sentences

    rng = np.random.default_rng(0)
    centres = {t: rng.normal(size=16) for t in ("O", "PER", "ORG", "LOC")}

    def vectors_of(tags):
        return np.stack([centres["O" if t == "O" else t[2:]] + 0.1 * rng.normal(size=16) for t in tags]).astype(np.float32)

    tags = [t for _, t in SENTENCES]
    tokens = [w for w, _ in SENTENCES]
    model = adapt_entities(ProjectionHead(16), [vectors_of(t) for t in tags], tokens, tags,
                           abstract_transitions(tags))
    test_tags = tags[::-1]
    predicted = tag_sentences(model, [vectors_of(t) for t in test_tags])
    assert span_f1(test_tags, predicted) > 0.9
    assert all(bio_errors(p) == [] for p in predicted)
