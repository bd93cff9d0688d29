"""InvWNN unlearning: repeat T times: fine-tune on the forget set, recording K
snapshots of every coordinate ``every`` optimizer steps apart, predict each coordinate's value
``horizon`` snapshots before the window, write the predictions back.

Which rewinder predicts is a setting (``rewinder``, ``predictor``), made by
:func:`invwnn.rewind.make_rewinder`. Norm parameters are frozen during fine-tuning and never
rewound; norm layers' running statistics are frozen too.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
import torch.nn.functional as F

from invwnn.inputs.splits import Split
from invwnn.unlearn.methods.loop import (PROBE_IMAGES, Context, Data, MethodConfig, Sampler, calibrate_lr,
                                         ce_loss, make_optimizer, opt, run_steps)
from invwnn.audit.metrics import accuracy
from invwnn.errors import InputError
from invwnn.rewind import USER_REWINDERS, Rewinder, make_rewinder
from invwnn.rewind.features import rewound
from invwnn.unlearn.estimate import Estimate, estimate

NAME = "invwnn"
CHUNK = 1 << 22  # coordinates per rewinder call: bounds the (n, K) window buffer on big models
STOP_IMAGES = 2048  # forget images whose accuracy the stop watches (a seeded sample of a larger set)
STEP_SIZE = 0.16  # rms logit change per forget step: lr 1e-4 on the bench CNN (docs/applier.md, "Calibrated steps")


@dataclass(frozen=True)
class Config(MethodConfig):
    """The step is calibrated on the model by default (:func:`invwnn.unlearn.methods.loop.calibrate_lr`):
    an Adam step moves every weight by about ``lr`` whatever its gradient, so a fixed lr that is a
    nudge to the 20.6k-parameter CNN demolishes a ResNet-18; ``step_size`` fixes instead how far
    one step moves the model's outputs (docs/applier.md, "Calibrated steps")."""

    iterations: int = opt(5, "unlearning iterations T (fine-tune, predict the past, write back)")
    snapshots: int = opt(15, "snapshots K recorded per iteration (the predictor's window)")
    every: int = opt(1, "optimizer steps between snapshots")
    horizon: float = opt(3.0, "snapshots U to rewind before the window, a real number (linear: the line's "
                              "extrapolation; learned, meta: stretches the predicted rewind by horizon / its own U)")
    optimizer: str = opt("adam", "sgd or adam")
    lr: float | None = opt(None, "learning rate (default: calibrated from --step-size on the model)")
    step_size: float = opt(STEP_SIZE, "without --lr: how far one optimizer step moves the outputs (rms change "
                                      "of the centred logits on 256 retain, else forget, images)")
    batch_size: int = opt(128, "minibatch size")
    target_forget_acc: float | None = opt(None, "stop once forget accuracy (percent) is at or below this "
                                                "[default: an estimate of Retrain's, docs/applier.md]")
    rewind_dtype: str = opt("float32", "precision of the learned rewind: float32, or bfloat16 (2.2x faster on "
                                       "CPUs with bfloat16 units, about 17x slower on CPUs without them; 0.5% of the "
                                       "rewind's length off)")
    rewinder: str = opt("learned", "what predicts the past: learned (a trained predictor, or a meta rewinder's "
                                   "checkpoint given with --predictor), meta (the rewinder of invwnn meta-train; "
                                   "default: the shipped one), linear (a least-squares line through the window "
                                   "extrapolated --horizon snapshots back)", choices=USER_REWINDERS)
    predictor: str | None = opt(None, "checkpoint of the learned or meta rewinder: a file (invwnn train, invwnn "
                                      "meta-train) or a shipped one's name (default-k5, episodes, twins48, meta, ...; "
                                      "docs/predictor.md) [default: the shipped one for --snapshots]")


def rewinder_for(config: MethodConfig, device: str = "cpu") -> Rewinder | None:
    """The rewinder ``config`` asks for (None for a method without one)."""
    return make_rewinder(config.rewinder, config, device, config.predictor) if isinstance(config, Config) else None


def probe_images(data: Data, ctx: Context) -> torch.Tensor:
    """The images a step calibration watches: a seeded :data:`PROBE_IMAGES` of the retain set (what
    unlearning must keep), else of the forget set."""
    split = data.retain if data.retain is not None and len(data.retain) else data.forget
    idx = torch.randperm(len(split), generator=ctx.generator(11))[:PROBE_IMAGES]
    return split.x[idx.sort().values].to(ctx.device)


def step_lr(name: str, lr: float | None, step_size: float, split: Split, batch_size: int, salt: int,
            model: nn.Module, params: list[nn.Parameter], data: Data, optimizer: str, ctx: Context) -> float:
    """``lr`` when given, else the lr calibrated from ``step_size`` along the cross-entropy gradient of
    one seeded ``split`` minibatch (recorded as ``ctx.calibration[name]``)."""
    if lr is not None:
        return lr
    x, y = Sampler(split, batch_size, ctx.generator(salt), ctx.device)()
    record = calibrate_lr(model, params, lambda: F.cross_entropy(model(x), y), probe_images(data, ctx),
                          optimizer, step_size)
    ctx.calibration[name] = record
    return record["lr"]


REWIND_DTYPES = ("float32", "bfloat16")


def rewind_precision(dtype: str, device: str):
    """The autocast context the rewind runs in (float32: none)."""
    if dtype not in REWIND_DTYPES:
        raise InputError(f"--rewind-dtype takes {' or '.join(REWIND_DTYPES)}, got {dtype!r}")
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")


def _weights(params: list[nn.Parameter]) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in params])


@torch.no_grad()
def _write(params: list[nn.Parameter], flat: torch.Tensor) -> None:
    """Copy ``flat`` (sum of numels,) into ``params``, in order."""
    i = 0
    for p in params:
        p.copy_(flat[i: i + p.numel()].view_as(p))
        i += p.numel()


@torch.no_grad()
def rewind_all(rewinder: Rewinder, windows: torch.Tensor, kinds: torch.Tensor,
               layers: torch.Tensor | None = None) -> torch.Tensor:
    """Predicted past of every coordinate: ``windows`` (n, K), ``kinds`` (n,), ``layers`` (n,) ->
    (n,), in chunks of CHUNK coordinates (each chunk one batched call; a layer context is computed
    per chunk, so over a sample of a layer bigger than CHUNK)."""
    out = torch.empty(windows.shape[0], dtype=windows.dtype, device=windows.device)
    for i in range(0, windows.shape[0], CHUNK):
        part = None if layers is None else layers[i: i + CHUNK]
        out[i: i + CHUNK] = rewinder.rewind(windows[i: i + CHUNK], kinds[i: i + CHUNK], part)
    if not torch.isfinite(out).all():
        raise InputError("the rewinder predicted non-finite weights")
    return out


def rewindable(model: nn.Module) -> tuple[list[nn.Parameter], torch.Tensor, torch.Tensor]:
    """The parameters InvWNN rewinds and each coordinate's kind code and layer id (n,)
    (:func:`invwnn.rewind.features.rewound`)."""
    names, codes, layers = rewound(model)
    named = dict(model.named_parameters())
    return [named[n] for n in names], codes, layers


def run(model: nn.Module, data: Data, config: Config, ctx: Context, *, name: str = NAME,
        repair: Callable[[], None] | None = None, estimated: Estimate | None = None) -> nn.Module:
    """Unlearn ``data.forget`` from ``model`` in place with the InvWNN loop, rewinding with
    ``ctx.rewinder`` (None: the one ``config`` asks for); ``repair()`` runs after each rewind
    (invwnn+'s retain steps). The loop stops once forget accuracy (on a seeded
    :data:`STOP_IMAGES` forget images) is at or below ``estimated`` (None: estimated here,
    :func:`invwnn.unlearn.estimate.estimate`), recorded in ``ctx.estimate``. Returns ``model``."""
    if config.snapshots < 2 or config.every < 1 or config.iterations < 1:
        raise InputError(f"{name} needs --snapshots >= 2, --every >= 1, --iterations >= 1")
    rewind_precision(config.rewind_dtype, ctx.device)  # refuses a bad --rewind-dtype before any work
    rewinder = ctx.rewinder if ctx.rewinder is not None else rewinder_for(config, ctx.device)
    params, codes, layers = rewindable(model)
    codes, layers = codes.to(ctx.device), layers.to(ctx.device)
    lr = step_lr("lr", config.lr, config.step_size, data.forget, config.batch_size, 7, model, params, data,
                 config.optimizer, ctx)
    opt_ = make_optimizer(config.optimizer, params, lr * ctx.step_scale)
    scale = ctx.step_scale
    forget_sampler = Sampler(data.forget, config.batch_size, ctx.generator(1), ctx.device)
    loss_fn = ce_loss(model, forget_sampler)
    if estimated is None:
        estimated = estimate(model, data, config.target_forget_acc, ctx.device, ctx.generator(13))
    ctx.estimate = estimated.to_dict()
    watched = data.forget if len(data.forget) <= STOP_IMAGES else \
        data.forget.subset(torch.randperm(len(data.forget), generator=ctx.generator(16))[:STOP_IMAGES].sort().values)
    k = config.snapshots
    history = torch.empty(k, codes.numel(), device=ctx.device)
    for it in range(config.iterations):
        if ctx.step_scale != scale:  # a guard backed off to the last good weights: a fresh, smaller step
            scale = ctx.step_scale
            opt_.state.clear()
            for group in opt_.param_groups:
                group["lr"] = lr * scale
        history[0] = _weights(params)

        def record(step: int) -> None:
            if (step + 1) % config.every == 0:
                history[(step + 1) // config.every] = _weights(params)

        run_steps(model, loss_fn, opt_, (k - 1) * config.every, on_step=record,
                  progress=ctx.progress, desc=f"{name} {it + 1}/{config.iterations}")
        start = time.perf_counter()
        with rewind_precision(config.rewind_dtype, ctx.device):
            _write(params, rewind_all(rewinder, history.T, codes, layers))
        for key, add in (("seconds", time.perf_counter() - start), ("coordinates", codes.numel()), ("calls", 1)):
            ctx.rewind[key] = ctx.rewind.get(key, 0) + add
        if repair is not None:
            repair()
        if ctx.on_iteration is not None:
            ctx.on_iteration(it, model)
        ctx.work["forget_images"] = forget_sampler.drawn
        if accuracy(model, watched.x, watched.y, ctx.device) <= estimated.forget_acc:
            ctx.stop_reason = "target"
            break
    return model


__all__ = ["Config", "run", "rewindable", "rewinder_for"]
