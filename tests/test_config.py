"""params.yaml: the real file loads; every kind of bad value fails at load time naming its dotted key and value."""
from __future__ import annotations

import copy
import re
import time

import pytest
import yaml

from components.config import (MAX_YAML_NODES, MIRROR_ENV, PROJECT_ROOT, ConfigError, DataConfig, Params, flatten,
                               load_params, parse_params, resolve_mirror)


@pytest.fixture(scope="module")
def raw_params() -> dict:
    return yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text(encoding="utf-8"))


def with_value(raw: dict, dotted: str, value) -> dict:
    """A deep copy of raw with one dotted key set."""
    changed = copy.deepcopy(raw)
    *parents, last = dotted.split(".")
    node = changed
    for part in parents:
        node = node[part]
    node[last] = value
    return changed


def test_real_params_yaml_loads():
    params = load_params()
    assert isinstance(params, Params)
    assert params.encoder.name == "sentence-transformers/all-MiniLM-L6-v2"
    assert {"finance_sentiment", "customer_intent", "product_reviews"} <= set(params.domains)
    for domain in params.domains.values():
        assert domain.dataset in params.datasets
        assert all(source in params.datasets for source in domain.meta_sources)


def test_load_params_from_an_explicit_path(tmp_path, raw_params):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(with_value(raw_params, "meta.epochs", 2)), encoding="utf-8")
    assert load_params(path).meta.epochs == 2


@pytest.mark.parametrize("dotted, value", [
    ("meta.lr", -1),
    ("encoder.max_length", 4),
    ("meta.algorithm", "maml++"),
    ("episodes.augment.token_dropout", 1.5),
    ("domains.finance_sentiment.k", -3),
])
def test_out_of_range_value_names_dotted_key_and_value(raw_params, dotted, value):
    with pytest.raises(ConfigError, match=rf"{re.escape(dotted)} = {re.escape(repr(value))}"):
        parse_params(with_value(raw_params, dotted, value))


def test_unknown_key_is_refused_with_its_dotted_key(raw_params):
    with pytest.raises(ConfigError, match=r"meta\.learning_rate = 0\.1: Extra inputs are not permitted"):
        parse_params(with_value(raw_params, "meta.learning_rate", 0.1))


def test_every_bad_value_is_listed_not_only_the_first(raw_params):
    raw = with_value(with_value(raw_params, "meta.lr", -1), "encoder.max_length", 4)
    with pytest.raises(ConfigError, match=r"2 invalid value\(s\)") as caught:
        parse_params(raw)
    assert "meta.lr = -1" in str(caught.value) and "encoder.max_length = 4" in str(caught.value)


def test_domain_with_undeclared_dataset(raw_params):
    raw = with_value(raw_params, "domains.customer_intent.dataset", "banking78")
    with pytest.raises(ConfigError, match=r"domains\.customer_intent\.dataset = 'banking78' is not declared"):
        parse_params(raw)


def test_meta_source_undeclared(raw_params):
    raw = with_value(raw_params, "domains.customer_intent.meta_sources", ["clinc150", "nope"])
    with pytest.raises(ConfigError, match=r"domains\.customer_intent\.meta_sources has 'nope', not declared"):
        parse_params(raw)


def test_meta_sources_containing_the_target_dataset(raw_params):
    raw = with_value(raw_params, "domains.customer_intent.meta_sources", ["clinc150", "banking77"])
    with pytest.raises(ConfigError, match=r"domains\.customer_intent\.meta_sources has the domain's own data set "
                                          r"'banking77'"):
        parse_params(raw)


def test_meta_sources_sharing_the_target_text_group(raw_params):
    raw = with_value(raw_params, "domains.product_reviews.meta_sources",
                     ["customer_reviews_cr", "womens_clothing_reviews_rating"])
    with pytest.raises(ConfigError, match=r"domains\.product_reviews\.meta_sources has "
                                          r"'womens_clothing_reviews_rating', which shares texts \(text_group "
                                          r"'womens_clothing_reviews'\)"):
        parse_params(raw)


def test_split_not_offered_by_the_dataset(raw_params):
    raw = with_value(raw_params, "domains.customer_intent.eval_split", "validation")
    with pytest.raises(ConfigError, match=r"domains\.customer_intent\.eval_split = 'validation': banking77 has "
                                          r"splits \['test', 'train'\]"):
        parse_params(raw)


def test_way_min_above_way_max(raw_params):
    raw = with_value(with_value(raw_params, "episodes.way_min", 5), "episodes.way_max", 3)
    # A cross-field check: pydantic reports it on the section, so the message names `episodes` and both fields.
    with pytest.raises(ConfigError, match=r"episodes = .*way_min \(5\) must be <= way_max \(3\)"):
        parse_params(raw)


def test_dataset_without_any_source(raw_params):
    raw = with_value(raw_params, "datasets.snips", {"text_column": "text"})
    with pytest.raises(ConfigError, match=r"datasets\.snips = .*needs `files`, `hub` or `url`"):
        parse_params(raw)


def test_load_params_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such params file"):
        load_params(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1, 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="expected a mapping at the top level, found list"):
        load_params(listing)


def _alias_bomb(levels: int = 9) -> str:
    """`a: &a [x x 9]`, `b: &b [*a x 9]`, ...: a few hundred bytes that expand to 9**levels strings."""
    names = "abcdefghijklmnop"[:levels]
    lines = [f"x-{names[0]}: &{names[0]} [" + ", ".join(['"x"'] * 9) + "]"]
    lines += [f"x-{cur}: &{cur} [" + ", ".join([f"*{prev}"] * 9) + "]" for prev, cur in zip(names, names[1:])]
    return "\n".join(lines) + "\n"


def test_yaml_alias_bomb_is_refused_while_loading(tmp_path, raw_params):
    """A nested alias bomb used under a typed key made check-config run 44 s and die with MemoryError at 5.5 GB
    (the error message printed the expanded value); it is refused at load time, naming the line."""
    raw = with_value(raw_params, "domains.product_reviews.meta_sources", "BOMB_HERE")
    path = tmp_path / "params.yaml"
    path.write_text(_alias_bomb() + yaml.safe_dump(raw).replace("BOMB_HERE", "*i"), encoding="utf-8")
    started = time.perf_counter()
    with pytest.raises(ConfigError, match=rf"params\.yaml: line \d+: YAML aliases expand this value past "
                                          rf"{MAX_YAML_NODES:,} nodes \(an alias bomb\?\)"):
        load_params(path)
    assert time.perf_counter() - started < 2


def test_small_aliases_still_load(tmp_path, raw_params):
    """Anchors and aliases as people use them (a shared list, a merged mapping) stay allowed."""
    raw = with_value(raw_params, "domains.product_reviews.meta_sources", "SOURCES_HERE")
    text = yaml.safe_dump(raw).replace("SOURCES_HERE", "*sources")
    sources = raw_params["domains"]["product_reviews"]["meta_sources"]
    path = tmp_path / "params.yaml"
    path.write_text(f"x-sources: &sources {sources}\n" + text, encoding="utf-8")
    with pytest.raises(ConfigError, match=r"x-sources = .*Extra inputs are not permitted"):
        load_params(path)  # the anchor's own top-level key is unknown; the alias itself loaded
    path.write_text(text.replace("*sources", str(sources)) + "\n", encoding="utf-8")
    assert load_params(path).domains["product_reviews"].meta_sources == sources


def test_recursive_yaml_alias_is_refused(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("seed: &a [1, *a]\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"line 1: a recursive YAML alias"):
        load_params(path)


def test_huge_values_are_cut_in_error_messages(raw_params):
    """The error message shows a bounded repr: a 43-million-string shared list formats in milliseconds."""
    value = ["x"] * 9
    for _ in range(7):
        value = [value] * 9
    started = time.perf_counter()
    with pytest.raises(ConfigError) as caught:
        parse_params(with_value(raw_params, "domains.product_reviews.meta_sources", value))
    assert time.perf_counter() - started < 2
    lines = str(caught.value).splitlines()
    assert any(line.startswith("  domains.product_reviews.meta_sources.0 = [[") for line in lines)
    assert all(len(line) < 400 for line in lines)
    with pytest.raises(ConfigError) as caught:
        parse_params(with_value(raw_params, "seed", "x" * 5000))
    shown = re.search(r"seed = (.*): Input should be a valid integer", str(caught.value)).group(1)
    assert shown.startswith("'xxxx") and len(shown) <= 200 and "5000" not in shown


def test_unknown_domain_lists_the_known_ones(raw_params):
    raw = copy.deepcopy(raw_params)
    raw["domains"] = {name: raw["domains"][name] for name in ("product_reviews", "customer_intent")}
    with pytest.raises(ConfigError, match=r"unknown domain 'nope'; params.yaml defines: customer_intent, "
                                          r"product_reviews$"):
        parse_params(raw).domain("nope")


def test_resolve_mirror_prefers_the_environment(tmp_path, monkeypatch):
    configured, from_env = tmp_path / "configured", tmp_path / "env"
    configured.mkdir()
    from_env.mkdir()
    monkeypatch.setenv(MIRROR_ENV, str(from_env))
    assert resolve_mirror(DataConfig(mirror=str(configured)), root=tmp_path) == from_env
    monkeypatch.delenv(MIRROR_ENV)
    assert resolve_mirror(DataConfig(mirror=str(configured)), root=tmp_path) == configured
    assert resolve_mirror(DataConfig(mirror="configured"), root=tmp_path) == configured  # relative to root


def test_resolve_mirror_refuses_a_non_directory(tmp_path, monkeypatch):
    a_file = tmp_path / "mirror.txt"
    a_file.write_text("not a directory", encoding="utf-8")
    monkeypatch.setenv(MIRROR_ENV, str(a_file))
    with pytest.raises(ConfigError, match=rf"data mirror {re.escape(str(a_file))} .* is not a directory"):
        resolve_mirror(DataConfig(), root=tmp_path)
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path / "absent"))
    with pytest.raises(ConfigError, match="is not a directory"):
        resolve_mirror(DataConfig(), root=tmp_path)


def test_resolve_mirror_default_is_shared_data_beside_the_project(tmp_path, no_mirror_env):
    root = tmp_path / "project"
    root.mkdir()
    assert resolve_mirror(DataConfig(), root=root) is None
    (tmp_path / "shared" / "data").mkdir(parents=True)
    assert resolve_mirror(DataConfig(), root=root) == tmp_path / "shared" / "data"


def test_flatten_gives_dotted_keys():
    params = load_params()
    flat = flatten(params)
    assert flat["meta.lr"] == params.meta.lr
    assert flat["episodes.augment.token_dropout"] == params.episodes.augment.token_dropout
    assert flat["meta.lora.target_modules"] == params.meta.lora.target_modules
    assert flat["datasets.banking77.hub.id"] == "PolyAI/banking77"
    assert flat["seed"] == params.seed
    assert not any(isinstance(v, dict) for v in flat.values())
    assert flatten({"a": {"b": {"c": 1}, "d": [1, 2]}, "e": None}) == {"a.b.c": 1, "a.d": [1, 2], "e": None}
