"""Task-vector negation (Ilharco et al. 2023): fine-tune a copy on the forget set, take the change
delta, and set theta = theta_0 - alpha * delta."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from invwnn.unlearn.methods.loop import Context, Data, EpochsConfig, Sampler, make_optimizer, opt, run_steps, steps_for

NAME = "task-vector"


@dataclass(frozen=True)
class Config(EpochsConfig):
    alpha: float = opt(1.0, "weight of the retain loss (neggrad+) / of the task vector (task-vector)")


def run(model: nn.Module, data: Data, config: Config, ctx: Context) -> nn.Module:
    before = [p.detach().clone() for p in model.parameters()]
    sample = Sampler(data.forget, config.batch_size, ctx.generator(11), ctx.device)

    def loss(_: int) -> torch.Tensor:
        x, y = sample()
        return F.cross_entropy(model(x), y)

    # norms frozen: the task vector should describe the weights, not drifting statistics
    run_steps(model, loss, make_optimizer(config.optimizer, model.parameters(), config.lr, config.momentum),
              steps_for(len(data.forget), config.batch_size, config.epochs), freeze_norms=True,
              progress=ctx.progress, desc=NAME)
    with torch.no_grad():
        for p, p0 in zip(model.parameters(), before):
            p.copy_(p0 - config.alpha * (p - p0))
    return model


__all__ = ["Config", "run"]
