"""Apply an unlearning method to a model file and describe what happened in a report dict.

``unlearn(...)`` is the whole command as a library call: read and validate every input first (bad
input raises :class:`invwnn.errors.InputError` before anything is written), run the method under
the :class:`Guard` (:mod:`invwnn.unlearn.guard`), then write the model and the JSON report atomically.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from invwnn import files
from invwnn.inputs import splits as forget_io
from invwnn.audit import metrics
from invwnn.inputs import models
from invwnn.unlearn.methods import REGISTRY, Context, Data
from invwnn.unlearn.estimate import Estimate
from invwnn.unlearn.methods.invwnn import rewinder_for
from invwnn.unlearn.guard import Guard, GuardStop, watch_subset
from invwnn.inputs.models import LoadedModel
from invwnn.inputs.preprocess import PreprocessHint
from invwnn.errors import InputError

DEFAULT_MAX_DROP = 5.0  # percentage points of watched accuracy a method may lose (docs/applier.md)


AUTO = "auto"


def choose_method(method: str, inputs: "Inputs") -> tuple[str, str | None]:
    """The method ``--method`` names, or for ``auto`` the one the given data supports and why:
    invwnn+ with retain data (its repair and restore train on it), else invwnn."""
    if method != AUTO:
        return method, None
    if inputs.retain is not None:
        return "invwnn+", "auto: --retain given, so the retain-aware loop"
    return "invwnn", "auto: forget data only, so the forget-only loop (give --retain for invwnn+)"


def make_config(method: str, overrides: dict[str, Any]):
    """The method's config with ``overrides`` (field -> value) applied; unknown names raise."""
    if method not in REGISTRY:
        raise InputError(f"unknown method {method!r}; valid: {', '.join(REGISTRY)}")
    return REGISTRY[method].config.from_dict(overrides)


MISFIT_POINTS = 10.0  # forget accuracy this far below the retain (else test) accuracy draws a warning


def misfit_warning(before: dict[str, float], n_classes: int, guess: str | None = None) -> str | None:
    """A warning when the model, before unlearning, classifies its forget images (training images)
    much worse than its retain (else test) images, or near chance when neither is given: the
    input is then probably not what it was trained on. ``guess``: what was assumed of the input
    (:attr:`LoadedModel.preprocess_guess`). None when nothing looks wrong."""
    forget_acc = 100 - before["UA"]
    ref = next(((name, before[k]) for k, name in (("RA", "retain"), ("TA", "test")) if k in before), None)
    if ref is not None:
        if forget_acc >= ref[1] - MISFIT_POINTS:
            return None
        seen = f"{forget_acc:.1f}% of the forget images right but {ref[1]:.1f}% of the {ref[0]} images"
    else:
        chance = 100 / n_classes
        if forget_acc >= 2 * chance:
            return None
        seen = f"{forget_acc:.1f}% of the forget images right, near chance ({chance:.1f}%)"
    cause = (f"likely cause: {guess}" if guess else "likely cause: images not preprocessed as in training "
             "(check --size, --channels, --mean/--std) or forget labels other than those it was trained on")
    return (f"before unlearning the model gets {seen}; a model knows its own training images best, so "
            f"the results below are probably wrong ({cause}; mislabelled forget images are the exception)")


def _distance(model, reference: list[torch.Tensor]) -> float:
    return math.sqrt(sum((p.detach() - r).pow(2).sum().item() for p, r in zip(model.parameters(), reference)))


def apply(loaded: LoadedModel, data: Data, method: str, config, ctx: Context,
          max_drop: float | None = DEFAULT_MAX_DROP, warn: Callable[[str], None] | None = None,
          retrain_epochs: float | None = None) -> dict:
    """Run ``method`` on ``loaded`` (modified in place) under a :class:`Guard` that watches the
    retain set (else the test set) with bound ``max_drop`` (percentage points; None: only
    non-finite weights stop the method) and return the report: metrics before and after (percent),
    per-iteration log for iterative methods (accuracies, L2 distance from the original weights,
    seconds), seconds (checks excluded), ``stop_reason`` (budget: ran its configured length, target,
    guard, non-finite), the guard's record, ``work`` (images fed forward and backward, against a
    retraining's: ``retrain_epochs`` over the retain set, else the epochs the model file records),
    and ``warnings`` (each also passed to ``warn`` at once)."""
    warnings: list[str] = []

    def warned(text: str | None) -> None:
        if text:
            warnings.append(text)
            if warn is not None:
                warn(text)

    warned(loaded.preprocess_guess)
    model = loaded.model.to(ctx.device)
    reference = [p.detach().clone() for p in model.parameters()]
    before = metrics.evaluate(model, data.forget, data.retain, data.test, ctx.device, ctx.seed)
    warned(misfit_warning(before, len(loaded.classes), loaded.preprocess_guess))
    watched = "retain" if data.retain is not None else "test" if data.test is not None else None
    mode = REGISTRY[method].guard
    guard = Guard(model, data.forget, getattr(data, watched) if watched else None, watched, max_drop, mode,
                  ctx.device, ctx.seed, ctx)
    if guard.collapse is not None:
        warned("no --retain or --test: the guard can only see whether the predictions on the forget images "
               "collapse; the damage to other images is unknown (pass --test or --retain to bound it)")
    # the per-iteration log: accuracies on seeded subsets (the guard's own for the watched split)
    logged = {name: guard.subset if name == guard.watched else watch_subset(split, ctx.seed)
              for name, split in (("forget", data.forget), ("retain", data.retain), ("test", data.test))
              if split is not None}
    log: list[dict] = []
    t0 = time.time()
    measuring = 0.0  # time spent in this hook's own evaluation, kept out of the method's time

    def on_iteration(i: int, m) -> None:
        nonlocal measuring
        start = time.time()
        row = {"iteration": i + 1, **{f"{name}_acc": metrics.accuracy(m, split.x, split.y, ctx.device)
                                      for name, split in logged.items()}}
        row["distance"] = _distance(m, reference)
        measuring += time.time() - start
        row["seconds"] = time.time() - t0 - measuring - guard.seconds
        log.append(row)
        if mode == "iteration":
            backoffs = len(guard.backoffs)
            try:
                guard.check({"iteration": i + 1}, row.get(f"{guard.watched}_acc") if guard.watched else None)
            finally:
                row["backed_off"] = len(guard.backoffs) > backoffs

    ctx.on_iteration, ctx.warn = on_iteration, warned
    handle = register_optimizer_step_post_hook(guard.on_step) if mode == "step" else None
    try:
        result = REGISTRY[method].run(model, data, config, ctx)
    except GuardStop:
        result = model
    finally:
        if handle is not None:
            handle.remove()
    seconds = time.time() - t0 - measuring - guard.seconds
    if result is not model:  # retrain builds a fresh network: copy it into the loaded one
        model.load_state_dict(result.state_dict())
    guard.finish()
    after = metrics.evaluate(model, data.forget, data.retain, data.test, ctx.device, ctx.seed)
    stop_reason = guard.stop["reason"] if guard.stop else ctx.stop_reason or "budget"
    return {"method": method, "config": config.to_dict(), "seed": ctx.seed, "device": str(ctx.device),
            "before": before, "after": after, "iterations": log, "log_images": {k: len(v) for k, v in logged.items()},
            "seconds": seconds, "stop_reason": stop_reason, "guard": guard.describe(),
            "calibration": ctx.calibration or None, "rewind": _rewind_record(ctx.rewind, seconds),
            "estimate": ctx.estimate, "restore": ctx.restore, "work": _work(ctx.work, loaded, data, retrain_epochs),
            "distance": _distance(model, reference), "warnings": warnings}


def _work(work: dict[str, int], loaded: LoadedModel, data: Data, retrain_epochs: float | None) -> dict | None:
    """The method's image passes (``work``: by what they trained on) and, when a retraining's epochs
    are known (``retrain_epochs``, else the model file's recipe) and retain data is given, a
    retraining's (epochs x retain images) and the share."""
    if not work:
        return None
    out = {**work, "images": sum(work.values()), "forget_passes": work.get("forget_images", 0) / len(data.forget)}
    recorded = loaded.train_config.get("prepare", {}).get("epochs")
    epochs, source = (retrain_epochs, "--retrain-epochs") if retrain_epochs else \
        (recorded, "the model file's recorded recipe")
    if epochs and data.retain is not None and len(data.retain):
        out.update(retrain_images=round(epochs * len(data.retain)), retrain_from=source,
                   share=out["images"] / (epochs * len(data.retain)))
    return out


def _rewind_record(rewind: dict, seconds: float) -> dict | None:
    """What predicting the past cost: seconds, coordinates per second, share of the method's time."""
    if not rewind:
        return None
    return {**rewind, "per_second": rewind["coordinates"] / max(rewind["seconds"], 1e-9),
            "share": rewind["seconds"] / max(seconds, 1e-9)}


METRIC_NAMES = {"RA": "RA  retain accuracy", "UA": "UA  100 - forget accuracy",
                "TA": "TA  test accuracy", "MIA": "MIA membership-inference efficacy"}


def _where(at: dict | str) -> str:
    """A guard position (``{"step": 8}``, ``{"iteration": 3}``, ``{"end": True}``, "original") in words."""
    if at == "original":
        return "the original weights"
    if "end" in at:
        return "the method's result"
    if "retreat" in at:
        return f"{at['retreat']:g} of the failing move"
    return " ".join(f"{k} {v}" for k, v in at.items())


def format_report(report: dict) -> str:
    """The report as a before / after table of RA, UA, TA and MIA (percent, change in points) and
    a line each on how the method stopped, what the guard watched and (``inexact``) where running
    the model file differs from running its original module."""
    b, a = report["before"], report["after"]
    rows = [f"{'metric':<36}{'before':>8}{'after':>8}{'change':>8}"]
    for k, label in METRIC_NAMES.items():
        if k in a:
            rows.append(f"{label:<36}{b[k]:>8.1f}{a[k]:>8.1f}{a[k] - b[k]:>+8.1f}")
    lines = ["\n".join(rows), f"{report['method']} in {report['seconds']:.1f} s; stopped: {report['stop_reason']}"]
    if report.get("estimate"):
        est = Estimate(**report["estimate"])
        lines.append(est.describe())
        lines.append(f"forget accuracy {100 - a['UA']:.1f}% after, against that estimate {est.forget_acc:.1f}% "
                     f"(before: {100 - b['UA']:.1f}%)")
    if (report.get("restore") or {}).get("steps") is not None:
        r = report["restore"]
        lines.append(f"restore: {r['steps']} retain steps, retain accuracy {r['retain_acc_start']:.1f} -> "
                     f"{r['retain_acc_end']:.1f} (original's {r['retain_acc_before']:.1f}), forget accuracy "
                     f"{r['forget_acc_start']:.1f} -> {r['forget_acc_end']:.1f} (ceiling {r['ceiling']:.1f}): "
                     f"{r['ended']}")
    if report.get("rewind"):
        r = report["rewind"]
        lines.append(f"rewind: {r['calls']} x {r['coordinates'] / r['calls']:,.0f} coordinates in {r['seconds']:.1f} s "
                     f"({r['per_second']:,.0f} per second, {100 * r['share']:.0f}% of the method's time)")
    if report.get("work"):
        w = report["work"]
        text = (f"work: {w['images']:,} image passes ({w['forget_passes']:.1f} passes over the forget set"
                f"{', ' + format(w['repair_images'], ',') + ' repair images' if 'repair_images' in w else ''})")
        if "share" in w:
            text += (f"; a retraining: {w['retrain_images']:,} ({w['retrain_from']}), so "
                     f"{100 * w['share']:.1f}% of it")
        lines.append(text)
    for name, c in (report.get("calibration") or {}).items():
        if name == "neighbours":
            lines.append(f"repair on {c['images']} shifted copies of the forget images, labelled by the model "
                         f"before unlearning ({c['keep_forget_label']:.1f}% keep their forget label)")
            continue
        lines.append(f"calibrated {name.replace('_', ' ')}: {c['lr']:.3g} (one step moves the centred logits on "
                     f"{c['probe_images']} images by {c['measured']:.3g} rms; asked {c['step_size']:g})")
    g = report.get("guard", {})
    if g.get("watched"):
        text = (f"guard: {g['watched']} accuracy on {g['images']} images, {g['reference_acc']:.1f} before, "
                f"may fall {g['max_drop']:g} points")
        if g["stopped"] and "acc_at_stop" in g:
            text += (f"; fell to {g['acc_at_stop']:.1f} at {_where(g['stopped_at'])}, "
                     f"kept {_where(g['kept'])}")
        lines.append(text)
    elif g:
        lines.append(f"guard: {g['note']}")
        if "effective_classes" in g:
            lines.append(f"guard: predictions on the forget images collapsed to {g['effective_classes']:.1f} "
                         f"effective classes (from {g['collapse']['reference']:.1f}) at {_where(g['stopped_at'])}")
    for b in g.get("backoffs", []):
        seen = (f"accuracy {b['accuracy']:.1f}" if "accuracy" in b else
                f"{b['effective_classes']:.1f} effective classes" if "effective_classes" in b else "non-finite outputs")
        lines.append(f"guard backed off at {_where(b['at'])} ({seen}): back to {_where(b['kept'])}, "
                     f"step x{b['step_scale']:g}")
    if g.get("retreat"):
        r = g["retreat"]
        move = f"the move from {_where(r['from'])} to {_where(r['to'])}"
        lines.append(f"guard retreated: kept {r['share']:g} of {move}, the largest of "
                     f"{', '.join(f'{s:g}' for s in r['tried'])} that passes" if r["share"] else
                     f"guard retreated: no share of {move} ({', '.join(f'{s:g}' for s in r['tried'])}) passes")
    if report["stop_reason"] == "non-finite":
        lines.append(f"weights or outputs turned non-finite at {_where(g['stopped_at'])}; kept "
                     f"{_where(g['kept'])} (try a smaller --lr or --step-size)")
    if g.get("stopped") and g.get("kept") == "original":
        lines.append(f"the written model is the original: nothing was unlearned (every check failed, "
                     f"{len(g.get('backoffs', []))} backoff(s){' and a retreat' if g.get('retreat') else ''} included); try a smaller --step-size or --lr, "
                     "more --iterations or epochs, or a larger --max-drop")
    lines += [f"inexact: {note}" for note in report.get("inexact", [])]
    lines += [f"warning: {text}" for text in report.get("warnings", [])]
    return "\n".join(lines)


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
    arch: str | None = None  # torchvision:NAME[:k=v,...], the architecture of safetensors weights


def load_inputs(inputs: Inputs) -> tuple[LoadedModel, Data]:
    """Read and check the model and every data split, in the order a user reads the command. A
    model file that records no preprocessing gets it from the flags, then from the model's own
    input shape, then from the forget data's first image (what was assumed: ``loaded.preprocess_guess``)."""
    if not Path(inputs.model).is_file():
        raise InputError(f"model file {inputs.model} does not exist")
    paths = {name: path for name, path in (("forget", inputs.forget), ("retain", inputs.retain),
                                           ("test", inputs.test)) if path is not None}
    for name, path in paths.items():
        forget_io.check_source(path, f"--{name}")
    hint = PreprocessHint(inputs.size, inputs.channels, inputs.mean, inputs.std,
                                 forget_io.infer_preprocess(inputs.forget), f"--forget {inputs.forget}")
    loaded = models.load(inputs.model, trust_pickle=inputs.trust_pickle, classes=inputs.classes,
                         preprocess=hint, arch=inputs.arch)
    splits = {}
    for name, path in paths.items():
        try:
            splits[name] = forget_io.read(path, loaded.classes, loaded.preprocess, f"--{name}")
        except InputError as err:
            if loaded.preprocess_guess is None:
                raise
            raise InputError(f"{err} ({loaded.preprocess_guess})") from None
    return loaded, Data(splits["forget"], loaded.classes, splits.get("retain"), splits.get("test"),
                        loaded.mnemonic)


def unlearn(inputs: Inputs, method: str = AUTO, overrides: dict | None = None, *,
            out: str | None = None, report_path: str | None = None, seed: int = 0, device: str = "cpu",
            progress: bool = False, max_drop: float | None = DEFAULT_MAX_DROP,
            warn: Callable[[str], None] | None = None, retrain_epochs: float | None = None) -> dict:
    """The ``invwnn apply`` command as a function: returns the report, also written to
    ``report_path`` (default: the output model's name with ``.json``); ``max_drop`` and ``warn`` as
    :func:`apply`."""
    if max_drop is not None and not (math.isfinite(max_drop) and max_drop >= 0):
        raise InputError(f"--max-drop takes a number of points >= 0 or off, got {max_drop}")
    method, why = choose_method(method, inputs)
    config = make_config(method, overrides or {})
    out_path = Path(out) if out else models.default_output(inputs.model)
    report_path = Path(report_path) if report_path else out_path.with_suffix(".json")
    rew = rewinder_for(config, device)  # a bad rewinder or checkpoint fails before the model is read
    loaded, data = load_inputs(inputs)
    torch.manual_seed(seed)
    ctx = Context(device=device, seed=seed, progress=progress, rewinder=rew,
                  rebuild=loaded.rebuild if loaded.can_rebuild else None)
    report = apply(loaded, data, method, config, ctx, max_drop, warn, retrain_epochs)
    report.update({
        "rewinder": rew.describe() if rew else None,
        "model": {"path": str(inputs.model), "source": loaded.source, "classes": list(loaded.classes),
                  "class_names_from": "file or --classes" if loaded.classes_from_file else "output index",
                  "preprocess": loaded.preprocess.to_dict(), "torchvision": loaded.torchvision,
                  "micro_batch": loaded.micro_batch},
        "inexact": list(loaded.inexact),
        "data": {name: {"path": split.source, "n": len(split), "classes": split.counts(loaded.classes)}
                 for name, split in (("forget", data.forget), ("retain", data.retain), ("test", data.test))
                 if split is not None},
        "output": str(out_path), "versions": files.versions(), "method_choice": why})
    loaded.model.cpu()
    models.save(loaded, out_path, report)
    files.atomic_write(report_path, lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2)))
    return report
