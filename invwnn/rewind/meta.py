"""The rewinder trained on the unlearning objective itself (``invwnn meta-train``): its
network, its checkpoint, and :class:`MetaRewinder`, the network behind the rewinder interface.
The unrolled loop it is trained through and the objective: :mod:`invwnn.train.meta_loop`.

:class:`MetaNet` is a damped line plus a learned coordinate-wise correction,
``past = line(w; horizon) + s(w) * g(z(w))``: ``s`` is the window's rms step, ``z`` the window in
units of ``s`` relative to its last value, ``g`` a small MLP whose last layer starts at zero, so at
initialisation it *is* the line and training moves it only where the objective says. Inputs and
output are in units of the window's own step, so one rewinder serves every architecture. With
``context=("layer",)`` the correction also sees where the coordinate's step lies among its layer's
(:func:`invwnn.rewind.features.layer_context`).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from invwnn.files import atomic_write
from invwnn.rewind.features import layer_context
from invwnn.rewind.predictor import CheckpointError, load_payload, sha256
from invwnn.rewind.rewinders import LinearRewinder, stretched

EPS = 1e-12
FORMAT = "invwnn-meta-rewinder"


@dataclass(frozen=True)
class MetaConfig:
    """``k`` snapshots a window; the line's ``horizon`` (snapshot intervals before the window);
    ``width`` hidden units of the correction; ``context``: () or ("layer",), inputs beyond the window."""

    k: int = 5
    horizon: float = 2.0
    width: int = 32
    context: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "context", tuple(self.context))  # JSON gives a list back
        if set(self.context) - {"layer"}:
            raise ValueError(f"unknown context {self.context!r}; valid: layer")

    @property
    def inputs(self) -> int:
        return self.k + 2 * len(self.context)


class MetaNet(nn.Module):
    """``forward(windows (n, K) oldest first, layers (n,) ids of each coordinate's parameter tensor,
    needed with a layer context) -> (n,)``, the line's past plus the learned correction,
    differentiable (meta-training goes through it); ``rewind`` is the rewinder interface without
    gradient, so an untrained net is the line itself."""

    def __init__(self, config: MetaConfig = MetaConfig()):
        super().__init__()
        self.config = config
        self.line = LinearRewinder(config.horizon)
        self.correction = nn.Sequential(nn.Linear(config.inputs, config.width), nn.GELU(), nn.Linear(config.width, 1))
        nn.init.zeros_(self.correction[-1].weight)
        nn.init.zeros_(self.correction[-1].bias)

    def forward(self, windows: torch.Tensor, layers: torch.Tensor | None = None) -> torch.Tensor:
        # (n, 1): the window's own step, a normaliser taken as data (a straight-through start moves a
        # window without changing its steps, and sqrt's gradient at a still coordinate is infinite)
        scale = windows.detach().diff(dim=1).pow(2).mean(1, keepdim=True).sqrt() + EPS
        z = (windows - windows[:, -1:]) / scale
        if self.config.context:
            if layers is None:
                raise ValueError("this rewinder reads a layer context: pass each coordinate's layer id")
            z = torch.cat([z, layer_context(windows, layers).to(z.dtype)], 1)
        return self.line.rewind(windows) + scale.squeeze(1) * self.correction(z).squeeze(1)

    @torch.no_grad()
    def rewind(self, windows: torch.Tensor, kinds: torch.Tensor | None = None,
               layers: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward(windows, layers)

    def describe(self) -> dict[str, Any]:
        return {"rewinder": "meta", **asdict(self.config)}


@dataclass(frozen=True)
class MetaRewinder:
    """A trained :class:`MetaNet` in the unlearning loop, its rewind stretched to ``horizon`` as a
    :class:`invwnn.rewind.predictor.LearnedRewinder`'s (by ``horizon / h``, ``h`` the net's own line
    horizon; None: as trained)."""

    net: MetaNet
    path: str
    horizon: float | None = None

    @property
    def k(self) -> int:
        return self.net.config.k

    def rewind(self, windows: torch.Tensor, kinds: torch.Tensor | None = None,
               layers: torch.Tensor | None = None) -> torch.Tensor:
        h = self.net.config.horizon
        return stretched(windows, self.net.rewind(windows, kinds, layers), 1.0 if self.horizon is None else self.horizon / h)

    def describe(self) -> dict[str, Any]:
        return {**self.net.describe(), "predictor": self.path, "sha256": sha256(self.path),
                "horizon": self.net.config.horizon if self.horizon is None else self.horizon}


def save(net: MetaNet, record: dict[str, Any], path: str | Path) -> None:
    """The checkpoint: ``record`` (JSON-able: config, objective, data, training, evaluation) plus the
    net's weights, written atomically."""
    blob = {**record, "format": FORMAT, "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()}}
    atomic_write(path, lambda tmp: torch.save(blob, tmp))


def read(path: str | Path) -> dict[str, Any]:
    """The checkpoint's contents (tensors only: ``weights_only``), validated as a meta rewinder's."""
    blob = load_payload(path)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a meta-trained rewinder (invwnn meta-train writes them)")
    return blob


def load(path: str | Path, device: str = "cpu") -> tuple[MetaNet, dict[str, Any]]:
    """(net on ``device``, record) from a checkpoint :func:`save` wrote."""
    blob = read(path)
    try:
        net = MetaNet(MetaConfig(**blob["config"]))
        net.load_state_dict(blob.pop("state_dict"))
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path} is a damaged meta rewinder checkpoint ({type(err).__name__})") from None
    return net.to(device).eval(), blob


def describe_checkpoint(path: str | Path) -> str:
    """What ``invwnn inspect`` prints for a meta rewinder: config, objective, data, training, evaluation."""
    blob = read(path)
    t, n_weights = blob.get("training", {}), sum(v.numel() for v in blob["state_dict"].values())
    lines = [f"checkpoint    {path} ({FORMAT} version {blob.get('version')}, {n_weights:,} weights)",
             f"config        {json.dumps(blob.get('config'))}",
             f"objective     {blob.get('objective')}",
             f"data          {json.dumps({k: v for k, v in blob.get('data', {}).items() if k != 'train_names'})}",
             f"training      {t.get('steps')} steps in {t.get('seconds')} s, objective "
             f"{t.get('objective_first', float('nan')):.4f} -> {t.get('objective_last', float('nan')):.4f}; "
             f"line horizons tried {json.dumps(t.get('line_horizons'))}"]
    for part, scores in blob.get("evaluation", {}).items():
        lines.append(f"{part:<13} " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                               for k, v in scores.items()))
    return "\n".join(lines)
