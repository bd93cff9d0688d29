"""NegGrad (GA): gradient ascent on the forget set (SalUn's GA: SGD, lr 1e-4..1e-3, 5 epochs)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from invwnn.unlearn.methods.loop import Context, Data, MethodConfig, Sampler, make_optimizer, opt, run_steps, steps_for

NAME = "neggrad"


@dataclass(frozen=True)
class Config(MethodConfig):
    epochs: float = opt(5.0, "epochs over the data")
    optimizer: str = opt("sgd", "sgd or adam")
    lr: float = opt(1e-3, "learning rate")
    momentum: float = opt(0.9, "SGD momentum")
    batch_size: int = opt(128, "minibatch size")


def run(model: nn.Module, data: Data, config: Config, ctx: Context) -> nn.Module:
    sample = Sampler(data.forget, config.batch_size, ctx.generator(4), ctx.device)

    def loss(_: int) -> torch.Tensor:
        x, y = sample()
        return -F.cross_entropy(model(x), y)

    run_steps(model, loss, make_optimizer(config.optimizer, model.parameters(), config.lr, config.momentum),
              steps_for(len(data.forget), config.batch_size, config.epochs), freeze_norms=False,
              progress=ctx.progress, desc=NAME)
    return model
