"""The coordinate-wise past-weight predictor (``invwnn train``), its checkpoint file, and
:class:`LearnedRewinder`, the predictor behind the :class:`invwnn.rewind.rewinders.Rewinder` interface.

One small two-stream network is shared by every coordinate; a learned embedding of the parameter
kind (conv, linear, bias, ...) conditions it. Input: a normalised window of K snapshots and its K-1
differences (see :mod:`invwnn.rewind.features`); output: the normalised residual of the weight U
snapshots before the window, which :func:`predict_past` turns back into weight units.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trajgen.nets import KINDS
from invwnn.errors import InputError
from invwnn.files import atomic_write
from invwnn.rewind.features import (CONTEXTS, EPS, check_context, context_columns, denormalise,
                                    layer_context, normalise, step_context)
from invwnn.rewind.fast import Folded
from invwnn.rewind.rewinders import stretched
from invwnn.rewind.shipped import DEFAULT, shipped_path

FORMAT_VERSION = 1
CHECKPOINT_KIND = "invwnn-predictor"


class CheckpointError(InputError):
    """A file that is not a readable predictor checkpoint of this format version."""


@dataclass(frozen=True)
class ModelConfig:
    """Architecture and input convention of a predictor: ``k`` snapshots per window, ``u`` back
    to predict; ``kinds`` it knows, in embedding order; ``width`` hidden units per stream layer;
    ``kind_dim`` (0: ignore the kind); ``clip``: bound of the normalised residual; ``eps``: relative
    epsilon of the window scale; ``target``: "past" (the weight U snapshots back) or
    "counterfactual" (a ``trajgen twins`` model's weight; its rewind counts as U snapshots long);
    ``context``: extra inputs, in order (:data:`invwnn.rewind.features.CONTEXTS`)."""

    k: int = 15
    u: int = 3
    kinds: tuple[str, ...] = KINDS
    width: int = 64
    kind_dim: int = 8
    clip: float = 8.0
    eps: float = EPS
    normalisation: str = "offset=w[0], scale=max-min+eps*max|w|"
    target: str = "past"
    context: tuple[str, ...] = ()

    @property
    def context_dim(self) -> int:
        return sum(CONTEXTS[name] for name in self.context)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["kinds"], d["context"] = list(self.kinds), list(self.context)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        d = dict(d)
        d["kinds"] = tuple(d["kinds"])
        d["context"] = tuple(d.get("context", ()))
        return cls(**d)


def _stream(n_in: int, width: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, width), nn.LeakyReLU(0.1), nn.Linear(width, width),
                         nn.LeakyReLU(0.1), nn.Linear(width, width // 2), nn.LeakyReLU(0.1))


class Predictor(nn.Module):
    """(normalised windows (n, K), kind indices (n,) into ``config.kinds``, context (n, C)) ->
    residual (n,); C = ``config.context_dim`` (0: no context)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        w = config.width
        self.values = _stream(config.k, w)
        self.diffs = _stream(config.k - 1, w)
        self.kind = nn.Embedding(len(config.kinds), config.kind_dim) if config.kind_dim else None
        self.head = nn.Sequential(nn.Linear(w + config.kind_dim + config.context_dim, w), nn.LeakyReLU(0.1),
                                  nn.Linear(w, 1))
        # kind code in the trajgen store -> row of the embedding (-1: a kind this model never saw)
        lookup = torch.full((len(KINDS),), -1, dtype=torch.long)
        for i, name in enumerate(config.kinds):
            lookup[KINDS.index(name)] = i
        self.register_buffer("lookup", lookup, persistent=False)

    def forward(self, x: torch.Tensor, kind: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        parts = [self.values(x), self.diffs(x[:, 1:] - x[:, :-1])]  # the values and their differences
        if self.kind is not None:
            parts.append(self.kind(kind))
        if self.config.context_dim:
            if context is None or context.shape != (x.shape[0], self.config.context_dim):
                raise CheckpointError(f"the predictor needs its context ({', '.join(self.config.context)}) as "
                                      f"({x.shape[0]}, {self.config.context_dim}) inputs")
            parts.append(context.to(x))
        return self.head(torch.cat(parts, 1)).squeeze(1)

    def kind_index(self, codes: torch.Tensor) -> torch.Tensor:
        """trajgen kind codes (n,) -> embedding rows (n,); refuses kinds the model was not given."""
        idx = self.lookup[codes.long()]
        if (idx < 0).any():
            bad = KINDS[int(codes[idx < 0][0])]
            raise CheckpointError(f"the predictor was not trained on parameter kind {bad!r} "
                                  f"(it knows {', '.join(self.config.kinds)})")
        return idx

    def residual(self, w: torch.Tensor, codes: torch.Tensor,
                 context: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        """Raw windows (n, K), kind codes and context -> (predicted residual, offset, scale), each (n,)."""
        x, offset, scale = normalise(w, self.config.eps)
        r = self(x, self.kind_index(codes), context).clamp(-self.config.clip, self.config.clip)
        return r, offset, scale


def check_windows(model: Predictor, windows: torch.Tensor, kinds: torch.Tensor | None) -> None:
    """ValueError unless ``windows`` is (n, K) of ``model``'s K and ``kinds`` (n,)."""
    if windows.ndim != 2 or windows.shape[1] != model.config.k:
        raise ValueError(f"windows must be (n, {model.config.k}), got {tuple(windows.shape)}")
    if kinds is None or kinds.shape != windows.shape[:1]:
        raise ValueError(f"kinds must be ({windows.shape[0]},), got {None if kinds is None else tuple(kinds.shape)}")


@torch.no_grad()
def predict_past(model: Predictor, windows: torch.Tensor, kinds: torch.Tensor,
                 context: torch.Tensor | None = None, batch_size: int = 1 << 16) -> torch.Tensor:
    """Past weights (n,) in weight units for windows (n, K) float32, oldest first; ``kinds`` (n,)
    trajgen kind codes; ``context`` (n, C) or None. Runs on the model's device in batches of
    ``batch_size`` windows; the result is on ``windows``' device."""
    check_windows(model, windows, kinds)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = torch.empty(windows.shape[0], dtype=torch.float32, device=windows.device)
    for a in range(0, windows.shape[0], batch_size):
        w = windows[a:a + batch_size].to(device, torch.float32)
        c = None if context is None else context[a:a + batch_size].to(device)
        r, offset, scale = model.residual(w, kinds[a:a + batch_size].to(device), c)
        out[a:a + batch_size] = denormalise(r, offset, scale).to(out.device)
    model.train(was_training)
    return out


def save_checkpoint(path: str | Path, model: Predictor, train_config: dict[str, Any],
                    evaluation: dict[str, Any], provenance: dict[str, Any]) -> Path:
    """Write the checkpoint atomically: plain containers only, so ``weights_only=True`` loads it."""
    payload = {
        "kind": CHECKPOINT_KIND,
        "format_version": FORMAT_VERSION,
        "model_config": model.config.to_dict(),
        "train_config": train_config,
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        # JSON text: nested figures survive any loader and stay readable in `invwnn inspect`
        "evaluation": json.dumps(evaluation),
        "provenance": json.dumps(provenance),
    }
    return _write_atomic(Path(path), payload)


def rewrite_evaluation(path: str | Path, evaluation: dict[str, Any]) -> Path:
    """Replace the evaluation record of the checkpoint at ``path``, atomically; every other entry
    (weights, configs, provenance) is written back exactly as read."""
    read_checkpoint(path)  # refuse anything but a valid checkpoint of this format
    payload = load_payload(path)
    payload["evaluation"] = json.dumps(evaluation)
    return _write_atomic(Path(path), payload)


def _write_atomic(path: Path, payload: dict[str, Any]) -> Path:
    """torch.save ``payload`` to ``path`` atomically, readable as any other file (mkstemp makes 0600)."""
    def write(tmp: str) -> None:
        torch.save(payload, tmp)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)

    atomic_write(path, write)
    return path


def load_payload(path: str | Path) -> Any:
    """The torch file at ``path`` (``weights_only``), or a one-line :class:`CheckpointError`."""
    if not Path(path).is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for truncated or foreign files
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(err).__name__})") from None


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint's contents as plain Python (state_dict as tensors), validated."""
    payload = load_payload(path)
    if not isinstance(payload, dict) or payload.get("kind") != CHECKPOINT_KIND:
        raise CheckpointError(f"{path} is a torch file but not an invwnn predictor checkpoint")
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format {payload.get('format_version')}; this "
                              f"invwnn reads format {FORMAT_VERSION}")
    try:
        payload["evaluation"] = json.loads(payload["evaluation"])
        payload["provenance"] = json.loads(payload["provenance"])
        payload["model_config"] = ModelConfig.from_dict(payload["model_config"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path} is a damaged predictor checkpoint ({err})") from None
    return payload


def load_predictor(path: str | Path, device: str | torch.device = "cpu") -> Predictor:
    """The predictor stored at ``path``, in eval mode on ``device``."""
    payload = read_checkpoint(path)
    model = Predictor(payload["model_config"])
    try:
        model.load_state_dict(payload["state_dict"])
    except (RuntimeError, KeyError) as err:
        raise CheckpointError(f"{path}: weights do not fit the recorded config ({err})") from None
    return model.to(device).eval()


EVALUATION_FORMAT = 2  # 1 (no "format" key): linear baseline chosen on the held-out sample


def format_evaluation(ev: dict[str, Any]) -> str:
    """The evaluation record as a table (one line per kind); a one-line note for an old record."""
    if ev.get("format") != EVALUATION_FORMAT:
        return ("evaluation: an older record (its linear baseline was chosen on the held-out sample); "
                "recompute it with `invwnn evaluate CHECKPOINT --store STORE --write`")
    fit_runs = ev["horizon_fit"]["runs"]
    lines = [f"held_out: MAE of the past weight (weight units){ev['held_out_runs_desc']}; the damped line's "
             f"horizon h and each row's baseline fitted on {ev['horizon_fit']['windows']} windows of "
             f"{len(fit_runs)} training runs",
             f"  {'kind':<10} {'windows':>8} {'model':>10} {'no rewind':>10} {'damped':>10} {'h':>6} "
             f"{'vs none':>8} {'vs damped':>9}  {'headline':>8} (baseline)"]
    for kind, r in ev["held_out"].items():
        h = "kind's" if r["horizon"] is None else f"{r['horizon']:.3f}"
        lines.append(f"  {kind:<10} {r['n']:>8} {r['model']:>10.3e} {r['no_rewind']:>10.3e} "
                     f"{r['damped_line']:>10.3e} {h:>6} {r['ratio_no_rewind']:>8.3f} "
                     f"{r['ratio_damped_line']:>9.3f}  {r['ratio']:>8.3f} ({r['baseline'].replace('_', ' ')})")
    return "\n".join(lines)


def default_checkpoint(k: int = 15) -> Path:
    """The predictor shipped for window ``k`` (15: invwnn's, 5: invwnn+'s), or :class:`CheckpointError`."""
    if k not in DEFAULT:
        raise CheckpointError(f"no shipped predictor has window K = {k} (shipped: "
                              f"{', '.join(map(str, sorted(DEFAULT)))}); train one with "
                              f"`invwnn train --window {k}` and pass --predictor")
    return shipped_path(DEFAULT[k])


def recorded_spacing(payload: dict[str, Any]) -> list[int] | None:
    """The snapshot spacings (optimizer steps between snapshots) a :func:`read_checkpoint` payload
    was trained on; None when it records none."""
    spacing = payload["provenance"].get("snapshot_spacing")
    if spacing is None:
        return None
    return [int(s) for s in spacing] if isinstance(spacing, list) else [int(spacing)]


def check_spacing(path: str | Path, every: int) -> None:
    """Refuse, with one line, the predictor at ``path`` when the loop records a snapshot every
    ``every`` optimizer steps and it was trained on another spacing (unrecorded: accepted)."""
    spacing = recorded_spacing(read_checkpoint(path))
    if spacing is not None and every not in spacing:
        raise CheckpointError(f"{path} was trained on snapshots {'/'.join(map(str, spacing))} step(s) apart, "
                              f"but the loop records one every {every} (--every); use --every "
                              f"{spacing[0]} or a predictor trained on that spacing")


def describe_checkpoint(path: str | Path) -> str:
    """What ``invwnn inspect`` prints: config, evaluation table, provenance."""
    p = read_checkpoint(path)
    n_params = sum(v.numel() for v in p["state_dict"].values())
    lines = [f"checkpoint    {path} (format {p['format_version']}, {n_params:,} weights)",
             f"model         {json.dumps(p['model_config'].to_dict())}",
             f"training      {json.dumps(p['train_config'])}"]
    spacing = recorded_spacing(p)
    lines.append(f"data          {p['provenance'].get('data_kind', 'unknown kind')}, snapshots "
                 + ("unknown step(s) apart (an older checkpoint)" if spacing is None
                    else f"{'/'.join(map(str, spacing))} step(s) apart"))
    lines.append(format_evaluation(p["evaluation"]))
    for key, value in p["provenance"].items():
        lines.append(f"{key:<13} {value if not isinstance(value, (dict, list)) else json.dumps(value)}")
    return "\n".join(lines)


def sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass(frozen=True)
class LearnedRewinder:
    """The trained past-weight predictor (the loop must record exactly its ``k`` snapshots).
    ``horizon`` stretches the predicted rewind to ``w0 + (past - w0) * horizon / U`` (``w0``: the
    window's first value, ``U``: the trained horizon; None: the prediction itself), the line's one
    length knob. ``step``: the loop's (optimizer, lr), the "step" context."""

    model: Predictor
    path: str
    horizon: float | None = None
    step: tuple[str, float] | None = None

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

    def rewind(self, windows: torch.Tensor, kinds: torch.Tensor | None = None,
               layers: torch.Tensor | None = None) -> torch.Tensor:
        """:func:`predict_past` through :class:`invwnn.rewind.fast.Folded` (same values to float
        rounding, 1.4-2.4x faster: docs/predictor.md, "Rewind speed"); ``windows`` may be a strided
        view such as a (K, n) history's ``.T``."""
        u = self.model.config.u
        check_windows(self.model, windows, kinds)
        past = Folded(self.model).past(windows, self.model.kind_index(kinds.to(self.model.lookup.device)),
                                       self.context(windows, layers))
        return stretched(windows, past, 1.0 if self.horizon is None else self.horizon / u)

    def describe(self) -> dict[str, Any]:
        c = self.model.config
        return {"rewinder": "learned", "predictor": self.path, "sha256": sha256(self.path), "k": c.k,
                "trained_horizon": c.u, "horizon": c.u if self.horizon is None else self.horizon,
                "target": c.target, "context": list(c.context)}


def load_learned(path: str | Path, device: str = "cpu", every: int | None = None, horizon: float | None = None,
                 step: tuple[str, float | None] | None = None) -> LearnedRewinder:
    """The learned rewinder of the checkpoint ``path``, its rewind stretched to ``horizon``;
    ``every``: the loop's snapshot spacing (:func:`check_spacing`; None: not checked); ``step``: the
    loop's (optimizer, lr), for the "step" context. One-line :class:`CheckpointError` otherwise."""
    if every is not None:
        check_spacing(path, every)
    model = load_predictor(path, device)
    check_context(model.config.context)
    if "step" in model.config.context and (step is None or step[1] is None):
        raise CheckpointError(f"{path} takes the optimizer and learning rate as context: give --lr")
    return LearnedRewinder(model, str(path), horizon, step)
