"""l1-sparse (Jia et al. NeurIPS 2023, "Model Sparsity Can Simplify Machine Unlearning"): fine-tune
on the retain set with CE + gamma_t * ||theta||_1 over every parameter, gamma_t decaying linearly
from ``l1`` to 0 over the run (every step; the authors' code steps it once an epoch). SGD lr 0.01
m0.9, 10 epochs, as finetune; ``l1`` 1e-4, what reproductions of the authors' code pass on CIFAR-10
and SVHN."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from invwnn.unlearn.methods.loop import Context, Data, EpochsConfig, Sampler, opt, steps_for, train_epochs, trainable

NAME = "l1-sparse"


@dataclass(frozen=True)
class Config(EpochsConfig):
    l1: float = opt(1e-4, "l1-sparse: initial weight of the L1 penalty (decays linearly to 0)")


def l1_weight(step: int, steps: int, l1: float) -> float:
    """gamma_t: ``l1`` at step 0, falling linearly to 0 at step ``steps`` (the last step gets l1 / steps)."""
    return l1 * (1.0 - step / steps)


def run(model: nn.Module, data: Data, config: Config, ctx: Context) -> nn.Module:
    retain = data.need("retain", NAME)
    sample = Sampler(retain, config.batch_size, ctx.generator(17), ctx.device)
    params = trainable(model)
    steps = steps_for(len(retain), config.batch_size, config.epochs)

    def loss(step: int) -> torch.Tensor:
        x, y = sample()
        penalty = sum(p.abs().sum() for p in params)
        return F.cross_entropy(model(x), y) + l1_weight(step, steps, config.l1) * penalty

    train_epochs(model, loss, config, len(retain), ctx, NAME, params=params)
    return model
