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

ARCHS = ("mlp", "cnn", "vit")  # the small families, and the default mix of a collection
# torchvision's families, adapted to 32x32 inputs (trajgen.nets): opt-in with --archs
TORCHVISION_ARCHS = ("resnet18", "mobilenet_v2", "mobilenet_v3_small", "convnext", "vit_tv")
ALL_ARCHS = ARCHS + TORCHVISION_ARCHS
# A torchvision family's standard stem width (width multiplier = width / this) and its own
# activation, which the spec records instead of a drawn one.
# (vit_tv: ViT-B's hidden size; its drawn widths are 96, 192 and 384)
STANDARD_WIDTH = {"resnet18": 64, "mobilenet_v2": 32, "mobilenet_v3_small": 16, "convnext": 96, "vit_tv": 768}
NATIVE_ACTIVATION = {"resnet18": "relu", "mobilenet_v2": "relu6", "mobilenet_v3_small": "hardswish",
                     "convnext": "gelu", "vit_tv": "gelu"}
VIT_HEAD_DIM = 64  # channels per attention head of torchvision's ViTs (B, L, H all use 64)
VIT_PATCH = 4  # vit_tv's patch side unless the spec gives one: 8x8 = 64 tokens on 32x32 inputs
# families whose depth the name fixes (ArchSpec.depth 0); convnext's depth is blocks per stage,
# vit_tv's encoder layers
FIXED_DEPTH = ("resnet18", "mobilenet_v2", "mobilenet_v3_small")
WIDTH_MULTS = (0.125, 0.25, 0.5)  # drawn multipliers of the torchvision families (CPU-sized)
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
    """A classifier. ``width``/``depth`` mean hidden units and hidden layers (mlp), base
    channels and conv blocks (cnn), embedding size and transformer blocks (vit). For the torchvision
    families ``width`` is the stem's channels (``STANDARD_WIDTH`` is the standard net; the width
    multiplier is their ratio; ``vit_tv``: the hidden size), ``depth`` is 0 where the name fixes it,
    blocks per stage for ``convnext`` and encoder layers for ``vit_tv``, and ``activation`` is the
    family's own (``NATIVE_ACTIVATION``). ``vit_tv`` given ``heads`` 0 gets one head per
    ``VIT_HEAD_DIM`` channels (at least one), given ``patch`` 0 gets ``VIT_PATCH``; the spec then
    records the values built."""

    family: str
    width: int
    depth: int
    activation: str
    heads: int = 0  # vit only
    patch: int = 0  # vit only

    def __post_init__(self) -> None:
        _check_choice("architecture", self.family, ALL_ARCHS)
        if self.family in TORCHVISION_ARCHS:
            native = NATIVE_ACTIVATION[self.family]
            if self.activation != native:
                raise SpecError(f"{self.family} uses its own activation {native!r}, got {self.activation!r}")
            if self.width < 1:
                raise SpecError(f"{self.family} needs width >= 1, got {self.width}")
            if (self.family in FIXED_DEPTH) != (self.depth == 0) or self.depth < 0:
                need = ("0 (fixed by its name)" if self.family in FIXED_DEPTH else
                        ">= 1 (encoder layers)" if self.family == "vit_tv" else ">= 1 (blocks per stage)")
                raise SpecError(f"{self.family} needs depth {need}, got {self.depth}")
            if self.family == "vit_tv":
                self._vit_defaults()
            return
        _check_choice("activation", self.activation, ACTIVATIONS)

    def _vit_defaults(self) -> None:
        heads = self.heads or max(1, self.width // VIT_HEAD_DIM)
        if heads < 1 or self.width % heads or self.patch < 0:
            raise SpecError(f"vit_tv needs a width divisible by its {heads} heads (>= 1) and patch >= 0, "
                            f"got width {self.width}, patch {self.patch}")
        object.__setattr__(self, "heads", heads)  # frozen: record the values built, once
        object.__setattr__(self, "patch", self.patch or VIT_PATCH)


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
    (step 0 included), on ``dataset`` with ``batch_size`` examples per step. ``coords`` > 0 records
    a fixed sample of that many coordinates instead of all (:func:`sample_coords`, seeded by
    ``seed``); 0 records every coordinate."""

    index: int
    seed: int
    arch: ArchSpec
    optim: OptimSpec
    batch_size: int
    init: str
    steps: int
    every: int
    dataset: str
    coords: int = 0

    def __post_init__(self) -> None:
        _check_choice("init", self.init, INITS)
        if self.steps < 1 or self.every < 1 or self.every > self.steps:
            raise SpecError(f"need 1 <= every <= steps, got every={self.every}, steps={self.steps}")
        if self.coords < 0:
            raise SpecError(f"coords must be 0 (all) or positive, got {self.coords}")

    @property
    def n_snapshots(self) -> int:
        return self.steps // self.every + 1

    @property
    def name(self) -> str:
        return f"run-{self.index:06d}"

    def to_dict(self) -> dict[str, Any]:
        """The spec as JSON-able values; ``coords`` only when sampling, so a spec recorded before
        sampling existed reads back equal to one planned now."""
        d = dataclasses.asdict(self)
        if not self.coords:
            del d["coords"]
        return d

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


def make_arch(family: str, width: int, depth: int, activation: str) -> ArchSpec:
    """The ArchSpec of ``family`` at ``width`` for a caller with one depth and activation for
    every family (the bench): a torchvision family takes its own activation, and its fixed depth
    where its name fixes one."""
    if family in TORCHVISION_ARCHS:
        return ArchSpec(family, width, 0 if family in FIXED_DEPTH else depth, NATIVE_ACTIVATION[family])
    return ArchSpec(family, width, depth, activation)


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


def _draw_arch(rng: np.random.Generator, family: str, width_mult: float | None) -> ArchSpec:
    if family in TORCHVISION_ARCHS:
        mult = float(rng.choice(WIDTH_MULTS)) if width_mult is None else width_mult
        depth = 0 if family in FIXED_DEPTH else int(rng.integers(1, 3))
        return ArchSpec(family, max(1, round(STANDARD_WIDTH[family] * mult)), depth, NATIVE_ACTIVATION[family])
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
             dataset: str = "fashion-mnist", coords: int = 0, width_mult: float | None = None) -> RunSpec:
    """The spec of run ``index`` of a collection with global ``seed``: a pure function of its
    arguments. Architectures cycle in the given order so every family gets its share of runs.
    ``width_mult`` fixes the torchvision families' width multiplier (default: drawn from
    ``WIDTH_MULTS``); the small families ignore it. ``coords``: see :class:`RunSpec`."""
    if width_mult is not None and not width_mult > 0:
        raise SpecError(f"width multiplier must be positive, got {width_mult}")
    rng = np.random.default_rng([seed, index])
    family = archs[index % len(archs)]
    arch = _draw_arch(rng, family, width_mult)
    name = str(rng.choice(optimizers))
    lr = _log_uniform(rng, *LR_RANGE[name])
    wd = _log_uniform(rng, *WD_RANGE[name]) if rng.random() < 0.5 else 0.0
    momentum = float(rng.uniform(0.8, 0.95)) if name in ("momentum", "nesterov") else 0.0
    optim = OptimSpec(name, lr, wd, str(rng.choice(SCHEDULES)), momentum)
    return RunSpec(index=index, seed=int(rng.integers(0, 2**31 - 1)), arch=arch, optim=optim,
                   batch_size=int(rng.choice(BATCH_SIZES)), init=str(rng.choice(INITS)),
                   steps=steps, every=every, dataset=dataset, coords=coords)
