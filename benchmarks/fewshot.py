"""Few-shot benchmark of the meta-learning core: MetaAdapt against the usual baselines on the same support sets.

For each target domain of params.yaml and each K (examples per label), several seeds of support sets are sampled
from the domain's adaptation pool (``stages.sample_support``) and every method is scored on the domain's held-out
split (``prepare.build_domain_data``). Methods:

  metaadapt     the product default: a head meta-trained once per domain on episodes from the domain's meta pool
                (as ``stages.episodes`` / ``stages.meta_train`` do), then ``meta.adapt`` per support set;
                K=0 is ``meta.zero_shot`` on the label prompts
  prototypes    the untrained (identity) head with ``adapt.method: proto``: plain class prototypes; K=0 zero-shot
  linear_probe  scikit-learn LogisticRegression on frozen embeddings (K >= 1)
  finetune      the encoder fine-tuned end to end with a classification head (AutoModelForSequenceClassification)
  setfit        SetFit 1.2 with the paper's settings (20 pair iterations, 1 epoch)

finetune and setfit are slow on a CPU, so they run only for the K values of ``--slow-ks``.

Each (domain, method) group runs in a freshly spawned child process, so its peak resident memory (ru_maxrss) is
that method's own. Embeddings of evaluation, adaptation-pool and meta-pool texts come from the pipeline's
content-hash cache (``stages.embed``); the adaptation time of the methods that work on embeddings is nevertheless
charged a fresh encoder pass over the support texts (timed once per support set, without the cache), because a
user adapting to new examples pays for that pass.

Run ``python benchmarks/fewshot.py --help``; ``--quick`` is a smoke run for CI. Results go to
benchmarks/results/fewshot.{json,md,png} (benchmarks/results/quick/ for --quick) unless ``--out`` is given.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import io
import json
import math
import os
import platform
import shlex
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python benchmarks/fewshot.py` from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))

ALL_METHODS = ("metaadapt", "prototypes", "linear_probe", "finetune", "setfit")
EMBEDDING_METHODS = ("metaadapt", "prototypes", "linear_probe")
SLOW_METHODS = ("finetune", "setfit")
ZERO_SHOT_METHODS = ("metaadapt", "prototypes")
DEFAULT_KS = (0, 1, 5, 8, 16)
QUICK = {"ks": [0, 8], "seeds": 2, "eval_max_rows": 300, "meta_epochs": 2, "train_episodes": 200,
         "methods": list(EMBEDDING_METHODS), "throughput_texts": 64}


# Support-set augmentation arms (--augment): which operations each applies; strengths come from params `augment`.
AUGMENT_ARMS = {"none": (), "text": ("text",), "noise": ("noise",), "mixup": ("mixup",),
                "embedding": ("noise", "mixup"), "text+embedding": ("text", "noise", "mixup")}
AUGMENTED_METHODS = ("metaadapt", "prototypes")


def arm_plan(arm: str, params, copies: int):
    """The SupportAugmentation of one arm: `copies` per support example for each of its operations."""
    from components.augment import SupportAugmentation

    ops, config = AUGMENT_ARMS[arm], params.augment
    return SupportAugmentation(text_copies=copies if "text" in ops else 0,
                               text_ops=tuple(config.text_ops.model_dump().items()),
                               noise_copies=copies if "noise" in ops else 0, noise_std=config.adapt.noise_std,
                               mixup_copies=copies if "mixup" in ops else 0, mixup_alpha=config.adapt.mixup_alpha)


QUICK_LIMITS = {"meta_max_rows_per_source": 400, "adapt_pool_max_rows": 600, "adapt_min_rows_per_label": 16}


def shrink_pools(params):
    """--quick: small meta-training and adaptation pools, so a cold embedding cache still finishes in minutes."""
    domains = {name: d.model_copy(update={"meta_max_rows_per_source": None}) for name, d in params.domains.items()}
    return params.model_copy(update={"limits": params.limits.model_copy(update=QUICK_LIMITS), "domains": domains})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/fewshot.py",
        description="Few-shot benchmark: MetaAdapt vs prototypes, linear probe, fine-tuning and SetFit, "
                    "per target domain and K examples per label, over several seeds of support sets.",
        epilog="Timings come from whatever machine runs this; see benchmarks/README.md.")
    parser.add_argument("--domains", nargs="+", default=None, help="target domains (default: all in params.yaml)")
    parser.add_argument("--ks", nargs="+", type=int, default=None,
                        help=f"K values, examples per label (default {list(DEFAULT_KS)}; --quick: {QUICK['ks']})")
    parser.add_argument("--seeds", type=int, default=None,
                        help="number of support-set seeds, params seed + 0..N-1 (default 5; --quick: 2)")
    parser.add_argument("--methods", nargs="+", choices=ALL_METHODS, default=None,
                        help="methods to run (default: all; --quick: the three embedding methods)")
    parser.add_argument("--slow-ks", nargs="+", type=int, default=[8],
                        help="K values at which finetune and setfit run (default: %(default)s)")
    parser.add_argument("--setfit-max-labels", type=int, default=10,
                        help="run setfit only on domains with at most this many labels (default: %(default)s)")
    parser.add_argument("--eval-max-rows", type=int, default=None,
                        help="stratified cap on the held-out split "
                             "(default: params limits.eval_max_rows; --quick: 300)")
    parser.add_argument("--meta-epochs", type=int, default=None, help="override params meta.epochs (--quick: 2)")
    parser.add_argument("--train-episodes", type=int, default=None,
                        help="override params episodes.train_episodes (--quick: 200)")
    parser.add_argument("--throughput-texts", type=int, default=None,
                        help="evaluation texts used to time prediction, encoder + classifier "
                             "(default 512; --quick: 64)")
    parser.add_argument("--torch-threads", type=int, default=0,
                        help="torch intra-op threads in every process; 0 keeps torch's default (default: %(default)s)")
    parser.add_argument("--ft-epochs", type=int, default=10, help="finetune: epochs (default: %(default)s)")
    parser.add_argument("--ft-lr", type=float, default=5e-5,
                        help="finetune: AdamW learning rate (default: %(default)s)")
    parser.add_argument("--ft-batch-size", type=int, default=16, help="finetune: batch size (default: %(default)s)")
    parser.add_argument("--setfit-iterations", type=int, default=20,
                        help="setfit: pair-generation iterations (default: %(default)s)")
    parser.add_argument("--setfit-epochs", type=int, default=1,
                        help="setfit: body training epochs (default: %(default)s)")
    parser.add_argument("--setfit-batch-size", type=int, default=16, help="setfit: batch size (default: %(default)s)")
    parser.add_argument("--augment", default="none",
                        help="comma-separated support-set augmentation arms for metaadapt and prototypes, e.g. "
                             f"none,text,noise,mixup,embedding,text+embedding (known: {', '.join(AUGMENT_ARMS)}); "
                             "strengths from params.yaml `augment`; every arm runs on the same support sets and "
                             "the report pairs each arm with `none` seed by seed (default: %(default)s)")
    parser.add_argument("--augment-copies", type=int, default=2,
                        help="copies per support example for each operation of an arm (default: %(default)s)")
    parser.add_argument("--plot-k", type=int, default=8,
                        help="K shown in the accuracy-vs-adaptation-time plot (default: %(default)s)")
    parser.add_argument("--params", type=Path, default=None, help="params file (default: the project's params.yaml)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default benchmarks/results, or benchmarks/results/quick with --quick)")
    parser.add_argument("--in-process", action="store_true",
                        help="run every group in this process (debugging; per-method peak memory is then not measured)")
    parser.add_argument("--quick", action="store_true",  # also shrinks pools: QUICK_LIMITS
                        help="CI smoke run: K 0 and 8, 2 seeds, 300 eval rows, 2 meta epochs of 200 episodes, "
                             "64 throughput texts, no finetune/setfit, meta pools of 400 rows per source and adaptation "
                             "pools of 600 rows (16 per label at least), sized to finish in under 3 minutes")
    args = parser.parse_args(argv)
    quick = QUICK if args.quick else {}
    args.ks = sorted(set(args.ks if args.ks is not None else quick.get("ks", DEFAULT_KS)))
    args.seeds = args.seeds if args.seeds is not None else quick.get("seeds", 5)
    args.methods = list(args.methods or quick.get("methods", ALL_METHODS))
    args.eval_max_rows = args.eval_max_rows or quick.get("eval_max_rows")
    args.meta_epochs = args.meta_epochs if args.meta_epochs is not None else quick.get("meta_epochs")
    args.train_episodes = args.train_episodes or quick.get("train_episodes")
    args.throughput_texts = args.throughput_texts or quick.get("throughput_texts", 512)
    args.augment = [arm.strip() for arm in args.augment.split(",") if arm.strip()]
    unknown = [arm for arm in args.augment if arm not in AUGMENT_ARMS]
    if unknown or not args.augment:
        parser.error(f"--augment: unknown arm(s) {unknown}; known: {', '.join(AUGMENT_ARMS)}")
    if "none" not in args.augment:
        args.augment.insert(0, "none")  # the reference every other arm is paired with
    default_out = "quick" if args.quick else ("augment" if len(args.augment) > 1 else "")
    args.out = args.out or ROOT / "benchmarks" / "results" / default_out
    if any(k < 0 for k in args.ks) or args.seeds < 1:
        parser.error("K values must be >= 0 and --seeds >= 1")
    return args


# --------------------------------------------------------------------------------------------- small helpers


class Clock:
    """Progress lines stamped with the seconds since the benchmark started."""

    def __init__(self) -> None:
        self.started = time.perf_counter()

    def __call__(self, message: str) -> None:
        print(f"[{time.perf_counter() - self.started:7.1f}s] {message}", flush=True)


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t-interval (nan with fewer than two values)."""
    from scipy import stats

    a = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if len(a) == 0:
        return float("nan"), float("nan")
    if len(a) == 1:
        return float(a[0]), float("nan")
    return float(a.mean()), float(stats.t.ppf(0.975, len(a) - 1) * a.std(ddof=1) / math.sqrt(len(a)))


def set_threads(count: int) -> None:
    if count:
        import torch

        torch.set_num_threads(count)


def peak_memory() -> dict[str, float | None]:
    """This process's peak resident memory in MiB.

    ``peak_mib`` is VmHWM from /proc/self/status: the high-water mark of the memory map the process has had since
    its exec. ``ru_maxrss`` is not used for it because Linux folds the pre-exec memory map into it: a child
    started with the 'spawn' method (fork, then exec) reports at least its parent's resident size at the fork
    (measured here: 833 MiB for a child whose own peak was 33 MiB). It is kept in ``ru_maxrss_mib`` for reference.
    """
    import resource

    ru_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB
    hwm = None
    status = Path("/proc/self/status")
    if status.is_file():
        line = next((x for x in status.read_text().splitlines() if x.startswith("VmHWM:")), None)
        hwm = int(line.split()[1]) / 1024.0 if line else None
    return {"peak_mib": hwm if hwm is not None else ru_maxrss, "ru_maxrss_mib": ru_maxrss,
            "peak_source": "VmHWM" if hwm is not None else "ru_maxrss"}


def scores(truth: list[str], predicted: list[str], labels: list[str]) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    return {"accuracy": float(accuracy_score(truth, predicted)),
            "macro_f1": float(f1_score(truth, predicted, labels=labels, average="macro", zero_division=0))}


def clean(value: Any) -> Any:
    """JSON-safe: numpy scalars to Python, nan/inf to null."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if not math.isfinite(float(value)) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def git_state() -> dict:
    """The commit benchmarked and whether the code or params differed from it (the tree is shared and edited)."""
    import subprocess

    def git(*argv: str) -> str | None:
        try:
            return subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True, timeout=20,
                                  check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    dirty = git("status", "--porcelain", "--", "components", "params.yaml")
    return {"commit": git("rev-parse", "HEAD"), "uncommitted_changes": dirty.splitlines() if dirty else []}


def machine_info() -> dict:
    import torch
    import transformers

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown") \
        if Path("/proc/cpuinfo").is_file() else platform.processor() or "unknown"
    versions = {"python": platform.python_version(), "torch": torch.__version__,
                "transformers": transformers.__version__}
    for package in ("sklearn", "setfit", "sentence_transformers"):
        try:
            versions[package] = __import__(package).__version__
        except ImportError:
            versions[package] = None
    return {"git": git_state(), "cpu_model": cpu, "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "versions": versions,
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "command": shlex.join([sys.executable, *sys.argv]), "cwd": os.getcwd(),
            "load_average_start": list(os.getloadavg())}


# ------------------------------------------------------------------------------------------- the parent side


def prepare_domain(domain: str, params, mirror, args, encoder_box: dict, log: Clock) -> dict:
    """Everything a group of this domain needs: eval split, support sets (cached vectors + timed fresh pass)."""
    from components.data import DataError
    from components.learner import label_prompt
    from components.prepare import build_domain_data, stratified_sample
    from components.stages import embed, sample_support

    data = build_domain_data(domain, params, mirror)
    evaluation = data.eval
    if args.eval_max_rows and len(evaluation) > args.eval_max_rows:
        evaluation = stratified_sample(evaluation, args.eval_max_rows, params.seed)
    labels = sorted(data.adapt["label"].unique())
    descriptions = params.domain(domain).label_descriptions
    log(f"{domain}: {len(labels)} labels, adapt pool {len(data.adapt)} rows, eval {len(evaluation)} rows, "
        f"meta pool {len(data.meta_pool)} rows")

    if "encoder" not in encoder_box:  # one encoder in this process: cache misses and the timed support passes
        from components.encoder import load_encoder

        encoder_box["encoder"] = load_encoder(params.encoder)
    encoder = encoder_box["encoder"]
    started = time.perf_counter()
    eval_texts, pool_texts = evaluation["text"].tolist(), data.adapt["text"].tolist()
    eval_vectors = embed(eval_texts, params, ROOT, encoder)
    pool_vectors = embed(pool_texts, params, ROOT, encoder)
    needs_meta = "metaadapt" in args.methods and len(data.meta_pool)
    meta_vectors = embed(data.meta_pool["text"].tolist(), params, ROOT, encoder) if needs_meta else None
    prompts = [label_prompt(label, descriptions) for label in labels]
    prompt_vectors = embed(prompts, params, ROOT, encoder)
    log(f"{domain}: embeddings from the cache (computing any missing) in {time.perf_counter() - started:.1f}s")

    encoder.encode(pool_texts[:8], params.encoder.batch_size)  # warm-up, so the first timed pass is not penalised
    row_of = {text: i for i, text in enumerate(pool_texts)}
    supports, skipped, max_drift = [], [], 0.0
    for k in args.ks:
        for seed in [params.seed + i for i in range(args.seeds)]:
            if k == 0:
                texts, support_labels, vectors = prompts, labels, prompt_vectors
            else:
                try:
                    frame = sample_support(data.adapt, k, seed)
                except DataError as error:
                    skipped.append({"domain": domain, "k": k, "seed": seed, "reason": str(error)})
                    log(f"{domain}: K={k} seed {seed} skipped: {error}")
                    continue
                texts, support_labels = frame["text"].tolist(), frame["label"].tolist()
                vectors = pool_vectors[[row_of[t] for t in texts]]
            tick = time.perf_counter()  # the fresh encoder pass a user adapting to these examples waits for
            fresh = encoder.encode(texts, params.encoder.batch_size)
            embed_seconds = time.perf_counter() - tick
            max_drift = max(max_drift, float(np.abs(fresh - vectors).max()))
            supports.append({"k": k, "seed": seed, "texts": texts, "labels": support_labels,
                             "vectors": vectors, "embed_s": embed_seconds,
                             "extras": support_arms(texts, support_labels, vectors, k, seed, params, args, encoder)})
        if k in args.ks and supports and supports[-1]["k"] == k:
            times = [s["embed_s"] for s in supports if s["k"] == k]
            log(f"{domain}: K={k}: {len(times)} support sets, fresh support embedding {np.mean(times):.2f}s each")
    return {"domain": domain, "labels": labels, "descriptions": descriptions,
            "eval_texts": eval_texts, "eval_labels": evaluation["label"].tolist(), "eval_vectors": eval_vectors,
            "meta_pool": data.meta_pool if needs_meta else None, "meta_vectors": meta_vectors,
            "supports": supports, "skipped": skipped, "manifest": data.manifest,
            "cache_vs_fresh_max_abs_diff": max_drift}


def support_arms(texts: list[str], labels: list[str], vectors: np.ndarray, k: int, seed: int, params, args,
                 encoder) -> dict:
    """Augmented rows of one support set for every --augment arm (K=0 prompts are never augmented).

    Text copies are embedded through the pipeline's cache (``stages.embed``), so reruns only read them; the seconds
    recorded are those of that call (a cache read on reruns), not of a fresh pass.
    """
    from components.augment import augment_support
    from components.stages import embed

    out = {}
    if k == 0:
        return out
    augment_seed = params.augment.seed if params.augment.seed is not None else seed
    for arm in args.augment:
        if arm == "none":
            continue
        tick = time.perf_counter()
        extras = augment_support(texts, labels, vectors, arm_plan(arm, params, args.augment_copies),
                                 augment_seed + seed - params.seed,
                                 lambda batch: embed(batch, params, ROOT, encoder))
        out[arm] = {"extras": extras, "seconds": time.perf_counter() - tick}
    return out


def group_ks(method: str, ks: list[int], slow_ks: list[int]) -> list[int]:
    if method in SLOW_METHODS:
        return [k for k in ks if k in slow_ks and k > 0]
    if method == "linear_probe":
        return [k for k in ks if k > 0]
    return list(ks)


def run_group_isolated(job: dict, in_process: bool) -> dict:
    """One (domain, method) group in a freshly spawned process (its ru_maxrss is the method's own peak)."""
    if in_process:
        result = group_worker(job)
        result.update(peak_mib=None, ru_maxrss_mib=None, peak_source="not measured (--in-process)")
        return result
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(group_worker, job).result()


# -------------------------------------------------------------------------------------------- the child side


def group_worker(job: dict) -> dict:
    """Run one method on every support set of one domain; returns per-seed rows, throughput and peak memory."""
    from flows.env import configure_environment

    configure_environment()
    set_threads(job["torch_threads"])
    started = time.perf_counter()
    runner = {"metaadapt": embedding_group, "prototypes": embedding_group, "linear_probe": embedding_group,
              "finetune": finetune_group, "setfit": setfit_group}[job["method"]]
    try:
        result = runner(job)
    except ImportError as error:  # an optional dependency (setfit) that is missing or broken
        result = {"skipped": f"{job['method']} is not importable: {error}", "rows": []}
    result.update(wall_s=time.perf_counter() - started, pid=os.getpid(), **peak_memory())
    import torch

    result["torch_threads"] = torch.get_num_threads()
    return result


def _say(job: dict, message: str) -> None:
    print(f"    [{job['domain']}/{job['method']}] {message}", flush=True)


def _row(job: dict, support: dict, predicted: list[str], embed_s: float, fit_s: float, **extra) -> dict:
    row = {"domain": job["domain"], "method": job["method"], "k": support["k"], "seed": support["seed"],
           "n_labels": len(job["labels"]), "support_size": len(support["texts"]),
           **scores(job["eval_labels"], predicted, job["labels"]),
           "embed_s": embed_s, "fit_s": fit_s, "adapt_s": embed_s + fit_s, **extra}
    _say(job, f"K={row['k']} seed {row['seed']}{'' if row.get('augment', 'none') == 'none' else ' +' + row['augment']}: acc {row['accuracy']:.3f} macro-F1 {row['macro_f1']:.3f} "
              f"adapt {row['adapt_s']:.2f}s (embed {embed_s:.2f} + fit {fit_s:.2f})")
    return row


def _throughput(texts: list[str], predict_texts: Callable[[list[str]], Any], k: int) -> dict:
    predict_texts(texts[:8])  # warm-up: the first forward pass of a process pays one-off kernel set-up
    tick = time.perf_counter()
    predict_texts(texts)
    seconds = time.perf_counter() - tick
    return {"k": k, "texts": len(texts), "seconds": seconds, "texts_per_s": len(texts) / max(seconds, 1e-9)}


def meta_train_head(job: dict):
    """The product's head scope: episodes exactly as stages.episodes samples them, meta_train as stages.meta_train."""
    import torch

    from components.episodes import sample_episodes, split_pool_rows
    from components.learner import build_learner, embed_fn
    from components.meta import meta_train

    params, pool, vectors = job["params"], job["meta_pool"], job["meta_vectors"]
    dim = job["eval_vectors"].shape[1]
    learner, _ = build_learner(params, dim=dim)
    if pool is None or not len(pool):
        return learner.head, {"trained": False, "reason": "no meta-training sources"}
    tick = time.perf_counter()
    train_pool, val_pool = split_pool_rows(pool, 0.2, params.seed)
    config = params.episodes
    train = sample_episodes(train_pool, config, config.train_episodes, params.seed)
    val = sample_episodes(val_pool, config, config.val_episodes, params.seed + 1)
    episode_s = time.perf_counter() - tick
    fn = embed_fn("head", torch.as_tensor(vectors), pool["text"].tolist(), None)
    result = meta_train(learner, train, val, fn, params.meta, params.seed,
                        progress=lambda e, loss, acc: _say(job, f"meta-train epoch {e}: loss {loss:.4f} "
                                                                f"val episode acc {acc:.4f}"))
    info = {"trained": True, "algorithm": params.meta.algorithm, "scope": params.meta.scope,
            "epochs": params.meta.epochs, "train_episodes": len(train), "val_episodes": len(val),
            "pool_rows": len(pool), "episode_sampling_s": episode_s, "seconds": result.seconds,
            "episodes_per_second": result.episodes_per_second, "best_epoch": result.best_epoch,
            "val_accuracy": result.val_accuracy, "train_loss": result.train_loss}
    _say(job, f"meta-trained in {result.seconds:.1f}s, best epoch {result.best_epoch}, val episode acc "
              f"{result.val_accuracy[0]:.3f} -> {result.val_accuracy[result.best_epoch]:.3f}")
    return learner.head, info


def embedding_group(job: dict) -> dict:
    """metaadapt, prototypes, linear_probe: fit on cached support embeddings, predict cached eval embeddings."""
    import torch

    from components.encoder import load_encoder
    from components.classifier import fit_classifier
    from components.meta import ProjectionHead, zero_shot

    params, method, labels = job["params"], job["method"], job["labels"]
    tick = time.perf_counter()
    encoder = load_encoder(params.encoder)  # for the throughput measurement: texts in, labels out
    load_s = time.perf_counter() - tick
    meta, head = None, None
    if method == "metaadapt":
        head, meta = meta_train_head(job)
        config = params.adapt
    elif method == "prototypes":
        head = ProjectionHead(job["eval_vectors"].shape[1], params.meta.temperature_init)
        config = params.adapt.model_copy(update={"method": "proto"})
    def fit(support: dict, arm: str = "none") -> tuple[Callable[[np.ndarray], list[str]], dict]:
        """The method's adaptation on one support set (plus an arm's augmented rows); a vectors -> labels predictor."""
        from components.meta import make_extras

        extras = None
        if arm != "none":
            extra = support["extras"][arm]["extras"]
            extras = make_extras(extra.vectors, extra.labels, extra.origins, labels, "cpu")
        if method == "linear_probe":
            from sklearn.linear_model import LogisticRegression

            model = LogisticRegression(max_iter=1000).fit(support["vectors"], support["labels"])
            return (lambda vectors: model.predict(vectors).tolist()), {}
        x = torch.as_tensor(support["vectors"])
        chosen = head
        if support["k"] == 0:
            classifier = zero_shot(head, x, labels)
        else:
            # the pipeline's adaptation (components/learner.adapt_domain, uniform prior: balanced K-shot supports);
            # CV on the support rows also picks the meta-trained or the untrained head
            candidates = {"meta": head}
            if method == "metaadapt" and config.select_head:
                candidates["identity"] = ProjectionHead(head.linear.in_features, params.meta.temperature_init)
            _, chosen, classifier = fit_classifier(candidates, x, support["labels"], config, support["seed"],
                                                   label_order=labels, extras=extras)
        return (lambda vectors: classifier.predict(chosen, torch.as_tensor(vectors))), \
            {"steps": classifier.info.get("steps", 0), "head": classifier.info.get("head", "meta"),
             "augment": arm, "augmented_rows": classifier.info.get("augmented_rows", 0)}

    # Warm-up, untimed in the rows: the first fit of a process pays one-off costs (lazy imports, allocator,
    # kernel set-up: 0.5-3 s measured here) that would otherwise all land on the first seed.
    tick = time.perf_counter()
    fit(job["supports"][-1])
    first_fit_s = time.perf_counter() - tick
    eval_vectors = job["eval_vectors"]
    rows, throughput = [], None
    tp_k = max(job["ks"])
    for support in job["supports"]:
        tick = time.perf_counter()
        predict, extra = fit(support)
        fit_s = time.perf_counter() - tick
        rows.append(_row(job, support, predict(eval_vectors), support["embed_s"], fit_s, **extra))
        if throughput is None and support["k"] == tp_k:
            throughput = _throughput(job["throughput_texts"],
                                     lambda texts: predict(encoder.encode(texts, params.encoder.batch_size)), tp_k)
        arms = support.get("extras", {}) if method in AUGMENTED_METHODS else {}
        for arm, built in arms.items():
            tick = time.perf_counter()
            predict, extra = fit(support, arm)
            fit_s = time.perf_counter() - tick
            rows.append(_row(job, support, predict(eval_vectors), support["embed_s"], fit_s,
                             augment_build_s=built["seconds"], **extra))
    return {"rows": rows, "throughput": throughput, "meta": meta, "model_load_s": load_s,
            "first_fit_s": first_fit_s}


def finetune_group(job: dict) -> dict:
    """Standard fine-tuning: the whole encoder plus a new classification head, AdamW with linear warm-up/decay."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, get_linear_schedule_with_warmup

    from components.encoder import resolve_model_path

    params, labels, opts = job["params"], job["labels"], job["options"]
    path = resolve_model_path(params.encoder.name)
    tokenizer = AutoTokenizer.from_pretrained(path)
    max_length = params.encoder.max_length

    def tokenize(texts):
        return tokenizer(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt")

    @torch.inference_mode()
    def classify(model, texts):
        model.eval()
        order = np.argsort([len(t) for t in texts], kind="stable")
        out = np.empty(len(texts), dtype=int)
        for start in range(0, len(texts), params.encoder.batch_size):
            idx = order[start:start + params.encoder.batch_size]
            out[idx] = model(**tokenize([texts[i] for i in idx])).logits.argmax(-1).numpy()
        return [labels[i] for i in out]

    rows, throughput, load_times = [], None, []
    for support in job["supports"]:
        torch.manual_seed(support["seed"])
        tick = time.perf_counter()
        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=len(labels), id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)})
        load_times.append(time.perf_counter() - tick)
        tick = time.perf_counter()
        y = torch.tensor([labels.index(label) for label in support["labels"]])
        batch = tokenize(support["texts"])
        steps_per_epoch = math.ceil(len(y) / opts["ft_batch_size"])
        total = steps_per_epoch * opts["ft_epochs"]
        optimizer = torch.optim.AdamW(model.parameters(), lr=opts["ft_lr"], weight_decay=0.01)
        schedule = get_linear_schedule_with_warmup(optimizer, int(0.1 * total), total)
        generator = torch.Generator().manual_seed(support["seed"])
        model.train()
        for _ in range(opts["ft_epochs"]):
            for idx in torch.randperm(len(y), generator=generator).split(opts["ft_batch_size"]):
                loss = model(input_ids=batch["input_ids"][idx], attention_mask=batch["attention_mask"][idx],
                             labels=y[idx]).loss
                loss.backward()
                optimizer.step()
                schedule.step()
                optimizer.zero_grad()
        fit_s = time.perf_counter() - tick
        rows.append(_row(job, support, classify(model, job["eval_texts"]), 0.0, fit_s, train_steps=total))
        if throughput is None:
            throughput = _throughput(job["throughput_texts"], lambda texts: classify(model, texts), support["k"])
    return {"rows": rows, "throughput": throughput, "model_load_s": float(np.mean(load_times)) if load_times else None}


def setfit_group(job: dict) -> dict:
    """SetFit 1.2: contrastive fine-tuning of the sentence encoder on generated pairs, then a logistic head."""
    import tempfile
    import warnings

    import datasets
    from setfit import SetFitModel, Trainer, TrainingArguments
    from setfit import logging as setfit_logging

    from components.encoder import resolve_model_path

    setfit_logging.set_verbosity_error()
    datasets.disable_progress_bars()
    warnings.filterwarnings("ignore", message=".*pin_memory.*")
    params, opts = job["params"], job["options"]
    path = resolve_model_path(params.encoder.name)
    max_length, batch_size = params.encoder.max_length, params.encoder.batch_size
    rows, throughput, load_times = [], None, []
    for support in job["supports"]:
        tick = time.perf_counter()
        model = SetFitModel.from_pretrained(path)
        model.model_body.max_seq_length = max_length  # the same truncation as every other method
        load_times.append(time.perf_counter() - tick)
        with tempfile.TemporaryDirectory() as scratch:
            args = TrainingArguments(output_dir=scratch, batch_size=opts["setfit_batch_size"],
                                     num_epochs=opts["setfit_epochs"], num_iterations=opts["setfit_iterations"],
                                     seed=support["seed"], max_length=max_length, report_to="none",
                                     save_strategy="no", logging_strategy="no", show_progress_bar=False)
            train = datasets.Dataset.from_dict({"text": support["texts"], "label": support["labels"]})
            trainer = Trainer(model=model, args=args, train_dataset=train)
            tick = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):  # the trainer prints a log dict per run
                trainer.train()
            fit_s = time.perf_counter() - tick

        def predict(texts, model=model):
            return [str(p) for p in model.predict(texts, batch_size=batch_size, show_progress_bar=False)]
        rows.append(_row(job, support, predict(job["eval_texts"]), 0.0, fit_s,
                         pairs=2 * opts["setfit_iterations"] * len(support["texts"])))
        if throughput is None:
            throughput = _throughput(job["throughput_texts"], predict, support["k"])
    return {"rows": rows, "throughput": throughput, "model_load_s": float(np.mean(load_times)) if load_times else None}


# ----------------------------------------------------------------------------------------------- reporting


def aggregate(rows: list[dict], groups: list[dict]) -> list[dict]:
    """Per (domain, method, K) over seeds, without augmentation (the --augment arms are in augment_table)."""
    rows = [r for r in rows if r.get("augment", "none") == "none"]
    peaks = {(g["domain"], g["method"]): g for g in groups}
    out = []
    keys = sorted({(r["domain"], r["method"], r["k"]) for r in rows},
                  key=lambda key: (key[0], ALL_METHODS.index(key[1]), key[2]))
    for domain, method, k in keys:
        mine = [r for r in rows if (r["domain"], r["method"], r["k"]) == (domain, method, k)]
        acc, acc_ci = mean_ci([r["accuracy"] for r in mine])
        f1, f1_ci = mean_ci([r["macro_f1"] for r in mine])
        adapt_s, adapt_ci = mean_ci([r["adapt_s"] for r in mine])
        group = peaks.get((domain, method), {})
        tp = group.get("throughput") or {}
        out.append({"domain": domain, "method": method, "k": k, "n_seeds": len(mine), "n_labels": mine[0]["n_labels"],
                    "accuracy": acc, "accuracy_ci95": acc_ci, "macro_f1": f1, "macro_f1_ci95": f1_ci,
                    "adapt_s": adapt_s, "adapt_s_ci95": adapt_ci,
                    "adapt_s_median": float(np.median([r["adapt_s"] for r in mine])),
                    "embed_s": float(np.mean([r["embed_s"] for r in mine])),
                    "fit_s": float(np.mean([r["fit_s"] for r in mine])),
                    "texts_per_s": tp.get("texts_per_s"), "peak_mib": group.get("peak_mib")})
    return out


def augment_table(rows: list[dict]) -> list[dict]:
    """Each augmentation arm against `none` on the same support sets: mean ± 95% CI of accuracy and of the paired
    per-seed difference. Verdict: "helps" / "hurts" when the difference's interval excludes 0, else
    "no measurable effect"."""
    base = {(r["domain"], r["method"], r["k"], r["seed"]): r for r in rows if r.get("augment", "none") == "none"}
    keys = sorted({(r["domain"], r["method"], r["k"], r["augment"]) for r in rows
                   if r.get("augment", "none") != "none"},
                  key=lambda key: (key[0], ALL_METHODS.index(key[1]), key[2], list(AUGMENT_ARMS).index(key[3])))
    out = []
    for domain, method, k, arm in keys:
        mine = [r for r in rows if (r["domain"], r["method"], r["k"], r.get("augment")) == (domain, method, k, arm)]
        pairs = [(r, base[(domain, method, k, r["seed"])]) for r in mine if (domain, method, k, r["seed"]) in base]
        acc, acc_ci = mean_ci([r["accuracy"] for r, _ in pairs])
        ref, ref_ci = mean_ci([b["accuracy"] for _, b in pairs])
        delta, delta_ci = mean_ci([r["accuracy"] - b["accuracy"] for r, b in pairs])
        f1_delta, f1_delta_ci = mean_ci([r["macro_f1"] - b["macro_f1"] for r, b in pairs])
        verdict = "no measurable effect"
        if math.isfinite(delta_ci) and delta - delta_ci > 0:
            verdict = "helps"
        elif math.isfinite(delta_ci) and delta + delta_ci < 0:
            verdict = "hurts"
        elif not math.isfinite(delta_ci):
            verdict = "not enough seeds"
        out.append({"domain": domain, "method": method, "k": k, "augment": arm, "n_seeds": len(pairs),
                    "accuracy": acc, "accuracy_ci95": acc_ci, "none_accuracy": ref, "none_accuracy_ci95": ref_ci,
                    "delta_accuracy": delta, "delta_accuracy_ci95": delta_ci,
                    "delta_macro_f1": f1_delta, "delta_macro_f1_ci95": f1_delta_ci, "verdict": verdict,
                    "augmented_rows_mean": float(np.mean([r.get("augmented_rows", 0) for r, _ in pairs])),
                    "fit_s": float(np.mean([r["fit_s"] for r, _ in pairs])),
                    "none_fit_s": float(np.mean([b["fit_s"] for _, b in pairs])),
                    "augment_build_s": float(np.mean([r.get("augment_build_s", 0.0) for r, _ in pairs]))})
    return out


def render_augment_markdown(payload: dict, table: list[dict]) -> str:
    """augment.md: accuracy per arm, the paired difference to `none` and the verdict."""
    m, c = payload["machine"], payload["config"]
    out = ["# Support-set augmentation at adaptation time", ""]
    if not payload["complete"]:
        out += ["**PARTIAL RESULTS: the run had not finished when this was written.**", ""]
    out += [f"Generated {m['date']} by `{m['command']}` at commit {str((m.get('git') or {}).get('commit'))[:10]}"
            + (" with uncommitted changes to " + ", ".join(m["git"]["uncommitted_changes"])
               if (m.get("git") or {}).get("uncommitted_changes") else "") + ".", "",
            f"Machine: {m['cpu_model']}, {m['cpu_cores']} cores. Arms {c['augment']} with {c['augment_copies']} "
            f"copies per support example per operation; strengths from params.yaml `augment` "
            f"(text ops {c['augment_params']['text_ops']}, noise std {c['augment_params']['adapt']['noise_std']}, "
            f"mixup alpha {c['augment_params']['adapt']['mixup_alpha']}). Same support sets for every arm "
            f"(seeds {c['seed_values']}).", "",
            "acc: accuracy % on the held-out split, mean ± 95% t-interval over seeds. Δ: the paired per-seed "
            "difference to `none` (same support set), mean ± 95% t-interval, in accuracy points; **helps** / "
            "**hurts** only when that interval excludes 0, otherwise *no measurable effect*. "
            "rows: augmented rows added per support set (mean). fit s: adaptation fit time (the text arms also "
            "need an encoder pass over their copies, not included here).", "",
            "| domain | method | K | arm | acc % | none acc % | Δ acc points | Δ macro-F1 points | verdict | rows "
            "| fit s (none) | seeds |",
            "|---|---|---:|---|---:|---:|---:|---:|---|---:|---:|---:|"]
    for a in table:
        delta = _cell(a["delta_accuracy"], a["delta_accuracy_ci95"])
        f1 = _cell(a["delta_macro_f1"], a["delta_macro_f1_ci95"])
        out.append(f"| {a['domain']} | {a['method']} | {a['k']} | {a['augment']} "
                   f"| {_cell(a['accuracy'], a['accuracy_ci95'])} | {_cell(a['none_accuracy'], a['none_accuracy_ci95'])} "
                   f"| {'+' if a['delta_accuracy'] > 0 else ''}{delta} | {'+' if a['delta_macro_f1'] > 0 else ''}{f1} "
                   f"| {a['verdict']} | {a['augmented_rows_mean']:.0f} | {a['fit_s']:.2f} ({a['none_fit_s']:.2f}) "
                   f"| {a['n_seeds']} |")
    counts = {v: sum(a["verdict"] == v for a in table) for v in ("helps", "hurts", "no measurable effect")}
    out += ["", "Verdicts: " + ", ".join(f"{v}: {n}" for v, n in counts.items()) + f" of {len(table)} cells.", ""]
    return "\n".join(out)


def _find(aggregates: list[dict], domain: str, method: str, k: int) -> dict | None:
    return next((a for a in aggregates if (a["domain"], a["method"], a["k"]) == (domain, method, k)), None)


def _pct(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.1f}"


def target_checks(aggregates: list[dict], domains: list[str], n_labels: dict[str, int], k: int = 8) -> list[dict]:
    """The issue's targets, each PASS / FAIL / NOT EVALUATED with the numbers behind it."""
    checks = []
    lines, verdicts = [], []
    for domain in domains:
        ours = _find(aggregates, domain, "metaadapt", k)
        rivals = [a for m in ("linear_probe", "setfit") if (a := _find(aggregates, domain, m, k))]
        if not ours or not rivals:
            lines.append(f"{domain}: not evaluated (metaadapt or both rivals missing at K={k})")
            continue
        best = max(rivals, key=lambda a: a["accuracy"])
        ci = best["accuracy_ci95"]
        ci = ci if ci is not None and math.isfinite(ci) else 0.0
        ok = ours["accuracy"] >= best["accuracy"] - ci
        verdicts.append(ok)
        lines.append(f"{domain}: metaadapt {_pct(ours['accuracy'])} vs best rival {best['method']} "
                     f"{_pct(best['accuracy'])} ± {_pct(ci)} -> {'ok' if ok else 'below'}"
                     + ("" if any(a["method"] == "setfit" for a in rivals) else " (setfit not run here)"))
    checks.append({"name": f"K={k}: metaadapt accuracy >= best of linear_probe/setfit, or inside its 95% CI",
                   "status": _status(verdicts), "details": lines})

    lines, verdicts = [], []
    for domain in domains:
        ours, setfit = _find(aggregates, domain, "metaadapt", k), _find(aggregates, domain, "setfit", k)
        if not ours or not setfit:
            lines.append(f"{domain}: not evaluated (setfit not run at K={k})")
            continue
        ratio = ours["adapt_s"] / setfit["adapt_s"]
        verdicts.append(ratio <= 0.1)
        lines.append(f"{domain}: metaadapt {ours['adapt_s']:.2f}s vs setfit {setfit['adapt_s']:.1f}s "
                     f"= {ratio:.3f}x")
    checks.append({"name": f"K={k}: metaadapt adaptation time <= 1/10 of SetFit's", "status": _status(verdicts),
                   "details": lines})

    lifts, lines = [], []
    for domain in domains:
        ours, protos = _find(aggregates, domain, "metaadapt", k), _find(aggregates, domain, "prototypes", k)
        if ours and protos:
            lifts.append(ours["accuracy"] - protos["accuracy"])
            lines.append(f"{domain}: {_pct(ours['accuracy'])} - {_pct(protos['accuracy'])} = "
                         f"{100 * lifts[-1]:+.1f} points")
    mean_lift = float(np.mean(lifts)) if lifts else float("nan")
    if lifts:
        lines.append(f"mean over {len(lifts)} domain(s): {100 * mean_lift:+.1f} points")
    checks.append({"name": f"K={k}: mean accuracy lift of metaadapt over prototypes across domains >= 3 points",
                   "status": _status([mean_lift >= 0.03] if lifts else []), "details": lines,
                   "mean_lift_points": 100 * mean_lift if lifts else None})

    big = [d for d in domains if n_labels.get(d, 0) >= 77]
    lines, verdicts = [], []
    for domain in big:
        ours = _find(aggregates, domain, "metaadapt", k)
        if ours:
            verdicts.append(ours["adapt_s"] < 10)
            lines.append(f"{domain} ({n_labels[domain]} labels): metaadapt adaptation {ours['adapt_s']:.2f}s "
                         f"(support embedding {ours['embed_s']:.2f}s + fit {ours['fit_s']:.2f}s)")
    if not big:
        lines.append("no 77-label domain in this run")
    checks.append({"name": f"K={k}: 77-label adaptation (metaadapt) < 10 s", "status": _status(verdicts),
                   "details": lines})
    return checks


def _status(verdicts: list[bool]) -> str:
    if not verdicts:
        return "NOT EVALUATED"
    return "PASS" if all(verdicts) else "FAIL"


def _cell(mean: float | None, ci: float | None) -> str:
    if mean is None or not math.isfinite(mean):
        return "n/a"
    return f"{100 * mean:.1f} ± {100 * ci:.1f}" if ci is not None and math.isfinite(ci) else f"{100 * mean:.1f}"


def results_table(aggregates: list[dict]) -> str:
    lines = ["| domain | method | K | acc % ± 95% CI | macro-F1 % ± 95% CI | adapt s mean (median) | texts/s "
             "| peak MiB | seeds |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for a in aggregates:
        tp = f"{a['texts_per_s']:.0f}" if a["texts_per_s"] else "n/a"
        peak = f"{a['peak_mib']:.0f}" if a["peak_mib"] else "n/a"
        lines.append(f"| {a['domain']} | {a['method']} | {a['k']} | {_cell(a['accuracy'], a['accuracy_ci95'])} "
                     f"| {_cell(a['macro_f1'], a['macro_f1_ci95'])} | {a['adapt_s']:.3f} ({a['adapt_s_median']:.3f}) "
                     f"| {tp} | {peak} "
                     f"| {a['n_seeds']} |")
    return "\n".join(lines)


def render_markdown(payload: dict) -> str:
    m, c = payload["machine"], payload["config"]
    out = [f"# Few-shot benchmark{' (quick smoke run)' if c['quick'] else ''}", ""]
    if not payload["complete"]:
        out += ["**PARTIAL RESULTS: the run had not finished when this was written.**", ""]
    out += [
           f"Generated {m['date']} by `{m['command']}` at commit {str((m.get('git') or {}).get('commit'))[:10]}"
           + (" with uncommitted changes to " + ", ".join(m["git"]["uncommitted_changes"])
              if (m.get("git") or {}).get("uncommitted_changes") else "") + ".", "",
           f"Machine: {m['cpu_model']}, {m['cpu_cores']} cores, torch threads {m['torch_threads']}, "
           f"Python {m['versions']['python']}, torch {m['versions']['torch']}, "
           f"transformers {m['versions']['transformers']}, setfit {m['versions']['setfit']}. "
           f"Load average at start {m['load_average_start'][0]:.1f}, at end {m['load_average_end'][0]:.1f}.",
           "", "**Caveat:** timings come from a small, shared CPU machine; other jobs ran beside this benchmark, "
           "so seconds and texts/s are noisy (compare methods within one run, not across runs).", "",
           f"K values {c['ks']}, {c['seeds']} seeds of support sets (seeds {c['seed_values']}), slow methods "
           f"(finetune, setfit) at K in {c['slow_ks']}; held-out rows per domain (labels, majority-class "
           f"accuracy): "
           + ", ".join(f"{d} {e['rows']} ({e['labels']} labels, majority {100 * e['majority_class_accuracy']:.1f}%)"
                       for d, e in payload["eval"].items())
           + "; adaptation / meta-training pool rows: "
           + ", ".join(f"{d} {e['adapt_pool_rows']} / {e['meta_pool_rows']}" for d, e in payload["eval"].items())
           + f"; encoder {c['encoder']} (max length {c['max_length']}); meta epochs {c['meta_epochs']}, "
             f"{c['train_episodes']} train episodes.", "",
           "acc and macro-F1 in %, mean over seeds ± the half-width of the 95% t-interval (K=0 is deterministic, so "
           "its interval is 0). *adapt s*: support embedding by the encoder (a fresh pass, not the cache) plus "
           "fitting (after one untimed warm-up fit per process), mean and median over seeds; for finetune and "
           "setfit it is their training (model loading excluded). *texts/s*: encoder + classifier on up to "
           f"{c['throughput_texts']} eval texts, measured once per domain and method (largest K, first seed). "
           "*peak MiB*: peak resident memory (VmHWM) of the spawned child process that ran that domain and method "
           "(its encoder or model loaded, meta-training included for metaadapt; the child's ru_maxrss can "
           "include the parent's size, see the JSON).", "", results_table(payload["aggregates"]), ""]
    if payload["meta_training"]:
        out += ["## Meta-training (metaadapt, once per domain)", "",
                "| domain | seconds | episodes | epochs | best epoch | val episode acc (before → best) |",
                "|---|---:|---:|---:|---:|---|"]
        for domain, info in payload["meta_training"].items():
            if not info.get("trained"):
                out.append(f"| {domain} | – | – | – | – | not trained: {info.get('reason')} |")
                continue
            va = info["val_accuracy"]
            out.append(f"| {domain} | {info['seconds']:.1f} | {info['train_episodes']} | {info['epochs']} "
                       f"| {info['best_epoch']} | {va[0]:.3f} → {va[info['best_epoch']]:.3f} |")
        out.append("")
    out += ["## Target checks (issue \"Meta-learning core\")", ""]
    for check in payload["checks"]:
        out.append(f"- **{check['status']}** — {check['name']}")
        out += [f"  - {line}" for line in check["details"]]
    if payload["skipped"]:
        out += ["", "## Skipped", ""]
        for s in payload["skipped"]:
            where = " / ".join(str(x) for x in (s.get("domain"), s.get("method")) if x)
            where += f" K={s['k']} seed {s['seed']}" if "k" in s else ""
            out.append(f"- {where}: {s['reason']}")
    return "\n".join(out) + "\n"


def plot(aggregates: list[dict], k: int, path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [a for a in aggregates if a["k"] == k]
    if not points:
        return False
    markers = dict(zip(ALL_METHODS, "o^sDP"))
    domains = sorted({a["domain"] for a in points})
    colors = dict(zip(domains, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for a in points:
        ci = a["accuracy_ci95"] if a["accuracy_ci95"] is not None and math.isfinite(a["accuracy_ci95"]) else 0
        ax.errorbar(max(a["adapt_s"], 1e-4), 100 * a["accuracy"], yerr=100 * ci, fmt=markers[a["method"]],
                    color=colors[a["domain"]], markersize=8, capsize=3)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker=markers[m], linestyle="", color="gray", label=m)
               for m in ALL_METHODS if any(a["method"] == m for a in points)]
    handles += [Line2D([], [], marker="o", linestyle="", color=colors[d], label=d) for d in domains]
    ax.legend(handles=handles, fontsize=8, loc="best")
    ax.set_xscale("log")
    ax.set_ylim(0, 100)
    ax.set_xlabel("adaptation time per support set, s (log; support embedding + fitting)")
    ax.set_ylabel("accuracy %, mean ± 95% CI over seeds")
    ax.set_title(f"Few-shot accuracy vs adaptation time, K={k} examples per label")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_outputs(state: dict, complete: bool) -> tuple[str, bool]:
    """fewshot.json, fewshot.md and fewshot.png from everything measured so far."""
    args, params, machine = state["args"], state["params"], dict(state["machine"])
    aggregates = aggregate(state["rows"], state["groups"])
    machine["load_average_end"] = list(os.getloadavg())
    payload = {"complete": complete, "machine": machine,
               "config": {"quick": args.quick, "domains": state["domains"], "ks": args.ks, "seeds": args.seeds,
                          "seed_values": state["seeds"], "methods": args.methods, "slow_ks": args.slow_ks,
                          "setfit_max_labels": args.setfit_max_labels, "eval_max_rows": args.eval_max_rows,
                          "throughput_texts": args.throughput_texts, "torch_threads": args.torch_threads,
                          "encoder": params.encoder.name,
                          "max_length": params.encoder.max_length, "meta_epochs": params.meta.epochs,
                          "train_episodes": params.episodes.train_episodes, "options": state["options"],
                          "augment": args.augment, "augment_copies": args.augment_copies,
                          "augment_params": params.augment.model_dump(),
                          "meta": params.meta.model_dump(), "adapt": params.adapt.model_dump(),
                          "episodes": params.episodes.model_dump(), "limits": params.limits.model_dump(),
                          "isolation": "in-process" if args.in_process else "spawned child process per group"},
               "timing_notes": TIMING_NOTES, "eval": state["eval"], "n_labels": state["n_labels"],
               "cache_vs_fresh_max_abs_diff": state["drift"], "meta_training": state["meta_training"],
               "groups": state["groups"], "skipped": state["skipped"],
               "checks": target_checks(aggregates, state["domains"], state["n_labels"], k=args.plot_k),
               "aggregates": aggregates, "rows": state["rows"],
               "total_wall_s": time.perf_counter() - state["log"].started}
    payload = clean(payload)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fewshot.json").write_text(json.dumps(payload, indent=2), encoding="utf-8")
    markdown = render_markdown(payload)
    (args.out / "fewshot.md").write_text(markdown, encoding="utf-8")
    if len(args.augment) > 1:
        table = clean(augment_table(state["rows"]))
        (args.out / "augment.json").write_text(json.dumps({"complete": complete, "machine": payload["machine"],
                                                           "config": payload["config"], "arms": table},
                                                          indent=2), encoding="utf-8")
        (args.out / "augment.md").write_text(render_augment_markdown(payload, table), encoding="utf-8")
    return markdown, plot(payload["aggregates"], args.plot_k, args.out / "fewshot.png")


TIMING_NOTES = {
    "adapt_s": "embed_s + fit_s",
    "embed_s": "metaadapt/prototypes/linear_probe: a fresh encoder pass over the support texts (label prompts at "
               "K=0), timed once per support set without the cache and charged to each of the three; the vectors "
               "used for fitting come from the embedding cache (max abs difference fresh vs cached recorded in "
               "cache_vs_fresh_max_abs_diff). finetune/setfit: 0, their training tokenizes/encodes the support "
               "texts itself",
    "fit_s": "adapt()/zero_shot()/LogisticRegression.fit, after one untimed warm-up fit per process (its time is "
             "groups[].first_fit_s), or the whole training loop (finetune) / Trainer.train() (setfit); model "
             "loading excluded",
    "texts_per_s": "encoder + classifier on throughput_texts eval texts, once per group",
    "peak_mib": "peak resident memory (VmHWM) of the group's spawned child process; its ru_maxrss is in "
                "groups[].ru_maxrss_mib but can include the parent's resident size at the fork that precedes the "
                "exec",
}


# ---------------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from flows.env import configure_environment

    configure_environment()
    set_threads(args.torch_threads)
    log = Clock()
    from components.config import load_params, resolve_mirror

    params = load_params(args.params)
    if params.meta.scope != "head":
        raise SystemExit(f"meta.scope is {params.meta.scope!r}: this benchmark measures the default head scope "
                         f"(cached embeddings); set meta.scope: head")
    if args.quick:
        params = shrink_pools(params)
    if args.meta_epochs is not None:
        params = params.model_copy(update={"meta": params.meta.model_copy(update={"epochs": args.meta_epochs})})
    if args.train_episodes:
        params = params.model_copy(update={"episodes": params.episodes.model_copy(
            update={"train_episodes": args.train_episodes})})
    domains = args.domains or list(params.domains)
    for domain in domains:
        params.domain(domain)  # unknown names fail here, listing the known ones
    mirror = resolve_mirror(params.data)
    machine = machine_info()
    seeds = [params.seed + i for i in range(args.seeds)]
    log(f"few-shot benchmark: domains {domains}, K {args.ks}, seeds {seeds}, methods {args.methods}, "
        f"slow K {args.slow_ks}; output {args.out}")
    options = {key: getattr(args, key) for key in ("ft_epochs", "ft_lr", "ft_batch_size", "setfit_iterations",
                                                   "setfit_epochs", "setfit_batch_size")}
    rows, groups, skipped, meta_training, eval_info, n_labels, drift = [], [], [], {}, {}, {}, {}
    state = {"args": args, "params": params, "machine": machine, "domains": domains, "seeds": seeds,
             "options": options, "rows": rows, "groups": groups, "skipped": skipped, "meta_training": meta_training,
             "eval": eval_info, "n_labels": n_labels, "drift": drift, "log": log}
    encoder_box: dict = {}
    for domain in domains:
        task = prepare_domain(domain, params, mirror, args, encoder_box, log)
        skipped += task["skipped"]
        shares = {label: task["eval_labels"].count(label) / len(task["eval_labels"]) for label in task["labels"]}
        eval_info[domain] = {"rows": len(task["eval_texts"]), "labels": len(task["labels"]),
                             "majority_class_accuracy": max(shares.values()), "label_shares": shares,
                             "adapt_pool_rows": task["manifest"].get("adapt_rows"),
                             "meta_pool_rows": task["manifest"].get("meta_pool_rows"),
                             "meta_sources": task["manifest"].get("meta_sources")}
        n_labels[domain] = len(task["labels"])
        drift[domain] = task["cache_vs_fresh_max_abs_diff"]
        for method in args.methods:
            ks = [k for k in group_ks(method, args.ks, args.slow_ks) if any(s["k"] == k for s in task["supports"])]
            reason = None
            if not ks:
                reason = f"no K of {args.ks} applies (slow K {args.slow_ks})"
            elif method == "setfit" and len(task["labels"]) > args.setfit_max_labels:
                reason = f"{len(task['labels'])} labels > --setfit-max-labels {args.setfit_max_labels}"
            elif method == "setfit":
                import importlib.util

                if importlib.util.find_spec("setfit") is None:
                    reason = "setfit is not installed (pip install -e '.[setfit]')"
            if reason:
                log(f"{domain}/{method}: skipped: {reason}")
                skipped.append({"domain": domain, "method": method, "reason": reason})
                continue
            job = {"domain": domain, "method": method, "params": params, "labels": task["labels"], "ks": ks,
                   "supports": [{**s, "extras": s["extras"] if method in AUGMENTED_METHODS else {}}
                                if method in EMBEDDING_METHODS else {**s, "vectors": None, "extras": {}}
                                for s in task["supports"] if s["k"] in ks],
                   "eval_texts": task["eval_texts"], "eval_labels": task["eval_labels"],
                   "eval_vectors": task["eval_vectors"] if method in EMBEDDING_METHODS else None,
                   "meta_pool": task["meta_pool"] if method == "metaadapt" else None,
                   "meta_vectors": task["meta_vectors"] if method == "metaadapt" else None,
                   "throughput_texts": task["eval_texts"][:args.throughput_texts], "options": options,
                   "torch_threads": args.torch_threads}
            log(f"{domain}/{method}: K {ks} x {args.seeds} seeds in a child process")
            try:
                result = run_group_isolated(job, args.in_process)
            except Exception as error:  # one broken method must not lose the others' results
                traceback.print_exc()
                reason = f"failed: {type(error).__name__}: {error}"
                log(f"{domain}/{method}: {reason}")
                skipped.append({"domain": domain, "method": method, "reason": reason})
                continue
            if result.get("skipped"):
                log(f"{domain}/{method}: skipped: {result['skipped']}")
                skipped.append({"domain": domain, "method": method, "reason": result["skipped"]})
                continue
            rows += result["rows"]
            if result.get("meta") is not None:
                meta_training[domain] = result["meta"]
            groups.append({"domain": domain, "method": method, "peak_mib": result["peak_mib"],
                           "ru_maxrss_mib": result.get("ru_maxrss_mib"), "peak_source": result.get("peak_source"),
                           "wall_s": result["wall_s"], "model_load_s": result.get("model_load_s"),
                           "first_fit_s": result.get("first_fit_s"),
                           "torch_threads": result.get("torch_threads"), "throughput": result["throughput"]})
            tp = result["throughput"] or {}
            log(f"{domain}/{method}: done in {result['wall_s']:.1f}s, peak {result['peak_mib'] or 0:.0f} MiB, "
                f"{tp.get('texts_per_s', 0):.0f} texts/s")
            write_outputs(state, complete=False)  # a long run killed half-way keeps what it measured
    markdown, plotted = write_outputs(state, complete=True)
    print()
    print(markdown)
    if len(args.augment) > 1:
        print((args.out / "augment.md").read_text(encoding="utf-8"))
    log(f"wrote {args.out / 'fewshot.json'}, {args.out / 'fewshot.md'}"
        + (f", {args.out / 'fewshot.png'}" if plotted else f" (no plot: no K={args.plot_k} results)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
