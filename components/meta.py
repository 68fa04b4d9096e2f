"""Meta-learning: prototypical networks, first-order Proto-MAML and Reptile over one small interface.

``meta_train(learner, train_episodes, val_episodes, ...)`` improves a ``Learner`` (a projection head on top of
the encoder, plus LoRA adapters or the whole encoder in the lora/full scopes). Adaptation to a domain's labelled
rows (prototypes, fine-tuning, logistic regression, calibration, priors) is ``components.classifier``; this module
keeps the pieces it builds on: ``CosineClassifier``, prototype fine-tuning and the fold bookkeeping of augmented
rows.
"""
from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Protocol, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from components.config import MetaConfig
from components.episodes import Episode

# Maps pool row indices to (unprojected) embeddings: a lookup into cached embeddings for the head scope, a forward
# pass of the trainable encoder for the lora/full scopes.
EmbedFn = Callable[[Sequence[int]], torch.Tensor]


@contextlib.contextmanager
def small_ops_threading(enabled: bool = True):
    """Run tiny-matrix work on one thread; restore the thread count afterwards.

    Why: head-sized ops (a few hundred rows x 384) gain nothing from a second thread, and when another process
    shares the cores the OpenMP workers wait on each other: measured 27 s vs 0.15 s for one adaptation.
    """
    if not enabled:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class ProjectionHead(nn.Module):
    """Residual linear map on normalised embeddings, initialised to the identity, with a learnable temperature.

    Identity at start means an untrained head equals plain prototypes on the pretrained encoder, so meta-training
    can only move away from that baseline when validation episodes say it helps.
    """

    def __init__(self, dim: int, temperature_init: float = 10.0):
        super().__init__()
        self.linear = nn.Linear(dim, dim)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature_init)))

    @property
    def temperature(self) -> torch.Tensor:
        return self.log_temperature.exp()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(x, dim=-1)
        return F.normalize(x + self.linear(x), dim=-1)


class Learner(nn.Module):
    """What meta-training improves: the head, and (lora/full scopes) the encoder that `embed` runs through."""

    def __init__(self, head: ProjectionHead, encoder: nn.Module | None = None):
        super().__init__()
        self.head = head
        self.encoder = encoder


def prototypes(z: torch.Tensor, labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Normalised mean embedding per class (rows ordered by class id)."""
    sums = torch.zeros(n_classes, z.shape[1], dtype=z.dtype, device=z.device).index_add_(0, labels, z)
    counts = torch.bincount(labels, minlength=n_classes).clamp(min=1).unsqueeze(1).to(z.dtype)
    return F.normalize(sums / counts, dim=-1)


def cosine_logits(z: torch.Tensor, weights: torch.Tensor, temperature: torch.Tensor | float) -> torch.Tensor:
    return temperature * F.normalize(z, dim=-1) @ F.normalize(weights, dim=-1).T


def protonet_loss(head: ProjectionHead, support: torch.Tensor, support_y: torch.Tensor,
                  query: torch.Tensor, query_y: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Cross-entropy of query rows against support prototypes in the head's space; returns (loss, accuracy)."""
    n = int(support_y.max()) + 1
    protos = prototypes(head(support), support_y, n)
    logits = cosine_logits(head(query), protos, head.temperature)
    accuracy = float((logits.argmax(1) == query_y).float().mean())
    return F.cross_entropy(logits, query_y), accuracy


def _episode_tensors(episode: Episode, embed: EmbedFn, device: torch.device):
    sy = torch.tensor(episode.support_labels, device=device)
    qy = torch.tensor(episode.query_labels, device=device)
    return embed(episode.support), sy, embed(episode.query), qy


def inner_adapt(head: ProjectionHead, weights: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
                steps: int, lr: float, train_head: bool) -> torch.Tensor:
    """Plain SGD on the classifier weights (and the head, in place, when train_head) for `steps` steps."""
    weights = weights.detach().clone().requires_grad_(True)
    params = [weights] + (list(head.parameters()) if train_head else [])
    for _ in range(steps):
        loss = F.cross_entropy(cosine_logits(head(x), weights, head.temperature), y)
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads):
                p -= lr * g
    return weights


def _protonet_step(learner: Learner, episode: Episode, embed: EmbedFn, optimizer, config: MetaConfig, device):
    sx, sy, qx, qy = _episode_tensors(episode, embed, device)
    loss, accuracy = protonet_loss(learner.head, sx, sy, qx, qy)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item(), accuracy


def _fomaml_step(learner: Learner, episode: Episode, embed: EmbedFn, optimizer, config: MetaConfig, device):
    """First-order Proto-MAML: adapt a copy of the head plus a prototype-initialised classifier on the support set,
    take the query-loss gradient at the adapted parameters and apply it to the original head."""
    sx, sy, qx, qy = _episode_tensors(episode, embed, device)
    fast = copy.deepcopy(learner.head)
    with torch.no_grad():
        init = prototypes(fast(sx.detach()), sy, int(sy.max()) + 1)
    weights = inner_adapt(fast, init, sx.detach(), sy, config.inner_steps, config.inner_lr, train_head=True)
    logits = cosine_logits(fast(qx), weights.detach(), fast.temperature)
    loss = F.cross_entropy(logits, qy)
    optimizer.zero_grad()
    fast_params = list(fast.parameters())
    encoder_params = [p for p in learner.parameters() if p.requires_grad and not any(p is h for h in learner.head.parameters())]
    grads = torch.autograd.grad(loss, fast_params + encoder_params, allow_unused=True)
    for p, g in zip(list(learner.head.parameters()) + encoder_params, grads):
        p.grad = None if g is None else g.detach().clone()
    optimizer.step()
    return loss.item(), float((logits.argmax(1) == qy).float().mean())


def _reptile_step(learner: Learner, episode: Episode, embed: EmbedFn, optimizer, config: MetaConfig, device):
    """Reptile on the head: adapt a copy on support+query, then move the head part-way towards the copy."""
    sx, sy, qx, qy = _episode_tensors(episode, embed, device)
    x, y = torch.cat([sx, qx]).detach(), torch.cat([sy, qy])
    fast = copy.deepcopy(learner.head)
    with torch.no_grad():
        init = prototypes(fast(sx.detach()), sy, int(sy.max()) + 1)
        before = F.cross_entropy(cosine_logits(fast(qx.detach()), init, fast.temperature), qy)
    inner_adapt(fast, init, x, y, config.inner_steps, config.inner_lr, train_head=True)
    with torch.no_grad():
        for slow_p, fast_p in zip(learner.head.parameters(), fast.parameters()):
            slow_p += config.reptile_outer_lr * (fast_p - slow_p)
    return float(before), float("nan")


STEPS = {"protonet": _protonet_step, "fomaml": _fomaml_step, "reptile": _reptile_step}


@torch.no_grad()
def evaluate_episodes(learner: Learner, episodes: Sequence[Episode], embed: EmbedFn, device) -> float:
    """Mean query accuracy of prototype classification over episodes (how validation judges a head)."""
    learner.eval()
    scores = [protonet_loss(learner.head, *_episode_tensors(e, embed, device))[1] for e in episodes]
    learner.train()
    return float(np.mean(scores)) if scores else float("nan")


@dataclass
class MetaTrainResult:
    best_epoch: int                      # 0 = the untrained (identity) head was best on validation episodes
    val_accuracy: list[float]            # per epoch, index 0 before training
    train_loss: list[float]
    seconds: float
    episodes_per_second: float
    resumed_from: int = 0                # episodes already done by an interrupted run (0 = a fresh start)


@dataclass
class LoopState:
    """Where a meta-training run stands; with the RNG states it is what a checkpoint stores (components.checkpoint).

    Position is (epoch, index into that epoch's episode order); ``order`` is None until the epoch's order is drawn.
    """

    val_acc: list[float]
    best_state: dict[str, torch.Tensor]
    epoch: int = 1
    index: int = 0
    order: list[int] | None = None
    epoch_losses: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    episodes_done: int = 0
    seconds: float = 0.0                 # training time spent before the current process


@dataclass
class TrainingRandomness:
    """The run's own generators (episode order, embedding noise); global RNGs are saved by the checkpoint too."""

    order: np.random.Generator
    noise: torch.Generator


class Checkpointer(Protocol):
    """What meta_train needs from a checkpoint store (components.checkpoint.CheckpointStore)."""

    def due(self, episodes_done: int) -> bool: ...

    def save(self, state: LoopState, learner: Learner, optimizer: torch.optim.Optimizer,
             randomness: TrainingRandomness) -> None: ...

    def restore(self, learner: Learner, optimizer: torch.optim.Optimizer,
                randomness: TrainingRandomness) -> LoopState | None: ...


def with_noise(embed: EmbedFn, std: float, seed: int, generator: torch.Generator | None = None) -> EmbedFn:
    """Embedding-space augmentation: Gaussian noise on training rows (validation rows stay clean)."""
    if std <= 0:
        return embed
    generator = generator if generator is not None else torch.Generator().manual_seed(seed)

    def noisy(rows: Sequence[int]) -> torch.Tensor:
        clean = embed(rows)
        return clean + std * torch.randn(clean.shape, generator=generator).to(clean.device, clean.dtype)
    return noisy


def meta_train(learner: Learner, train_episodes: Sequence[Episode], val_episodes: Sequence[Episode],
               embed: EmbedFn, config: MetaConfig, seed: int,
               progress: Callable[[int, float, float], None] | None = None,
               embedding_noise: float = 0.0, checkpoints: Checkpointer | None = None) -> MetaTrainResult:
    """Train for `config.epochs` passes over the episodes; keep the epoch with the best validation accuracy.

    With `checkpoints`, the run resumes from the newest complete checkpoint and saves one whenever
    ``checkpoints.due(episodes_done)``; a resumed run ends exactly where an uninterrupted one would (tested).
    """
    with small_ops_threading(learner.encoder is None):
        return _meta_train(learner, train_episodes, val_episodes, embed, config, seed, progress, embedding_noise,
                           checkpoints)


def _meta_train(learner, train_episodes, val_episodes, embed, config, seed, progress, embedding_noise,
                checkpoints=None):
    """The body of meta_train, run inside its threading context."""
    torch.manual_seed(seed)
    # Weights drifting towards zero become subnormal floats, which make CPU matmuls ~15x slower (measured).
    torch.set_flush_denormal(True)
    device = next(learner.head.parameters()).device
    optimizer = _optimizer(learner, config)
    randomness = TrainingRandomness(np.random.default_rng(seed), torch.Generator().manual_seed(seed))
    train_embed = with_noise(embed, embedding_noise, seed, randomness.noise)
    started = time.perf_counter()
    state = checkpoints.restore(learner, optimizer, randomness) if checkpoints else None
    resumed_from = state.episodes_done if state else 0
    if state is None:
        state = LoopState([evaluate_episodes(learner, val_episodes, embed, device)], copy.deepcopy(learner.state_dict()))
    while state.epoch <= config.epochs:
        _train_epoch(learner, state, train_episodes, train_embed, optimizer, config, device, randomness,
                     checkpoints, lambda: state.seconds + time.perf_counter() - started)
        state.val_acc.append(evaluate_episodes(learner, val_episodes, embed, device))
        if state.val_acc[-1] > max(state.val_acc[:-1]):
            state.best_state = copy.deepcopy(learner.state_dict())
        if progress:
            progress(state.epoch, state.losses[-1], state.val_acc[-1])
        state.epoch, state.order = state.epoch + 1, None
    learner.load_state_dict(state.best_state)
    seconds = state.seconds + time.perf_counter() - started
    return MetaTrainResult(int(np.argmax(state.val_acc)), state.val_acc, state.losses, seconds,
                           (len(train_episodes) * config.epochs - resumed_from) / max(seconds - state.seconds, 1e-9),
                           resumed_from)


def _train_epoch(learner, state: LoopState, train_episodes, train_embed, optimizer, config, device,
                 randomness: TrainingRandomness, checkpoints: Checkpointer | None, elapsed: Callable[[], float]):
    """The rest of the current epoch's episodes (all of them unless resumed mid-epoch), checkpointing when due."""
    step = STEPS[config.algorithm]
    if state.order is None:
        state.order = [int(i) for i in randomness.order.permutation(len(train_episodes))]
        state.index, state.epoch_losses = 0, []
    while state.index < len(state.order):
        episode = train_episodes[state.order[state.index]]
        state.epoch_losses.append(step(learner, episode, train_embed, optimizer, config, device)[0])
        state.index += 1
        state.episodes_done += 1
        if checkpoints and checkpoints.due(state.episodes_done):
            checkpoints.save(replace(state, seconds=elapsed()), learner, optimizer, randomness)
    state.losses.append(float(np.mean(state.epoch_losses)))


def _optimizer(learner: Learner, config: MetaConfig) -> torch.optim.Optimizer:
    groups = [{"params": list(learner.head.parameters()), "lr": config.lr}]
    if learner.encoder is not None:
        trainable = [p for p in learner.encoder.parameters() if p.requires_grad]
        if trainable:
            groups.append({"params": trainable, "lr": config.encoder_lr})
    return torch.optim.AdamW(groups, weight_decay=config.weight_decay)


# ----------------------------------------------------------------------------------------------- adaptation


@dataclass
class CosineClassifier:
    """The adapted predictor on top of the head: one weight row per label, then calibration and a class prior.

    ``kind`` "cosine": logits = temperature * cos(head(x), w_label) (prototype-initialised weights); "linear": a
    logistic regression on the head's features, logits = head(x) @ W.T + bias. Either way the classifier is trained
    as if every label were equally likely (balanced), ``scale`` calibrates those logits (cross-validated), and
    ``log_prior`` adds the traffic's class prior: p(y|x) ∝ p_balanced(y|x) * prior(y) (Saerens et al. 2002).
    """

    labels: list[str]
    weights: torch.Tensor
    temperature: float
    info: dict = field(default_factory=dict)
    kind: str = "cosine"                        # cosine | linear
    bias: torch.Tensor | None = None            # linear kind only
    scale: float = 1.0                          # calibration: balanced logits are multiplied by this
    log_prior: torch.Tensor | None = None       # None = uniform prior
    # (calibrated out-of-fold logits, their labels) from the fit's cross-validation; not saved with the model
    validation: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False, compare=False)

    @torch.no_grad()
    def balanced_logits(self, head: ProjectionHead, embeddings: torch.Tensor) -> torch.Tensor:
        """Calibrated logits under a uniform class prior (what prior estimation by EM needs)."""
        z = head(embeddings)
        if self.kind == "linear":
            logits = z @ self.weights.T + (0.0 if self.bias is None else self.bias)
        else:
            logits = cosine_logits(z, self.weights, self.temperature)
        return logits * self.scale

    @torch.no_grad()
    def predict_proba(self, head: ProjectionHead, embeddings: torch.Tensor) -> torch.Tensor:
        logits = self.balanced_logits(head, embeddings)
        if self.log_prior is not None:
            logits = logits + self.log_prior.to(logits.dtype)
        return torch.softmax(logits, dim=-1)

    def predict(self, head: ProjectionHead, embeddings: torch.Tensor) -> list[str]:
        return [self.labels[i] for i in self.predict_proba(head, embeddings).argmax(1).tolist()]

    def balanced_proba(self, head: ProjectionHead, embeddings) -> np.ndarray:
        """Uniform-prior posteriors (float64): what EM re-weights to estimate the traffic's prior."""
        x = torch.as_tensor(embeddings, dtype=torch.float32)
        return torch.softmax(self.balanced_logits(head, x).double(), dim=-1).cpu().numpy()

    @property
    def prior(self) -> dict[str, float]:
        """The class prior estimated for the traffic, {label: probability} (uniform when none is set).

        This is the estimate (what drift monitoring compares a batch with), not ``log_prior``, which holds it at
        the strength the domain's metric chose (components.classifier.prior_strength).
        """
        estimated = (self.info.get("prior") or {}).get("prior")
        if estimated:
            return {label: float(estimated[label]) for label in self.labels}
        if self.log_prior is None:
            return {label: 1.0 / len(self.labels) for label in self.labels}
        return dict(zip(self.labels, torch.softmax(self.log_prior.double(), 0).tolist()))


def label_weights(y: torch.Tensor, n: int) -> torch.Tensor:
    """Per-label weights that make every present label weigh the same in total (absent labels: 0); balanced
    training of the cosine fine-tuning here and of the logistic regression in components.classifier."""
    counts = torch.bincount(y, minlength=n).to(torch.float32)
    return torch.where(counts > 0, len(y) / (int((counts > 0).sum()) * counts.clamp(min=1)), counts)


def finetune_path(head: ProjectionHead, x: torch.Tensor, y: torch.Tensor, n: int,
                          checkpoints: Sequence[int], lr: float) -> dict[int, torch.Tensor]:
    """Classifier weights after each of `checkpoints` full-batch Adam steps (head frozen), from one run.

    The weights start at the class prototypes (step 0), so zero steps is plain prototype classification.
    """
    torch.set_flush_denormal(True)  # tiny weights turn subnormal and slow CPU matmuls ~15x (measured)
    with torch.no_grad():
        z = head(x)
        weights = prototypes(z, y, n)
    out = {0: weights.clone()} if 0 in checkpoints else {}
    weights = weights.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([weights], lr=lr)
    temperature = head.temperature.item()
    # balanced: each label weighs the same, like the prototypes, so the class prior is applied once, at the end
    weights_per_label = label_weights(y, n).to(z.dtype)
    for step in range(1, max(checkpoints, default=0) + 1):
        optimizer.zero_grad()
        F.cross_entropy(cosine_logits(z, weights, temperature), y, weight=weights_per_label).backward()
        optimizer.step()
        if step in checkpoints:
            out[step] = weights.detach().clone()
    return out


@dataclass
class Extras:
    """Augmented rows added to a support set: ``origins[r]`` = the support rows (a pair) extra row r came from."""

    x: torch.Tensor
    y: torch.Tensor
    origins: np.ndarray


def fold_train(x: torch.Tensor, y: torch.Tensor, held: np.ndarray, extras: Extras | None):
    """Training rows of one CV fold: the support rows not held out, plus the augmented rows none of whose origins
    is held out (a held-out example's copies and mixes stay out of training, so the fold's score does not leak)."""
    train = np.setdiff1d(np.arange(len(y)), held)
    if extras is None or not len(extras.y):
        return x[train], y[train]
    keep = torch.as_tensor(~np.isin(extras.origins, held).any(axis=1))
    return torch.cat([x[train], extras.x[keep]]), torch.cat([y[train], extras.y[keep]])


def make_extras(vectors, extra_labels: Sequence[str], origins, labels: Sequence[str], device) -> Extras:
    """Augmented support rows as tensors (labels as indices into the domain's label order)."""
    unknown = sorted(set(extra_labels) - set(labels))
    if unknown:
        raise ValueError(f"augmented rows carry label(s) {unknown} that are not among the domain's labels {list(labels)}")
    return Extras(torch.as_tensor(np.asarray(vectors), dtype=torch.float32, device=device),
                  torch.tensor([list(labels).index(label) for label in extra_labels], dtype=torch.long, device=device),
                  np.asarray(origins, dtype=int).reshape(-1, 2))


def zero_shot(head: ProjectionHead, label_embeddings: torch.Tensor, labels: Sequence[str]) -> CosineClassifier:
    """K=0: prototypes are the embedded label names or descriptions."""
    if len(label_embeddings) != len(labels):
        raise ValueError(f"zero-shot needs one embedding per label: got {len(label_embeddings)} for {len(labels)} labels")
    head.eval()
    with torch.no_grad():
        weights = head(label_embeddings)
    return CosineClassifier(list(labels), weights, head.temperature.item(), {"steps": 0, "zero_shot": True})
