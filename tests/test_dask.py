"""Scale-out: adapt + evaluate of two domains on a 2-worker Dask LocalCluster equals the sequential run."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from components.config import load_params
from tiny_project import dvc, make_project

DOMAINS = ["reviews", "news"]
UPSTREAM = ("ingest", "validate", "tune_encoder", "episodes", "meta_train")


def scores(root: Path) -> dict:
    """What must not depend on how the stages were scheduled (timings excluded)."""
    out = {}
    for domain in DOMAINS:
        metrics = json.loads((root / "reports" / "metrics" / f"{domain}.json").read_text())
        confusion = json.loads((root / "reports" / "confusion" / f"{domain}.json").read_text())
        out[domain] = {"accuracy": metrics["accuracy"], "macro_f1": metrics["macro_f1"], "matrix": confusion["matrix"]}
    return out


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_bert_dir) -> Path:
    """Two tiny domains with everything before `adapt` done (in-process, as the stage functions)."""
    from components.stages import DOMAIN_STAGES

    root = make_project(tmp_path_factory.mktemp("dask"), tiny_bert_dir, domains=tuple(DOMAINS))
    params = load_params(root / "params.yaml")
    for domain in DOMAINS:
        for stage in UPSTREAM:
            DOMAIN_STAGES[stage](params, domain, root)
    return root


def test_dask_fanout_matches_the_sequential_run_and_is_recorded_in_dvc(project: Path, prefect_session) -> None:
    from flows.fanout import adapt_evaluate, run_fanout

    sequential = adapt_evaluate(DOMAINS, str(project), parallel=False)
    expected = scores(project)
    for domain in DOMAINS:
        (project / "reports" / "metrics" / f"{domain}.json").unlink()
    started = time.perf_counter()
    parallel = run_fanout(DOMAINS, project, n_workers=2)
    dask_wall = time.perf_counter() - started
    assert scores(project) == expected
    assert parallel["parallel"] and set(parallel["domains"]) == set(DOMAINS)
    print(f"\nadapt+evaluate of {DOMAINS}: sequential {sequential['compute_seconds']:.1f} s, Dask 2 workers "
          f"{parallel['compute_seconds']:.1f} s (+ cluster start: {dask_wall - parallel['wall_seconds']:.1f} s)")
    status = json.loads(dvc(project, "status", "--json").stdout or "{}")
    assert not {f"{stage}@{d}" for d in DOMAINS for stage in ("adapt", "evaluate")} & set(status), status
