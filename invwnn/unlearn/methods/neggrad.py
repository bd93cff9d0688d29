"""NegGrad (GA): gradient ascent on the forget set (SalUn's GA: SGD, lr 1e-4..1e-3, 5 epochs)."""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from invwnn.unlearn.methods.loop import Context, Data, EpochsConfig, Sampler, ce_loss, opt, train_epochs

NAME = "neggrad"


@dataclass(frozen=True)
class Config(EpochsConfig):
    epochs: float = opt(5.0, "epochs over the data")
    lr: float = opt(1e-3, "learning rate")


def run(model: nn.Module, data: Data, config: Config, ctx: Context) -> nn.Module:
    ce = ce_loss(model, Sampler(data.forget, config.batch_size, ctx.generator(4), ctx.device))
    train_epochs(model, lambda step: -ce(step), config, len(data.forget), ctx, NAME)
    return model
