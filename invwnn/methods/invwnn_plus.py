"""invwnn+: InvWNN with a light retain repair after each rewind and, optionally, rewinding only the
coordinates most salient to the forget loss. Goes beyond the paper (issue 8): forget-only rewinding
collapses retain and test accuracy on small networks before it reaches Retrain's forgetting; a few
retain-set steps between rewinds undo that collateral damage.

Each iteration: fine-tune on the forget set recording K snapshots (only the masked coordinates
move), rewind (only the masked coordinates are written), then ``repair_steps`` optimizer steps of
cross-entropy on retain minibatches over every rewindable weight, with their own optimizer.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from invwnn.methods import invwnn
from invwnn.methods.loop import Context, Data, Sampler, make_optimizer, opt, run_steps, saliency_masks
from invwnn.models import InputError

NAME = "invwnn+"
STEP_SIZE = 2.6  # rms logit change per forget step: lr 1.6e-3 on the bench CNN
REPAIR_STEP_SIZE = 1.15  # per repair step: repair lr 8.5e-4 on the bench CNN


@dataclass(frozen=True)
class Config(invwnn.Config):
    """InvWNN's settings with a 5-snapshot window (rewinding 3 snapshots back then costs 4 steps, not
    14; the shipped K = 5 predictor matches it) and a larger lr, which the repair steps make safe.
    lr, repair_lr, repair_steps and batch size are the medians of the six scenarios' tuned choices
    (invwnn/bench/tuned/*.json), not one scenario's; iterations stay 12 (the median, 24, doubles
    the time) and `invwnn apply`'s guard stops a run that starts to break the model."""

    iterations: int = opt(12, "unlearning iterations T (fine-tune, predict the past, write back)")
    snapshots: int = opt(5, "snapshots K recorded per iteration (the predictor's window)")
    step_size: float = opt(STEP_SIZE, "without --lr: how far one optimizer step moves the outputs (rms "
                                      "change of the centred logits on 256 retain, else forget, images)")
    repair_steps: int = opt(8, "invwnn+: retain-set optimizer steps after each rewind (needs --retain)")
    repair_lr: float | None = opt(None, "invwnn+: learning rate of the repair steps (same optimizer kind; "
                                        "default: calibrated from --repair-step-size)")
    repair_step_size: float = opt(REPAIR_STEP_SIZE, "invwnn+: without --repair-lr, how far one repair step "
                                                    "moves the outputs on 256 retain images")
    repair_batch_size: int = opt(128, "invwnn+: retain minibatch size of the repair steps")
    mask: str | None = opt(None, "invwnn+: saliency:F rewinds only the fraction F of coordinates with the "
                                 "largest forget-loss gradient at the original weights")


def mask_fraction(spec: str | None) -> float | None:
    """``"saliency:F"`` -> F in (0, 1]; None -> None (rewind every coordinate)."""
    if spec is None:
        return None
    kind, _, value = spec.partition(":")
    try:
        fraction = float(value)
    except ValueError:
        fraction = -1.0
    if kind != "saliency" or not 0 < fraction <= 1:
        raise InputError(f"--mask takes saliency:F with 0 < F <= 1, got {spec!r}")
    return fraction


def run(model: nn.Module, data: Data, config: Config, ctx: Context) -> nn.Module:
    """Unlearn ``data.forget`` from ``model`` in place; returns ``model``."""
    fraction = mask_fraction(config.mask)
    if config.repair_steps < 0:
        raise InputError("--repair-steps must be >= 0")
    params, _ = invwnn.rewindable(model)
    repair = None
    if config.repair_steps:
        retain = data.need("retain", NAME)
        sample = Sampler(retain, config.repair_batch_size, ctx.generator(2), ctx.device)
        lr = invwnn.step_lr("repair_lr", config.repair_lr, config.repair_step_size, retain, config.repair_batch_size,
                            8, model, params, data, config.optimizer, ctx)
        opt_ = make_optimizer(config.optimizer, params, lr)

        def loss_fn(_: int) -> torch.Tensor:
            x, y = sample()
            return F.cross_entropy(model(x), y)

        def repair() -> None:
            run_steps(model, loss_fn, opt_, config.repair_steps)

    mask = None
    if fraction is not None:
        masks = saliency_masks(model, data.forget, params, fraction, ctx.device)
        mask = torch.cat([m.reshape(-1) for m in masks])
    return invwnn.rewind_loop(model, data, config, ctx, name=NAME, mask=mask, repair=repair)
