"""Nothing the project loads can execute code: no pickle-family loaders in components/ or flows/.

Artifacts are safetensors + JSON (components.model_io, components.checkpoint); loading a pickle from a model
directory, a checkpoint or a cache would run whatever code the file's author put in it. The scan works on the
syntax tree, so docstrings that merely mention pickle do not count, and it lists every offender with file:line.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("components", "flows")
BANNED_MODULES = {"pickle", "cPickle", "_pickle", "cloudpickle", "dill", "joblib", "shelve", "marshal", "jsonpickle"}
PICKLE_READERS = {"read_pickle", "load_pickle"}        # pandas.read_pickle, ... whatever the module alias


def _is_true(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _keyword(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else "?"


def offenders_in(source: str, filename: str = "<source>") -> list[str]:
    """`file:line what` for each pickle-capable import or call in `source`."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            found += [f"{filename}:{node.lineno} import {a.name}" for a in node.names
                      if a.name.split(".")[0] in BANNED_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in BANNED_MODULES:
            found.append(f"{filename}:{node.lineno} from {node.module} import ...")
        elif isinstance(node, ast.Call):
            name = _dotted(node.func)
            leaf = name.rsplit(".", 1)[-1]
            if name in {"torch.load"} and not _is_true(_keyword(node, "weights_only")):
                found.append(f"{filename}:{node.lineno} torch.load without weights_only=True")
            elif leaf == "load" and name.split(".")[0] in {"np", "numpy"} and _is_true(_keyword(node, "allow_pickle")):
                found.append(f"{filename}:{node.lineno} {name}(allow_pickle=True)")
            elif leaf in PICKLE_READERS:
                found.append(f"{filename}:{node.lineno} {name}")
    return found


def test_no_pickle_loading_in_components_or_flows():
    offenders = []
    for folder in SCANNED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            offenders += offenders_in(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    assert offenders == [], "pickle-capable loading found (use safetensors/JSON):\n" + "\n".join(offenders)


@pytest.mark.parametrize("source, expected", [
    ("import pickle\npickle.loads(b'')", "import pickle"),
    ("from joblib import load", "from joblib import"),
    ("import cloudpickle as cp", "import cloudpickle"),
    ("import torch\ntorch.load('m.pt')", "torch.load without weights_only=True"),
    ("import torch\ntorch.load('m.pt', weights_only=False)", "torch.load without weights_only=True"),
    ("import numpy as np\nnp.load('a.npy', allow_pickle=True)", "np.load(allow_pickle=True)"),
    ("import pandas as pd\npd.read_pickle('f')", "pd.read_pickle"),
])
def test_the_scan_catches_each_kind_of_offender(source, expected):
    found = offenders_in(source, "x.py")
    assert len(found) == 1 and expected in found[0] and found[0].startswith("x.py:")


@pytest.mark.parametrize("source", [
    "import torch\ntorch.load('m.pt', weights_only=True)",
    "import numpy as np\nnp.load('a.npy')",
    '"""Nothing is pickled: safetensors only."""',
    "from safetensors.torch import load_file\nload_file('m.safetensors')",
])
def test_the_scan_accepts_safe_loading(source):
    assert offenders_in(source) == []
