"""InvWNN unlearning (BRIEF section 1): repeat T times: fine-tune on the forget set, recording K
snapshots of every coordinate ``every`` optimizer steps apart, predict each coordinate's value
``horizon`` snapshots before the window, write the predictions back.

The predictor sits behind the :class:`Rewinder` interface so this loop does not depend on the
learned model's API. Norm parameters are frozen during fine-tuning and never rewound; norm layers'
running statistics are frozen too.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Protocol

import torch
from torch import nn
import torch.nn.functional as F

from invwnn.inputs.splits import Split
from invwnn.unlearn.methods.loop import (PROBE_IMAGES, Context, Data, MethodConfig, Sampler, calibrate_lr,
                                 make_optimizer, opt, run_steps)
from invwnn.audit.metrics import accuracy
from invwnn.inputs.models import param_kinds
from invwnn.errors import InputError
from invwnn.rewind.predictor import (CheckpointError, Predictor, check_spacing, default_checkpoint, load_predictor,
                              predict_past)
from invwnn.train.windows import WindowError, check_context, context_columns, layer_context, step_context
from trajgen.nets import KINDS

NAME = "invwnn"
CHUNK = 1 << 22  # coordinates per rewinder call: bounds the (n, K) window buffer on big models
STEP_SIZE = 0.16  # rms logit change per forget step: lr 1e-4 on the bench CNN (docs/applier.md, "Calibrated steps")


class Rewinder(Protocol):
    """``rewind(windows (n, K) float32 oldest-first, kinds (n,) long codes into trajgen.nets.KINDS,
    layers (n,) long ids of each coordinate's parameter tensor or None) -> (n,)``: each
    coordinate's predicted value ``U`` snapshots before ``windows[:, 0]``."""

    def rewind(self, windows: torch.Tensor, kinds: torch.Tensor,
               layers: torch.Tensor | None = None) -> torch.Tensor: ...


@dataclass(frozen=True)
class LinearRewinder:
    """Least-squares line through the window, extrapolated ``horizon`` snapshot intervals before its
    first point: an analytic baseline that needs no training. ``horizon`` is a real number, so a
    "damped" line (horizon below the predictor's U) is tuned like any other hyperparameter."""

    horizon: float = 3.0

    def rewind(self, windows: torch.Tensor, kinds: torch.Tensor, layers: torch.Tensor | None = None) -> torch.Tensor:
        k = windows.shape[1]
        t = torch.arange(k, dtype=windows.dtype, device=windows.device) - (k - 1) / 2
        slope = windows @ t / (t @ t)
        return windows.mean(1) + slope * (-self.horizon - (k - 1) / 2)

    def describe(self) -> dict:
        return {"rewinder": "linear", "horizon": self.horizon}


@dataclass(frozen=True)
class NoRewinder:
    """The control "no rewind": keeps each window's newest value, i.e. the weights the forget
    fine-tuning reached. This removes the rewind *and adds* forget-set training; compare with
    :class:`ResetRewinder` for the effect of the rewind alone."""

    def rewind(self, windows: torch.Tensor, kinds: torch.Tensor, layers: torch.Tensor | None = None) -> torch.Tensor:
        return windows[:, -1].clone()

    def describe(self) -> dict:
        return {"rewinder": "none"}


@dataclass(frozen=True)
class ResetRewinder:
    """The control "repair only": writes back each window's first value, undoing the iteration's
    forget fine-tuning, so whatever the loop still changes comes from the rest of it (invwnn+'s
    retain repair steps). A rewinder that forgets must beat this."""

    def rewind(self, windows: torch.Tensor, kinds: torch.Tensor, layers: torch.Tensor | None = None) -> torch.Tensor:
        return windows[:, 0].clone()

    def describe(self) -> dict:
        return {"rewinder": "reset"}


def stretched(windows: torch.Tensor, past: torch.Tensor, stretch: float) -> torch.Tensor:
    """``past`` (n,) moved ``stretch`` times as far from each window's first value (windows: n, K)."""
    if stretch == 1.0:
        return past
    first = windows[:, 0]
    return first + (past - first) * stretch


@dataclass(frozen=True)
class LearnedRewinder:
    """The trained past-weight predictor (``invwnn train``); its K is fixed by its checkpoint, so
    the unlearning loop must record exactly ``k`` snapshots.

    ``horizon`` stretches the predicted rewind: each coordinate goes to ``w0 + (past - w0) *
    horizon / U`` (``w0``: the window's first value, ``U``: the predictor's trained horizon), so the
    learned rewinder has the same one length knob as :class:`LinearRewinder` and the two compare at
    equal tuning; None or ``U`` is the prediction itself. The *direction and relative size* of each
    coordinate's rewind stay the predictor's."""

    model: Predictor
    path: str
    horizon: float | None = None
    step: tuple[str, float] | None = None  # the loop's optimizer and lr: the "step" context

    @property
    def k(self) -> int:
        return self.model.config.k

    def context(self, windows: torch.Tensor, layers: torch.Tensor | None) -> torch.Tensor | None:
        """The predictor's context inputs (n, C) for these windows (None when it takes none)."""
        names = self.model.config.context
        if not names:
            return None
        if "layer" in names and layers is None:
            raise InputError(f"{self.path} needs each coordinate's layer (its \"layer\" context)")
        step = step_context(*self.step).numpy() if "step" in names else None
        layer = layer_context(windows, layers).cpu().numpy() if "layer" in names else None
        return torch.from_numpy(context_columns(names, windows.shape[0], step, layer)).to(windows.device)

    @property
    def stretch(self) -> float:
        return 1.0 if self.horizon is None else self.horizon / self.model.config.u

    def rewind(self, windows: torch.Tensor, kinds: torch.Tensor, layers: torch.Tensor | None = None) -> torch.Tensor:
        return stretched(windows, predict_past(self.model, windows, kinds, self.context(windows, layers)),
                         self.stretch)

    def describe(self) -> dict:
        return {"rewinder": "learned", "predictor": self.path, "k": self.k, "trained_horizon": self.model.config.u,
                "horizon": self.model.config.u if self.horizon is None else self.horizon,
                "target": self.model.config.target, "context": list(self.model.config.context)}


def load_rewinder(path: str | None, device: str | torch.device = "cpu", k: int = 15,
                  every: int | None = None, horizon: float | None = None,
                  step: tuple[str, float] | None = None) -> LearnedRewinder:
    """The learned rewinder from the checkpoint ``path`` (None: the predictor shipped in the
    package for window ``k``), its rewind stretched to ``horizon`` (see :class:`LearnedRewinder`).
    ``every``: the loop's optimizer steps between snapshots, which must be a spacing the checkpoint
    records having been trained on (None, or no record: not checked); ``step``: the loop's
    (optimizer, lr), which a predictor with the "step" context needs. Raises :class:`InputError`
    with a one-line reason when it cannot be loaded or used."""
    try:
        path = str(path) if path is not None else str(default_checkpoint(k))
        if every is not None:
            check_spacing(path, every)
        model = load_predictor(path, device)
        check_context(model.config.context)
    except (CheckpointError, WindowError) as err:
        raise InputError(f"--predictor: {err}") from None
    if "step" in model.config.context and step is None:
        raise InputError(f"--predictor {path} takes the optimizer and learning rate as context; "
                         "this loop cannot supply them")
    return LearnedRewinder(model, path, horizon, step)


@dataclass(frozen=True)
class Config(MethodConfig):
    """The step is calibrated on the model by default (:func:`invwnn.unlearn.methods.loop.calibrate_lr`):
    an Adam step moves every weight by about ``lr`` whatever its gradient, so a fixed lr that is a
    nudge to the 20.6k-parameter CNN demolishes a ResNet-18; ``step_size`` fixes instead how far
    one step moves the model's outputs (docs/applier.md, "Calibrated steps")."""

    iterations: int = opt(5, "unlearning iterations T (fine-tune, predict the past, write back)")
    snapshots: int = opt(15, "snapshots K recorded per iteration (the predictor's window)")
    every: int = opt(1, "optimizer steps between snapshots")
    warmup: int = opt(0, "unrecorded fine-tuning steps before each window")
    horizon: float = opt(3.0, "snapshots U to rewind before the window, a real number (linear: the line's "
                              "extrapolation; learned: stretches the predicted rewind by horizon/U)")
    optimizer: str = opt("adam", "sgd or adam")
    lr: float | None = opt(None, "learning rate (default: calibrated from --step-size on the model)")
    step_size: float = opt(STEP_SIZE, "without --lr: how far one optimizer step moves the outputs (rms change "
                                      "of the centred logits on 256 retain, else forget, images)")
    batch_size: int = opt(128, "minibatch size")
    target_forget_acc: float | None = opt(None, "stop once forget accuracy (percent) is at or below this "
                                                "[default: 0 when no forget class is in --retain, else none]")
    rewind_dtype: str = opt("float32", "precision of the learned rewind: float32, or bfloat16 (2.2x faster on "
                                       "CPUs with bfloat16 units, 0.5% of the rewind's length off)")


def probe_images(data: Data, ctx: Context) -> torch.Tensor:
    """The images a step calibration watches: a seeded :data:`PROBE_IMAGES` of the retain set (what
    unlearning must keep), else of the forget set."""
    split = data.retain if data.retain is not None and len(data.retain) else data.forget
    idx = torch.randperm(len(split), generator=ctx.generator(11))[:PROBE_IMAGES]
    return split.x[idx.sort().values].to(ctx.device)


def step_lr(name: str, lr: float | None, step_size: float, split: Split, batch_size: int, salt: int,
            model: nn.Module, params: list[nn.Parameter], data: Data, optimizer: str, ctx: Context,
            mask: list[torch.Tensor] | None = None) -> float:
    """``lr`` when given, else the lr calibrated from ``step_size`` along the cross-entropy gradient of
    one seeded ``split`` minibatch (recorded as ``ctx.calibration[name]``)."""
    if lr is not None:
        return lr
    x, y = Sampler(split, batch_size, ctx.generator(salt), ctx.device)()
    record = calibrate_lr(model, params, lambda: F.cross_entropy(model(x), y), probe_images(data, ctx),
                          optimizer, step_size, mask)
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
    for p, v in zip(params, _split(flat, params)):
        p.copy_(v)


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


def run(model: nn.Module, data: Data, config: Config, ctx: Context) -> nn.Module:
    """Unlearn ``data.forget`` from ``model`` in place; returns ``model``."""
    return rewind_loop(model, data, config, ctx)


def forget_target(config: Config, data: Data) -> float | None:
    """The forget accuracy (percent) that ends the loop: ``--target-forget-acc``, else 0 when the
    retain set holds none of the forget set's classes (a model trained without them, Retrain,
    predicts them for no image: every further iteration would only cost retain and test accuracy),
    else None (no target: nothing the data alone says tells where Retrain's forgetting lies)."""
    if config.target_forget_acc is not None:
        return config.target_forget_acc
    if data.retain is not None and len(data.retain) and \
            not set(data.forget_classes()) & set(data.retain.y.unique().tolist()):
        return 0.0
    return None


def rewindable(model: nn.Module) -> tuple[list[nn.Parameter], torch.Tensor]:
    """The parameters InvWNN rewinds (every one but norms) and each coordinate's kind code (n,)."""
    named = dict(model.named_parameters())
    kinds = {n: k for n, k in param_kinds(model).items() if k != "norm"}
    codes = torch.cat([torch.full((named[n].numel(),), KINDS.index(k), dtype=torch.long)
                       for n, k in kinds.items()])
    return [named[n] for n in kinds], codes


def rewind_loop(model: nn.Module, data: Data, config: Config, ctx: Context, *, name: str = NAME,
                mask: torch.Tensor | None = None, repair: Callable[[], None] | None = None) -> nn.Module:
    """The InvWNN loop on ``model`` in place. ``mask`` (n,) bool over :func:`rewindable`'s
    coordinates: only those are fine-tuned and rewound, the rest keep their values; ``repair()``
    runs after each rewind (invwnn+'s retain steps)."""
    if ctx.rewinder is None:
        raise InputError(f"{name} needs a rewinder (the learned predictor or --rewinder linear)")
    if config.snapshots < 2 or config.every < 1 or config.iterations < 1:
        raise InputError(f"{name} needs --snapshots >= 2, --every >= 1, --iterations >= 1")
    rewind_precision(config.rewind_dtype, ctx.device)  # refuses a bad --rewind-dtype before any work
    params, codes = rewindable(model)
    codes = codes.to(ctx.device)
    layers = torch.cat([torch.full((p.numel(),), i, dtype=torch.long) for i, p in enumerate(params)]).to(ctx.device)
    views = None if mask is None else _split(mask.to(ctx.device).float(), params)
    lr = step_lr("lr", config.lr, config.step_size, data.forget, config.batch_size, 7, model, params, data,
                 config.optimizer, ctx, views)
    opt_ = make_optimizer(config.optimizer, params, lr * ctx.step_scale)
    scale = ctx.step_scale
    sample = Sampler(data.forget, config.batch_size, ctx.generator(1), ctx.device)

    def loss_fn(_: int) -> torch.Tensor:
        x, y = sample()
        return F.cross_entropy(model(x), y)

    grad_hook = None
    if mask is not None:
        mask = mask.to(ctx.device)

        def grad_hook() -> None:
            for p, m in zip(params, views):
                if p.grad is not None:
                    p.grad.mul_(m)

    target = forget_target(config, data)
    k = config.snapshots
    history = torch.empty(k, codes.numel(), device=ctx.device)
    for it in range(config.iterations):
        if ctx.step_scale != scale:  # a guard backed off to the last good weights: a fresh, smaller step
            scale = ctx.step_scale
            opt_.state.clear()
            for group in opt_.param_groups:
                group["lr"] = lr * scale
        if config.warmup:
            run_steps(model, loss_fn, opt_, config.warmup, grad_hook=grad_hook)
        history[0] = _weights(params)

        def record(step: int) -> None:
            if (step + 1) % config.every == 0:
                history[(step + 1) // config.every] = _weights(params)

        run_steps(model, loss_fn, opt_, (k - 1) * config.every, on_step=record, grad_hook=grad_hook,
                  progress=ctx.progress, desc=f"{name} {it + 1}/{config.iterations}")
        start = time.perf_counter()
        with rewind_precision(config.rewind_dtype, ctx.device):
            if mask is None:
                _write(params, rewind_all(ctx.rewinder, history.T.contiguous(), codes, layers))
            else:
                flat = history[-1].clone()
                flat[mask] = rewind_all(ctx.rewinder, history[:, mask].T.contiguous(), codes[mask], layers[mask])
                _write(params, flat)
        ctx.rewind["seconds"] = ctx.rewind.get("seconds", 0.0) + time.perf_counter() - start
        ctx.rewind["coordinates"] = ctx.rewind.get("coordinates", 0) + int(codes.numel() if mask is None else mask.sum())
        ctx.rewind["calls"] = ctx.rewind.get("calls", 0) + 1
        if repair is not None:
            repair()
        if ctx.on_iteration is not None:
            ctx.on_iteration(it, model)
        if target is not None and accuracy(model, data.forget.x, data.forget.y, ctx.device) <= target:
            ctx.stop_reason = "target"
            break
    return model


def _split(flat: torch.Tensor, params: list[nn.Parameter]) -> list[torch.Tensor]:
    """``flat`` (sum of numels,) cut into views shaped like ``params``."""
    out, i = [], 0
    for p in params:
        out.append(flat[i: i + p.numel()].view_as(p))
        i += p.numel()
    return out


__all__ = ["Rewinder", "LinearRewinder", "NoRewinder", "ResetRewinder", "LearnedRewinder", "load_rewinder", "Config", "run",
           "rewind_loop", "rewindable"]
