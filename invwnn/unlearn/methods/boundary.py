"""Boundary shrink (Chen et al. CVPR 2023): relabel each forget image by the nearest wrong class,
found by an FGSM step of size ``epsilon`` (inputs in [0, 1]), then fine-tune on those labels.
Defaults from the authors' code: bound 0.1, SGD lr 1e-5 momentum 0.9, 10 epochs, batch 64."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from invwnn.unlearn.methods.loop import Context, Data, EpochsConfig, Sampler, ce_loss, opt, train_epochs
from invwnn.audit.metrics import set_mode

NAME = "boundary-shrink"


@dataclass(frozen=True)
class Config(EpochsConfig):
    lr: float = opt(1e-5, "learning rate")
    batch_size: int = opt(64, "minibatch size")
    epsilon: float = opt(0.1, "boundary-shrink: FGSM bound in [0, 1] pixel units")


def nearest_wrong_labels(model: nn.Module, data: Data, epsilon: float, ctx: Context) -> torch.Tensor:
    set_mode(model, False)
    out = []
    for i in range(0, len(data.forget), 256):
        x = data.forget.x[i: i + 256].to(ctx.device).requires_grad_(True)
        y = data.forget.y[i: i + 256].to(ctx.device)
        grad, = torch.autograd.grad(F.cross_entropy(model(x), y), x)
        with torch.no_grad():
            logits = model((x + epsilon * grad.sign()).clamp(0, 1))
            logits[torch.arange(len(y)), y] = -torch.inf  # never the true class
            out.append(logits.argmax(1).cpu())
    return torch.cat(out)


def run(model: nn.Module, data: Data, config: Config, ctx: Context) -> nn.Module:
    labels = nearest_wrong_labels(model, data, config.epsilon, ctx)
    sample = Sampler(data.forget, config.batch_size, ctx.generator(10), ctx.device, labels=labels)
    train_epochs(model, ce_loss(model, sample), config, len(data.forget), ctx, NAME)
    return model
