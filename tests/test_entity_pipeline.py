"""An entity domain through every pipeline stage (ingest ... drift, summary) on small slices of the real NER data
with the real encoder, then the registered champion answering text with spans (pyfunc and `metaadapt predict`),
and a bad token batch quarantined."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
import yaml

from components.config import PROJECT_ROOT, parse_params

MIRROR = Path(os.environ.get("METAADAPT_DATA_MIRROR", PROJECT_ROOT.parent / "shared" / "data"))
pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not (MIRROR / "ner" / "finer_ord").is_dir(), reason="needs the NER data mirror")]
DOMAIN = "finance_entities"


def entity_params(root: Path) -> dict:
    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    raw["data"]["mirror"] = str(MIRROR.resolve())
    raw["registry"]["tracking_uri"] = None
    raw["domains"] = {DOMAIN: {"task": "entities", "dataset": "finer_ord", "adapt_split": "train",
                               "eval_split": "test", "k": 3, "meta_sources": ["conll2003", "wnut17"]}}
    raw["entities"].update(source_max_sentences=150, adapt_pool_max_sentences=300, eval_max_sentences=60,
                           train_episodes=40, val_episodes=8, epochs=1, drift_max_sentences=40)
    return raw


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    from components import stages

    root = tmp_path_factory.mktemp("entity-project")
    raw = entity_params(root)
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    params = parse_params(raw)
    results = {name: getattr(stages, name)(params, DOMAIN, root) for name in
               ("ingest", "validate", "episodes", "meta_train", "adapt", "evaluate", "register", "drift")}
    results["summary"] = stages.summary(params, root)
    return root, params, results


def test_stages_write_entity_reports(project):
    root, _, results = project
    metrics = json.loads((root / "reports" / "metrics" / f"{DOMAIN}.json").read_text())
    assert metrics["task"] == "entities" and metrics["eval_rows"] == 60
    assert 0.0 < metrics["f1"] <= 1.0 and 0.0 <= metrics["prototypes_f1"] <= 1.0
    assert set(json.loads((root / "reports" / "confusion" / f"{DOMAIN}.json").read_text())["labels"]) == \
        {"LOC", "ORG", "PER"}
    assert results["validate"]["adapt"]["success"] and results["meta_train"]["trained"]
    assert "entity_type_mix" in json.loads((root / "reports" / "drift" / f"{DOMAIN}.json").read_text())
    assert results["register"]["version"] == 1
    assert f"| {DOMAIN} | ok | entity F1" in (root / "reports" / "summary.md").read_text()


def test_champion_extracts_spans_from_text(project):
    from typer.testing import CliRunner

    from components.registry import load_champion
    from flows.cli import app

    root, params, _ = project
    text = "Goldman Sachs hired John Smith in London."
    frame = load_champion(DOMAIN, params.registry, root).predict(pd.DataFrame({"text": [text]}))
    for span in frame["entities"][0]:
        assert text[span["char_start"]:span["char_end"]] == span["text"] and span["type"] in {"LOC", "ORG", "PER"}
    result = CliRunner().invoke(app, ["predict", "--domain", DOMAIN, "--root", str(root), text])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.strip().splitlines()[-1])["text"] == text


def test_bad_token_batch_is_quarantined(project, tmp_path):
    from components.quarantine import BatchRejected, accept_batch

    root, params, _ = project
    bad = tmp_path / "batch.jsonl"
    bad.write_text(json.dumps({"tokens": ["New", "York"], "tags": ["I-LOC", "I-LOC"]}) + "\n"
                   + json.dumps({"tokens": ["Acme"], "tags": ["B-PRODUCT"]}) + "\n")
    with pytest.raises(BatchRejected, match="invalid BIO in 1 sentence") as rejected:
        accept_batch(bad, DOMAIN, params, root)
    assert "tags not in the declared set" in str(rejected.value)
    assert not bad.exists() and (rejected.value.quarantine_dir / "batch.jsonl").is_file()
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"tokens": ["Apple", "rose"], "tags": ["B-ORG", "O"]}) + "\n")
    assert accept_batch(good, DOMAIN, params, root)["tags"].tolist() == [["B-ORG", "O"]]
