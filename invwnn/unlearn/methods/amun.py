"""AMUN (Ebrahimpour-Boroojeny et al. ICML 2025, "Not All Wrong is Bad: Using Adversarial Examples
for Unlearning", arXiv 2503.00917): once, on the original model, find for each forget image a near
adversarial example labelled with the wrong class the model gives it; then fine-tune on those
together with the retain set (without one: the forget images and their true labels, as the
authors' code). The attack, as the authors': L2 PGD on inputs in [0, 1], ``attack_steps`` steps of
eps / 10 along the normalised gradient of the true label's cross-entropy, projected onto the
eps-ball; an image leaves at its first wrong prediction; eps starts at ``epsilon`` and doubles each
round, at most ``attack_rounds`` rounds, after which an image takes its best wrong class. Training
as random-label: one adversarial and one retain batch per step, epochs counted over the forget set.
Defaults from the authors' code: L2 PGD-50, initial eps 0.04, SGD lr 0.01, 10 epochs, batch 128."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from invwnn.inputs.splits import Split
from invwnn.unlearn.methods.loop import Context, Data, EpochsConfig, Sampler, opt, train_epochs
from invwnn.audit.metrics import set_mode

NAME = "amun"


@dataclass(frozen=True)
class Config(EpochsConfig):
    epsilon: float = opt(0.04, "amun: the attack's first L2 radius in [0, 1] pixel units (doubled each round)")
    attack_steps: int = opt(50, "amun: PGD steps per attack round")
    attack_rounds: int = opt(10, "amun: attack rounds at most (the radius doubles each round)")


def adversarial_examples(model: nn.Module, split: Split, config: Config, device: str,
                         chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """The attack (module docstring) on every image of ``split``: adversarial images and their
    labels, the model's wrong class for each (on the CPU)."""
    set_mode(model, False)
    xs, labels = [], []
    for i in range(0, len(split), chunk):
        x0, y = split.x[i: i + chunk].to(device), split.y[i: i + chunk].to(device)
        adv, label = x0.clone(), torch.full_like(y, -1)
        eps = torch.full((len(y),), config.epsilon, device=device)
        for _ in range(config.attack_rounds):
            for _ in range(config.attack_steps):
                live = (label < 0).nonzero().squeeze(1)
                if len(live) == 0:
                    break
                xa = adv[live].requires_grad_(True)
                logits = model(xa)
                pred = logits.argmax(1)
                label[live] = torch.where(pred != y[live], pred, -1)
                grad, = torch.autograd.grad(F.cross_entropy(logits, y[live], reduction="sum"), xa)
                with torch.no_grad():
                    norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (grad.ndim - 1))
                    delta = xa + (eps[live] / 10).view_as(norm) * grad / norm - x0[live]
                    size = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view_as(norm)
                    moved = (x0[live] + delta * (eps[live].view_as(size) / size).clamp(max=1)).clamp(0, 1)
                    still = (pred == y[live]).view(-1, *[1] * (grad.ndim - 1))
                    adv[live] = torch.where(still, moved, xa)
            eps[label < 0] *= 2
        live = (label < 0).nonzero().squeeze(1)
        if len(live):  # still right after every round (or after the last step): the best wrong class
            with torch.no_grad():
                logits = model(adv[live])
                logits[torch.arange(len(live)), y[live]] = -torch.inf
                label[live] = logits.argmax(1)
        xs.append(adv.detach().cpu())
        labels.append(label.cpu())
    return torch.cat(xs), torch.cat(labels)


def run(model: nn.Module, data: Data, config: Config, ctx: Context) -> nn.Module:
    x_adv, y_adv = adversarial_examples(model, data.forget, config, ctx.device)
    adv = Sampler(Split(x_adv, y_adv, "adversarial"), config.batch_size, ctx.generator(18), ctx.device)
    other = Sampler(data.retain if data.retain is not None and len(data.retain) else data.forget,
                    config.batch_size, ctx.generator(19), ctx.device)

    def loss(_: int) -> torch.Tensor:
        (xa, ya), (xo, yo) = adv(), other()
        return F.cross_entropy(model(torch.cat([xa, xo])), torch.cat([ya, yo]))

    train_epochs(model, loss, config, len(data.forget), ctx, NAME)
    return model
