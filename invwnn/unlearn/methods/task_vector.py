"""Task-vector negation (Ilharco et al. 2023): fine-tune a copy on the forget set, take the change
delta, and set theta = theta_0 - alpha * delta."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from invwnn.unlearn.methods.loop import Context, Data, EpochsConfig, Sampler, ce_loss, opt, train_epochs

NAME = "task-vector"


@dataclass(frozen=True)
class Config(EpochsConfig):
    alpha: float = opt(1.0, "weight of the retain loss (neggrad+) / of the task vector (task-vector)")


def run(model: nn.Module, data: Data, config: Config, ctx: Context) -> nn.Module:
    before = [p.detach().clone() for p in model.parameters()]
    sample = Sampler(data.forget, config.batch_size, ctx.generator(11), ctx.device)
    # norms frozen: the task vector should describe the weights, not drifting statistics
    train_epochs(model, ce_loss(model, sample), config, len(data.forget), ctx, NAME, freeze_norms=True)
    with torch.no_grad():
        for p, p0 in zip(model.parameters(), before):
            p.copy_(p0 - config.alpha * (p - p0))
    return model
