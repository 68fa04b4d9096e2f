"""Many domains declared at once (components.domains): a source collection and a domain template expand into
ordinary data sets and domains, `metaadapt check-config` writes the list dvc.yaml iterates, `dvc repro` runs a
template domain's stage, and a stale or wrong declaration fails with one clear line."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from components.config import ConfigError, load_params
from components.domains import EXPANDED_FILE
from flows.cli import app
from tests.tiny_project import dvc, labelled_frame, make_project


def _declare_many(root: Path, folders: tuple[str, ...] = ("shop_a", "shop_b")) -> None:
    """Three source files as one collection, one domain folder per name, declared by a template."""
    for i in range(3):
        (root / "sources").mkdir(exist_ok=True)
        labelled_frame(["sports", "markets"], 20, 10 + i).to_csv(root / "sources" / f"news_{i}.csv", index=False)
    for j, name in enumerate(folders):
        (root / "targets" / name).mkdir(parents=True, exist_ok=True)
        labelled_frame(["positive", "negative"], 20, 20 + j).to_csv(root / "targets" / name / "adapt.csv", index=False)
        labelled_frame(["positive", "negative"], 10, 40 + j).to_csv(root / "targets" / name / "eval.csv", index=False)
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["source_collections"] = {"news": {"files": "sources/*.csv"}}
    raw["domain_templates"] = {"shops": {"targets": "targets/*", "settings": {"k": 2, "meta_sources": ["news"]}}}
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def test_a_collection_and_a_template_expand_into_domains_and_dvc_stages(tmp_path: Path, tiny_bert_dir) -> None:
    root = make_project(tmp_path, tiny_bert_dir)
    _declare_many(root)
    params = load_params(root / "params.yaml")
    assert list(params.domains) == ["reviews", "shop_a", "shop_b"]
    assert params.domains["shop_a"].meta_sources == ["news.news_0", "news.news_1", "news.news_2"]
    assert params.domains["shop_b"].k == 2 and params.datasets["shops.shop_b"].files["eval"].endswith("eval.csv")

    result = CliRunner().invoke(app, ["check-config", "--path", str(root / "params.yaml")])
    assert result.exit_code == 0, result.output
    assert "3 domain(s); domains.expanded.yaml written" in result.output
    stages = dvc(root, "stage", "list", "--name-only").stdout.split()
    assert {"ingest@shop_a", "register@shop_b", "drift@reviews"} <= set(stages)

    done = _plain_dvc(root, "repro", "--single-item", "ingest@shop_b")
    assert done.returncode == 0, done.stderr
    assert (root / "data/prepared/shop_b/meta_pool.parquet").is_file()
    assert _locked_entry(root, "ingest@shop_b")["config"]["k"] == 2


def _plain_dvc(root: Path, *args: str) -> subprocess.CompletedProcess:
    """The dvc CLI as a user runs it (dvc.yaml's `python` is the environment's, as under `make run`)."""
    venv = str(Path(sys.executable).parent)
    return subprocess.run([str(Path(venv) / "dvc"), *args], cwd=root, text=True, capture_output=True,
                          env={**os.environ, "PATH": f"{venv}:{os.environ['PATH']}"}, timeout=600)


def _locked_entry(root: Path, stage: str) -> dict:
    domain = stage.partition("@")[2]
    return yaml.safe_load((root / "dvc.lock").read_text())["stages"][stage]["params"][EXPANDED_FILE][
        f"expanded_domains.{domain}"]


def test_plain_dvc_repro_sees_an_edited_template_without_check_config(tmp_path: Path, tiny_bert_dir) -> None:
    """The expand_domains stage runs before every domain stage: a params.yaml edit reaches `dvc repro` directly."""
    root = make_project(tmp_path, tiny_bert_dir)
    _declare_many(root)
    CliRunner().invoke(app, ["check-config", "--path", str(root / "params.yaml")])
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["domain_templates"]["shops"]["settings"]["k"] = 3
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))

    done = _plain_dvc(root, "repro", "ingest@shop_b")     # with its upstream: expand_domains first
    assert done.returncode == 0, done.stderr
    assert "Running stage 'expand_domains'" in done.stdout
    assert _locked_entry(root, "ingest@shop_b")["config"]["k"] == 3


def test_a_folder_added_stops_dvc_repro_once_with_the_fix(tmp_path: Path, tiny_bert_dir) -> None:
    """DVC expands `foreach` before any stage runs, so a run that finds a new domain stops and says to rerun;
    the rerun has the new domain's stages."""
    root = make_project(tmp_path, tiny_bert_dir)
    _declare_many(root)
    CliRunner().invoke(app, ["check-config", "--path", str(root / "params.yaml")])
    _declare_many(root, folders=("shop_a", "shop_b", "shop_c"))

    first = _plain_dvc(root, "repro", "ingest@shop_a")
    assert first.returncode != 0
    assert "the domain list changed (added: shop_c; removed: none)" in first.stderr + first.stdout
    assert not (root / "data/prepared/shop_a").exists()      # nothing after the expansion ran
    assert "ingest@shop_c" in _plain_dvc(root, "stage", "list", "--name-only").stdout.split()
    second = _plain_dvc(root, "repro", "--single-item", "expand_domains")
    assert second.returncode == 0, second.stderr


def test_a_stage_started_with_a_stale_domain_file_stops_with_the_fix(tmp_path: Path, tiny_bert_dir) -> None:
    """`dvc repro --single-item` (or the stage command by hand) skips expand_domains: the stage itself refuses."""
    root = make_project(tmp_path, tiny_bert_dir)
    _declare_many(root)
    CliRunner().invoke(app, ["check-config", "--path", str(root / "params.yaml")])
    _declare_many(root, folders=("shop_a", "shop_b", "shop_c"))
    done = subprocess.run([sys.executable, "-m", "components.stages", "ingest", "shop_a"], cwd=root,
                          capture_output=True, text=True)
    assert done.returncode != 0 and "run `metaadapt check-config` to regenerate it" in done.stderr


@pytest.mark.parametrize("change, message", [
    (lambda raw: raw["source_collections"]["news"].update(files="nowhere/*.csv"),
     r"source_collections\.news\.files = 'nowhere/\*\.csv' matches no file"),
    (lambda raw: raw["domain_templates"]["shops"]["settings"].update(dataset="tiny_news"),
     r"domain_templates\.shops: settings: Value error, settings may not set \['dataset'\]"),
    (lambda raw: raw["domain_templates"]["shops"].update(name_prefix="", targets=["targets/shop_a", "targets/shop_a/"]),
     None),
    (lambda raw: raw["domains"].update(shop_a=raw["domains"]["reviews"]),
     r"gives domain 'shop_a', which is declared twice \(set name_prefix\)"),
    (lambda raw: raw["domain_templates"]["shops"].update(eval_file="test.csv"),
     r"domain_templates\.shops: .*shop_a lacks test\.csv"),
])
def test_bad_declarations_fail_with_their_key(tmp_path: Path, tiny_bert_dir, change, message) -> None:
    root = make_project(tmp_path, tiny_bert_dir)
    _declare_many(root)
    raw = yaml.safe_load((root / "params.yaml").read_text())
    change(raw)
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    if message is None:   # the same folder twice (a list with a trailing slash) is one domain, not an error
        assert list(load_params(root / "params.yaml").domains) == ["reviews", "shop_a"]
        return
    with pytest.raises(ConfigError, match=message):
        load_params(root / "params.yaml")


def test_an_edited_domain_entry_reaches_dvc_through_the_generated_file(tmp_path: Path, tiny_bert_dir) -> None:
    """DVC tracks each domain's params in domains.expanded.yaml: the flows refresh it before asking DVC."""
    from components.domains import write_expanded

    root = make_project(tmp_path, tiny_bert_dir)
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["domains"]["reviews"]["k"] = 5
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    assert write_expanded(root) and not write_expanded(root)    # changed once, then up to date
    entry = yaml.safe_load((root / EXPANDED_FILE).read_text())["expanded_domains"]["reviews"]
    assert entry["config"]["k"] == 5
