"""What every method shares: the data it is given, its run context, its config base class, and the
one fine-tuning loop that methods hand a loss to."""
from __future__ import annotations

import dataclasses
import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from invwnn.inputs.splits import Split
from invwnn.audit.metrics import set_mode
from invwnn.inputs.archs import param_kinds
from invwnn.errors import InputError
from invwnn.rewind.rewinders import Rewinder


def trains(optimizer: torch.optim.Optimizer, params: set[int]) -> bool:
    """Does ``optimizer`` step any parameter whose ``id`` is in ``params``? (An optimizer-step
    post-hook fires for every optimizer in the process.)"""
    return any(id(p) in params for g in optimizer.param_groups for p in g["params"])


@dataclass(frozen=True)
class MethodConfig:
    """Base of every method's frozen config. Field metadata ``help`` documents the CLI flag."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MethodConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise InputError(f"{cls.__module__.rsplit('.', 1)[-1]}: unknown setting(s) {', '.join(sorted(unknown))}")
        return cls(**d)


def opt(default, help: str, choices: tuple[str, ...] | None = None):
    """A config field with its flag's help text (and the values its flag accepts, when ``choices``)."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class EpochsConfig(MethodConfig):
    """Settings shared by the methods that train for some epochs with SGD or Adam."""

    epochs: float = opt(10.0, "epochs over the data")
    optimizer: str = opt("sgd", "sgd or adam")
    lr: float = opt(0.01, "learning rate")
    momentum: float = opt(0.9, "SGD momentum")
    batch_size: int = opt(128, "minibatch size")


@dataclass
class Data:
    """Everything a method may use. Only ``forget`` is always present."""

    forget: Split
    classes: tuple[str, ...]
    retain: Split | None = None
    test: Split | None = None
    mnemonic: torch.Tensor | None = None  # (n_classes, C, H, W) codes in [0, 1]

    def need(self, what: str, method: str) -> Split:
        split = getattr(self, what)
        if split is None or len(split) == 0:
            raise InputError(f"method {method} needs --{what} DIR (an ImageFolder or tensor file)")
        return split

    def forget_classes(self) -> list[int]:
        return sorted(set(self.forget.y.tolist()))


@dataclass
class Context:
    """How to run: ``device``, ``seed``, progress bars, the rewinder invwnn and invwnn+ use instead
    of their config's (the bench's controls), a fresh-model factory for retrain, and a hook
    ``on_iteration(i, model)`` for iterative methods. A method that stops before its budget sets
    ``stop_reason``; one that sees its result will probably be wrong says why through ``warn``."""

    device: str = "cpu"
    seed: int = 0
    progress: bool = False
    rewinder: Rewinder | None = None
    rebuild: Callable[[], nn.Module] | None = None
    on_iteration: Callable[[int, nn.Module], None] | None = None
    warn: Callable[[str], None] | None = None
    stop_reason: str | None = None
    # Written by the method: the steps it calibrated (name -> calibrate_lr's record), for the report.
    calibration: dict[str, dict] = dataclasses.field(default_factory=dict)
    # Multiplies the method's calibrated or given step; a guard that backs off halves it.
    step_scale: float = 1.0
    # Written by invwnn's loop: seconds spent predicting the past, coordinates predicted, calls.
    rewind: dict[str, float] = dataclasses.field(default_factory=dict)
    # Written by invwnn and invwnn+: images fed forward and backward, by what they trained on.
    work: dict[str, int] = dataclasses.field(default_factory=dict)
    # Written by invwnn's loop: its estimate of Retrain's forget accuracy (Estimate.to_dict()).
    estimate: dict | None = None
    # Written by invwnn+'s restore phase: where it started, ended and why.
    restore: dict | None = None

    def generator(self, salt: int = 0) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1000003 + salt)


def batches(n: int, batch_size: int, g: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless shuffled index batches, reshuffled each epoch; the last batch of an epoch may be
    short (forget sets can be smaller than one batch)."""
    while True:
        yield from torch.randperm(n, generator=g).split(batch_size)


def steps_for(n: int, batch_size: int, epochs: float) -> int:
    return max(1, round(epochs * -(-n // batch_size)))


def make_optimizer(name: str, params, lr: float, momentum: float = 0.9,
                   weight_decay: float = 0.0) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    raise InputError(f"unknown optimizer {name!r}; valid: sgd, adam")


@contextmanager
def training(model: nn.Module, freeze_norms: bool):
    """Train mode for the duration; with ``freeze_norms`` the norm layers stay in eval mode (running
    statistics frozen) and their affine parameters get no gradient."""
    set_mode(model, True)
    frozen = []
    if freeze_norms:
        for m in model.modules():
            if isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)) or \
                    getattr(m, "original_name", "").startswith(("BatchNorm", "InstanceNorm")):
                m.train(False)
        params = dict(model.named_parameters())
        for p in (params[n] for n, k in param_kinds(model).items() if k == "norm"):
            if p.requires_grad:
                p.requires_grad_(False)
                frozen.append(p)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)
        set_mode(model, False)


def run_steps(model: nn.Module, loss_fn: Callable[[int], torch.Tensor], optimizer: torch.optim.Optimizer,
              steps: int, *, freeze_norms: bool = True, progress: bool = False, desc: str = "",
              grad_hook: Callable[[], None] | None = None,
              on_step: Callable[[int], None] | None = None) -> None:
    """The fine-tuning loop: ``steps`` times, ``loss_fn(step)`` -> backward -> optional
    ``grad_hook()`` (e.g. masking) -> optimizer step -> ``on_step(step)``."""
    with training(model, freeze_norms):
        for step in tqdm(range(steps), desc=desc, disable=not progress, leave=False):
            optimizer.zero_grad(set_to_none=True)
            loss_fn(step).backward()
            if grad_hook is not None:
                grad_hook()
            optimizer.step()
            if on_step is not None:
                on_step(step)


class Sampler:
    """Endless minibatches ``(x, y)`` of a split, on ``device``, optionally with labels replaced."""

    def __init__(self, split: Split, batch_size: int, g: torch.Generator, device: str,
                 labels: torch.Tensor | None = None):
        self.split, self.device = split, device
        self.labels = split.y if labels is None else labels
        self.it, self.batch_size = batches(len(split), batch_size, g), batch_size
        self.drawn = 0  # images handed out so far (the work a method's report counts)

    def __call__(self) -> tuple[torch.Tensor, torch.Tensor]:
        idx = next(self.it)
        self.drawn += len(idx)
        return self.split.x[idx].to(self.device), self.labels[idx].to(self.device)


def ce_loss(model: nn.Module, sample: Sampler) -> Callable[[int], torch.Tensor]:
    """The loss for :func:`run_steps`: cross-entropy of ``model`` on one ``sample()`` minibatch."""
    def loss(_: int) -> torch.Tensor:
        x, y = sample()
        return F.cross_entropy(model(x), y)
    return loss


def train_epochs(model: nn.Module, loss: Callable[[int], torch.Tensor], config: EpochsConfig, n: int, ctx: Context,
                 desc: str, *, params=None, freeze_norms: bool = False,
                 grad_hook: Callable[[], None] | None = None) -> None:
    """:func:`run_steps` for ``config.epochs`` epochs over ``n`` images in minibatches of
    ``config.batch_size``, with the config's optimizer on ``params`` (default: every parameter)."""
    optimizer = make_optimizer(config.optimizer, model.parameters() if params is None else params, config.lr,
                               config.momentum)
    run_steps(model, loss, optimizer, steps_for(n, config.batch_size, config.epochs), freeze_norms=freeze_norms,
              progress=ctx.progress, desc=desc, grad_hook=grad_hook)


def squared_grads(model: nn.Module, params: list[nn.Parameter],
                  batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> list[torch.Tensor]:
    """Sum over ``batches`` (x, y) of the squared gradient of the mean cross-entropy, shaped like
    ``params`` (the diagonal Fisher the one-shot methods weigh weights by)."""
    total = [torch.zeros_like(p) for p in params]
    for x, y in batches:
        for t, g in zip(total, torch.autograd.grad(F.cross_entropy(model(x), y), params, allow_unused=True)):
            if g is not None:
                t += g * g
    return total


def trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


PROBE_IMAGES = 256  # images whose outputs the step calibration watches


@torch.no_grad()
def _centred_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = torch.cat([model(x[i: i + 128]).float() for i in range(0, len(x), 128)])
    return out - out.mean(1, keepdim=True)


def calibrate_lr(model: nn.Module, params: list[nn.Parameter], loss: Callable[[], torch.Tensor],
                 probe: torch.Tensor, optimizer: str, step_size: float) -> dict:
    """The learning rate at which one optimizer step moves ``model``'s outputs on the ``probe``
    images (N, C, H, W) by ``step_size``: the root mean square change of their centred logits
    (logits minus each image's mean logit), measured along the optimizer's first step, so that a
    step means the same on every network whatever the scale, width or depth of its tensors.

    ``loss()``: the method's loss on one batch; its gradient gives the direction (Adam: its sign,
    SGD: itself). Measured by finite differences in eval mode, at a small trial step, then refined
    once at the step it predicts (the response is close to linear).
    Returns ``{"lr", "step_size", "measured", "probe_images", "direction"}``; the weights are left
    exactly as they were."""
    modes = [m.training for m in model.modules()]
    set_mode(model, False)
    grads = torch.autograd.grad(loss(), params, allow_unused=True)
    direction = [torch.zeros_like(p) if g is None else (g.sign() if optimizer == "adam" else g)
                 for p, g in zip(params, grads)]
    saved = [p.detach().clone() for p in params]
    base = _centred_logits(model, probe)

    def moved(lr: float) -> float:
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.add_(d, alpha=lr)
            change = (_centred_logits(model, probe) - base).pow(2).mean().sqrt().item()
            for p, w in zip(params, saved):
                p.copy_(w)
        return change

    try:
        trial = 1e-5 if optimizer == "adam" else 1e-3
        rate = moved(trial) / trial
        if not math.isfinite(rate) or rate <= 0:
            raise InputError("cannot calibrate the step: the model's outputs do not move along its "
                             "gradient (pass --lr)")
        lr = step_size / rate
        measured = moved(lr)
        if math.isfinite(measured) and measured > 0:
            lr *= min(4.0, max(0.25, step_size / measured))
            measured = moved(lr)
    finally:
        for module, mode in zip(model.modules(), modes):
            module.training = mode
    return {"lr": lr, "step_size": step_size, "measured": measured, "probe_images": len(probe),
            "direction": "sign of the loss gradient (Adam's first step)" if optimizer == "adam"
                         else "the loss gradient (SGD's first step)"}
