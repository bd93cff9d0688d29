"""The meta-trained rewinder's core (issue 24): at initialisation it is the line, its gradient reaches
its own parameters and nothing else, and training on the unlearning objective lowers it."""
from __future__ import annotations

import pytest
import torch

from invwnn import meta
from invwnn.methods.invwnn import LinearRewinder


@pytest.fixture(scope="module")
def triples(fmnist):
    return [meta.toy_triple(seed, fmnist, n_train=300, n_forget=40, n_heldout=100, steps=120) for seed in (0, 1)]


def test_at_initialisation_it_is_the_damped_line():
    windows = torch.randn(500, 5).cumsum(1) * 1e-3 + torch.randn(500, 1)
    rewinder = meta.MetaRewinder(meta.MetaConfig(k=5, horizon=1.5))
    assert torch.allclose(rewinder.rewind(windows, None), LinearRewinder(1.5).rewind(windows, None), atol=1e-7)
    assert rewinder.describe()["rewinder"] == "meta"


def test_the_objective_reaches_the_rewinder_and_nothing_else(triples):
    triple = triples[0]
    rewinder = meta.MetaRewinder()
    params = meta.unroll(triple, rewinder, meta.LoopSettings(lr=1e-2, repair_steps=2), torch.Generator().manual_seed(0))
    meta.objective(triple, params).backward()
    grads = {n: p.grad for n, p in rewinder.named_parameters()}
    assert grads["correction.2.weight"].abs().sum() > 0  # the zero-initialised output layer learns first
    assert all(p.grad is None for p in triple.model.parameters())
    assert all(not t.requires_grad for t in triple.counterfactual.values())
    # the unlearned model differs from the parent: the loop did something
    assert any(not torch.equal(params[n].detach(), p) for n, p in triple.model.named_parameters())


@pytest.mark.learning
def test_training_on_the_objective_lowers_it_where_the_line_overshoots(triples):
    """Forget-only, at a forget step where the line at horizon 2 throws the model far from the
    counterfactual (toy study: 7.9 nats against the parent's 0.36): the correction learns to damp it."""
    settings = meta.LoopSettings(lr=3e-2, repair_steps=0)
    rewinder = meta.MetaRewinder(meta.MetaConfig(horizon=2.0))
    before = meta.evaluate(rewinder, triples, settings, seed=3)
    meta.meta_train(rewinder, triples, 150, lr=1e-3, settings=lambda rng: settings, seed=0)
    after = meta.evaluate(rewinder, triples, settings, seed=3)
    assert after < 0.5 * before, (before, after)
