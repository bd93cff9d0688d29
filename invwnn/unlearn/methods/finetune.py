"""FT: fine-tune on the retain set so the forget set fades (SalUn's setting: SGD lr 0.01, 10 epochs)."""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from invwnn.unlearn.methods.loop import Context, Data, EpochsConfig, Sampler, ce_loss, train_epochs

NAME = "finetune"


@dataclass(frozen=True)
class Config(EpochsConfig):
    pass


def run(model: nn.Module, data: Data, config: Config, ctx: Context) -> nn.Module:
    retain = data.need("retain", NAME)
    sample = Sampler(retain, config.batch_size, ctx.generator(3), ctx.device)
    train_epochs(model, ce_loss(model, sample), config, len(retain), ctx, NAME)
    return model
