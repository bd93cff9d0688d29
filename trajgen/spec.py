"""Run specifications: everything random about a training run, decided once and recorded.

A run is fully described by a frozen :class:`RunSpec`; ``draw_run(seed, index, ...)`` derives it
deterministically from the collection's global seed and the run's index, so the same command always
plans the same runs (which is what makes resuming and multi-worker collection reproducible).
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

ARCHS = ("mlp", "cnn", "vit")
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop")
ACTIVATIONS = ("relu", "gelu", "tanh", "silu", "leaky_relu")
SCHEDULES = ("constant", "cosine", "step", "warmup_cosine")
INITS = ("default", "kaiming", "xavier", "orthogonal")
BATCH_SIZES = (32, 64, 128)

# Log-uniform learning-rate range per optimizer: wide enough to vary, narrow enough that runs learn.
LR_RANGE = {
    "sgd": (1e-2, 2e-1),
    "momentum": (2e-3, 5e-2),
    "nesterov": (2e-3, 5e-2),
    "adam": (2e-4, 3e-3),
    "adamw": (2e-4, 3e-3),
    "rmsprop": (1e-4, 1e-3),
}
# Decoupled weight decay (AdamW) lives on another scale than L2 decay.
WD_RANGE = {name: ((1e-3, 1e-1) if name == "adamw" else (1e-6, 1e-3)) for name in OPTIMIZERS}


class SpecError(ValueError):
    """A specification that cannot be built (unknown architecture, optimizer, ...)."""


def _check_choice(kind: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise SpecError(f"unknown {kind} {value!r}; valid: {', '.join(valid)}")


@dataclass(frozen=True)
class ArchSpec:
    """A small classifier. ``width``/``depth`` mean hidden units and hidden layers (mlp), base
    channels and conv blocks (cnn), embedding size and transformer blocks (vit)."""

    family: str
    width: int
    depth: int
    activation: str
    heads: int = 0  # vit only
    patch: int = 0  # vit only

    def __post_init__(self) -> None:
        _check_choice("architecture", self.family, ARCHS)
        _check_choice("activation", self.activation, ACTIVATIONS)


@dataclass(frozen=True)
class OptimSpec:
    """Optimizer and schedule. ``lr`` is the peak learning rate."""

    name: str
    lr: float
    weight_decay: float
    schedule: str
    momentum: float = 0.0

    def __post_init__(self) -> None:
        _check_choice("optimizer", self.name, OPTIMIZERS)
        _check_choice("schedule", self.schedule, SCHEDULES)
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise SpecError(f"learning rate must be positive, got {self.lr}")


@dataclass(frozen=True)
class RunSpec:
    """One training run: ``steps`` optimizer steps, a snapshot of every weight each ``every`` steps
    (step 0 included), on ``dataset`` with ``batch_size`` examples per step."""

    index: int
    seed: int
    arch: ArchSpec
    optim: OptimSpec
    batch_size: int
    init: str
    steps: int
    every: int
    dataset: str

    def __post_init__(self) -> None:
        _check_choice("init", self.init, INITS)
        if self.steps < 1 or self.every < 1 or self.every > self.steps:
            raise SpecError(f"need 1 <= every <= steps, got every={self.every}, steps={self.steps}")

    @property
    def n_snapshots(self) -> int:
        return self.steps // self.every + 1

    @property
    def name(self) -> str:
        return f"run-{self.index:06d}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunSpec":
        d = dict(d)
        d["arch"] = ArchSpec(**d["arch"])
        d["optim"] = OptimSpec(**d["optim"])
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, s: str) -> "RunSpec":
        return cls.from_dict(json.loads(s))


def parse_choices(kind: str, text: str, valid: tuple[str, ...]) -> tuple[str, ...]:
    """Parse a comma-separated list such as ``"cnn,vit"``; unknown names raise :class:`SpecError`."""
    items = tuple(s.strip() for s in text.split(",") if s.strip())
    if not items:
        raise SpecError(f"no {kind} given; valid: {', '.join(valid)}")
    for item in items:
        _check_choice(kind, item, valid)
    return items


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _draw_arch(rng: np.random.Generator, family: str) -> ArchSpec:
    activation = str(rng.choice(ACTIVATIONS))
    if family == "mlp":
        return ArchSpec(family, int(rng.choice([32, 48, 64, 96])), int(rng.integers(1, 4)), activation)
    if family == "cnn":
        return ArchSpec(family, int(rng.choice([8, 12, 16])), int(rng.integers(2, 4)), activation)
    heads = int(rng.choice([2, 4]))
    return ArchSpec(family, int(rng.choice([16, 24, 32])), int(rng.integers(1, 3)), activation,
                    heads=heads, patch=int(rng.choice([7, 14])))


def draw_run(seed: int, index: int, archs: tuple[str, ...] = ARCHS,
             optimizers: tuple[str, ...] = OPTIMIZERS, steps: int = 512, every: int = 4,
             dataset: str = "fashion-mnist") -> RunSpec:
    """The spec of run ``index`` of a collection with global ``seed``: a pure function of its
    arguments. Architectures cycle in the given order so every family gets its share of runs."""
    rng = np.random.default_rng([seed, index])
    family = archs[index % len(archs)]
    arch = _draw_arch(rng, family)
    name = str(rng.choice(optimizers))
    lr = _log_uniform(rng, *LR_RANGE[name])
    wd = _log_uniform(rng, *WD_RANGE[name]) if rng.random() < 0.5 else 0.0
    momentum = float(rng.uniform(0.8, 0.95)) if name in ("momentum", "nesterov") else 0.0
    optim = OptimSpec(name, lr, wd, str(rng.choice(SCHEDULES)), momentum)
    return RunSpec(index=index, seed=int(rng.integers(0, 2**31 - 1)), arch=arch, optim=optim,
                   batch_size=int(rng.choice(BATCH_SIZES)), init=str(rng.choice(INITS)),
                   steps=steps, every=every, dataset=dataset)
