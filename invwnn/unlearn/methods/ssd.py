"""SSD, selective synaptic dampening (Foster et al. AAAI 2024): no training. Importances are the
diagonal Fisher as the authors' code computes it: squared gradients of the mean cross-entropy of
each minibatch (``batch_size`` images, model in eval mode), averaged over the minibatches, on the
forget set (F_f) and on the training data (F_D: the forget set plus up to ``samples`` retain images,
a seeded random subset, shuffled together as the authors' full training loader holds both). Every
coordinate with F_f > alpha * F_D is multiplied by min(lambda * F_D / F_f, 1); the rest are left
exactly as they are. Defaults from the authors' code for every ResNet-18 experiment: alpha
(selection weighting) 10, lambda (dampening constant) 1, batch 128."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from invwnn.inputs.splits import Split
from invwnn.unlearn.methods.loop import Context, Data, MethodConfig, opt, squared_grads, trainable
from invwnn.audit.metrics import set_mode

NAME = "ssd"


@dataclass(frozen=True)
class Config(MethodConfig):
    alpha: float = opt(10.0, "ssd: selection threshold on importance_forget / importance_data")
    dampening: float = opt(1.0, "ssd: lambda, the dampening constant")
    samples: int = opt(10000, "ssd: retain images (a random subset) in the training-data importance")
    batch_size: int = opt(128, "minibatch size")


def importance(model: nn.Module, split: Split, order: torch.Tensor, batch_size: int, device: str,
               params: list[nn.Parameter]) -> list[torch.Tensor]:
    """Mean over minibatches (``order`` cut into ``batch_size`` pieces) of the squared gradient of
    each minibatch's mean cross-entropy, shaped like ``params``."""
    chunks = order.split(batch_size)
    total = squared_grads(model, params, ((split.x[idx].to(device), split.y[idx].to(device)) for idx in chunks))
    return [t / len(chunks) for t in total]


def importances(model: nn.Module, data: Data, config: Config, ctx: Context,
                params: list[nn.Parameter]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(F_f, F_D) at ``model``'s weights, in eval mode (module docstring)."""
    retain = data.need("retain", NAME)
    g = ctx.generator(16)
    keep = torch.randperm(len(retain), generator=g)[: config.samples]
    both = Split(torch.cat([retain.x[keep], data.forget.x]), torch.cat([retain.y[keep], data.forget.y]), "D")
    set_mode(model, False)
    return (importance(model, data.forget, torch.arange(len(data.forget)), config.batch_size, ctx.device, params),
            importance(model, both, torch.randperm(len(both), generator=g), config.batch_size, ctx.device, params))


def run(model: nn.Module, data: Data, config: Config, ctx: Context) -> nn.Module:
    params = trainable(model)
    f_forget, f_data = importances(model, data, config, ctx, params)
    with torch.no_grad():
        for p, ff, fd in zip(params, f_forget, f_data):
            factor = (config.dampening * fd / ff.clamp_min(torch.finfo(ff.dtype).tiny)).clamp(max=1.0)
            p.copy_(torch.where(ff > config.alpha * fd, p * factor, p))
    return model
