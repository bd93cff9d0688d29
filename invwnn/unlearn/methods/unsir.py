"""UNSIR (Tarun et al., TNNLS 2023): per forgotten class learn an error-maximising noise batch
(Adam lr 0.1, 40 steps, loss = -CE(model(N), y_f) + 0.1 * mean ||N||^2), impair for one epoch at a
high lr on noise + a retain subset (up to 1000 images per class), repair for one epoch on the
retain subset alone. Meant for whole-class forgetting; on a random-sample forget set every class
present in it gets a noise batch."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from invwnn.inputs.splits import Split
from invwnn.unlearn.methods.loop import Context, Data, MethodConfig, Sampler, ce_loss, make_optimizer, opt, run_steps, steps_for
from invwnn.audit.metrics import set_mode

NAME = "unsir"


@dataclass(frozen=True)
class Config(MethodConfig):
    noise_size: int = opt(256, "unsir: noise images per forgotten class")
    noise_steps: int = opt(40, "unsir: Adam steps to learn the noise")
    noise_lr: float = opt(0.1, "unsir: learning rate of the noise")
    noise_l2: float = opt(0.1, "unsir: weight of the noise's L2 penalty")
    impair_lr: float = opt(0.02, "unsir: Adam lr of the impair epoch")
    repair_lr: float = opt(0.01, "unsir: Adam lr of the repair epoch")
    retain_per_class: int = opt(1000, "unsir: retain images per class in the subset")
    batch_size: int = opt(256, "minibatch size")


def error_maximising_noise(model: nn.Module, label: int, shape, config: Config, ctx: Context) -> torch.Tensor:
    set_mode(model, False)
    g = ctx.generator(100 + label)
    noise = torch.randn((config.noise_size, *shape), generator=g).to(ctx.device).requires_grad_(True)
    y = torch.full((config.noise_size,), label, device=ctx.device)
    opt_ = torch.optim.Adam([noise], lr=config.noise_lr)
    for _ in range(config.noise_steps):
        loss = -F.cross_entropy(model(noise), y) + config.noise_l2 * noise.pow(2).flatten(1).sum(1).mean()
        opt_.zero_grad()
        loss.backward()
        opt_.step()
    model.zero_grad(set_to_none=True)
    return noise.detach().cpu()


def retain_subset(retain: Split, per_class: int, g: torch.Generator) -> Split:
    idx = torch.randperm(len(retain), generator=g)
    keep, counts = [], {}
    for i in idx.tolist():
        c = int(retain.y[i])
        if counts.get(c, 0) < per_class:
            counts[c] = counts.get(c, 0) + 1
            keep.append(i)
    return retain.subset(torch.tensor(keep))


def run(model: nn.Module, data: Data, config: Config, ctx: Context) -> nn.Module:
    retain = retain_subset(data.need("retain", NAME), config.retain_per_class, ctx.generator(15))
    shape = tuple(data.forget.x.shape[1:])
    noises = [error_maximising_noise(model, c, shape, config, ctx) for c in data.forget_classes()]
    labels = torch.cat([torch.full((config.noise_size,), c) for c in data.forget_classes()])
    impair = Split(torch.cat([torch.cat(noises), retain.x]), torch.cat([labels, retain.y]), "noise+retain")
    for split, lr, salt in ((impair, config.impair_lr, 16), (retain, config.repair_lr, 17)):
        sample = Sampler(split, config.batch_size, ctx.generator(salt), ctx.device)
        run_steps(model, ce_loss(model, sample), make_optimizer("adam", model.parameters(), lr),
                  steps_for(len(split), config.batch_size, 1), freeze_norms=False,
                  progress=ctx.progress, desc=NAME)
    return model
