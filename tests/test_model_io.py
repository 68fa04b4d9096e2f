"""Model directories: a lossless roundtrip, refusal of anything tampered or incomplete, and atomic replacement."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from components.meta import CosineClassifier, ProjectionHead
from components.model_io import (MANIFEST, AdaptedModel, ModelIntegrityError, load_model, read_manifest, save_model,
                                 verify)


def make_model(seed: int = 0, with_encoder_state: bool = False) -> AdaptedModel:
    torch.manual_seed(seed)
    head = ProjectionHead(8, temperature_init=12.0)
    with torch.no_grad():
        head.linear.weight.normal_(0, 0.2)
        head.linear.bias.normal_(0, 0.1)
    classifier = CosineClassifier(["neg", "neu", "pos"], torch.randn(3, 8), 12.0,
                                  {"steps": 5, "cv_scores": {0: 0.5, 5: 0.75}})
    state = {"lora_A.weight": torch.randn(2, 8), "lora_B.weight": torch.randn(8, 2)} if with_encoder_state else None
    return AdaptedModel(head, classifier, {"name": "tiny", "max_length": 16}, "lora" if state else "head", state,
                        {"r": 2} if state else None, {"domain": "toy", "k": 4})


@pytest.fixture
def saved(tmp_path):
    model = make_model(with_encoder_state=True)
    return model, save_model(model, tmp_path / "models" / "candidate")


def test_roundtrip_gives_identical_predictions(saved):
    model, directory = saved
    loaded = load_model(directory)
    x = torch.randn(10, 8)
    expected = model.classifier.predict_proba(model.head, x)
    assert torch.equal(loaded.classifier.predict_proba(loaded.head, x), expected)
    assert loaded.classifier.predict(loaded.head, x) == model.classifier.predict(model.head, x)
    assert loaded.labels == ["neg", "neu", "pos"]
    assert (loaded.scope, loaded.encoder, loaded.lora, loaded.metadata) == \
        ("lora", {"name": "tiny", "max_length": 16}, {"r": 2}, {"domain": "toy", "k": 4})
    assert set(loaded.encoder_state) == set(model.encoder_state)
    for key, value in model.encoder_state.items():
        assert torch.equal(loaded.encoder_state[key], value)
    assert loaded.classifier.info == {"steps": 5, "cv_scores": {"0": 0.5, "5": 0.75}}  # JSON keys are strings
    assert not loaded.head.training


def test_head_scope_writes_no_encoder_file(tmp_path):
    directory = save_model(make_model(), tmp_path / "m")
    assert sorted(p.name for p in directory.iterdir()) == ["classifier.safetensors", "head.safetensors", MANIFEST]
    assert load_model(directory).encoder_state is None


def test_nothing_is_pickled(saved):
    _, directory = saved
    assert {p.suffix for p in directory.iterdir()} == {".safetensors", ".json"}


@pytest.mark.parametrize("name", ["head.safetensors", "classifier.safetensors", "encoder.safetensors"])
def test_a_flipped_byte_is_refused(saved, name):
    _, directory = saved
    path = directory / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match=rf"{name}: checksum mismatch \(file changed or corrupt\); "
                                                  r"refusing to load"):
        load_model(directory)


@pytest.mark.parametrize("name", ["head.safetensors", "encoder.safetensors"])
def test_a_deleted_file_is_refused(saved, name):
    _, directory = saved
    (directory / name).unlink()
    with pytest.raises(ModelIntegrityError, match=rf"{name}: listed in the manifest but missing"):
        load_model(directory)


def test_a_missing_or_foreign_manifest_is_refused(saved, tmp_path):
    _, directory = saved
    manifest = json.loads((directory / MANIFEST).read_text(encoding="utf-8"))
    (directory / MANIFEST).write_text(json.dumps({**manifest, "format_version": 99}), encoding="utf-8")
    with pytest.raises(ModelIntegrityError, match="model format 99 is not 1"):
        verify(directory)
    (directory / MANIFEST).unlink()
    with pytest.raises(ModelIntegrityError, match=rf"no {MANIFEST}; not a MetaAdapt model directory"):
        read_manifest(directory)
    with pytest.raises(ModelIntegrityError, match="not a MetaAdapt model directory"):
        load_model(tmp_path / "never-written")


def test_save_over_an_existing_directory_replaces_it_atomically(tmp_path):
    directory = tmp_path / "candidate"
    save_model(make_model(seed=0, with_encoder_state=True), directory)
    (directory / "stray.txt").write_text("from the old model", encoding="utf-8")
    newer = make_model(seed=1)
    save_model(newer, directory)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["candidate"]  # no .old backup, no staging directory
    assert not (directory / "stray.txt").exists() and not (directory / "encoder.safetensors").exists()
    loaded = load_model(directory)
    assert loaded.scope == "head" and loaded.encoder_state is None
    assert torch.equal(loaded.classifier.weights, newer.classifier.weights)


def test_support_embeddings_round_trip_and_explain_uses_them_without_re_encoding(tmp_path):
    from components.predictor import Predictor

    classifier = CosineClassifier(["neg", "pos"], torch.randn(2, 8), 10.0)
    vectors = torch.randn(3, 8)
    model = AdaptedModel(ProjectionHead(8), classifier, {"name": "x"}, "head",
                         support={"texts": ["bad", "awful", "good"], "labels": ["neg", "neg", "pos"]},
                         support_vectors=vectors)
    loaded = load_model(save_model(model, tmp_path / "m"))
    torch.testing.assert_close(loaded.support_vectors, vectors.half().float())

    class CountingEncoder:
        calls: list[int] = []

        def encode(self, texts, batch_size):
            self.calls.append(len(texts))
            return np.ones((len(texts), 8), dtype=np.float32)

    predictor = Predictor.__new__(Predictor)
    predictor.model, predictor.encoder, predictor.batch_size = loaded, CountingEncoder(), 8
    explanation = predictor.explain("terrible")
    assert CountingEncoder.calls == [1]                      # only the query text was encoded
    assert {e.label for e in explanation.top} == {"neg", "pos"}
