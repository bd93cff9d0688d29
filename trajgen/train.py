"""One training run as a stream of snapshots. Knows nothing about storage."""
from __future__ import annotations

import ctypes
import functools
import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trajgen import nets
from trajgen.data import Dataset, to_float
from trajgen.spec import OptimSpec, RunSpec


@dataclass
class Snapshot:
    """Weights after ``step`` optimizer steps, as a flat float32 ``(n_coords,)`` array, with the
    mean training loss and accuracy of the minibatches since the previous snapshot."""

    step: int
    weights: np.ndarray
    loss: float
    acc: float


def make_optimizer(spec: OptimSpec, params) -> torch.optim.Optimizer:
    wd, lr = spec.weight_decay, spec.lr
    if spec.name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=wd)
    if spec.name in ("momentum", "nesterov"):
        return torch.optim.SGD(params, lr=lr, momentum=spec.momentum, weight_decay=wd,
                               nesterov=spec.name == "nesterov")
    if spec.name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if spec.name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    return torch.optim.RMSprop(params, lr=lr, weight_decay=wd)


def lr_factor(schedule: str, step: int, total: int) -> float:
    """Multiplier of the peak learning rate at ``step`` of ``total``."""
    t = step / max(1, total)
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * t))
    if schedule == "step":
        return 0.1 ** (int(t >= 0.5) + int(t >= 0.75))
    warmup = 0.05
    return t / warmup if t < warmup else 0.5 * (1 + math.cos(math.pi * (t - warmup) / (1 - warmup)))


def build_model(spec: RunSpec, data: Dataset) -> nn.Module:
    """The run's freshly initialised model; seeded by the spec, so the same spec gives the same
    weights on any worker."""
    torch.manual_seed(spec.seed)
    return nets.build(spec.arch, data.in_shape, len(data.classes), spec.init)


@functools.cache
def keep_freed_memory() -> bool:
    """Ask glibc to keep freed blocks up to 32 MiB in the heap (mmap threshold 32 MiB, trim threshold
    256 MiB) instead of handing each one back to the kernel. A training step allocates and frees
    activation buffers of a few MiB; above glibc's default 128 KiB threshold each one is a fresh
    mmap whose pages fault in again (42% of a 500-run collection's CPU time was system time); with
    this setting a cnn run trains 1.2-1.3x faster. Sticky for the whole process, so call it in
    worker processes; the price is a resident size that stays at its peak. False where the C
    library is not glibc (nothing done)."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    return bool(mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(M_TRIM_THRESHOLD, 256 << 20))


def memory_format(model: nn.Module, device: str = "cpu") -> torch.memory_format:
    """channels-last for a model with 2-D convolutions on a GPU; contiguous on the CPU. (On the CPU
    channels-last ran pooling, normalisation and activations 1.4-1.5x faster on AVX-512 machines, but
    oneDNN's channels-last convolution backward crashes with a double free on an AVX2 CPU for the
    narrow resnet18 of tests/test_sampled_runs.py, torch 2.14.1: correctness first.) The weights'
    values and flat order are the same either way, the float rounding is not."""
    has_conv = any(p.dim() == 4 for p in model.parameters())
    return torch.channels_last if has_conv and torch.device(device).type == "cuda" else torch.contiguous_format


def batches(n: int, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """Endless shuffled index batches: reshuffled every epoch, last partial batch dropped."""
    g = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(n, generator=g)
        for i in range(0, n - batch_size + 1, batch_size):
            yield perm[i: i + batch_size]


def snapshots(spec: RunSpec, model: nn.Module, data: Dataset,
              order: Iterator[torch.Tensor] | None = None, device: str = "cpu") -> Iterator[Snapshot]:
    """Train ``model`` for ``spec.steps`` steps, yielding a snapshot every ``spec.every`` steps
    (step 0 first). ``order`` gives each step's indices into ``data``'s training set (default:
    :func:`batches` seeded by the spec; counterfactual twins pass that order minus some examples).
    Stops early, without yielding, if the loss or the weights stop being finite: the caller sees
    fewer snapshots than ``spec.n_snapshots`` and should record the run as diverged. ``device``:
    where ``model`` lives and the batches go (the snapshots' weights are copied back to the CPU)."""
    table = nets.layer_table(model)
    layout = memory_format(model, device)
    model.to(memory_format=layout)
    opt = make_optimizer(spec.optim, model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(spec.optim.schedule, s, spec.steps))
    order = batches(len(data.y_train), spec.batch_size, spec.seed) if order is None else order
    model.train()

    idx = next(order)
    with torch.no_grad():
        y0 = data.y_train[idx].to(device)
        out = model(to_float(data.x_train[idx].to(device)).contiguous(memory_format=layout))
        loss0 = F.cross_entropy(out, y0).item()
        acc0 = (out.argmax(1) == y0).float().mean().item()
    yield Snapshot(0, nets.flat_weights(model, table).cpu().numpy(), loss0, acc0)

    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    for step in range(1, spec.steps + 1):
        x = to_float(data.x_train[idx].to(device)).contiguous(memory_format=layout)
        y = data.y_train[idx].to(device)
        out = model(x)
        loss = F.cross_entropy(out, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        loss_sum += loss.detach()
        correct += (out.detach().argmax(1) == y).sum()
        idx = next(order)
        if step % spec.every == 0:
            weights = nets.flat_weights(model, table).cpu()
            mean_loss = loss_sum.item() / spec.every
            if not (math.isfinite(mean_loss) and torch.isfinite(weights).all()):
                return
            yield Snapshot(step, weights.numpy(), mean_loss, correct.item() / (spec.every * len(y)))
            loss_sum.zero_()
            correct.zero_()


@torch.inference_mode()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256,
             device: str = "cpu") -> float:
    """Top-1 accuracy of ``model`` (on ``device``) on uint8 images ``x``, in [0, 1]; the model is
    left in eval mode. Batches of 256 in the model's memory format: a cnn's 10,000 test images
    take half the time of batches of 1,000, whose activations overflow the CPU's caches (the
    accuracies of the runs checked were the same to the last digit)."""
    model.eval()
    layout = memory_format(model, device)
    correct = sum((model(to_float(x[i: i + batch_size].to(device)).contiguous(memory_format=layout))
                   .argmax(1).cpu() == y[i: i + batch_size]).sum().item() for i in range(0, len(y), batch_size))
    return correct / max(1, len(y))
