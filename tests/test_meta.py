"""The meta-trained rewinder's core (issue 24): at initialisation it is the line, its gradient reaches
its own parameters and nothing else, and training on the unlearning objective lowers it."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from invwnn.inputs.splits import Split
from invwnn.rewind import LinearRewinder, meta
from invwnn.train import meta_loop
from invwnn.train.meta_loop import Triple


def toy_triple(seed: int, images, n_train: int = 600, n_forget: int = 60, n_heldout: int = 300,
               steps: int = 300) -> Triple:
    """A small counterfactual triple: an MLP (196-64-10) on ``n_train`` Fashion-MNIST images pooled to
    14x14 (``images``: a trajgen dataset), ``steps`` Adam steps; the counterfactual from the same
    initialisation and batch draws restricted to the images outside the ``n_forget`` forgotten ones
    (as ``trajgen twins`` pairs them); ``n_heldout`` test images."""
    g = torch.Generator().manual_seed(seed)
    pool = lambda x: F.avg_pool2d(x.float().reshape(len(x), 1, 28, 28) / 255, 2)  # noqa: E731
    idx = torch.randperm(len(images.y_train), generator=g)[:n_train]
    x, y = pool(images.x_train[idx]), images.y_train[idx].long()
    forget = torch.zeros(n_train, dtype=torch.bool)
    forget[:n_forget] = True
    held = torch.randperm(len(images.y_test), generator=g)[:n_heldout]

    def train(keep: torch.Tensor) -> nn.Module:
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Flatten(), nn.Linear(196, 64), nn.ReLU(), nn.Linear(64, 10))
        opt = torch.optim.Adam(net.parameters(), 3e-3)
        draws, rows = torch.Generator().manual_seed(seed + 1), keep.nonzero().squeeze(1)
        for _ in range(steps):
            batch = rows[torch.randint(len(rows), (64,), generator=draws)]
            opt.zero_grad()
            F.cross_entropy(net(x[batch]), y[batch]).backward()
            opt.step()
        net.zero_grad(set_to_none=True)
        return net

    parent, twin = train(torch.ones(n_train, dtype=torch.bool)), train(~forget)
    return Triple(parent, {n: p.detach() for n, p in twin.named_parameters()}, Split(x[forget], y[forget], "forget"),
                  Split(x[~forget], y[~forget], "retain"),
                  Split(pool(images.x_test[held]), images.y_test[held].long(), "heldout"))


@pytest.fixture(scope="module")
def triples(fmnist):
    return [toy_triple(seed, fmnist, n_train=300, n_forget=40, n_heldout=100, steps=120) for seed in (0, 1)]


def test_at_initialisation_it_is_the_damped_line():
    windows = torch.randn(500, 5).cumsum(1) * 1e-3 + torch.randn(500, 1)
    rewinder = meta.MetaNet(meta.MetaConfig(k=5, horizon=1.5))
    assert torch.allclose(rewinder.rewind(windows, None), LinearRewinder(1.5).rewind(windows, None), atol=1e-7)
    assert rewinder.describe()["rewinder"] == "meta"


def test_a_layer_context_starts_as_the_line_and_reads_each_layer_apart():
    windows = torch.randn(600, 5).cumsum(1) * 1e-3
    windows[300:] *= 50  # a second layer stepping 50x further
    layers = torch.arange(600) // 300
    rewinder = meta.MetaNet(meta.MetaConfig(k=5, horizon=2.0, context=["layer"]))  # a list, as JSON gives it
    assert rewinder.config.context == ("layer",) and rewinder.correction[0].in_features == 7
    assert torch.allclose(rewinder.rewind(windows, None, layers), LinearRewinder(2.0).rewind(windows, None), atol=1e-7)
    torch.nn.init.normal_(rewinder.correction[-1].weight)
    # the context is per layer: scaling one layer's windows leaves the other's rewind as it was
    scaled = windows.clone()
    scaled[300:] *= 3
    assert torch.allclose(rewinder.rewind(windows, None, layers)[:300], rewinder.rewind(scaled, None, layers)[:300])
    # one layer id for both: the small-step layer now sits far below the median, and its rewind moves
    assert not torch.allclose(rewinder.rewind(windows, None, layers)[:300],
                              rewinder.rewind(windows, None, torch.zeros(600, dtype=torch.long))[:300])
    with pytest.raises(ValueError, match="layer id"):
        rewinder.rewind(windows, None)
    with pytest.raises(ValueError, match="unknown context"):
        meta.MetaConfig(context=("kind",))


@pytest.mark.parametrize("context", [(), ("layer",)])
def test_the_objective_reaches_the_rewinder_and_nothing_else(triples, context):
    triple = triples[0]
    rewinder = meta.MetaNet(meta.MetaConfig(context=context))
    params = meta_loop.unroll(triple, rewinder, meta_loop.LoopSettings(lr=1e-2, repair_steps=2), torch.Generator().manual_seed(0))
    meta_loop.objective(triple, params).backward()
    grads = {n: p.grad for n, p in rewinder.named_parameters()}
    assert grads["correction.2.weight"].abs().sum() > 0  # the zero-initialised output layer learns first
    assert all(p.grad is None for p in triple.model.parameters())
    assert all(not t.requires_grad for t in triple.counterfactual.values())
    # the unlearned model differs from the parent: the loop did something
    assert any(not torch.equal(params[n].detach(), p) for n, p in triple.model.named_parameters())


def test_two_differentiated_iterations_pass_the_gradient_through_the_first(triples):
    """The second iteration starts from the first's output with its graph: the gradient then holds
    the first iteration's share too, so it differs from the gradient of the second alone."""
    triple, settings = triples[0], meta_loop.LoopSettings(lr=1e-2, repair_steps=2)
    rewinder = meta.MetaNet()
    torch.nn.init.normal_(rewinder.correction[-1].weight, std=0.1)

    def grad(detach_first: bool) -> torch.Tensor:
        rewinder.zero_grad()
        generator = torch.Generator().manual_seed(0)
        params = meta_loop.unroll(triple, rewinder, settings, generator)
        if detach_first:
            params = {n: v.detach() for n, v in params.items()}
        meta_loop.objective(triple, meta_loop.unroll(triple, rewinder, settings, generator, params)).backward()
        return rewinder.correction[-1].weight.grad.clone()

    through, second_only = grad(False), grad(True)
    assert through.abs().sum() > 0 and second_only.abs().sum() > 0
    assert not torch.allclose(through, second_only)
    assert all(p.grad is None for p in triple.model.parameters())


@pytest.mark.learning
def test_training_on_the_objective_lowers_it_where_the_line_overshoots(triples):
    """Forget-only, at a forget step where the line at horizon 2 throws the model far from the
    counterfactual (toy study: 7.9 nats against the parent's 0.36): the correction learns to damp it."""
    settings = meta_loop.LoopSettings(lr=3e-2, repair_steps=0)
    rewinder = meta.MetaNet(meta.MetaConfig(horizon=2.0))
    before = meta_loop.evaluate(rewinder, triples, settings, seed=3)
    meta_loop.meta_train(rewinder, triples, 150, lr=1e-3, settings=lambda rng: settings, seed=0)
    after = meta_loop.evaluate(rewinder, triples, settings, seed=3)
    assert after < 0.5 * before, (before, after)
