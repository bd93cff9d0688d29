"""The rewinder interface and the rewinders that need no training: the line (and the damped line: a
shorter horizon), and the two controls. The learned ones: :mod:`invwnn.rewind.predictor` (the
past-weight predictor) and :mod:`invwnn.rewind.meta` (the meta-trained line correction)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch


class Rewinder(Protocol):
    """``rewind(windows (n, K) float oldest-first, kinds (n,) long codes into trajgen.nets.KINDS,
    layers (n,) long ids of each coordinate's parameter tensor or None) -> (n,)``: each
    coordinate's predicted value ``horizon`` snapshot intervals before ``windows[:, 0]``;
    ``describe()``: a JSON-able dict of what it is (kind, settings, checkpoint path and sha256)."""

    def rewind(self, windows: torch.Tensor, kinds: torch.Tensor | None = None,
               layers: torch.Tensor | None = None) -> torch.Tensor: ...

    def describe(self) -> dict[str, Any]: ...


def line_coefficients(k: int, horizon: float, like: torch.Tensor) -> torch.Tensor:
    """(k,) weights ``c`` such that ``w @ c`` is the least-squares line through the k snapshots of
    ``w`` (n, k), evaluated ``horizon`` (any real) snapshot intervals before the first:
    ``mean + slope * (-horizon - (k-1)/2)`` with t centred; computed in float64, returned in
    ``like``'s dtype and device."""
    t = torch.arange(k, dtype=torch.float64) - (k - 1) / 2
    return (1.0 / k + (-horizon - (k - 1) / 2) * t / (t @ t)).to(like)


@dataclass(frozen=True)
class LinearRewinder:
    """Least-squares line through the window, extrapolated ``horizon`` snapshot intervals before its
    first point: an analytic baseline that needs no training. ``horizon`` is a real number, so a
    "damped" line (horizon below the predictor's U) is tuned like any other hyperparameter."""

    horizon: float = 3.0

    def rewind(self, windows: torch.Tensor, kinds: torch.Tensor | None = None,
               layers: torch.Tensor | None = None) -> torch.Tensor:
        return windows @ line_coefficients(windows.shape[1], self.horizon, windows)

    def describe(self) -> dict[str, Any]:
        return {"rewinder": "linear", "horizon": self.horizon}


@dataclass(frozen=True)
class NoRewinder:
    """The control "no rewind": keeps each window's newest value, i.e. the weights the forget
    fine-tuning reached. This removes the rewind *and adds* forget-set training; compare with
    :class:`ResetRewinder` for the effect of the rewind alone."""

    def rewind(self, windows: torch.Tensor, kinds: torch.Tensor | None = None,
               layers: torch.Tensor | None = None) -> torch.Tensor:
        return windows[:, -1].clone()

    def describe(self) -> dict[str, Any]:
        return {"rewinder": "none"}


@dataclass(frozen=True)
class ResetRewinder:
    """The control "repair only": writes back each window's first value, undoing the iteration's
    forget fine-tuning, so whatever the loop still changes comes from the rest of it (invwnn+'s
    retain repair steps). A rewinder that forgets must beat this."""

    def rewind(self, windows: torch.Tensor, kinds: torch.Tensor | None = None,
               layers: torch.Tensor | None = None) -> torch.Tensor:
        return windows[:, 0].clone()

    def describe(self) -> dict[str, Any]:
        return {"rewinder": "reset"}


def stretched(windows: torch.Tensor, past: torch.Tensor, stretch: float) -> torch.Tensor:
    """``past`` (n,) moved ``stretch`` times as far from each window's first value (windows: n, K):
    how a learned rewinder gets the line's one length knob."""
    if stretch == 1.0:
        return past
    first = windows[:, 0]
    return first + (past - first) * stretch


class FullPrecision:
    """``inner``'s predictions in float32 even inside an autocast region (the bench's mixed
    precision trains in bf16; a rewind in bf16 is 0.5% of its length off)."""

    def __init__(self, inner: Rewinder, device: str):
        self.inner, self.device = inner, torch.device(device).type

    def rewind(self, windows: torch.Tensor, kinds: torch.Tensor | None = None,
               layers: torch.Tensor | None = None) -> torch.Tensor:
        with torch.autocast(self.device, enabled=False):
            return self.inner.rewind(windows.float(), kinds, layers)

    def __getattr__(self, name: str) -> Any:  # k, describe(), ... of the wrapped rewinder
        return getattr(self.inner, name)
