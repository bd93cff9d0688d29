"""SCRUB (Kurmanji et al. NeurIPS 2023): the original model is a teacher; per epoch, while
epoch < msteps, one pass of max-steps on the forget set (maximise KL(student || teacher)), then one
pass of min-steps on the retain set (gamma * CE + alpha * KL). Defaults from the authors' small-scale
setting: SGD lr 5e-4, momentum 0.9, weight decay 5e-4, 3 epochs, msteps 2, T 4, alpha 0.001,
gamma 0.99."""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from invwnn.unlearn.methods.loop import Context, Data, EpochsConfig, Sampler, make_optimizer, opt, run_steps, steps_for
from invwnn.audit.metrics import set_mode

NAME = "scrub"


@dataclass(frozen=True)
class Config(EpochsConfig):
    epochs: float = opt(3.0, "epochs over the data")
    lr: float = opt(5e-4, "learning rate")
    batch_size: int = opt(64, "minibatch size")
    msteps: int = opt(2, "scrub: epochs that include max-steps on the forget set")
    weight_decay: float = opt(5e-4, "weight decay")
    temperature: float = opt(4.0, "scrub: distillation temperature")
    alpha: float = opt(0.001, "scrub: weight of the KL term in min-steps")
    gamma: float = opt(0.99, "scrub: weight of the CE term in min-steps")


def kl(student: torch.Tensor, teacher: torch.Tensor, t: float) -> torch.Tensor:
    return F.kl_div(F.log_softmax(student / t, 1), F.softmax(teacher / t, 1), reduction="batchmean") * t * t


def run(model: nn.Module, data: Data, config: Config, ctx: Context) -> nn.Module:
    retain = data.need("retain", NAME)
    teacher = copy.deepcopy(model)  # only ever run under no_grad (a deep-copied TorchScript
    set_mode(teacher, False)        # module's parameters are no leaves: requires_grad_ would fail)
    optimizer = make_optimizer(config.optimizer, model.parameters(), config.lr, config.momentum,
                               config.weight_decay)
    fs = Sampler(data.forget, config.batch_size, ctx.generator(12), ctx.device)
    rs = Sampler(retain, config.batch_size, ctx.generator(13), ctx.device)

    def max_loss(_: int) -> torch.Tensor:
        x, _y = fs()
        with torch.no_grad():
            t = teacher(x)
        return -kl(model(x), t, config.temperature)

    def min_loss(_: int) -> torch.Tensor:
        x, y = rs()
        with torch.no_grad():
            t = teacher(x)
        out = model(x)
        return config.gamma * F.cross_entropy(out, y) + config.alpha * kl(out, t, config.temperature)

    for epoch in range(int(round(config.epochs))):
        if epoch < config.msteps:
            run_steps(model, max_loss, optimizer, steps_for(len(data.forget), config.batch_size, 1),
                      freeze_norms=False)
        run_steps(model, min_loss, optimizer, steps_for(len(retain), config.batch_size, 1),
                  freeze_norms=False, progress=ctx.progress, desc=f"{NAME} {epoch + 1}")
    return model
