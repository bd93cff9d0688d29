"""invwnn+: InvWNN with a light repair after each rewind (beyond the paper: forget-only rewinding
collapses retain and test accuracy on small networks before it reaches Retrain's forgetting).

Each iteration: fine-tune on the forget set recording K snapshots, rewind, then ``repair_steps``
optimizer steps of cross-entropy on retain minibatches over every rewindable weight. With forget
data only, the repair trains on the forget images' *neighbours* (:func:`neighbours`) instead.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from invwnn.unlearn.methods import invwnn
from invwnn.inputs.splits import Split
from invwnn.unlearn.methods.loop import Context, Data, Sampler, ce_loss, make_optimizer, opt, run_steps
from invwnn.audit.metrics import predict
from invwnn.errors import InputError

NAME = "invwnn+"
STEP_SIZE = 2.6  # rms logit change per forget step: lr 1.6e-3 on the bench CNN
REPAIR_STEP_SIZE = 1.15  # per repair step: repair lr 8.5e-4 on the bench CNN
REPAIR_DATA = ("retain", "neighbours")
NEIGHBOUR_BYTES = 1 << 28  # the neighbour images held at once (float32): 21k at 3x32x32


@dataclass(frozen=True)
class Config(invwnn.Config):
    """InvWNN's settings with a 5-snapshot window (4 forget steps an iteration, not 14) and a larger
    step, which the repair makes safe. The steps, repair steps and batch size are the medians of the
    six scenarios' tuned choices (invwnn/bench/tuned/*.json); iterations stay 12 (the median, 24,
    doubles the time)."""

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
    repair_on: str | None = opt(None, "invwnn+: what the repair steps train on: retain (--retain) or neighbours "
                                      "(shifted copies of the forget images labelled by the model before "
                                      "unlearning: forget data only) [default: retain when given, else neighbours]")
    neighbour_copies: int = opt(4, "invwnn+ neighbours: shifted copies of each forget image")
    neighbour_shift: float = opt(0.07, "invwnn+ neighbours: largest shift of a copy, a share of the image side "
                                       "(at least 1 pixel)")


def shifted(x: torch.Tensor, source: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, pad: int) -> torch.Tensor:
    """Copies of images ``x`` (N, C, H, W): copy ``i`` is ``x[source[i]]`` moved by (``dy[i]``,
    ``dx[i]``) pixels in [-pad, pad], zero filled; (M, C, H, W) for M = len(source)."""
    h, w = x.shape[2:]
    padded = F.pad(x, (pad, pad, pad, pad))  # padded once per image, not per copy
    return torch.stack([padded[j, :, pad + a: pad + a + h, pad + b: pad + b + w]
                        for j, a, b in zip(source.tolist(), dy.tolist(), dx.tolist())])


def neighbours(model: nn.Module, forget: Split, copies: int, shift: float, g: torch.Generator,
               device: str) -> tuple[Split, torch.Tensor, torch.Tensor]:
    """A stand-in for retain data built from the forget set alone: ``copies`` copies of each forget
    image, each shifted by up to ``shift`` of the image side (at least one pixel, never zero),
    labelled with ``model``'s prediction on the copy (call it before unlearning). A prediction that
    holds only because the image was memorised rarely survives the shift; one the model has learnt
    in general does, and the repair keeps it. At most :data:`NEIGHBOUR_BYTES` of images (a seeded
    sample of the copies). Returns the split, each copy's index into ``forget``, and which copies
    are *near*: shifted at most half as far (rounded up)."""
    if copies < 1 or not 0 <= shift < 0.5:
        raise InputError("--neighbour-copies must be >= 1 and --neighbour-shift in [0, 0.5)")
    total, most = len(forget) * copies, max(1, NEIGHBOUR_BYTES // (forget.x[0].numel() * 4))
    source = (torch.arange(total) if total <= most else torch.randperm(total, generator=g)[:most]) % len(forget)
    pad = max(1, round(shift * max(forget.x.shape[2:])))
    grid = torch.cartesian_prod(torch.arange(-pad, pad + 1), torch.arange(-pad, pad + 1))
    offsets = grid[(grid != 0).any(1)][torch.randint(len(grid) - 1, (len(source),), generator=g)]
    x = shifted(forget.x, source, offsets[:, 0], offsets[:, 1], pad)
    y = predict(model, x, device).argmax(1)
    near = offsets.abs().amax(1) <= (pad + 1) // 2
    return Split(x, y, f"shifted copies of {forget.source}"), source, near


def repair_data(config: Config, data: Data, model: nn.Module, ctx: Context) -> tuple[Split, float | None]:
    """The split the repair steps train on (see ``Config.repair_on``) and, for neighbours, the share
    (percent) of the near ones that keep their forget label, also recorded with how many in
    ``ctx.calibration["neighbours"]``: an estimate of Retrain's forget accuracy
    (scripts/neighbour_estimate.py measures how close)."""
    kind = config.repair_on or ("retain" if data.retain is not None and len(data.retain) else "neighbours")
    if kind not in REPAIR_DATA:
        raise InputError(f"--repair-on takes {' or '.join(REPAIR_DATA)}, got {kind!r}")
    if kind == "retain":
        return data.need("retain", NAME), None
    split, source, near = neighbours(model, data.forget, config.neighbour_copies, config.neighbour_shift,
                                     ctx.generator(12), ctx.device)
    keeps = (split.y == data.forget.y[source])[near if near.any() else slice(None)]  # a tiny sample may hold no near copy
    kept = 100.0 * keeps.float().mean().item()
    ctx.calibration["neighbours"] = {"images": len(split), "keep_forget_label": round(kept, 1)}
    if ctx.warn is not None and len(labels := data.forget_classes()) == 1 and len(data.classes) > 1:
        ctx.warn(one_class_warning(data.classes[labels[0]], kept))
    return split, round(kept, 1)


def one_class_warning(label: str, kept: float) -> str:
    """What to tell a user whose forget images all carry ``label`` while the repair trains on their
    neighbours, ``kept`` percent of the near ones labelled ``label`` by the model."""
    return (f"every forget image is labelled {label!r} and, with no --retain, the repair trains on their shifted "
            f"copies, {kept:.0f}% of which the model calls {label!r}: if the whole class is to go, the repair "
            "teaches it back (on the architecture panel's class cells it went at most 0.14 of the way); give "
            "--retain (with it invwnn+ forgot the class on all four panel networks)")


def run(model: nn.Module, data: Data, config: Config, ctx: Context) -> nn.Module:
    """Unlearn ``data.forget`` from ``model`` in place; returns ``model``."""
    if config.repair_steps < 0:
        raise InputError("--repair-steps must be >= 0")
    params = invwnn.rewindable(model)[0]
    repair = None
    if config.repair_steps:
        retain, estimate = repair_data(config, data, model, ctx)
        if estimate is not None and invwnn.forget_target(config, data) is None:
            # the share of the forget set the model gets right beyond memorising it: an estimate of
            # Retrain's forget accuracy, so the loop stops there instead of overshooting
            config = replace(config, target_forget_acc=estimate)
        sample = Sampler(retain, config.repair_batch_size, ctx.generator(2), ctx.device)
        lr = invwnn.step_lr("repair_lr", config.repair_lr, config.repair_step_size, retain, config.repair_batch_size,
                            8, model, params, data, config.optimizer, ctx)
        opt_ = make_optimizer(config.optimizer, params, lr)

        def repair() -> None:
            run_steps(model, ce_loss(model, sample), opt_, config.repair_steps)

    return invwnn.run(model, data, config, ctx, name=NAME, repair=repair)
