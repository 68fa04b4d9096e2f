"""Representation tiers and leave-one-source-out: does training the encoder on the source tasks help unseen targets?

For each target (a params.yaml domain, or a shared data set treated as an unseen target whose meta-training sources
are given on the command line — in ``--loso`` mode every other data set of its family), the same K-per-label support
sets (seeds) are drawn from its adaptation pool and scored on its held-out split under each representation tier:

  frozen    the base encoder as shipped (all-MiniLM-L6-v2 unless --encoder)
  lora      the encoder after supervised contrastive meta-fine-tuning of LoRA adapters on the sources
  full      the same with every encoder weight trained

On every tier the classifier is the product's (``components.classifier.fit_classifier``: cosine or logistic
regression chosen by cross-validation, calibrated; identity head: no head meta-training, which isolates the encoder's
contribution) with the uniform prior, beside baselines on the same rows: majority class, zero-shot (label
descriptions or names as prototypes), and a tuned logistic regression (C by 3-fold CV) on the frozen encoder.
Transductive refinement (--transductive) and label-description fusion (--fusion) are reported as extra rows.

    python benchmarks/representations.py --targets customer_intent --tiers frozen full --steps 300
    python benchmarks/representations.py --loso                    # every family target in turn (long)

Writes <out>/representations.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
for path in (ROOT, ROOT / "benchmarks"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from fewshot import Clock, clean, machine_info, mean_ci  # noqa: E402

# Data sets with a natural target role, by family: in --loso mode each is the target in turn, and the other members of
# its family (never itself) are the meta-training sources. (data set, adapt split, eval split)
FAMILIES = {
    "intent": [("clinc150", "train", "test"), ("snips", "train", "validation"), ("banking77", "train", "test")],
    "sentiment": [("customer_reviews_cr", "all", "all"), ("mr_sentence_polarity", "all", "all"),
                  ("sentiment_labelled_sentences_amazon", "all", "all"), ("sentiment_labelled_sentences_yelp", "all", "all"),
                  ("pros_cons", "all", "all"), ("womens_clothing_reviews_recommend", "all", "all")],
    "finance": [("twitter_financial_news_sentiment", "train", "validation"), ("financial_phrasebank", "all", "all")],
    "other": [("amazon_counterfactual_en", "train", "test"), ("subj", "all", "all")],
}
LOSO_TARGETS = ("clinc150", "snips", "banking77", "twitter_financial_news_sentiment", "financial_phrasebank",
                "customer_reviews_cr", "mr_sentence_polarity", "womens_clothing_reviews_recommend",
                "amazon_counterfactual_en", "subj")
METRICS = ("accuracy", "macro_f1")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--targets", nargs="*", default=["customer_intent", "finance_sentiment", "product_reviews"],
                        help="params.yaml domains or data set names (a data set: sources from its family)")
    parser.add_argument("--loso", action="store_true", help="every data set of LOSO_TARGETS as an unseen target")
    parser.add_argument("--tiers", nargs="*", default=["frozen", "lora", "full"], choices=["frozen", "lora", "full"])
    parser.add_argument("--ks", nargs="*", type=int, default=[8])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=None, help="override encoder_tuning.steps")
    parser.add_argument("--max-minutes", type=float, default=None, help="override encoder_tuning.max_minutes")
    parser.add_argument("--labels-per-batch", type=int, default=None, help="override encoder_tuning.labels_per_batch")
    parser.add_argument("--description-rows", nargs="*", type=int, default=None,
                        help="override adapt.description_rows (label-description fusion)")
    parser.add_argument("--rows-per-label", type=int, default=None, help="override encoder_tuning.rows_per_label")
    parser.add_argument("--tune-max-length", type=int, default=None, help="override encoder_tuning.max_length")
    parser.add_argument("--encoder", default=None, help="override encoder.name (e.g. all-mpnet-base-v2)")
    parser.add_argument("--eval-max-rows", type=int, default=1000)
    parser.add_argument("--transductive", action="store_true", help="also score soft k-means refinement")
    parser.add_argument("--fusion", action="store_true", help="also score label-description fusion")
    parser.add_argument("--no-meta-head", dest="meta_head", action="store_false",
                        help="identity head only (isolates the encoder; default: meta-trained + identity, as shipped)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "representations")
    return parser.parse_args(argv)


def family_of(dataset: str) -> tuple[str, tuple[str, str, str]]:
    for family, members in FAMILIES.items():
        for member in members:
            if member[0] == dataset:
                return family, member
    raise SystemExit(f"{dataset}: not in any family of FAMILIES; add it there")


def make_target(params, name: str):
    """A DomainConfig for `name`: the params.yaml domain, or a data set as an unseen target whose sources are the
    other members of its family (leave-one-source-out). Returns (domain name, config)."""
    from components.config import DomainConfig

    if name in params.domains:
        return name, params.domains[name]
    family, (dataset, adapt_split, eval_split) = family_of(name)
    sources = [member[0] for member in FAMILIES[family] if member[0] != dataset]
    if family == "other":  # no natural relatives: every sentiment set (a stranger's source mix)
        sources = [member[0] for member in FAMILIES["sentiment"]]
    config = DomainConfig(dataset=dataset, adapt_split=adapt_split, eval_split=eval_split, meta_sources=sources)
    params.domains[f"loso_{dataset}"] = config
    return f"loso_{dataset}", config


def draw_support(pool, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = pool["label"].to_numpy()
    picked = [rng.choice(np.flatnonzero(labels == label), size=min(k, int((labels == label).sum())), replace=False)
              for label in sorted(set(labels))]
    return np.sort(np.concatenate(picked))


def scores(truth, predicted, labels) -> dict[str, float]:
    from components.scoring import scores as metric_scores

    found = metric_scores(list(truth), list(predicted))
    return {m: float(found[m]) for m in METRICS}


def tuned_encoder(params, meta_pool, scope: str, log: Clock):
    """A copy of the base encoder meta-fine-tuned on the meta pool (components.encoder_tuning)."""
    from components.encoder import load_encoder
    from components.encoder_tuning import contrastive_tune, describe, source_rows
    from components.scopes import prepare_encoder

    config = params.encoder_tuning.model_copy(update={"scope": scope})
    encoder = prepare_encoder(load_encoder(params.encoder), scope, config.lora)   # lora: config.lora_lr applies
    rows = source_rows(meta_pool, config.max_rows, params.seed)
    summary = contrastive_tune(encoder, rows, config, params.seed, progress=log)
    if scope == "lora":
        encoder.model = encoder.model.merge_and_unload()
    log(describe(summary))
    return encoder.eval(), summary


def meta_head(params, meta_pool, encoder, space: dict, domain: str):
    """The product's meta-trained head (episodes and meta_train as the pipeline's stages) in this tier's space."""
    from fewshot import meta_train_head

    from components.stages import embed

    texts = meta_pool["text"].tolist()
    vectors = embed(texts, params, ROOT) if encoder is None else encoder.encode(texts, params.encoder.batch_size)
    head, _ = meta_train_head({"params": params, "meta_pool": meta_pool.reset_index(drop=True), "meta_vectors": vectors,
                               "eval_vectors": space["eval"], "domain": domain, "method": "metaadapt"})
    return head.eval()


def run_target(params, name: str, args, log: Clock) -> list[dict]:
    import torch

    from components.classifier import fit_classifier, soft_kmeans_refine
    from components.config import resolve_mirror
    from components.learner import label_prompt
    from components.meta import ProjectionHead, zero_shot
    from components.prepare import build_domain_data
    from components.stages import embed
    from learning_curve import logreg_predictions

    domain, config = make_target(params, name)
    data = build_domain_data(domain, params, resolve_mirror(params.data, ROOT), full=False)
    pool, evaluation = data.adapt.reset_index(drop=True), data.eval.reset_index(drop=True)
    if len(evaluation) > args.eval_max_rows:
        evaluation = evaluation.sample(n=args.eval_max_rows, random_state=params.seed).reset_index(drop=True)
    labels = sorted(pool["label"].unique())
    truth = evaluation["text"].index.map(lambda i: evaluation["label"][i]).tolist()
    log(f"{domain}: {len(pool)} pool, {len(evaluation)} eval, {len(labels)} labels, "
        f"{len(data.meta_pool)} source rows from {config.meta_sources}")
    majority = pool["label"].value_counts().idxmax()
    rows = [{"target": domain, "tier": "-", "method": "majority", "k": None, "seed": None,
             **scores(truth, [majority] * len(truth), labels)}]
    frozen = {"pool": embed(pool["text"].tolist(), params, ROOT), "eval": embed(evaluation["text"].tolist(), params, ROOT)}
    spaces = {}
    for tier in args.tiers:
        if tier == "frozen":
            spaces[tier] = (frozen, None, None)
            continue
        started = time.perf_counter()
        encoder, summary = tuned_encoder(params, data.meta_pool, tier, log)
        batch = params.encoder.batch_size
        spaces[tier] = ({"pool": encoder.encode(pool["text"].tolist(), batch),
                         "eval": encoder.encode(evaluation["text"].tolist(), batch)}, encoder,
                        {**summary, "total_seconds": round(time.perf_counter() - started, 1)})
    for tier, (space, encoder, summary) in spaces.items():
        head = ProjectionHead(space["pool"].shape[1])
        heads = {"identity": head}
        if args.meta_head and len(data.meta_pool):
            heads = {"meta": meta_head(params, data.meta_pool, encoder, space, domain), **heads}
        prompts = [label_prompt(label, config.label_descriptions) for label in labels]
        prompt_x = encoder.encode(prompts) if encoder is not None else embed(prompts, params, ROOT)
        zs_head = heads.get("meta", head)
        zs = zero_shot(zs_head, torch.as_tensor(prompt_x), labels).predict(zs_head, torch.as_tensor(space["eval"]))
        rows.append({"target": domain, "tier": tier, "method": "zero_shot", "k": 0, "seed": None,
                     "tuning": summary, **scores(truth, zs, labels)})
        eval_x = torch.as_tensor(space["eval"], dtype=torch.float32)
        pool_x = torch.as_tensor(space["pool"], dtype=torch.float32)   # the pool without its labels (transductive)
        for k in args.ks:
            for seed in range(args.seeds):
                support = draw_support(pool, k, seed)
                y = pool["label"].to_numpy()[support].tolist()
                x = torch.as_tensor(space["pool"][support], dtype=torch.float32)
                variants = {"metaadapt": torch.as_tensor(prompt_x, dtype=torch.float32)}
                if args.fusion:
                    variants["no_fusion"] = None
                for method, fusion_prompts in variants.items():
                    t0 = time.perf_counter()
                    _, fitted_head, classifier = fit_classifier(heads, x, y, params.adapt, seed, labels,
                                                                prompts=fusion_prompts)
                    rows.append({"target": domain, "tier": tier, "method": method, "k": k, "seed": seed,
                                 "fit_seconds": time.perf_counter() - t0, "chosen": classifier.info.get("chosen"),
                                 **scores(truth, classifier.predict(fitted_head, eval_x), labels)})
                    if args.transductive and method == "metaadapt":
                        refined = soft_kmeans_refine(classifier, fitted_head, x,
                                                     [labels.index(label) for label in y], pool_x)
                        rows.append({"target": domain, "tier": tier, "method": "transductive", "k": k, "seed": seed,
                                     **scores(truth, refined.predict(fitted_head, eval_x), labels)})
                rows.append({"target": domain, "tier": tier, "method": "logreg_cv", "k": k, "seed": seed,
                             **scores(truth, logreg_predictions(space["pool"][support], np.asarray(y),
                                                                space["eval"], seed), labels)})
        log(summarise_target(rows, domain))
    return rows


def summarise_target(rows: list[dict], domain: str) -> str:
    table = aggregate([r for r in rows if r["target"] == domain])
    return "\n".join(f"  {r['tier']:>6} {r['method']:>10} k={r['k']}: acc {_cell(r, 'accuracy')}"
                     f"  macro-F1 {_cell(r, 'macro_f1')}" for r in table)


def aggregate(rows: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["target"], row["tier"], row["method"], row["k"]), []).append(row)
    out = []
    for (target, tier, method, k), members in groups.items():
        entry = {"target": target, "tier": tier, "method": method, "k": k, "n": len(members)}
        for metric in METRICS:
            mean, ci = mean_ci([100 * m[metric] for m in members])
            entry[metric], entry[f"{metric}_ci"] = mean, ci
        tuning = members[0].get("tuning")
        if tuning:
            entry["tuning"] = tuning
        out.append(entry)
    return out


def _cell(row: dict, metric: str) -> str:
    ci = row.get(f"{metric}_ci")
    return f"{row[metric]:.1f}" + (f" ± {ci:.1f}" if ci is not None and ci == ci else "")


def render_markdown(payload: dict) -> str:
    lines = [f"# Representation tiers ({payload['date']})", "", f"Command: `{payload['command']}`  ",
             f"Machine: {payload['machine'].get('cpu_model', '?')}, {payload['machine'].get('cpu_cores', '?')} cores", "",
             "| target | tier | method | K | accuracy | macro-F1 |", "|---|---|---|---|---|---|"]
    for r in payload["table"]:
        lines.append(f"| {r['target']} | {r['tier']} | {r['method']} | {r['k'] if r['k'] is not None else '-'} | "
                     f"{_cell(r, 'accuracy')} | {_cell(r, 'macro_f1')} |")
    tuned = [(r["target"], r["tier"], r["tuning"]) for r in payload["table"] if r.get("tuning")]
    if tuned:
        lines += ["", "| target | tier | steps | tuning + re-embedding seconds | loss first → last |", "|---|---|---|---|---|"]
        for target, tier, t in tuned:
            lines.append(f"| {target} | {tier} | {t['steps']} | {t['total_seconds']} | "
                         f"{t['loss_first']:.3f} → {t['loss_last']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from components.config import load_params

    args = parse_args(argv)
    params = load_params(ROOT / "params.yaml")
    update = {k: v for k, v in (("steps", args.steps), ("max_minutes", args.max_minutes),
                                ("labels_per_batch", args.labels_per_batch), ("max_length", args.tune_max_length),
                                ("rows_per_label", args.rows_per_label))
              if v is not None}
    changes = {"encoder_tuning": params.encoder_tuning.model_copy(update=update)}
    if args.description_rows is not None:
        changes["adapt"] = params.adapt.model_copy(update={"description_rows": args.description_rows})
    if args.encoder:
        changes["encoder"] = params.encoder.model_copy(update={"name": args.encoder})
    params = params.model_copy(update=changes)
    log = Clock()
    targets = list(LOSO_TARGETS) if args.loso else args.targets
    rows: list[dict] = []
    args.out.mkdir(parents=True, exist_ok=True)
    for name in targets:
        rows += run_target(params, name, args, log)
        payload = {"date": time.strftime("%Y-%m-%d"), "command": "python benchmarks/representations.py "
                   + " ".join(sys.argv[1:] if argv is None else argv), "machine": machine_info(),
                   "rows": clean(rows), "table": clean(aggregate(rows))}
        (args.out / "representations.json").write_text(json.dumps(payload, indent=2), encoding="utf-8")
        (args.out / "representations.md").write_text(render_markdown(payload), encoding="utf-8")
    print(render_markdown(payload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
