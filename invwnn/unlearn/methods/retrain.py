"""Retrain: a fresh model trained on the retain set only; the exact answer others are compared to.
Defaults are the project's original recipe (Adam 1e-3, batch 128, 20 epochs)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from invwnn.unlearn.methods.loop import Context, Data, MethodConfig, Sampler, make_optimizer, opt, run_steps, steps_for
from invwnn.errors import InputError

NAME = "retrain"


@dataclass(frozen=True)
class Config(MethodConfig):
    epochs: float = opt(20.0, "epochs over the data")
    optimizer: str = opt("adam", "sgd or adam")
    lr: float = opt(1e-3, "learning rate")
    batch_size: int = opt(128, "minibatch size")


def run(model: nn.Module, data: Data, config: Config, ctx: Context) -> nn.Module:
    retain = data.need("retain", NAME)
    if ctx.rebuild is None:
        raise InputError("retrain needs the model's architecture (the project's own model format)")
    torch.manual_seed(ctx.seed)
    fresh = ctx.rebuild().to(ctx.device)
    sample = Sampler(retain, config.batch_size, ctx.generator(2), ctx.device)

    def loss(_: int) -> torch.Tensor:
        x, y = sample()
        return F.cross_entropy(fresh(x), y)

    run_steps(fresh, loss, make_optimizer(config.optimizer, fresh.parameters(), config.lr),
              steps_for(len(retain), config.batch_size, config.epochs), freeze_norms=False,
              progress=ctx.progress, desc=NAME)
    return fresh
