"""Retrain: a fresh model trained on the retain set only; the exact answer others are compared to.
Defaults are the project's original recipe (Adam 1e-3, batch 128, 20 epochs)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from invwnn.unlearn.methods.loop import Context, Data, EpochsConfig, Sampler, ce_loss, opt, train_epochs
from invwnn.errors import InputError

NAME = "retrain"


@dataclass(frozen=True)
class Config(EpochsConfig):
    epochs: float = opt(20.0, "epochs over the data")
    optimizer: str = opt("adam", "sgd or adam")
    lr: float = opt(1e-3, "learning rate")


def run(model: nn.Module, data: Data, config: Config, ctx: Context) -> nn.Module:
    retain = data.need("retain", NAME)
    if ctx.rebuild is None:
        raise InputError("retrain needs the model's architecture (the project's own model format)")
    torch.manual_seed(ctx.seed)
    fresh = ctx.rebuild().to(ctx.device)
    sample = Sampler(retain, config.batch_size, ctx.generator(2), ctx.device)
    train_epochs(fresh, ce_loss(fresh, sample), config, len(retain), ctx, NAME)
    return fresh
