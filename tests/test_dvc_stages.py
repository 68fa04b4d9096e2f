"""flows.dvc_stages: batched status and commit with dvc.lock read and written once. The DVC CLI is the judge: what
is committed here must read as up to date to `dvc status`, what changed must read as changed to both, and a lock
DVC rewrote in its own YAML must still be read correctly (a float parameter such as 2e-05 included)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flows import dvc_stages

ITEMS = ("a", "b", "c")
DVC_YAML = {"stages": {"make": {"foreach": list(ITEMS), "do": {
    "cmd": "python make.py ${item}", "deps": ["make.py", "in/${item}.txt"],
    "params": ["rate", "sizes.${item}"], "outs": ["out/${item}.txt", "out/${item}_dir"]}}}}


def _dvc(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(Path(sys.executable).with_name("dvc")), *args], cwd=root, capture_output=True,
                          text=True, timeout=300)


def _cli_stale(root: Path) -> set[str]:
    done = _dvc(root, "status", "--json")
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout or "{}"))


@pytest.fixture
def project(tmp_path: Path) -> Path:
    root = tmp_path / "p"
    (root / "in").mkdir(parents=True)
    (root / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))
    (root / "params.yaml").write_text("rate: 2e-05\nsizes: {a: 1, b: 2, c: 3}\n")
    (root / "make.py").write_text("print('made')\n")
    for item in ITEMS:
        (root / "in" / f"{item}.txt").write_text(item)
        _produce(root, item, "v1")
    assert _dvc(root, "init", "--no-scm", "-q").returncode == 0
    return root


def _produce(root: Path, item: str, version: str) -> None:
    (root / "out" / f"{item}_dir").mkdir(parents=True, exist_ok=True)
    (root / "out" / f"{item}.txt").write_text(f"{item} {version}")
    (root / "out" / f"{item}_dir" / "part").write_text(f"{item} part {version}")


def test_a_batched_commit_reads_as_up_to_date_to_dvc_and_reports_changed_outputs(project: Path) -> None:
    targets = [f"make@{item}" for item in ITEMS]
    assert dvc_stages.stale(project, targets) == set(targets) == _cli_stale(project)   # nothing committed yet

    assert dvc_stages.commit(project, targets) == {t: True for t in targets}   # new entries
    assert _cli_stale(project) == set() and dvc_stages.stale(project, targets) == set()
    assert json.loads((project / "dvc.lock").read_text())["stages"]["make@a"]["params"]["params.yaml"]["rate"] == 2e-05

    assert dvc_stages.commit(project, ["make@b"]) == {"make@b": False}          # same outputs again
    _produce(project, "b", "v2")
    assert dvc_stages.stale(project, targets) == {"make@b"} == _cli_stale(project)
    assert dvc_stages.commit(project, ["make@b"]) == {"make@b": True}
    assert _cli_stale(project) == set()


def test_changed_inputs_are_stale_to_both_and_the_cache_holds_the_outputs(project: Path) -> None:
    targets = [f"make@{item}" for item in ITEMS]
    dvc_stages.commit(project, targets)
    (project / "in" / "a.txt").write_text("a, edited")
    (project / "params.yaml").write_text("rate: 2e-05\nsizes: {a: 1, b: 2, c: 30}\n")
    assert dvc_stages.stale(project, targets) == {"make@a", "make@c"} == _cli_stale(project)

    (project / "out" / "b.txt").unlink()                       # committed into the cache: DVC restores it
    assert _dvc(project, "checkout", "make@b").returncode == 0
    assert (project / "out" / "b.txt").read_text() == "b v1"


def test_a_lock_dvc_rewrote_in_yaml_is_read_with_dvc_types(project: Path) -> None:
    targets = [f"make@{item}" for item in ITEMS]
    dvc_stages.commit(project, targets[:2])
    assert _dvc(project, "commit", "-f", "make@c").returncode == 0     # DVC's own round-trip writer
    with pytest.raises(ValueError):
        json.loads((project / "dvc.lock").read_text())
    assert dvc_stages.stale(project, targets) == set() == _cli_stale(project)   # `2e-05` stays a float
    _produce(project, "a", "v2")
    assert dvc_stages.commit(project, ["make@a"]) == {"make@a": True}
    assert _cli_stale(project) == set()
