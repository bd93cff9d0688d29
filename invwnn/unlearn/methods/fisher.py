"""Fisher forgetting (Golatkar et al. CVPR 2020), as in the SCRUB authors' ``fisher_new``: diagonal
Fisher F of the retain set from per-sample gradients, then theta + sqrt(var) * N(0, 1) with
var = alpha * min(1 / (F + 1e-8), 1e3), averaged over a kernel's input dimensions and multiplied by
10 for 1-D tensors and the classifier's output rows. Per-sample gradients over ``samples`` retain
images (a random subset) keep it affordable."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from invwnn.unlearn.methods.loop import Context, Data, MethodConfig, opt, squared_grads, trainable
from invwnn.audit.metrics import set_mode

NAME = "fisher"


@dataclass(frozen=True)
class Config(MethodConfig):
    alpha: float = opt(1e-6, "fisher: noise scale on the inverse Fisher")
    samples: int = opt(1000, "fisher: retain images used to estimate the Fisher")


def run(model: nn.Module, data: Data, config: Config, ctx: Context) -> nn.Module:
    retain = data.need("retain", NAME)
    g = ctx.generator(14)
    idx = torch.randperm(len(retain), generator=g)[: config.samples]
    params = trainable(model)
    set_mode(model, False)
    fisher = squared_grads(model, params, ((retain.x[i: i + 1].to(ctx.device), retain.y[i: i + 1].to(ctx.device))
                                           for i in tqdm(idx.tolist(), desc=NAME, disable=not ctx.progress, leave=False)))
    n_classes = len(data.classes)
    with torch.no_grad():
        for p, f in zip(params, fisher):
            var = (1.0 / (f / len(idx) + 1e-8)).clamp(max=1e3) * config.alpha
            if p.ndim > 1:
                var = var.reshape(p.shape[0], -1).mean(1).view(-1, *([1] * (p.ndim - 1))).expand_as(p)
            if p.ndim == 1 or p.shape[0] == n_classes:
                var = var * 10
            noise = torch.randn(p.shape, generator=g).to(p.device)
            p.add_(var.sqrt() * noise)
    return model
