"""What a rewinder reads beside the raw window: per-window normalisation and the context inputs.

A *window* is K consecutive snapshots of one coordinate, oldest first. Normalisation (as WNN):
``x = (w - w[0]) / scale`` with ``scale = max(w) - min(w) + eps * max|w|``: every normalised window
starts at 0 and spans at most 1, whatever the weight's scale or the snapshot interval, so one
network serves all coordinates. A predictor outputs the normalised residual ``(target - w[0]) /
scale``, clipped to ``[-clip, clip]`` because a window that barely moves (scale -> 0) would
otherwise make it arbitrarily large. Here rather than in :mod:`invwnn.train.windows` so that
unlearning reads none of the training code.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from invwnn.errors import InputError
from invwnn.inputs.archs import param_kinds
from trajgen.nets import KINDS

EPS = 1e-6  # relative to the window's largest |weight|: below float32 resolution, still scale-free


def normalise(w: torch.Tensor, eps: float = EPS) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``w`` (n, K) weights, oldest first -> (normalised (n, K), offset (n,), scale (n,))."""
    offset = w[:, 0]
    span = w.amax(1) - w.amin(1)
    scale = span + eps * w.abs().amax(1)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # an all-zero window stays at 0
    return (w - offset[:, None]) / scale[:, None], offset, scale


def normalise_target(target: torch.Tensor, offset: torch.Tensor, scale: torch.Tensor,
                     clip: float) -> torch.Tensor:
    """Past weight (n,) -> normalised residual (n,), clipped to ``[-clip, clip]``."""
    return ((target - offset) / scale).clamp(-clip, clip)


def denormalise(residual: torch.Tensor, offset: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Normalised residual (n,) -> past weight (n,) in weight units. Inverse of the two above."""
    return offset + residual * scale


# Context inputs a predictor may take, and their widths. "step": the optimizer family (1 for
# the adaptive Adam/AdamW/RMSprop, 0 for SGD with or without momentum) and log10 of its learning rate
# (+3, so typical rates land near 0). "layer": how this coordinate moves relative to its layer over
# the same window (log of its window span over the layer's median span) and how coherently the
# layer moves (the layer's mean normalised net displacement, in [-1, 1]): NiNo's neuron/layer view.
CONTEXTS = {"step": 2, "layer": 2}
ADAPTIVE = ("adam", "adamw", "rmsprop")


def check_context(names: tuple[str, ...]) -> None:
    unknown = [n for n in names if n not in CONTEXTS]
    if unknown:
        raise InputError(f"unknown context {unknown[0]!r}; valid: {', '.join(CONTEXTS)}")


def step_context(optimizer: str, lr: float) -> torch.Tensor:
    """(2,) float32 "step" context of an optimizer name (trajgen's or the applier's) and its lr."""
    return torch.tensor([float(optimizer in ADAPTIVE), float(np.log10(lr)) + 3.0], dtype=torch.float32)


def layer_context(w: torch.Tensor, layer: torch.Tensor) -> torch.Tensor:
    """(n, 2) float32 "layer" context of windows ``w`` (n, K) of the same snapshots, grouped by
    ``layer`` (n,) ids: log(span / the layer's median span; the lower median of an even count)
    (spans floored at 1e-12) and the layer's mean of ``(w[-1] - w[0]) / span``."""
    span = (w.amax(1) - w.amin(1)).clamp_min(1e-12)
    net = (w[:, -1] - w[:, 0]) / span
    out = torch.empty(w.shape[0], 2, dtype=torch.float32, device=w.device)
    for lid in torch.unique(layer):
        rows = layer == lid
        out[rows, 0] = torch.log(span[rows] / span[rows].median()).float()
        out[rows, 1] = net[rows].mean().float()
    return out


def context_columns(names: tuple[str, ...], n: int, step: np.ndarray | None, layer: np.ndarray | None) -> np.ndarray:
    """The (n, C) context matrix of ``names`` in order, from a run's step context (2,) and the
    windows' layer context (n, 2)."""
    parts = {"step": lambda: np.broadcast_to(step, (n, 2)), "layer": lambda: layer}
    return np.concatenate([parts[name]() for name in names], 1).astype(np.float32) if names \
        else np.zeros((n, 0), np.float32)


def rewound(model: nn.Module) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """The parameters a rewind writes, by name (every one but norms, which the loops freeze), and
    per coordinate of them, flattened in that order: its kind code (n,) into ``trajgen.nets.KINDS``
    and its layer id (n,), the index of its tensor among the names."""
    kinds, named = param_kinds(model), dict(model.named_parameters())
    names = [n for n, k in kinds.items() if k != "norm"]
    sizes = [named[n].numel() for n in names]
    codes = torch.tensor([KINDS.index(kinds[n]) for n in names]).repeat_interleave(torch.tensor(sizes))
    return names, codes, torch.arange(len(names)).repeat_interleave(torch.tensor(sizes))
