"""Apply an unlearning method to a model file and describe what happened in a report dict.

``unlearn(...)`` is the whole command as a library call: read and validate every input first, run
the method, check the result, then write the model and the JSON report atomically. Any bad input
raises :class:`invwnn.models.InputError` before anything is written.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from invwnn import forget as forget_io
from invwnn import metrics, models
from invwnn.methods import REGISTRY, Context, Data
from invwnn.methods.invwnn import LinearRewinder, NoRewinder, ResetRewinder, load_rewinder
from invwnn.models import InputError, LoadedModel, Preprocess

# learned: the trained predictor; linear: a least-squares line extrapolated --horizon snapshots back;
# reset: back to each window's first value (undoes the forget fine-tuning; "repair only" control);
# none: keep the fine-tuned weights (no rewind, plus forget-set training)
REWINDERS = ("learned", "linear", "reset", "none")


def make_config(method: str, overrides: dict[str, Any]):
    """The method's config with ``overrides`` (field -> value) applied; unknown names raise."""
    if method not in REGISTRY:
        raise InputError(f"unknown method {method!r}; valid: {', '.join(REGISTRY)}")
    return REGISTRY[method].config.from_dict(overrides)


def make_rewinder(kind: str, predictor: str | None, config, device: str = "cpu"):
    """The rewinder ``kind`` (learned, linear, reset, none) for an invwnn ``config``; the learned one's
    window K must equal the snapshots the loop records."""
    if kind not in REWINDERS:
        raise InputError(f"unknown rewinder {kind!r}; valid: {', '.join(REWINDERS)}")
    if kind == "linear":
        return LinearRewinder(config.horizon)
    if kind == "none":
        return NoRewinder()
    if kind == "reset":
        return ResetRewinder()
    rewinder = load_rewinder(predictor, device, config.snapshots)
    if rewinder.k != config.snapshots:
        raise InputError(f"--snapshots {config.snapshots} does not match the predictor's window "
                         f"K = {rewinder.k}")
    return rewinder


def _distance(model, reference: list[torch.Tensor]) -> float:
    return math.sqrt(sum((p.detach() - r).pow(2).sum().item() for p, r in zip(model.parameters(), reference)))


def apply(loaded: LoadedModel, data: Data, method: str, config, ctx: Context) -> dict:
    """Run ``method`` on ``loaded`` (modified in place) and return the report: metrics before and
    after (percent; UA always, RA/TA with retain/test, MIA with both), per-iteration log for
    iterative methods (forget/retain/test accuracy, L2 distance from the original weights, seconds
    since start), total seconds."""
    model = loaded.model.to(ctx.device)
    reference = [p.detach().clone() for p in model.parameters()]
    before = metrics.evaluate(model, data.forget, data.retain, data.test, ctx.device, ctx.seed)
    log: list[dict] = []
    t0 = time.time()
    measuring = 0.0  # time spent in this hook's own evaluation, kept out of the method's time

    def on_iteration(i: int, m) -> None:
        nonlocal measuring
        start = time.time()
        row = {"iteration": i + 1,
               "forget_acc": metrics.accuracy(m, data.forget.x, data.forget.y, ctx.device)}
        for name in ("retain", "test"):
            split = getattr(data, name)
            if split is not None:
                row[f"{name}_acc"] = metrics.accuracy(m, split.x, split.y, ctx.device)
        row["distance"] = _distance(m, reference)
        measuring += time.time() - start
        row["seconds"] = time.time() - t0 - measuring
        log.append(row)

    ctx.on_iteration = on_iteration
    result = REGISTRY[method].run(model, data, config, ctx)
    seconds = time.time() - t0 - measuring
    if result is not model:  # retrain builds a fresh network: copy it into the loaded one
        model.load_state_dict(result.state_dict())
    if not models.is_finite(model):
        raise InputError(f"method {method} produced non-finite weights; nothing written "
                         "(try a smaller --lr)")
    after = metrics.evaluate(model, data.forget, data.retain, data.test, ctx.device, ctx.seed)
    return {"method": method, "config": config.to_dict(), "seed": ctx.seed, "device": str(ctx.device),
            "before": before, "after": after, "iterations": log, "seconds": seconds,
            "distance": _distance(model, reference)}


@dataclass(frozen=True)
class Inputs:
    """Where the data comes from and how to read a model file without metadata."""

    model: str
    forget: str
    retain: str | None = None
    test: str | None = None
    trust_pickle: bool = False
    classes: tuple[str, ...] | None = None
    size: tuple[int, int] | None = None
    channels: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


def _flag_preprocess(inputs: Inputs) -> Preprocess | None:
    """Preprocessing from flags, with the data's first image filling size/channels not given."""
    guess = forget_io.infer_preprocess(inputs.forget)
    size = inputs.size or (guess.size if guess else None)
    channels = inputs.channels or (guess.channels if guess else None)
    if size is None or channels is None:
        return None
    return Preprocess(size, channels, inputs.mean or (0.0,), inputs.std or (1.0,))


def load_inputs(inputs: Inputs) -> tuple[LoadedModel, Data]:
    """Read and check the model and every data split (everything that can fail on bad input)."""
    pre = models.peek_preprocess(inputs.model) or _flag_preprocess(inputs)
    loaded = models.load(inputs.model, trust_pickle=inputs.trust_pickle, classes=inputs.classes,
                         preprocess=pre)
    splits = {name: forget_io.read(path, loaded.classes, loaded.preprocess, f"--{name}")
              for name, path in (("forget", inputs.forget), ("retain", inputs.retain),
                                 ("test", inputs.test)) if path is not None}
    return loaded, Data(splits["forget"], loaded.classes, splits.get("retain"), splits.get("test"),
                        loaded.mnemonic)


def unlearn(inputs: Inputs, method: str = "invwnn", overrides: dict | None = None, *,
            out: str | None = None, report_path: str | None = None, rewinder: str = "learned",
            predictor: str | None = None, seed: int = 0, device: str = "cpu",
            progress: bool = False) -> dict:
    """The ``invwnn apply`` command as a function. Returns the report, also written to
    ``report_path`` (default: the output model's name with ``.json``)."""
    config = make_config(method, overrides or {})
    out_path = Path(out) if out else models.default_output(inputs.model)
    report_path = Path(report_path) if report_path else out_path.with_suffix(".json")
    rew = None
    if method in ("invwnn", "invwnn+"):
        rew = make_rewinder(rewinder, predictor, config, device)
    loaded, data = load_inputs(inputs)
    torch.manual_seed(seed)
    ctx = Context(device=device, seed=seed, progress=progress, rewinder=rew,
                  rebuild=loaded.rebuild if loaded.arch is not None or loaded.source == "pickle" else None)
    report = apply(loaded, data, method, config, ctx)
    report.update({
        "rewinder": rew.describe() if rew else None,
        "model": {"path": str(inputs.model), "source": loaded.source, "classes": list(loaded.classes),
                  "class_names_from": "file or --classes" if loaded.classes_from_file else "output index",
                  "preprocess": loaded.preprocess.to_dict()},
        "data": {name: {"path": split.source, "n": len(split), "classes": split.counts(loaded.classes)}
                 for name, split in (("forget", data.forget), ("retain", data.retain), ("test", data.test))
                 if split is not None},
        "output": str(out_path), "versions": models.versions()})
    loaded.model.cpu()
    models.save(loaded, out_path, report)
    models.atomic_write(report_path, lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2)))
    return report
