"""RL (random labels) and SalUn (Fan et al. 2024): train on the forget set with random wrong labels
together with the retain set; SalUn updates only the most salient share of weights, saliency being
|gradient of the forget loss| at the original weights (one global threshold). Defaults: SalUn's
SGD lr 0.01, 10 epochs (counted over the forget set, one forget and one retain batch per step),
50% sparsity."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from invwnn.audit.metrics import set_mode
from invwnn.inputs.splits import Split
from invwnn.unlearn.methods.loop import Context, Data, EpochsConfig, Sampler, opt, train_epochs, trainable

NAME = "random-label"


@dataclass(frozen=True)
class Config(EpochsConfig):
    pass


@dataclass(frozen=True)
class SalUnConfig(Config):
    sparsity: float = opt(0.5, "salun: share of weights left frozen (least salient)")


def random_wrong_labels(y: torch.Tensor, n_classes: int, g: torch.Generator) -> torch.Tensor:
    """A uniformly random label different from each true label."""
    shift = torch.randint(1, n_classes, y.shape, generator=g)
    return (y + shift) % n_classes


def saliency_masks(model: nn.Module, forget: Split, params: list[nn.Parameter], keep: float,
                   device: str) -> list[torch.Tensor]:
    """SalUn's weight saliency: bool masks shaped like ``params``, True for the ``keep`` share of
    coordinates with the largest |gradient of the summed forget loss| (one global threshold). The
    model is put in eval mode so that measuring does not move norm layers' running statistics."""
    set_mode(model, False)
    grads = [torch.zeros_like(p) for p in params]
    for i in range(0, len(forget), 256):
        x, y = forget.x[i: i + 256].to(device), forget.y[i: i + 256].to(device)
        loss = F.cross_entropy(model(x), y, reduction="sum")
        for g, d in zip(grads, torch.autograd.grad(loss, params, allow_unused=True)):
            if d is not None:
                g += d
    flat = torch.cat([g.abs().reshape(-1) for g in grads])
    k = int(round(keep * flat.numel()))
    if k <= 0:
        return [torch.zeros_like(g, dtype=torch.bool) for g in grads]
    threshold = flat.kthvalue(flat.numel() - k + 1).values
    return [g.abs() >= threshold for g in grads]


def run(model: nn.Module, data: Data, config: Config, ctx: Context, masks=None) -> nn.Module:
    name = "salun" if masks is not None else NAME
    retain = data.need("retain", name)
    labels = random_wrong_labels(data.forget.y, len(data.classes), ctx.generator(7))
    fs = Sampler(data.forget, config.batch_size, ctx.generator(8), ctx.device, labels=labels)
    rs = Sampler(retain, config.batch_size, ctx.generator(9), ctx.device)
    params = trainable(model)

    def loss(_: int) -> torch.Tensor:
        (xf, yf), (xr, yr) = fs(), rs()
        return F.cross_entropy(model(torch.cat([xf, xr])), torch.cat([yf, yr]))

    def mask_grads() -> None:
        for p, m in zip(params, masks):
            if p.grad is not None:
                p.grad.mul_(m)

    train_epochs(model, loss, config, len(data.forget), ctx, name, params=params,
                 grad_hook=mask_grads if masks is not None else None)
    return model


def run_salun(model: nn.Module, data: Data, config: SalUnConfig, ctx: Context) -> nn.Module:
    data.need("retain", "salun")
    masks = saliency_masks(model, data.forget, trainable(model), 1 - config.sparsity, ctx.device)
    return run(model, data, config, ctx, masks=[m.float() for m in masks])
