"""A tiny prepared project for batch-validation tests: no encoder, no data mirror, one domain `shop`.

It writes what the pipeline's ingest stage would have left (adapt/eval parquet), a stand-in registered model
directory, and params with K=2, so a test can check that a rejected batch changes none of them.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

from components.config import Params, parse_params

HERE = Path(__file__).parent
DOMAIN = "shop"
LABELS = ["neg", "pos"]
ADAPT = [("soft fabric and a lovely cut", "pos"), ("great value, fits well", "pos"), ("I wear it every day", "pos"),
         ("the buttons fell off", "neg"), ("runs two sizes small", "neg"), ("the stitching came apart", "neg")]
EVAL = [("the pocket is far too small", "neg"), ("i love the soft fabric", "pos"), ("the lining tore at once", "neg")]


def make_project(root: Path, k: int = 2, new_labels: tuple[str, ...] = ()) -> Params:
    """Write data/prepared/shop/{adapt,eval}.parquet and models/shop/champion/; return the project's params."""
    prepared = root / "data" / "prepared" / DOMAIN
    prepared.mkdir(parents=True)
    pd.DataFrame(ADAPT, columns=["text", "label"]).to_parquet(prepared / "adapt.parquet", index=False)
    pd.DataFrame(EVAL, columns=["text", "label"]).to_parquet(prepared / "eval.parquet", index=False)
    champion = root / "models" / DOMAIN / "champion"
    champion.mkdir(parents=True)
    (champion / "model.safetensors").write_bytes(bytes(range(256)) * 4)
    source = root / "source.csv"
    pd.DataFrame(ADAPT + EVAL, columns=["text", "label"]).to_csv(source, index=False)
    return parse_params({
        "datasets": {"shop_reviews": {"files": {"all": str(source)}}},
        "encoder": {"name": "unused-in-these-tests"},
        "domains": {DOMAIN: {"dataset": "shop_reviews", "adapt_split": "all", "eval_split": "all", "k": k,
                             "new_labels": list(new_labels)}},
    })


def tree_digest(*directories: Path) -> dict[str, str]:
    """SHA-256 of every file under the directories: equal digests before and after = nothing changed or lost."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for d in directories for p in sorted(d.rglob("*")) if p.is_file()}
