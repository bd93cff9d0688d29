"""How raw images become a model's input: :class:`Preprocess` (size, channels, mean, std), the
:class:`Normalized` wrapper every method sees, and :class:`PreprocessHint` for files that record none."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from invwnn.errors import InputError


@dataclass(frozen=True)
class Preprocess:
    """How raw images become model input: ``channels`` x ``size`` (H, W) pixels, scaled to [0, 1],
    then ``(x - mean) / std`` per channel. Inputs of other sizes or channel counts are rejected."""

    size: tuple[int, int]
    channels: int
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", tuple(int(s) for s in self.size))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if self.channels < 1 or len(self.size) != 2 or min(self.size) < 1:
            raise InputError(f"bad preprocessing: size {self.size}, channels {self.channels}")
        for name, v in (("mean", self.mean), ("std", self.std)):
            if len(v) not in (1, self.channels):
                raise InputError(f"--{name} needs 1 or {self.channels} values, got {len(v)}")
        if any(s <= 0 for s in self.std):
            raise InputError("--std values must be positive")

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, *self.size)

    def to_dict(self) -> dict[str, Any]:
        return {"size": list(self.size), "channels": self.channels, "mean": list(self.mean),
                "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocess":
        return cls(tuple(d["size"]), int(d["channels"]), tuple(d["mean"]), tuple(d["std"]))


class Normalized(nn.Module):
    """``net`` behind its input normalisation, so every method feeds images in [0, 1]. mean/std are
    buffers, not parameters: methods and rewinding never touch them.

    ``micro_batch``: for a net that accepts at most that many images at once (an exported program
    with a fixed batch size, or a bounded dynamic one), and ``min_batch`` (default: ``micro_batch``,
    a fixed size) the fewest it accepts. A batch ``(N, C, H, W)`` then runs as
    ``ceil(N / micro_batch)`` calls; a last one smaller than ``min_batch`` is padded by repeating its
    own images and the padded rows' outputs are dropped, so the output is ``(N, classes)`` as for any
    net and a loss over it back-propagates through every call (autograd sums the gradients: with
    per-image layers the result equals one big batch's up to float rounding). Batch-statistic
    layers (batch norm in training mode) see each micro-batch, padding included, on its own."""

    def __init__(self, net: nn.Module, pre: Preprocess, micro_batch: int | None = None,
                 min_batch: int | None = None):
        super().__init__()
        self.net = net
        self.micro_batch = micro_batch
        self.min_batch = micro_batch if min_batch is None else min_batch
        c = pre.channels
        self.register_buffer("mean", torch.tensor(pre.mean).expand(c).reshape(1, c, 1, 1).clone())
        self.register_buffer("std", torch.tensor(pre.std).expand(c).reshape(1, c, 1, 1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - self.mean) / self.std
        if self.micro_batch is None or self.min_batch <= len(x) <= self.micro_batch:
            return self.net(x)
        outs = []
        for chunk in x.split(self.micro_batch):
            n = len(chunk)
            if n < self.min_batch:
                chunk = torch.cat([chunk, chunk[torch.arange(self.min_batch - n, device=chunk.device) % n]])
            outs.append(self.net(chunk)[:n])
        return torch.cat(outs)


@dataclass(frozen=True)
class PreprocessHint:
    """Preprocessing for a file that records none, from flags: ``size`` and ``channels`` not given
    come from the model itself (an exported program's fixed input shape, the input channels of a
    real module's first convolution), else from ``data`` (the first image of the folder named
    ``data_source``, e.g. ``"--forget forget/"``); ``mean`` and ``std`` default to no normalisation."""

    size: tuple[int, int] | None = None
    channels: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    data: Preprocess | None = None
    data_source: str = "the forget images"

    def resolve(self, expected: tuple[int | None, tuple[int, int] | None]) -> Preprocess | None:
        channels = self.channels or expected[0] or (self.data.channels if self.data else None)
        size = self.size or expected[1] or (self.data.size if self.data else None)
        if size is None or channels is None:
            return None
        return Preprocess(size, channels, self.mean or (0.0,), self.std or (1.0,))

    def guessed(self, expected: tuple[int | None, tuple[int, int] | None]) -> str | None:
        """What :meth:`resolve` took from anything but the flags, as one sentence naming where it
        came from and the flags that fix it; None when the flags gave everything."""
        parts = []
        if self.size is None:
            h, w = expected[1] or self.data.size
            parts.append(f"input size {h}x{w} from " + ("the model's input shape" if expected[1] else
                                                        f"the first image of {self.data_source}"))
        if self.channels is None:
            c = expected[0] or self.data.channels
            parts.append(f"{c} channel(s) from " + ("the model's first convolution" if expected[0] else
                                                    f"the first image of {self.data_source}"))
        if self.mean is None and self.std is None:
            parts.append("no normalisation")
        if not parts:
            return None
        return ("the model file records no preprocessing, so invwnn assumed " + ", ".join(parts)
                + "; if the model was trained on other inputs, pass --size HxW, --channels C, --mean and --std")
