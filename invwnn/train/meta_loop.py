"""The loop a meta rewinder (:class:`invwnn.rewind.meta.MetaNet`) is trained through, and its objective.

Meta-training unrolls an iteration of the invwnn+ loop on a counterfactual triple (a parent model,
its forget set S, and the same training without S): fine-tune on S recording K snapshots, rewind
(differentiable), a few repair steps on retain images, then the KL divergence of the unlearned
model's predictions from the counterfactual's. Only the rewinder learns. Truncations: the gradient
goes through ``unrolled`` iterations (straight through each later forget window); earlier ones
(``lead``) run as data; the fine-tuning window is data; the repair steps are first order.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from invwnn.inputs.splits import Split
from invwnn.rewind.features import rewound
from invwnn.rewind.meta import MetaNet
from invwnn.rewind.rewinders import Rewinder


@dataclass(frozen=True)
class Triple:
    """A counterfactual triple: ``model`` (its weights are the parent's), the counterfactual's
    weights ``counterfactual`` (name -> tensor, trained without ``forget``), and the images the
    loop and the objective see."""

    model: nn.Module
    counterfactual: dict[str, torch.Tensor]
    forget: Split
    retain: Split
    heldout: Split
    counterfactual_buffers: dict[str, torch.Tensor] = field(default_factory=dict)  # its norm statistics


@dataclass(frozen=True)
class LoopSettings:
    """One unrolled invwnn+ iteration: ``lr`` of the Adam forget steps (K - 1 of them, full forget
    batches up to ``batch_size``), then ``repair_steps`` steps at ``repair_lr`` on retain, plain
    gradient steps (``"sgd"``) or Adam's from fresh moments (``"adam"``, as invwnn+ repairs);
    ``repair_steps`` 0 is the forget-only loop."""

    lr: float = 1e-3
    repair_steps: int = 4
    repair_lr: float = 0.05
    batch_size: int = 128
    repair_optimizer: str = "sgd"


def forget_window(model: nn.Module, params: dict[str, torch.Tensor], names: list[str], forget: Split, k: int,
                  settings: LoopSettings, generator: torch.Generator) -> torch.Tensor:
    """(n, K) snapshots of the ``names`` coordinates over K - 1 Adam steps on ``forget`` from
    ``params`` (no gradient kept: the window is the rewinder's data)."""
    work = {n: p.detach().clone().requires_grad_(n in names) for n, p in params.items()}
    opt = torch.optim.Adam([work[n] for n in names], lr=settings.lr)
    snaps = [torch.cat([work[n].detach().reshape(-1) for n in names])]
    for _ in range(k - 1):
        idx = torch.randperm(len(forget), generator=generator)[: settings.batch_size]
        opt.zero_grad()
        F.cross_entropy(functional_call(model, work, (forget.x[idx],)), forget.y[idx]).backward()
        opt.step()
        snaps.append(torch.cat([work[n].detach().reshape(-1) for n in names]))
    return torch.stack(snaps, 1)


def unroll(triple: Triple, rewinder: MetaNet | Rewinder, settings: LoopSettings, generator: torch.Generator,
           start: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The triple's parent (or ``start``: the weights after earlier iterations) after one iteration
    of the loop with ``rewinder``: name -> tensor, differentiable with respect to a
    :class:`MetaNet`'s parameters only (any other rewinder runs without gradient, K = 5 unless it
    has its own ``k``). A ``start`` that carries gradient passes it on straight through the window."""
    model = triple.model
    params = dict(start) if start else {n: p.detach() for n, p in model.named_parameters()}
    names, kinds, layers = rewound(model)
    k = rewinder.config.k if isinstance(rewinder, MetaNet) else getattr(rewinder, "k", 5)
    window = forget_window(model, params, names, triple.forget, k, settings, generator)
    first = torch.cat([params[n].reshape(-1) for n in names])
    if first.requires_grad:  # a start that carries gradient: the window moves with it (straight through)
        window = window + (first - first.detach()).unsqueeze(1)
    flat = rewinder(window, layers) if isinstance(rewinder, MetaNet) else rewinder.rewind(window, kinds, layers)
    out, i = dict(params), 0
    for n in names:
        out[n] = flat[i: i + params[n].numel()].view_as(params[n])
        i += params[n].numel()
    moments: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for step in range(1, settings.repair_steps + 1):  # first order: the gradient is taken, not differentiated
        idx = torch.randperm(len(triple.retain), generator=generator)[: settings.batch_size]
        probe = {n: v.detach().requires_grad_(n in names) for n, v in out.items()}
        loss = F.cross_entropy(functional_call(model, probe, (triple.retain.x[idx],)), triple.retain.y[idx])
        grads = torch.autograd.grad(loss, [probe[n] for n in names])
        for n, g in zip(names, grads):
            if settings.repair_optimizer == "adam":  # torch's Adam defaults, bias-corrected
                m, v = moments.get(n, (torch.zeros_like(g), torch.zeros_like(g)))
                m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
                moments[n] = (m, v)
                g = (m / (1 - 0.9**step)) / ((v / (1 - 0.999**step)).sqrt() + 1e-8)
            out[n] = out[n] - settings.repair_lr * g
    return out


def distance(model: nn.Module, params: dict[str, torch.Tensor], counterfactual: dict[str, torch.Tensor],
             images: torch.Tensor) -> torch.Tensor:
    """KL(counterfactual || unlearned) of the predictive distributions, mean over ``images`` (nats);
    ``counterfactual`` may hold buffers (norm statistics) besides the weights."""
    with torch.no_grad():
        target = F.log_softmax(functional_call(model, counterfactual, (images,)), 1)
    pred = F.log_softmax(functional_call(model, params, (images,)), 1)
    return F.kl_div(pred, target, log_target=True, reduction="batchmean")


def objective(triple: Triple, params: dict[str, torch.Tensor], retain_sample: int = 256) -> torch.Tensor:
    """The function-space distance the rewinder is trained on: KL to the counterfactual on the forget
    set, on the first ``retain_sample`` retain images and on the held-out images, summed."""
    m, cf = triple.model, {**triple.counterfactual, **triple.counterfactual_buffers}
    return (distance(m, params, cf, triple.forget.x)
            + distance(m, params, cf, triple.retain.x[:retain_sample])
            + distance(m, params, cf, triple.heldout.x))


def run_iterations(triple: Triple, rewinder: MetaNet | Rewinder, settings: LoopSettings,
                   generator: torch.Generator, iterations: int) -> dict[str, torch.Tensor] | None:
    """The weights after ``iterations`` iterations of the loop, detached (None for 0: the parent)."""
    params = None
    for _ in range(iterations):
        params = {n: v.detach() for n, v in unroll(triple, rewinder, settings, generator, params).items()}
    return params


def meta_train(rewinder: MetaNet, triples: Sequence[Triple], steps: int, lr: float = 3e-3,
               settings: Callable[[random.Random], LoopSettings] = lambda rng: LoopSettings(), seed: int = 0,
               log: Callable[[int, float], None] | None = None, lead: int = 0, unrolled: int = 1) -> list[float]:
    """Adam on the rewinder's parameters: each step one triple and one draw ``settings(rng)`` of the
    loop's settings, then 0..``lead`` iterations (drawn) run as data before the ``unrolled``
    iterations the gradient goes through. Returns the objective of every step."""
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(rewinder.parameters(), lr=lr)
    history = []
    for step in range(steps):
        triple = rng.choice(triples)
        drawn = settings(rng)
        params = run_iterations(triple, rewinder, drawn, generator, rng.randint(0, lead))
        for _ in range(unrolled):
            params = unroll(triple, rewinder, drawn, generator, params)
        loss = objective(triple, params)
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss.item())
        if log is not None:
            log(step, history[-1])
    return history


@torch.no_grad()
def evaluate(rewinder: MetaNet | Rewinder, triples: Sequence[Triple], settings: LoopSettings,
             seed: int = 0, iterations: int = 1) -> float:
    """Mean objective over ``triples`` after ``iterations`` iterations with ``rewinder`` (the same
    batches for every rewinder compared under one ``seed``)."""
    total = 0.0
    for i, triple in enumerate(triples):
        with torch.enable_grad():  # the forget window and the repair need gradients of the model
            params = run_iterations(triple, rewinder, settings, torch.Generator().manual_seed(seed + i), iterations)
        total += float(objective(triple, params))
    return total / len(triples)
