"""Reading dvc.lock fast: it holds every stage of every domain, so its size grows with the domains.

`flows/dvc_stages.py` writes it as JSON (valid YAML, and parsed in C: ~50 ms for 100 domains); after DVC itself
rewrote it (`dvc repro`, `dvc commit` by hand) it is YAML again, read with DVC's own YAML 1.2 parser so values keep
DVC's types (PyYAML's YAML 1.1 rules would read a parameter such as `2e-05` as a string).
"""
from __future__ import annotations

import json
from pathlib import Path

LOCK_FILE = "dvc.lock"


def read_lock(root: Path) -> dict:
    """dvc.lock under `root` as plain data; {} when there is none yet."""
    path = Path(root) / LOCK_FILE
    if not path.is_file():
        return {}
    text = path.read_text(encoding="utf-8")
    try:
        return json.loads(text) or {}
    except ValueError:
        from dvc.utils.serialize import parse_yaml

        return parse_yaml(text, str(path)) or {}
