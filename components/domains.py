"""Declaring many domains: source collections and domain templates, expanded into plain `datasets`/`domains`.

Why: a team with dozens of domains over one set of source tasks should not write one `datasets` entry per file
and one `domains` entry per target. Two params.yaml sections say it once:

    source_collections:
      reviews: {files: data/sources/*.csv}          # every file its own source task: reviews.<file stem>
    domain_templates:
      product_line:
        targets: data/domains/*                      # every folder a domain: <name_prefix><folder name>
        adapt_file: adapt.csv
        eval_file: eval.csv
        settings: {k: 8, meta_sources: [reviews]}    # a collection name stands for all of its files

`components.config.parse_params` expands them before validation, so every later piece (stages, flows, the
registry) sees ordinary data sets and domains. DVC needs the expanded list too (`foreach` iterates concrete
values): `write_expanded` writes it to ``domains.expanded.yaml``, which dvc.yaml reads through `vars` and
tracks per domain (`expanded_domains.<d>`). Three writers keep it current: `metaadapt check-config`,
`metaadapt run`, and dvc.yaml's first stage `expand_domains` (`python -m components.domains`, always run), which
every domain stage depends on, so a plain `dvc repro` / `dvc exp run` after a params.yaml edit reruns exactly the
edited domains. A stage started by `dvc repro` still refuses a stale file (`require_current`).
"""
from __future__ import annotations

import copy
import glob
import sys
from pathlib import Path
from typing import Any

import yaml

EXPANDED_FILE = "domains.expanded.yaml"
EXPANDED_KEY = "expanded_domains"
HEADER = ("# Generated from params.yaml by `metaadapt check-config` (and `metaadapt run`): every domain, templates\n"
          "# expanded. dvc.yaml iterates it (DVC `foreach` needs concrete values). Do not edit; commit it.\n")


def expand_declarations(raw: Any, root: Path) -> Any:
    """`raw` with every source collection added to `datasets` and every template folder added to `domains`;
    meta_sources naming a collection are replaced by the collection's data sets. Unchanged without either."""
    from components.config import ConfigError

    if not isinstance(raw, dict) or not (raw.get("source_collections") or raw.get("domain_templates")):
        return raw
    raw = copy.deepcopy(raw)
    datasets, domains = dict(raw.get("datasets") or {}), dict(raw.get("domains") or {})
    collections = {}
    for name, spec in (raw.get("source_collections") or {}).items():
        collections[name] = _add_collection(name, _validated("source_collections", name, spec), root, datasets)
    for name, spec in (raw.get("domain_templates") or {}).items():
        _add_template(name, _validated("domain_templates", name, spec), root, datasets, domains)
    for name, domain in domains.items():
        if isinstance(domain, dict) and isinstance(domain.get("meta_sources"), list):
            domain["meta_sources"] = _expanded_sources(domain["meta_sources"], collections)
    if set(collections) & set(datasets):
        raise ConfigError(f"source_collections {sorted(set(collections) & set(datasets))} also name data sets; "
                          f"a meta_sources entry would be ambiguous: rename the collection")
    return {**raw, "datasets": datasets, "domains": domains}


def _validated(section: str, name: str, spec: Any):
    from pydantic import ValidationError

    from components.config import ConfigError, DomainTemplate, SourceCollection

    model = SourceCollection if section == "source_collections" else DomainTemplate
    try:
        return model.model_validate(spec)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(str(p) for p in item['loc']) or '<entry>'}: {item['msg']}"
                             for item in error.errors(include_url=False))
        raise ConfigError(f"{section}.{name}: {problems}") from None


def _matches(patterns: str | list[str], root: Path) -> list[Path]:
    """Every path matching the glob(s), relative ones resolved against the project root, sorted, no repeats."""
    found: set[Path] = set()
    for pattern in [patterns] if isinstance(patterns, str) else patterns:
        pattern = str(Path(pattern).expanduser())
        full = pattern if Path(pattern).is_absolute() else str(root / pattern)
        found.update(Path(p).resolve() for p in glob.glob(full))
    return sorted(found)


def _add_collection(name: str, spec, root: Path, datasets: dict) -> list[str]:
    from components.config import ConfigError

    files = [p for p in _matches(spec.files, root) if p.is_file()]
    if not files:
        raise ConfigError(f"source_collections.{name}.files = {spec.files!r} matches no file (relative globs are "
                          f"read from {root})")
    names = []
    for path in files:
        dataset = f"{name}.{path.stem}"
        if dataset in datasets:
            raise ConfigError(f"source_collections.{name}: data set {dataset!r} ({path}) is declared twice")
        datasets[dataset] = {"files": {"all": str(path)}, "text_column": spec.text_column,
                             "label_column": spec.label_column}
        names.append(dataset)
    return names


def _add_template(name: str, spec, root: Path, datasets: dict, domains: dict) -> None:
    from components.config import ConfigError

    folders = [p for p in _matches(spec.targets, root) if p.is_dir()]
    if not folders:
        raise ConfigError(f"domain_templates.{name}.targets = {spec.targets!r} matches no folder (relative globs are "
                          f"read from {root})")
    for folder in folders:
        domain, dataset = f"{spec.name_prefix}{folder.name}", f"{name}.{folder.name}"
        if domain in domains or dataset in datasets:
            raise ConfigError(f"domain_templates.{name}: folder {folder} gives domain {domain!r}, which is declared "
                              f"twice (set name_prefix)")
        files = {"adapt": str(folder / spec.adapt_file)}
        if spec.eval_file:
            files["eval"] = str(folder / spec.eval_file)
        missing = [f for f in files.values() if not Path(f).is_file()]
        if missing:
            raise ConfigError(f"domain_templates.{name}: {folder} lacks {', '.join(Path(f).name for f in missing)}")
        datasets[dataset] = {"files": files, "text_column": spec.text_column, "label_column": spec.label_column}
        domains[domain] = {**copy.deepcopy(spec.settings), "dataset": dataset, "adapt_split": "adapt",
                           "eval_split": "eval" if spec.eval_file else "adapt"}


def _expanded_sources(sources: list, collections: dict[str, list[str]]) -> list:
    out: list = []
    for source in sources:
        out += collections.get(source, [source]) if isinstance(source, str) else [source]
    return out


# ------------------------------------------------------------------------------------- the file DVC reads


def expanded_payload(params) -> dict:
    """What DVC tracks per domain: its entry, its data set, and one digest of its sources' specs.

    Small on purpose: DVC parses this file (and copies each entry into dvc.lock) for every stage it checks or
    commits, so its size must grow with the number of domains only, never with domains × sources."""
    import hashlib
    import json

    entries = {}
    for name, domain in params.domains.items():
        sources = {s: params.datasets[s].model_dump(mode="json", exclude_defaults=True) for s in domain.meta_sources}
        entries[name] = {"config": domain.model_dump(mode="json", exclude_defaults=True),
                         "dataset": params.datasets[domain.dataset].model_dump(mode="json", exclude_defaults=True),
                         "sources_sha256": hashlib.sha256(json.dumps(sources, sort_keys=True).encode()).hexdigest()}
    return {EXPANDED_KEY: entries}


def render(params) -> str:
    return HEADER + yaml.safe_dump(expanded_payload(params), sort_keys=True, allow_unicode=True)


def write_expanded(root: Path, params=None) -> bool:
    """Write <root>/domains.expanded.yaml from <root>/params.yaml; True when its content changed."""
    from components.config import load_params
    from components.model_io import atomic_write_text

    params = params or load_params(Path(root) / "params.yaml")
    path, text = Path(root) / EXPANDED_FILE, render(params)
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return False
    atomic_write_text(path, text)
    return True


def require_current(root: Path, params) -> None:
    """A stage run by `dvc repro` stops when the generated file does not match params.yaml (DVC then iterates an
    old domain list): the fix is one command."""
    from components.config import ConfigError

    path = Path(root) / EXPANDED_FILE
    if path.is_file() and path.read_text(encoding="utf-8") != render(params):
        raise ConfigError(f"{path} does not match params.yaml (a domain, template folder or source file changed): "
                          f"run `metaadapt check-config` to regenerate it, then `dvc repro` (a plain `dvc repro` "
                          f"regenerates it in its first stage, expand_domains)")


def declared_names(root: Path) -> set[str] | None:
    """The domain names in the generated file as it is on disk (what DVC iterated), None without the file."""
    path = Path(root) / EXPANDED_FILE
    if not path.is_file():
        return None
    return set((yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get(EXPANDED_KEY) or {})


def refresh_for_dvc(root: Path) -> str | None:
    """What the `expand_domains` stage does: rewrite the generated file from params.yaml; a message when the
    domain *list* changed. DVC read the list (its `foreach`) before any stage ran, so in this `dvc repro` an added
    domain has no stages and a removed one still has; the next `dvc repro` reads the new list."""
    from components.config import load_params

    params = load_params(Path(root) / "params.yaml")
    before = declared_names(root)
    write_expanded(root, params)
    after = set(params.domains)
    if before is None or before == after:
        return None
    added, removed = sorted(after - before), sorted(before - after)
    return (f"{EXPANDED_FILE}: the domain list changed (added: {', '.join(added) or 'none'}; removed: "
            f"{', '.join(removed) or 'none'}). DVC read the old list before this stage ran, so this run stops "
            f"here; nothing else was run or changed: run `dvc repro` (or `dvc exp run`) again.")


def main() -> int:
    """`python -m components.domains` (dvc.yaml's `expand_domains`): 1 with a message when the list changed."""
    message = refresh_for_dvc(Path.cwd())   # DVC runs every stage from the project root
    if message:
        print(message, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
