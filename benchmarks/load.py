"""Load test of the served model: `mlflow models serve` on localhost under concurrent requests, bounded.

By default it serves this project's champion of one domain (`models:/metaadapt-<domain>@champion` in
mlruns/mlflow.db: the real MiniLM-based model from `make run`), started exactly as the README documents
(`mlflow models serve -m ... --env-manager local -h 127.0.0.1 -p PORT`). For each concurrency level and batch size it
sends up to `--requests` POST /invocations (texts from the domain's held-out split) from that many client threads
and stops at `--max-seconds`; every response must be HTTP 200 with one prediction per text, or it counts as failed.
Reports throughput (requests/s and texts/s), p50/p99 latency and failures, with the machine and the command.

Run: `python benchmarks/load.py [--domain customer_intent] [--concurrency 1 4 8] [--batch-sizes 1 16]
[--requests 400] [--max-seconds 60]`. Results: benchmarks/results/load/load.{json,md}.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results" / "load"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def served_model(model_uri: str, tracking_uri: str | None, port: int, host: str | None = "127.0.0.1",
                 startup_timeout: float = 240.0, log_path: Path | None = None) -> Iterator[subprocess.Popen]:
    """`mlflow models serve` in a subprocess until the block ends; waits for GET /ping to answer 200.

    host=None leaves `-h` out, i.e. MLflow's own default (tests/test_localhost.py checks it is the loopback)."""
    bin_dir = str(Path(sys.executable).parent)          # mlflow execs `uvicorn` from PATH: the venv's one
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
           "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    if tracking_uri:
        env.update(MLFLOW_TRACKING_URI=tracking_uri, MLFLOW_REGISTRY_URI=tracking_uri)
    mlflow = str(Path(sys.executable).with_name("mlflow"))
    command = [mlflow, "models", "serve", "-m", model_uri, "--env-manager", "local", "-p", str(port)]
    command += ["-h", host] if host else []
    log = open(log_path, "w") if log_path else subprocess.DEVNULL
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + startup_timeout
        while not _answers(f"http://127.0.0.1:{port}/ping"):
            if process.poll() is not None:
                raise RuntimeError(f"mlflow models serve exited with {process.returncode} (log: {log_path})")
            if time.monotonic() > deadline:
                raise TimeoutError(f"mlflow models serve not ready after {startup_timeout:.0f} s (log: {log_path})")
            time.sleep(0.5)
        yield process
    finally:
        _stop(process)
        if log_path:
            log.close()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, OSError):
        return False


def _stop(process: subprocess.Popen) -> None:
    """Terminate the server's process group (uvicorn workers included), then kill what is left."""
    import signal

    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def predict(port: int, texts: list[str], timeout: float = 60.0) -> list:
    """One POST /invocations; the predictions (raises on a non-200 answer)."""
    body = json.dumps({"dataframe_split": {"columns": ["text"], "data": [[t] for t in texts]}}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())["predictions"]


def run_level(port: int, texts: list[str], concurrency: int, batch_size: int, requests: int,
              max_seconds: float) -> dict:
    """`requests` requests from `concurrency` threads (or fewer when `max_seconds` runs out)."""
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()
    issued = iter(range(requests))
    deadline = time.monotonic() + max_seconds

    def worker(worker_id: int) -> None:
        for n in issued:             # a shared iterator: each request number is taken once (next() holds the GIL)
            if time.monotonic() > deadline:
                return
            start = (n * batch_size + worker_id) % len(texts)
            batch = [texts[(start + i) % len(texts)] for i in range(batch_size)]
            began = time.perf_counter()
            try:
                predictions = predict(port, batch)
                ok = len(predictions) == batch_size
                error = None if ok else f"{len(predictions)} predictions for {batch_size} texts"
            except Exception as exc:  # noqa: BLE001 - every failure is counted and reported, not raised
                error = f"{type(exc).__name__}: {exc}"[:200]
            with lock:
                latencies.append(time.perf_counter() - began)
                if error:
                    failures.append(error)

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(worker, range(concurrency)))
    wall = time.perf_counter() - started
    done = len(latencies)
    ordered = sorted(latencies)
    return {"concurrency": concurrency, "batch_size": batch_size, "requests": done, "failed": len(failures),
            "failure_examples": sorted(set(failures))[:3], "wall_s": round(wall, 2),
            "stopped_by_time_limit": done < requests,
            "requests_per_s": round(done / wall, 2), "texts_per_s": round(done * batch_size / wall, 1),
            "p50_ms": round(1000 * _quantile(ordered, 0.50), 1), "p99_ms": round(1000 * _quantile(ordered, 0.99), 1),
            "max_ms": round(1000 * ordered[-1], 1) if ordered else None}


def _quantile(ordered: list[float], q: float) -> float:
    """Nearest-rank quantile (p99 of 400 requests is the 396th fastest): no interpolation between requests."""
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, int(round(q * len(ordered) + 0.5)) - 1))]


def held_out_texts(domain: str, limit: int = 512) -> list[str]:
    import pandas as pd

    path = ROOT / "data" / "prepared" / domain / "eval.parquet"
    if not path.is_file():
        raise SystemExit(f"{path} is missing: run `make run` first (the benchmark serves the real champion)")
    return pd.read_parquet(path)["text"].astype(str).head(limit).tolist()


def machine() -> dict:
    import torch

    return {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "load_average_before": [round(x, 2) for x in os.getloadavg()]}


def markdown(report: dict) -> str:
    lines = [f"# Load test of the served champion (`{report['model_uri']}`)", "",
             f"- command: `{report['command']}`",
             f"- server: `{report['server_command']}`",
             f"- machine: {report['machine']['platform']}, {report['machine']['cpus']} CPUs, load average before "
             f"{report['machine']['load_average_before']}",
             f"- bounds: {report['requests_per_level']} requests or {report['max_seconds']} s per level", "",
             "| concurrency | texts/request | requests | failed | requests/s | texts/s | p50 ms | p99 ms | max ms |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in report["levels"]:
        cut = " (time limit)" if r["stopped_by_time_limit"] else ""
        lines.append(f"| {r['concurrency']} | {r['batch_size']} | {r['requests']}{cut} | {r['failed']} | "
                     f"{r['requests_per_s']} | {r['texts_per_s']} | {r['p50_ms']} | {r['p99_ms']} | {r['max_ms']} |")
    lines += ["", f"Zero failed requests at every concurrency up to {report['max_concurrency_without_failures']}."
              if report["max_concurrency_without_failures"] else "Failures at every level: see the JSON."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domain", default="customer_intent")
    parser.add_argument("--model-uri", help="default: models:/metaadapt-<domain>@champion of this project")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--max-seconds", type=float, default=60.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    from components.config import load_params
    from components.registry import registered_name, tracking_uri

    params = load_params(ROOT / "params.yaml")
    model_uri = args.model_uri or f"models:/{registered_name(args.domain)}@champion"
    uri = tracking_uri(params.registry, ROOT)
    texts = held_out_texts(args.domain)
    port = free_port()
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"model_uri": model_uri, "command": "python " + shlex.join(sys.argv), "machine": machine(),
              "server_command": f"mlflow models serve -m {model_uri} --env-manager local -h 127.0.0.1 -p {port}",
              "requests_per_level": args.requests, "max_seconds": args.max_seconds, "levels": []}
    started = time.perf_counter()
    server_log = Path(tempfile.gettempdir()) / "metaadapt-load-server.log"   # access log: large, not a result
    report["server_log"] = str(server_log)
    with served_model(model_uri, uri, port, log_path=server_log):
        report["server_ready_s"] = round(time.perf_counter() - started, 1)
        for _ in range(3):
            predict(port, texts[:16])          # warm-up: first requests load tokenizer caches
        for batch_size in args.batch_sizes:
            for concurrency in args.concurrency:
                level = run_level(port, texts, concurrency, batch_size, args.requests, args.max_seconds)
                print(json.dumps(level), flush=True)
                report["levels"].append(level)
    clean = [r["concurrency"] for r in report["levels"] if r["failed"] == 0]
    failing = [r["concurrency"] for r in report["levels"] if r["failed"]]
    report["max_concurrency_without_failures"] = max((c for c in clean if all(c < f for f in failing)), default=None)
    report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    (args.out / "load.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    (args.out / "load.md").write_text(markdown(report), encoding="utf-8")
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
