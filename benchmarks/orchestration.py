"""Orchestration benchmark on a copy of this project's real domains (the real encoder, the default caps):

  fanout   adapt + evaluate of every domain: one after the other in this process, then on a Dask LocalCluster
           (`--workers` single-threaded worker processes), metrics compared for equality
  latency  a new labelled batch for one domain: `metaadapt.batch.accepted` event emitted -> champion alias moved,
           with the deployments served by `python -m flows.deployments` against a temporary Prefect server

The copy (dvc.yaml, params.yaml, components/, data/prepared, models, the embedding cache; `dvc init --no-scm`)
lives in a temporary directory, so this project's models, registry and dvc.lock are never touched. It needs a
prior `make run` (prepared data and meta-trained models). Results: benchmarks/results/orchestration.json.
Run: `python benchmarks/orchestration.py [--workers 2] [--skip-latency]`.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def copy_project(target: Path) -> Path:
    """The pipeline's inputs and the outputs up to meta-training, in a throwaway DVC project."""
    from components.config import resolve_mirror, load_params

    for name in ("dvc.yaml", "dvc.lock", "params.yaml", "domains.expanded.yaml"):
        shutil.copy(ROOT / name, target / name)
    shutil.copytree(ROOT / "components", target / "components", ignore=shutil.ignore_patterns("__pycache__"))
    for rel in ("data/prepared", "models", "data/cache/embeddings", "reports/validation", "reports/metrics",
                "reports/confusion"):
        shutil.copytree(ROOT / rel, target / rel)
    raw = yaml.safe_load((target / "params.yaml").read_text())
    raw["data"]["mirror"] = str(resolve_mirror(load_params(ROOT / "params.yaml").data, ROOT))
    (target / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    dvc = str(Path(sys.executable).with_name("dvc"))
    subprocess.run([dvc, "init", "--no-scm", "-q"], cwd=target, check=True)
    # the copied outputs are the state to start from (code edited since the last `make run` must not make the
    # measured adaptation rerun stages a new batch would not touch)
    domains = list(load_params(target / "params.yaml").domains)
    targets = [f"{stage}@{d}" for d in domains for stage in ("ingest", "validate", "episodes")]
    from flows.pipeline import commit_stage

    for stage in targets:
        try:
            commit_stage(target, stage)
        except Exception as error:  # noqa: BLE001 - an output missing in this checkout: that stage will rerun
            print(f"not committed (will rerun): {stage}: {str(error).splitlines()[0][:160]}")
    return target


def scores(root: Path, domains: list[str]) -> dict:
    return {d: {k: json.loads((root / "reports" / "metrics" / f"{d}.json").read_text())[k]
                for k in ("accuracy", "macro_f1")} for d in domains}


def bench_fanout(root: Path, domains: list[str], workers: int) -> dict:
    from flows.fanout import adapt_evaluate, run_fanout

    started = time.perf_counter()
    sequential = adapt_evaluate(domains, str(root), parallel=False)
    sequential_wall = time.perf_counter() - started
    expected = scores(root, domains)
    started = time.perf_counter()
    parallel = run_fanout(domains, root, n_workers=workers)
    dask_wall = time.perf_counter() - started
    return {"domains": domains, "workers": workers, "sequential_compute_s": round(sequential["compute_seconds"], 2),
            "sequential_wall_s": round(sequential_wall, 2), "dask_compute_s": round(parallel["compute_seconds"], 2),
            "dask_wall_s_with_cluster_start": round(dask_wall, 2), "metrics_sequential": expected,
            "metrics_dask": scores(root, domains), "same_metrics": scores(root, domains) == expected,
            "per_stage_s": {mode: {d: {s: round(r[s]["seconds"], 2) for s in r} for d, r in res["domains"].items()}
                            for mode, res in (("sequential", sequential), ("dask", parallel))}}


def bench_latency(root: Path, domain: str) -> dict:
    """Event emitted -> champion alias on a new version, through the served deployments."""
    from prefect.settings import PREFECT_API_URL

    from components.config import load_params
    from components.registry import champion_info
    from flows.incoming import ingest_batch

    from components.stages import DOMAIN_STAGES

    params = load_params(root / "params.yaml")
    DOMAIN_STAGES["register"](params, domain, root)  # the current model as champion v1 in the copy's registry
    before = champion_info(domain, params.registry, root)
    raw = yaml.safe_load((root / "params.yaml").read_text())
    raw["registry"]["promote_margin"] = -1.0  # measure the path to a promotion, whatever the new score
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    evaluation = set(pd.read_parquet(root / "data/prepared" / domain / "eval.parquet")["text"])
    pool = pd.read_parquet(root / "data/prepared" / domain / "adapt.parquet")
    batch = pool.groupby("label").head(params.domain(domain).k)
    batch = batch.assign(text=batch["text"] + " (relabelled copy)")
    batch = batch[~batch["text"].isin(evaluation)]
    file = root / "new_batch.csv"
    batch[["text", "label"]].to_csv(file, index=False)
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    server = subprocess.Popen([sys.executable, "-m", "flows.deployments", "--root", str(root)], cwd=ROOT, env=env,
                              stdout=(root / "serve.log").open("w"), stderr=subprocess.STDOUT)
    try:
        time.sleep(30)  # deployments and their trigger automations registered
        started = time.perf_counter()
        ingest_batch(domain, str(file), str(root))
        while (champion_info(domain, params.registry, root) or {}).get("version") == before["version"]:
            if time.perf_counter() - started > 900:
                raise TimeoutError("no new champion after 900 s; see serve.log")
            time.sleep(1)
        latency = time.perf_counter() - started
        history = root / "reports" / "orchestration" / f"{domain}.jsonl"  # written after drift and summary
        while not history.is_file() and time.perf_counter() - started < 900:
            time.sleep(1)
        run_done = time.perf_counter() - started
    finally:
        server.terminate()
        server.wait(timeout=60)
    timings = json.loads((root / "reports" / "timings.json").read_text()).get(domain)
    return {"domain": domain, "batch_rows": len(batch), "trigger_to_champion_s": round(latency, 1),
            "trigger_to_run_end_s": round(run_done, 1), "champion_before": before["version"],
            "champion_after": champion_info(domain, params.registry, root)["version"],
            "run": json.loads(history.read_text().splitlines()[-1]), "stage_seconds": timings}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--latency-domain", default="finance_sentiment")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "orchestration.json")
    args = parser.parse_args()
    from prefect.testing.utilities import prefect_test_harness

    from components.config import load_params
    from flows.env import configure_environment

    configure_environment()
    domains = list(load_params(ROOT / "params.yaml").domains)
    result = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": platform.platform(),
              "cores": os.cpu_count(), "load_average_start": os.getloadavg(),
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    with tempfile.TemporaryDirectory(prefix="metaadapt-orch-") as tmp, prefect_test_harness(server_startup_timeout=180):
        root = copy_project(Path(tmp))
        from flows.pipeline import run_stage_in_process

        for domain in domains:  # whatever code changed since the copied run (e.g. model format) reruns here
            for stage in ("ingest", "validate", "tune_encoder", "episodes", "meta_train"):
                run_stage_in_process(f"{stage}@{domain}", str(root))
        result["fanout"] = bench_fanout(root, domains, args.workers)
        print(json.dumps(result["fanout"], indent=2))
        if not args.skip_latency:
            result["latency"] = bench_latency(root, args.latency_domain)
            print(json.dumps(result["latency"], indent=2))
    result["load_average_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
