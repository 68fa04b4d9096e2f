"""Meta-learning core: each function against a hand-computed reference on tiny tensors, and one short
end-to-end meta-training run per algorithm that must beat chance by a wide margin on held-out classes."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch.nn import functional as F

from components.classifier import fit_classifier
from components.config import AdaptConfig, EpisodesConfig, MetaConfig
from components.episodes import Episode, sample_episodes
from components.meta import (CosineClassifier, Learner, ProjectionHead, cosine_logits, evaluate_episodes, inner_adapt,
                             meta_train, protonet_loss, prototypes,
                             zero_shot)

pytestmark = pytest.mark.usefixtures("single_thread")


def random_head(dim: int, seed: int = 0, dtype=torch.float64, temperature: float = 5.0) -> ProjectionHead:
    """A head moved away from its identity init, so the references exercise the linear map too."""
    torch.manual_seed(seed)
    head = ProjectionHead(dim, temperature).to(dtype)
    with torch.no_grad():
        head.linear.weight.copy_(0.3 * torch.randn(dim, dim, dtype=dtype))
        head.linear.bias.copy_(0.1 * torch.randn(dim, dtype=dtype))
    return head


def unit(v: torch.Tensor) -> torch.Tensor:
    return v / torch.sqrt((v * v).sum())


# ------------------------------------------------------------------------------------- building blocks


def test_prototypes_are_normalised_class_means():
    z = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [2.0, 2.0], [0.0, -5.0]])
    labels = torch.tensor([0, 0, 1, 1, 2])
    expected = torch.tensor([[1.0, 0.0], [1 / math.sqrt(5), 2 / math.sqrt(5)], [0.0, -1.0]])
    torch.testing.assert_close(prototypes(z, labels, 3), expected)


def test_prototypes_of_an_absent_class_is_a_zero_row_not_nan():
    z = torch.tensor([[1.0, 1.0]])
    out = prototypes(z, torch.tensor([0]), 2)
    assert torch.isfinite(out).all() and out[1].abs().sum() == 0


def test_cosine_logits_hand_example():
    z = torch.tensor([[3.0, 4.0], [0.0, 2.0]])
    w = torch.tensor([[1.0, 0.0], [0.0, 10.0], [1.0, 1.0]])
    expected = 2.0 * torch.tensor([[0.6, 0.8, 0.7 * math.sqrt(2)], [0.0, 1.0, 1 / math.sqrt(2)]])
    torch.testing.assert_close(cosine_logits(z, w, 2.0), expected)
    torch.testing.assert_close(cosine_logits(z, w, torch.tensor(2.0)), expected)


def test_projection_head_is_identity_after_normalisation_at_init():
    head = ProjectionHead(6, temperature_init=7.0)
    x = torch.randn(5, 6) * 4
    torch.testing.assert_close(head(x), F.normalize(x, dim=-1))
    assert float(head.temperature.detach()) == pytest.approx(7.0)
    assert torch.allclose(head(x).norm(dim=1), torch.ones(5))


def _manual_protonet_loss(head, support, support_y, query, query_y):
    """Written out row by row: project, class means, normalise, temperature * cosine, softmax cross-entropy."""
    w, b, t = head.linear.weight, head.linear.bias, head.log_temperature.exp()

    def project(x):
        x = unit(x)
        return unit(x + w @ x + b)

    n = int(max(support_y)) + 1
    protos = []
    for c in range(n):
        members = [project(support[i]) for i in range(len(support)) if int(support_y[i]) == c]
        protos.append(unit(sum(members) / len(members)))
    total, correct = 0.0, 0
    for i in range(len(query)):
        q = project(query[i])
        logits = torch.stack([t * (q * p).sum() for p in protos])
        total = total - (logits[int(query_y[i])] - torch.logsumexp(logits, 0))
        correct += int(int(logits.argmax()) == int(query_y[i]))
    return total / len(query), correct / len(query)


@pytest.fixture
def tiny_episode():
    g = torch.Generator().manual_seed(3)
    support = torch.randn(6, 4, generator=g, dtype=torch.float64)
    query = torch.randn(5, 4, generator=g, dtype=torch.float64)
    return support, torch.tensor([0, 0, 1, 1, 2, 2]), query, torch.tensor([0, 1, 2, 2, 1])


def test_protonet_loss_matches_manual_computation(tiny_episode):
    head = random_head(4)
    loss, accuracy = protonet_loss(head, *tiny_episode)
    expected_loss, expected_accuracy = _manual_protonet_loss(head, *tiny_episode)
    torch.testing.assert_close(loss, expected_loss)
    assert accuracy == pytest.approx(expected_accuracy)


def test_protonet_loss_gradients_pass_gradcheck(tiny_episode):
    support, support_y, query, query_y = tiny_episode
    head = random_head(4)

    class LossOf(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.head = head

        def forward(self, s, q):
            return protonet_loss(self.head, s, support_y, q, query_y)[0]

    wrapper = LossOf()
    names = ["head.linear.weight", "head.linear.bias", "head.log_temperature"]

    def loss(s, q, weight, bias, log_t):
        return torch.func.functional_call(wrapper, dict(zip(names, (weight, bias, log_t))), (s, q))

    inputs = tuple(t.detach().clone().requires_grad_(True) for t in
                   (support, query, head.linear.weight, head.linear.bias, head.log_temperature))
    assert torch.autograd.gradcheck(loss, inputs, eps=1e-6, atol=1e-5)
    # And the ordinary backward through the module agrees with the functional one.
    head.zero_grad()
    protonet_loss(head, support, support_y, query, query_y)[0].backward()
    grads = torch.autograd.grad(loss(*inputs), inputs[2:])
    torch.testing.assert_close(head.linear.weight.grad, grads[0])
    torch.testing.assert_close(head.log_temperature.grad, grads[2])


def test_inner_adapt_one_step_equals_hand_computed_sgd():
    head = random_head(3, seed=1, temperature=4.0)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(6, 3, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 0, 1, 1, 0])
    w0 = torch.randn(2, 3, generator=g, dtype=torch.float64)
    lr = 0.7
    # Analytic gradient of mean softmax cross-entropy over T * <z_i, w_c / |w_c|>.
    with torch.no_grad():
        z = head(x)
        t = float(head.temperature)
        norms = w0.norm(dim=1, keepdim=True)
        wn = w0 / norms
        p = torch.softmax(t * z @ wn.T, dim=1)
        g_logits = (p - F.one_hot(y, 2).to(p.dtype)) / len(y)
        g_wn = t * g_logits.T @ z
        g_w = (g_wn - (g_wn * wn).sum(1, keepdim=True) * wn) / norms
        expected = w0 - lr * g_w
    before = {k: v.clone() for k, v in head.state_dict().items()}
    out = inner_adapt(head, w0, x, y, steps=1, lr=lr, train_head=False)
    torch.testing.assert_close(out.detach(), expected)
    for key, value in head.state_dict().items():
        assert torch.equal(value, before[key]), f"head changed with train_head=False: {key}"
    assert out.data_ptr() != w0.data_ptr()


def test_inner_adapt_train_head_updates_the_head_in_place_by_sgd():
    head = random_head(3, seed=2)
    g = torch.Generator().manual_seed(6)
    x = torch.randn(6, 3, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 0, 1, 1, 0])
    w0 = torch.randn(2, 3, generator=g, dtype=torch.float64)
    lr = 0.3
    loss = F.cross_entropy(cosine_logits(head(x), w0, head.temperature), y)
    grad_w = torch.autograd.grad(loss, head.linear.weight)[0]
    expected_w = head.linear.weight.detach() - lr * grad_w
    weights_only = inner_adapt(random_head(3, seed=2), w0, x, y, 1, lr, train_head=False)
    out = inner_adapt(head, w0, x, y, 1, lr, train_head=True)
    torch.testing.assert_close(head.linear.weight.detach(), expected_w)
    # Step 1's classifier gradient is taken at the original head, so the weights match the frozen-head run.
    torch.testing.assert_close(out.detach(), weights_only.detach())


def test_inner_adapt_steps_reduce_the_support_loss():
    head = random_head(4, seed=3, temperature=3.0)
    g = torch.Generator().manual_seed(7)
    x = torch.randn(12, 4, generator=g, dtype=torch.float64)
    y = torch.arange(3).repeat(4)
    w0 = torch.randn(3, 4, generator=g, dtype=torch.float64)

    @torch.no_grad()
    def loss(w):
        return float(F.cross_entropy(cosine_logits(head(x), w, head.temperature), y))

    assert loss(inner_adapt(head, w0, x, y, 20, 0.5, False)) < loss(inner_adapt(head, w0, x, y, 1, 0.5, False)) \
        < loss(w0)
    torch.testing.assert_close(inner_adapt(head, w0, x, y, 0, 0.5, False).detach(), w0)


# ------------------------------------------------------------------------------------------------- adapt


def separable_support(per_label: int = 4, dim: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(dim)[:3] * 5
    x = torch.cat([centres[c] + 0.1 * torch.randn(per_label, dim, generator=g) for c in range(3)])
    labels = [name for name in ("alpha", "beta", "gamma") for _ in range(per_label)]
    return x, labels


def test_fit_classifier_proto_gives_prototypes_in_label_order():
    x, labels = separable_support()
    head = ProjectionHead(5)
    order = ["gamma", "alpha", "beta"]
    _, _, classifier = fit_classifier({"meta": head}, x, labels, AdaptConfig(method="proto"), seed=0, label_order=order)
    assert classifier.labels == order and classifier.info["steps"] == 0 and classifier.info["rows"] == 12
    y = torch.tensor([order.index(label) for label in labels])
    torch.testing.assert_close(classifier.weights, prototypes(F.normalize(x, dim=-1), y, 3))
    assert classifier.predict(head, x) == labels
    assert classifier.temperature == pytest.approx(10.0)


def test_fit_classifier_ties_pick_the_fewest_steps_and_probabilities_sum_to_one():
    x, labels = separable_support()
    config = AdaptConfig(method="proto_finetune", step_candidates=[5, 0], cv_folds=2)
    _, head, classifier = fit_classifier({"meta": ProjectionHead(5)}, x, labels, config, seed=0)
    assert classifier.labels == ["alpha", "beta", "gamma"]
    assert classifier.info["steps"] == 0   # separable: a tie, so the fewest steps
    assert set(classifier.info["cv_balanced_accuracy"].values()) == {1.0}
    torch.testing.assert_close(classifier.predict_proba(head, x).sum(1), torch.ones(len(x)))


def test_zero_shot_one_weight_row_per_label():
    head = ProjectionHead(4)
    label_embeddings = torch.tensor([[1.0, 0, 0, 0], [0, 2.0, 0, 0], [0, 0, 0, -3.0]])
    classifier = zero_shot(head, label_embeddings, ["a", "b", "c"])
    assert classifier.weights.shape == (3, 4)
    torch.testing.assert_close(classifier.weights, F.normalize(label_embeddings, dim=-1))
    assert classifier.info == {"steps": 0, "zero_shot": True}
    assert classifier.predict(head, torch.tensor([[0, 0, 0, -1.0], [5.0, 0.1, 0, 0]])) == ["c", "a"]


def test_zero_shot_refuses_a_count_mismatch():
    with pytest.raises(ValueError):
        zero_shot(ProjectionHead(4), torch.eye(4)[:3], ["a", "b"])


def test_cosine_classifier_predict_proba_uses_its_temperature():
    head = ProjectionHead(2)
    classifier = CosineClassifier(["x", "y"], torch.tensor([[1.0, 0.0], [0.0, 1.0]]), temperature=3.0)
    proba = classifier.predict_proba(head, torch.tensor([[1.0, 0.0]]))
    torch.testing.assert_close(proba, torch.softmax(torch.tensor([[3.0, 0.0]]), dim=1))


# ------------------------------------------------------------------------------ end-to-end meta-training

DIM, SIGNAL_DIM = 32, 4


def gaussian_task_family(seed: int = 0, sigma: float = 2.0):
    """Classes whose means differ only inside a random 4-dim subspace, drowned in large isotropic noise in the
    other 28 dims. Plain cosine prototypes are near chance; a head that learns to project the nuisance away is
    near perfect, on classes it never saw. Returns a pool maker: (sources, classes, rows) -> (pool, vectors)."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.normal(size=(DIM, SIGNAL_DIM)))
    nuisance = np.eye(DIM) - basis @ basis.T

    def make(prefix: str, sources: int, classes: int, rows: int, start: int = 0):
        table, vectors = [], []
        for s in range(sources):
            for c in range(classes):
                mean = rng.normal(size=SIGNAL_DIM)
                signal = mean + 0.3 * rng.normal(size=(rows, SIGNAL_DIM))
                vectors.append(signal @ basis.T + (sigma * rng.normal(size=(rows, DIM))) @ nuisance)
                table += [(f"{prefix}{s}-{c}", f"{prefix}{s}")] * rows
        pool = pd.DataFrame(table, columns=["label", "source"]).assign(text="", augmented=False)
        pool.index += start
        pool["origin"] = pool.index
        return pool, torch.tensor(np.concatenate(vectors), dtype=torch.float32)

    return make


@pytest.fixture(scope="module")
def task_family():
    make = gaussian_task_family(seed=0)
    train_pool, train_vectors = make("train", sources=3, classes=12, rows=12)
    val_pool, val_vectors = make("val", sources=1, classes=12, rows=12, start=len(train_pool))
    test_pool, test_vectors = make("test", sources=1, classes=12, rows=12)
    config = EpisodesConfig(way_min=3, way_max=5, shot_min=1, shot_max=5, query=5)
    vectors = torch.cat([train_vectors, val_vectors])  # one table, as the head scope's embed lookup reads
    return {
        "train": sample_episodes(train_pool, config, 150, seed=1),
        "val": sample_episodes(val_pool, config, 40, seed=2),
        "test": sample_episodes(test_pool, config, 60, seed=3),
        "embed": lambda rows: vectors[list(rows)],
        "embed_test": lambda rows: test_vectors[list(rows)],
    }


def test_synthetic_family_sanity(task_family):
    assert len({e.source for e in task_family["train"]}) == 3
    test_classes = {c for e in task_family["test"] for c in e.classes}
    assert not test_classes & {c for e in task_family["train"] for c in e.classes}


@pytest.mark.parametrize("algorithm", ["protonet", "fomaml", "reptile"])
def test_meta_training_beats_chance_on_held_out_classes(task_family, algorithm):
    test_episodes: list[Episode] = task_family["test"]
    chance = float(np.mean([1 / len(e.classes) for e in test_episodes]))
    learner = Learner(ProjectionHead(DIM, temperature_init=10.0))
    untrained = evaluate_episodes(learner, test_episodes, task_family["embed_test"], "cpu")
    config = MetaConfig(algorithm=algorithm, epochs=3, lr=0.01, weight_decay=0.0, inner_steps=5, inner_lr=0.5,
                        reptile_outer_lr=0.5)
    result = meta_train(learner, task_family["train"], task_family["val"], task_family["embed"], config, seed=0)
    trained = evaluate_episodes(learner, test_episodes, task_family["embed_test"], "cpu")
    assert untrained < chance + 0.2, "the synthetic task must be hard for the untrained head"
    assert trained > chance + 0.35, (algorithm, chance, untrained, trained, result.val_accuracy)
    assert trained > untrained + 0.25, (algorithm, untrained, trained)
    assert len(result.val_accuracy) == config.epochs + 1 and len(result.train_loss) == config.epochs
    assert result.best_epoch == int(np.argmax(result.val_accuracy)) and result.best_epoch > 0
    # The learner keeps the best epoch's weights.
    best = evaluate_episodes(learner, task_family["val"], task_family["embed"], "cpu")
    assert best == pytest.approx(result.val_accuracy[result.best_epoch])
    if algorithm == "protonet":
        assert result.val_accuracy[result.best_epoch] > result.val_accuracy[0] + 0.3, result.val_accuracy
        assert result.train_loss[-1] < result.train_loss[0]


def test_meta_train_is_deterministic_by_seed(task_family):
    config = MetaConfig(algorithm="protonet", epochs=1, lr=0.01, weight_decay=0.0)
    heads = []
    for _ in range(2):
        learner = Learner(ProjectionHead(DIM))
        meta_train(learner, task_family["train"][:30], task_family["val"][:10], task_family["embed"], config, seed=4)
        heads.append(learner.head.state_dict())
    for key in heads[0]:
        torch.testing.assert_close(heads[0][key], heads[1][key])


def test_meta_train_with_zero_epochs_keeps_the_identity_head(task_family):
    learner = Learner(ProjectionHead(DIM))
    result = meta_train(learner, task_family["train"][:5], task_family["val"][:5], task_family["embed"],
                        MetaConfig(epochs=0), seed=0)
    assert result.best_epoch == 0 and result.train_loss == [] and len(result.val_accuracy) == 1
    assert learner.head.linear.weight.abs().sum() == 0


def test_fit_classifier_keeps_the_head_the_training_rows_prefer() -> None:
    """A head that scrambles the class signal loses the CV to the untrained head; ties keep the first."""
    torch.manual_seed(0)
    centres = torch.nn.functional.normalize(torch.randn(3, 16), dim=-1)
    x = torch.cat([centres[i] + 0.05 * torch.randn(8, 16) for i in range(3)])
    labels = [name for name in "abc" for _ in range(8)]
    scrambler = ProjectionHead(16)
    with torch.no_grad():
        scrambler.linear.weight.copy_(-torch.eye(16))  # x + Wx + b = b: every text maps to one point
        scrambler.linear.bias.copy_(torch.randn(16))
    config = AdaptConfig(method="proto_finetune", step_candidates=[0, 5], cv_folds=2)
    chosen, _, classifier = fit_classifier({"meta": scrambler, "identity": ProjectionHead(16)}, x, labels, config, 0)
    assert chosen == "identity" and classifier.info["head"] == "identity"
    chosen, _, _ = fit_classifier({"meta": ProjectionHead(16), "identity": ProjectionHead(16)}, x, labels, config, 0)
    assert chosen == "meta"
