"""FT: fine-tune on the retain set so the forget set fades (SalUn's setting: SGD lr 0.01, 10 epochs)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from invwnn.unlearn.methods.loop import Context, Data, EpochsConfig, Sampler, make_optimizer, run_steps, steps_for

NAME = "finetune"


@dataclass(frozen=True)
class Config(EpochsConfig):
    pass


def run(model: nn.Module, data: Data, config: Config, ctx: Context) -> nn.Module:
    retain = data.need("retain", NAME)
    sample = Sampler(retain, config.batch_size, ctx.generator(3), ctx.device)

    def loss(_: int) -> torch.Tensor:
        x, y = sample()
        return F.cross_entropy(model(x), y)

    run_steps(model, loss, make_optimizer(config.optimizer, model.parameters(), config.lr, config.momentum),
              steps_for(len(retain), config.batch_size, config.epochs), freeze_norms=False,
              progress=ctx.progress, desc=NAME)
    return model
