"""Many domains over one source collection: total and per-domain cost, peak memory, cost against domain count.

What a team with dozens of domains does: one collection of meta-training source tasks, N target domains that
all name it. The domains are synthetic but real: disjoint shards of real review/news/subjectivity data sets of
the data mirror (each domain its own rows: a 200-row adaptation pool and a 1,000-row evaluation split, so every
domain pays for encoding its own 1,200 texts), the sources label groups of clinc150 (each file its own source
task). A throwaway DVC project is written under --workdir, declared through a `source_collections` glob and a
`domain_templates` glob (the same params.yaml a user writes), and every domain runs all eight stages in one
process, as `metaadapt run` runs them (stage function, then `dvc commit` of the stage), with the real MiniLM
encoder and an empty embedding cache.

    python benchmarks/many_domains.py --domains 30 --points 10 30        # -> benchmarks/results/many_domains/
    python benchmarks/many_domains.py --domains 5 --components DIR       # the same with another code version

Per domain: seconds per stage (the first domain also builds the shared work: source validation, source
embeddings, episodes, meta-training), total seconds; per point N: wall time of the first N domains, the mean
marginal cost of domains 2..N, peak resident memory. Cost growing with domains × sources would show as a rising
marginal cost; `dvc status` with N domains declared is timed too (it grows with the number of stages).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parent.parent
DOMAIN_SETS = {  # data set -> files (all splits together), shuffled and cut into disjoint 1,200-row shards
    "mr_sentence_polarity": ["all.csv"], "subj": ["all.csv"], "womens_clothing_reviews_recommend": ["all.csv"],
    "pros_cons": ["all.csv"], "twitter_financial_news_sentiment": ["train.csv", "validation.csv"],
    "ag_news": ["test.csv"], "snips": ["train.csv", "test.csv"],
    "amazon_counterfactual_en": ["train.csv", "validation.csv", "test.csv"],
    "financial_phrasebank": ["all.csv"], "customer_reviews_cr": ["all.csv"]}   # 105 shards in all
# (not banking77: 77 intents do not fit a 200-row adaptation pool, and validation rightly refuses such a domain)
ADAPT_ROWS, EVAL_ROWS = 200, 1000
SOURCE_GROUPS, SOURCE_INTENTS = 10, 15


def write_sources(mirror: Path, folder: Path) -> None:
    """clinc150 (train split) cut into label groups of 15 intents: one CSV per source task."""
    table = pd.read_csv(mirror / "clinc150" / "train.csv")
    intents = sorted(table["label"].unique())
    folder.mkdir(parents=True, exist_ok=True)
    for group in range(SOURCE_GROUPS):
        chosen = intents[group * SOURCE_INTENTS:(group + 1) * SOURCE_INTENTS]
        table[table["label"].isin(chosen)].to_csv(folder / f"intents_{group:02d}.csv", index=False)


def write_domains(mirror: Path, folder: Path, count: int, seed: int = 0) -> list[str]:
    """`count` domain folders (adapt.csv, eval.csv): round-robin over DOMAIN_SETS, disjoint shards per set, a set
    skipped once its rows run out."""
    shuffled = {name: pd.concat([pd.read_csv(mirror / name / f) for f in files if (mirror / name / f).is_file()],
                                ignore_index=True)
                .drop_duplicates("text").sample(frac=1.0, random_state=seed).reset_index(drop=True)
                for name, files in DOMAIN_SETS.items()}
    size = ADAPT_ROWS + EVAL_ROWS
    shards = [(name, shard) for shard in range(max(len(t) for t in shuffled.values()) // size)
              for name, table in shuffled.items() if (shard + 1) * size <= len(table)]
    if count > len(shards):
        raise SystemExit(f"the mirror holds {len(shards)} disjoint {size}-row shards: ask for fewer domains")
    names = []
    for dataset, shard in shards[:count]:
        rows = shuffled[dataset].iloc[shard * size:(shard + 1) * size]
        target = folder / f"{dataset[:12]}_{shard:02d}"
        target.mkdir(parents=True, exist_ok=True)
        rows.iloc[:ADAPT_ROWS].to_csv(target / "adapt.csv", index=False)
        rows.iloc[ADAPT_ROWS:].to_csv(target / "eval.csv", index=False)
        names.append(target.name)
    return names


def project_params(root: Path) -> dict:
    """The repository's params.yaml with the data sets and domains replaced by a collection and a template."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["datasets"] = {}
    raw["domains"] = {}
    raw["source_collections"] = {"intents": {"files": str(root / "sources" / "*.csv")}}
    raw["domain_templates"] = {"shard": {"targets": str(root / "domains" / "*"), "adapt_file": "adapt.csv",
                                         "eval_file": "eval.csv",
                                         "settings": {"k": 8, "meta_sources": ["intents"],
                                                      "meta_max_rows_per_source": 600}}}
    raw["limits"]["eval_max_rows"] = EVAL_ROWS
    return raw


def explicit_params(raw: dict, root: Path) -> dict:
    """The same project written the long way (one `datasets` and one `domains` entry per file and folder), for
    code versions without source collections and domain templates."""
    from components.domains import expand_declarations

    expanded = expand_declarations(raw, root)
    return {k: v for k, v in expanded.items() if k not in ("source_collections", "domain_templates")}


def make_project(root: Path, components: Path, n_domains: int, mirror: Path, dvc_yaml: Path,
                 explicit: bool = False) -> list[str]:
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    shutil.copy(dvc_yaml, root / "dvc.yaml")
    shutil.copytree(components, root / "components", ignore=shutil.ignore_patterns("__pycache__"))
    write_sources(mirror, root / "sources")
    names = write_domains(mirror, root / "domains", n_domains)
    raw = project_params(root)
    (root / "params.yaml").write_text(yaml.safe_dump(explicit_params(raw, root) if explicit else raw, sort_keys=False))
    subprocess.run([str(Path(sys.executable).with_name("dvc")), "init", "--no-scm", "-q"], cwd=root, check=True)
    return names


def worker(root: Path, commit: str) -> None:
    """Every stage of every domain in this process (the project's own components/), timings as JSON lines.

    `commit`: "batched" records each stage as `metaadapt run` does now (flows.dvc_stages, the lock read and
    written once per call), "dvc" with DVC's own `Repo.commit` per stage (how it did before), "none" skips it."""
    sys.path.insert(0, str(root))
    sys.path.insert(1, str(REPO))     # flows/ of this checkout (the project copy holds only components/)
    import logging

    from components import stages
    from components.config import load_params

    logging.basicConfig(level=logging.WARNING)
    try:
        from components.domains import write_expanded
    except ImportError:   # a code version before domain templates: dvc.yaml iterates params.yaml's `domains`
        pass
    else:
        write_expanded(root)   # the generated domains file dvc.yaml iterates (`metaadapt check-config` writes it)
    params = load_params(root / "params.yaml")
    print(json.dumps({"encode_texts_per_second": encode_probe(params, root)}), flush=True)
    encoding = time_encoder_calls()
    started = time.perf_counter()
    status = _dvc_status_seconds(root)
    print(json.dumps({"dvc_status_seconds": status, "declared": len(params.domains)}), flush=True)
    for index, domain in enumerate(params.domains):
        seconds, encode_before = {}, encoding["seconds"]
        for stage in stages.DOMAIN_STAGES:   # the code version's own stage list, in order
            t0 = time.perf_counter()
            try:
                stages.DOMAIN_STAGES[stage](params, domain, root)
            except Exception as error:  # noqa: BLE001 - as `metaadapt run`: a failed domain stops only its chain
                print(json.dumps({"failed_domain": domain, "stage": stage, "error": str(error)[:300]}), flush=True)
                break
            seconds[stage] = time.perf_counter() - t0
            if commit != "none":
                t0 = time.perf_counter()
                _commit(root, f"{stage}@{domain}", commit)
                seconds["dvc_commit"] = seconds.get("dvc_commit", 0.0) + time.perf_counter() - t0
        if not set(stages.DOMAIN_STAGES) <= set(seconds):   # failed (reported above): not a data point
            continue
        print(json.dumps({"index": index, "domain": domain, "seconds": {k: round(v, 2) for k, v in seconds.items()},
                          "total": round(sum(seconds.values()), 2),
                          "encode_seconds": round(encoding["seconds"] - encode_before, 2),
                          "elapsed": round(time.perf_counter() - started, 1),
                          "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}),
              flush=True)


def time_encoder_calls() -> dict:
    """Accumulate the wall time of every TextEncoder.encode call (the forward passes over texts not yet in the
    embedding cache), so a domain's cost splits into encoding its own rows and everything else."""
    from components import encoder as module

    spent = {"seconds": 0.0}
    original = module.TextEncoder.encode

    def timed(self, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            spent["seconds"] += time.perf_counter() - t0

    module.TextEncoder.encode = timed
    return spent


def encode_probe(params, root: Path, rows: int = 300) -> float:
    """Texts per second of the project encoder on texts no domain uses (clinc150's test split), nothing cached:
    the part of a domain's cost that is encoding its own rows, measured under this run's CPU load."""
    from components.encoder import embed_texts, load_encoder

    mirror = Path(os.environ["METAADAPT_DATA_MIRROR"])
    texts = pd.read_csv(mirror / "clinc150" / "test.csv")["text"].sample(n=rows, random_state=1).tolist()
    encoder = load_encoder(params.encoder)
    encoder.encode(texts[:8])                             # model load and first-call warm-up not timed
    t0 = time.perf_counter()
    embed_texts(texts, params.encoder, None, encoder)
    return round(rows / (time.perf_counter() - t0), 1)


def _commit(root: Path, target: str, how: str) -> None:
    if how == "batched":
        from flows import dvc_stages

        dvc_stages.commit(root, [target])
        return
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        repo.commit(target, force=True)


def _dvc_status_seconds(root: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run([str(Path(sys.executable).with_name("dvc")), "status", "-q"], cwd=root, capture_output=True)
    return round(time.perf_counter() - t0, 2)


def summarise(lines: list[dict], points: list[int]) -> dict:
    domains = [line for line in lines if "domain" in line]
    rows = []
    for n in points:
        if n > len(domains):
            continue
        first_n = domains[:n]
        later = first_n[1:] or first_n
        marginal = [d["total"] for d in later]
        overhead = [d["total"] - d.get("encode_seconds", 0.0) for d in later]
        rows.append({"domains": n, "total_seconds": round(sum(d["total"] for d in first_n), 1),
                     "first_domain_seconds": first_n[0]["total"],
                     "mean_marginal_seconds": round(sum(marginal) / len(marginal), 2),
                     "mean_marginal_encode_seconds": round(sum(d.get("encode_seconds", 0.0) for d in later)
                                                           / len(later), 2),
                     "mean_marginal_other_seconds": round(sum(overhead) / len(overhead), 2),
                     "max_marginal_seconds": max(marginal), "peak_rss_mb": first_n[-1]["peak_rss_mb"]})
    stage_means = {}
    if len(domains) > 1:
        for stage in domains[1]["seconds"]:
            stage_means[stage] = round(sum(d["seconds"].get(stage, 0.0) for d in domains[1:]) / (len(domains) - 1), 2)
    probe = next((line["encode_texts_per_second"] for line in lines if "encode_texts_per_second" in line), None)
    return {"points": rows, "marginal_stage_seconds": stage_means, "per_domain": domains,
            "encode_texts_per_second": probe,
            "own_rows_encode_seconds": round((ADAPT_ROWS + EVAL_ROWS) / probe, 1) if probe else None,
            "dvc_status": [line for line in lines if "dvc_status_seconds" in line],
            "failed": [line for line in lines if "failed_domain" in line]}


def plot_curves(results: list[Path], path: Path) -> None:
    """Cumulative seconds against domain count, per result file: all stages with their DVC commits, and the same
    without the commits (what the stages themselves cost)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    for file in results:
        result = json.loads(file.read_text())
        totals, compute, running, running_compute = [], [], 0.0, 0.0
        for domain in result["per_domain"]:
            running += domain["total"]
            running_compute += domain["total"] - domain["seconds"].get("dvc_commit", 0.0)
            totals.append(running)
            compute.append(running_compute)
        counts = range(1, len(totals) + 1)
        line, = axis.plot(counts, totals, marker="o", label=f"{result['label']}: stages + dvc commit")
        axis.plot(counts, compute, linestyle="--", color=line.get_color(), label=f"{result['label']}: stages only")
    axis.set_xlabel("domains")
    axis.set_ylabel("cumulative seconds (2 shared cores)")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]


def run(args: argparse.Namespace) -> list[dict]:
    """Build the project, run the worker in a child process (its own components/), collect its JSON lines."""
    mirror = Path(os.environ.get("METAADAPT_DATA_MIRROR") or REPO.parent / "shared" / "data")
    root = args.workdir / args.label
    make_project(root, args.components, args.domains, mirror, args.dvc_yaml, args.explicit)
    env = {**os.environ, "PYTHONPATH": str(root), "METAADAPT_DATA_MIRROR": str(mirror)}
    command = [sys.executable, __file__, "--worker", str(root), "--commit", args.commit]
    lines = []
    with subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.PIPE, text=True) as process:
        for raw in process.stdout:
            if raw.startswith("{"):
                lines.append(json.loads(raw))
                print(raw.strip(), flush=True)
    if process.returncode:
        raise SystemExit(f"worker failed ({process.returncode})")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--domains", type=int, default=30)
    parser.add_argument("--points", type=int, nargs="+", default=[10, 30])
    parser.add_argument("--components", type=Path, default=REPO / "components", help="code version to measure")
    parser.add_argument("--dvc-yaml", type=Path, default=REPO / "dvc.yaml", help="dvc.yaml of that code version")
    parser.add_argument("--explicit", action="store_true",
                        help="write one datasets/domains entry per file (code without templates)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/metaadapt-many-domains"))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "many_domains")
    parser.add_argument("--label", default="shared-store")
    parser.add_argument("--commit", choices=("batched", "dvc", "none"), default="batched",
                        help="how each stage is recorded in dvc.lock: flows.dvc_stages (as metaadapt run), "
                             "DVC's Repo.commit per stage (before), or not at all")
    parser.add_argument("--from-log", type=Path, help="summarise the JSON lines of an earlier (or stopped) run")
    parser.add_argument("--plot", type=Path, nargs="+", help="result JSONs to draw as curves (out/curve.png)")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.commit)
        return
    if args.plot:
        plot_curves(args.plot, args.out / "curve.png")
        return
    started, load_at_start = time.perf_counter(), os.getloadavg()
    lines = read_log(args.from_log) if args.from_log else run(args)
    result = {"label": args.label, "domains": len([line for line in lines if "domain" in line]),
              "wall_seconds": round(time.perf_counter() - started, 1) if not args.from_log else None,
              "machine": "2-core AMD EPYC VM, no GPU", "load_average_start": load_at_start, "eval_rows": EVAL_ROWS,
              "adapt_rows": ADAPT_ROWS, "sources": SOURCE_GROUPS, "commit": args.commit,
              "load_average_end": os.getloadavg(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              **summarise(lines, args.points)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.label}.json").write_text(json.dumps(result, indent=2))
    for row in result["points"]:
        print(f"{row['domains']:>4} domains: {row['total_seconds']:>7.1f} s total, "
              f"first {row['first_domain_seconds']:.1f} s, "
              f"marginal mean {row['mean_marginal_seconds']:.1f} s (encoding own rows "
              f"{row['mean_marginal_encode_seconds']:.1f} s, the rest {row['mean_marginal_other_seconds']:.1f} s; "
              f"max {row['max_marginal_seconds']:.1f}), "
              f"peak RSS {row['peak_rss_mb']:.0f} MB")
    print("marginal seconds per stage:", result["marginal_stage_seconds"])


if __name__ == "__main__":
    main()
