"""Few-shot entity extraction benchmark: MetaAdapt against same-encoder baselines on the same support sets.

Targets: finer_ord (finance news, PER/LOC/ORG under domain shift) and snips_slots (39 slot types no source has).
For each target, K and seed, a greedy K-shot support set (every type >= K mentions, Yang and Katiyar 2020) is
sampled from the target's train split, and every method is scored with seqeval entity-level micro-F1 on the same
capped sample of the target's test split. Methods (all on all-MiniLM-L6-v2):

  metaadapt        head meta-trained on conll2003 + wnut17 word episodes (token prototypical loss), then
                   components.ner_model.adapt_entities: O by nearest neighbour, prototype/NNShot, O bias and
                   transition weight by leave-one-sentence-out CV on the support, BIO Viterbi
  untrained_head   the same adaptation and decoding on the identity (untrained) head: what meta-training adds
  prototypes       ProtoBERT: one prototype per BIO tag (O included) on frozen features, argmax per word
  linear_probe     logistic regression on frozen word features over BIO tags, argmax per word
  finetune         BertForTokenClassification from the MiniLM weights, fine-tuned on the support (CPU, few epochs)

Run: python benchmarks/fewshot_ner.py [--ks 1 5] [--seeds 5] [--eval-max 1000] [--finetune-seeds 5]
Writes benchmarks/results/ner/fewshot_ner.{json,md}.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from components.config import EntitiesConfig, load_params, resolve_mirror  # noqa: E402
from components.entities import OUTSIDE, bio_labels, load_token_split  # noqa: E402
from components.token_episodes import greedy_support, sentence_mentions  # noqa: E402

SOURCES = ("conll2003", "wnut17")
TARGETS = ("finer_ord", "snips_slots")
METHODS = ("metaadapt", "untrained_head", "prototypes", "linear_probe", "finetune")
REFERENCES = {  # published numbers, for placement only (other encoders, other protocols)
    "snips_slots": "5-shot RoBERTa-base: prototypes 75.0, linear 79.2, FFF-NER 83.4 (FFF-NER README); "
                   "L-TapNet+CDT (BERT) 75.0 (Hou et al. 2020, leave-one-domain-out)",
    "finer_ord": "fully supervised micro-F1 67.9 (BERT-base) .. 75.3 (RoBERTa-large) (FiNER-ORD authors)",
}


class Features:
    """Word vectors through the pipeline's cache; the encoder loads once, only when something is missing."""

    def __init__(self, params):
        from components.token_features import word_cache

        self.params, self.cache, self._encoder = params, word_cache(params, ROOT), None

    def encoder(self):
        if self._encoder is None:
            from components.encoder import load_encoder
            self._encoder = load_encoder(self.params.encoder)
        return self._encoder

    def __call__(self, sentences):
        from components.token_features import word_features

        cfg = self.params.entities
        return word_features(sentences, self.encoder, self.cache, cfg.pooling, cfg.max_length,
                             layers=tuple(cfg.layers))


def load_sets(params, eval_max: int, seed: int):
    mirror = resolve_mirror(params.data)
    data = {}
    for name in SOURCES + TARGETS:
        spec = params.datasets[name]
        data[name] = {split: load_token_split(name, spec, split, mirror) for split in ("train", "test")}
    test = {}
    for name in TARGETS:
        frame = data[name]["test"]
        if len(frame) > eval_max:
            frame = frame.sample(n=eval_max, random_state=seed).reset_index(drop=True)
        test[name] = frame
    return data, test


def source_pool(data, cap: int, seed: int):
    tokens, tags, sources = [], [], []
    for name in SOURCES:
        frame = data[name]["train"]
        frame = frame[frame["tags"].map(lambda t: any(x != OUTSIDE for x in t))]
        if len(frame) > cap:
            frame = frame.sample(n=cap, random_state=seed)
        tokens += frame["tokens"].tolist()
        tags += frame["tags"].tolist()
        sources += [name] * len(frame)
    return tokens, tags, sources


# ----------------------------------------------------------------------------------------------- baselines


def linear_probe_tags(support_vectors, support_tags, test_vectors, seed):
    from sklearn.linear_model import LogisticRegression

    x = _normalise(np.concatenate(support_vectors))
    y = np.array([t for tags in support_tags for t in tags])
    classifier = LogisticRegression(C=10.0, max_iter=2000, random_state=seed).fit(x, y)
    return [list(classifier.predict(_normalise(v))) for v in test_vectors]


def _normalise(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-9)


def finetune_tags(params, support_tokens, support_tags, test_tokens, seed, epochs=10, lr=1e-4, batch_size=8):
    """BertForTokenClassification initialised from the MiniLM weights, trained on the support set's first
    sub-tokens (other pieces ignored), argmax per word on the test sentences."""
    import torch
    from transformers import AutoTokenizer, BertForTokenClassification

    from components.encoder import encoding_threads, resolve_model_path

    path = resolve_model_path(params.encoder.name)
    labels = bio_labels(sorted({t[2:] for tags in support_tags for t in tags if t != OUTSIDE}))
    tokenizer = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(seed)
    model = BertForTokenClassification.from_pretrained(path, num_labels=len(labels))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    with encoding_threads():
        model.train()
        for _ in range(epochs):
            for batch in np.array_split(rng.permutation(len(support_tokens)), max(1, len(support_tokens) // batch_size)):
                enc = _encode(tokenizer, [support_tokens[i] for i in batch], params.entities.max_length)
                target = _first_piece_labels(enc, [support_tags[i] for i in batch], labels)
                loss = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], labels=target).loss
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        model.eval()
        out = []
        with torch.inference_mode():
            for start in range(0, len(test_tokens), 64):
                chunk = test_tokens[start:start + 64]
                enc = _encode(tokenizer, chunk, params.entities.max_length)
                pred = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits.argmax(-1)
                for i, words in enumerate(chunk):
                    first = _first_pieces(enc.word_ids(i), len(words))
                    out.append([labels[int(pred[i, p])] if p is not None else OUTSIDE for p in first])
    return out


def _encode(tokenizer, sentences, max_length):
    return tokenizer([list(s) for s in sentences], is_split_into_words=True, truncation=True, max_length=max_length,
                     padding="longest", return_tensors="pt", return_token_type_ids=False)


def _first_pieces(word_ids, n_words):
    first = [None] * n_words
    for position, word in enumerate(word_ids):
        if word is not None and first[word] is None:
            first[word] = position
    return first


def _first_piece_labels(enc, tag_lists, labels):
    import torch

    target = torch.full(enc["input_ids"].shape, -100, dtype=torch.long)
    for i, tags in enumerate(tag_lists):
        for word, position in enumerate(_first_pieces(enc.word_ids(i), len(tags))):
            if position is not None:
                target[i, position] = labels.index(tags[word])
    return target


# ----------------------------------------------------------------------------------------------- run


def scores(truth, predicted) -> dict:
    from seqeval.metrics import f1_score, precision_score, recall_score

    return {"f1": 100 * f1_score(truth, predicted, zero_division=0),
            "precision": 100 * precision_score(truth, predicted, zero_division=0),
            "recall": 100 * recall_score(truth, predicted, zero_division=0)}


def run(args) -> dict:
    from components.ner_model import adapt_entities, tag_sentences
    from components.ner_stages import prototype_baseline
    from components.ner_training import train_entity_head

    params = load_params(ROOT / "params.yaml")
    config: EntitiesConfig = params.entities
    features = Features(params)
    data, test = load_sets(params, args.eval_max, args.seed)
    started = time.perf_counter()
    tokens, tags, sources = source_pool(data, config.source_max_sentences, args.seed)
    source_vectors = features(tokens)
    encode_s = time.perf_counter() - started
    started = time.perf_counter()
    trained = train_entity_head(source_vectors, tags, sources, config, params.meta, args.seed)
    untrained = train_entity_head(source_vectors, tags, sources, config.model_copy(update={"epochs": 0}),
                                  params.meta, args.seed)
    meta_s = time.perf_counter() - started
    print(f"sources: {len(tokens)} sentences encoded/cached in {encode_s:.1f} s; head meta-trained in {meta_s:.1f} s "
          f"(validation token accuracy per epoch {np.round(trained.result.val_accuracy, 4).tolist()})", flush=True)
    results = {"config": {"ks": args.ks, "seeds": args.seeds, "eval_max": args.eval_max, "sources": SOURCES,
                          "source_sentences": len(tokens), "entities": config.model_dump(),
                          "meta_val_accuracy": trained.result.val_accuracy, "meta_seconds": meta_s,
                          "finetune_seeds": args.finetune_seeds, "finetune_epochs": args.finetune_epochs},
               "machine": f"{platform.node()} {platform.processor() or platform.machine()}",
               "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "command": args.command,
               "runs": []}
    for target in TARGETS:
        truth_tokens = test[target]["tokens"].tolist()
        truth = test[target]["tags"].tolist()
        test_vectors = features(truth_tokens)
        pool = data[target]["train"]
        mentions = sentence_mentions(pool["tags"].tolist())
        types = sorted({t for m in mentions for t in m})
        for k in args.ks:
            for seed in range(args.seeds):
                rng = np.random.default_rng([args.seed, seed, k])
                chosen = greedy_support(mentions, types, k, rng, strict=False)
                s_tokens = pool["tokens"].iloc[chosen].tolist()
                s_tags = pool["tags"].iloc[chosen].tolist()
                s_vectors = features(s_tokens)
                row = {"target": target, "k": k, "seed": seed, "support_sentences": len(chosen), "methods": {}}
                for name, head, others in (("metaadapt", trained, [untrained.head]), ("untrained_head", untrained, [])):
                    t0 = time.perf_counter()
                    model = adapt_entities(head.head, s_vectors, s_tokens, s_tags, head.transitions, config.methods,
                                           config.o_biases, config.transition_weights, other_heads=others,
                                           head_margin=config.head_margin)
                    adapt_s = time.perf_counter() - t0
                    row["methods"][name] = {**scores(truth, tag_sentences(model, test_vectors)),
                                            "adapt_seconds": adapt_s, "settings": model.settings.__dict__,
                                            "head": model.info["head"]}
                row["methods"]["prototypes"] = scores(truth, prototype_baseline(s_vectors, s_tags, test_vectors))
                row["methods"]["linear_probe"] = scores(truth, linear_probe_tags(s_vectors, s_tags, test_vectors, seed))
                row["support"] = chosen
                results["runs"].append(row)
                print(target, f"K={k}", f"seed={seed}", f"support={len(chosen)}",
                      {m: round(v["f1"], 1) for m, v in row["methods"].items()}, flush=True)
    save(results, args)
    earlier = _earlier_finetune(args.finetune_from)
    # the slow baseline last, largest K first, saving after each run, so a cut-short run keeps what matters most
    for row in sorted(results["runs"], key=lambda r: (-r["k"], r["seed"], r["target"])):
        key = (row["target"], row["k"], row["seed"], tuple(row["support"]))
        if key in earlier:        # the same support set fine-tuned by an earlier run (--finetune-from)
            row["methods"]["finetune"] = earlier[key]
            continue
        if row["seed"] >= args.finetune_seeds:
            continue
        pool, frame = data[row["target"]]["train"], test[row["target"]]
        t0 = time.perf_counter()
        predicted = finetune_tags(params, pool["tokens"].iloc[row["support"]].tolist(),
                                  pool["tags"].iloc[row["support"]].tolist(), frame["tokens"].tolist(), row["seed"],
                                  args.finetune_epochs)
        row["methods"]["finetune"] = {**scores(frame["tags"].tolist(), predicted),
                                      "adapt_seconds": time.perf_counter() - t0}
        print(row["target"], f"K={row['k']}", f"seed={row['seed']}", "finetune",
              round(row["methods"]["finetune"]["f1"], 1), flush=True)
        save(results, args)
    return results


def _earlier_finetune(path: Path | None) -> dict:
    """Fine-tuning results of an earlier run by (target, K, seed, support sentences): the baseline does not depend
    on the embedding methods, so a rerun of those need not pay for it again."""
    if path is None or not Path(path).is_file():
        return {}
    runs = json.loads(Path(path).read_text())["runs"]
    return {(r["target"], r["k"], r["seed"], tuple(r["support"])): r["methods"]["finetune"]
            for r in runs if "finetune" in r["methods"] and "support" in r}


def save(results: dict, args) -> None:
    """JSON and markdown table of what has run so far."""
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fewshot_ner.json").write_text(json.dumps(results, indent=2, default=float))
    notes = "\n".join(f"- {t}: {r}" for t, r in REFERENCES.items())
    (args.out / "fewshot_ner.md").write_text(f"Command: `{results.get('command', '')}`\n\n{table(results)}\n\n"
                                             f"Entity-level micro-F1 % (seqeval), mean ± 95% t-interval over seeds; "
                                             f"test sample: {results['config']['eval_max']} sentences at most per "
                                             f"target.\n\nPublished references:\n{notes}\n")


def table(results: dict) -> str:
    lines = ["| target | K | " + " | ".join(METHODS) + " | metaadapt adapt s | support sentences |",
             "|---|---|" + "---|" * (len(METHODS) + 2)]
    for target in TARGETS:
        for k in results["config"]["ks"]:
            runs = [r for r in results["runs"] if r["target"] == target and r["k"] == k]
            cells = []
            for m in METHODS:
                values = [r["methods"][m]["f1"] for r in runs if m in r["methods"]]
                cells.append(_mean_ci(values))
            adapt = np.median([r["methods"]["metaadapt"]["adapt_seconds"] for r in runs])
            support = np.mean([r["support_sentences"] for r in runs])
            lines.append(f"| {target} | {k} | " + " | ".join(cells) + f" | {adapt:.2f} | {support:.0f} |")
    return "\n".join(lines)


def _mean_ci(values) -> str:
    if not values:
        return "not run"
    from scipy import stats

    mean = float(np.mean(values))
    if len(values) < 2:
        return f"{mean:.1f} (n=1)"
    half = stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / np.sqrt(len(values))
    return f"{mean:.1f} ± {half:.1f}" + ("" if len(values) >= 5 else f" (n={len(values)})")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--eval-max", type=int, default=1000, help="test sentences per target (random sample)")
    parser.add_argument("--finetune-seeds", type=int, default=5, help="seeds that also run full fine-tuning")
    parser.add_argument("--finetune-epochs", type=int, default=10)
    parser.add_argument("--finetune-from", type=Path, default=None,
                        help="reuse fine-tuning results of an earlier fewshot_ner.json for identical support sets")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ner")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    args.command = "python benchmarks/fewshot_ner.py " + " ".join(argv if argv is not None else sys.argv[1:])
    results = run(args)
    results["seconds"] = time.perf_counter() - started
    save(results, args)
    print(table(results))
    print(f"total {results['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
